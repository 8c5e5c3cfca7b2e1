//! Nothing acknowledged is lost: Postgres outages, kill -9 with Postgres down, SIGTERM under load.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::{self, Walcast};
use walcast::cluster::StopMode;

/// One request of `n` events with producer-chosen ids; returns (status, durable, ids).
async fn post_events(w: &Walcast, n: usize) -> (u16, String, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let body: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "event_type": "load", "source": "resilience", "data": {"v": 1}}))
        .collect();
    let (status, v) = support::post(
        &w.url("/v1/events"),
        "application/json",
        None,
        serde_json::to_vec(&body).expect("json"),
    )
    .await;
    (status, v["durable"].as_str().unwrap_or("").to_owned(), ids)
}

/// Ids present in the table.
async fn table_ids(db: &support::TestDb) -> Vec<String> {
    db.client()
        .await
        .query("select id::text from public.monitoring_events", &[])
        .await
        .expect("select ids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until every acknowledged id is in the table (the spool has been replayed).
async fn assert_all_present(db: &support::TestDb, acked: &HashSet<String>, w: &Walcast) {
    let ok = support::wait_until(Duration::from_secs(60), || async {
        let have: HashSet<String> = table_ids(db).await.into_iter().collect();
        acked.iter().all(|id| have.contains(id))
    })
    .await;
    let have = table_ids(db).await;
    let set: HashSet<&String> = have.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !set.contains(id)).collect();
    assert!(
        ok,
        "{} of {} acknowledged events missing; log:\n{}",
        missing.len(),
        acked.len(),
        w.log_text()
    );
    assert_eq!(set.len(), have.len(), "no id twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_during_ingest_loses_nothing_acknowledged() {
    let dir = support::temp_dir("pgcrash-ingest");
    let cluster = support::start_cluster_blocking(&dir);
    let db = support::fresh_db_on(cluster.host(), cluster.port()).await;
    let w = Walcast::start(
        &db,
        &["--breaker-cooldown", "200ms", "--breaker-threshold", "1"],
    )
    .await;
    let mut acked = HashSet::new();
    let mut spooled = 0;
    for round in 0..3 {
        if round == 1 {
            cluster
                .stop(StopMode::Immediate)
                .await
                .expect("stop postgres");
        }
        if round == 2 {
            cluster.restart().await.expect("restart postgres");
        }
        for _ in 0..30 {
            let (status, durable, ids) = post_events(&w, 5).await;
            if status == 201 {
                if durable == "spool" {
                    spooled += 1;
                }
                acked.extend(ids);
            } else {
                assert_eq!(status, 503, "only 201 or 503 during an outage");
            }
        }
    }
    assert!(
        spooled > 0,
        "some requests were acknowledged from the spool while Postgres was down"
    );
    assert_eq!(
        acked.len(),
        90 * 5,
        "every request was acknowledged (database or spool)"
    );
    assert_all_present(&db, &acked, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_postgres_is_down_then_spool_replays_on_restart() {
    let dir = support::temp_dir("kill9-spool");
    let cluster = support::start_cluster_blocking(&dir);
    let db = support::fresh_db_on(cluster.host(), cluster.port()).await;
    let mut w = Walcast::start(
        &db,
        &["--breaker-cooldown", "200ms", "--breaker-threshold", "1"],
    )
    .await;
    let mut acked = HashSet::new();
    for _ in 0..10 {
        let (status, durable, ids) = post_events(&w, 3).await;
        assert_eq!((status, durable.as_str()), (201, "database"));
        acked.extend(ids);
    }
    cluster
        .stop(StopMode::Immediate)
        .await
        .expect("stop postgres");
    for _ in 0..20 {
        let (status, durable, ids) = post_events(&w, 3).await;
        assert_eq!(
            status, 201,
            "accepted into the spool while Postgres is down"
        );
        assert_eq!(durable, "spool");
        acked.extend(ids);
    }
    w.kill9();
    cluster.restart().await.expect("restart postgres");
    w.restart().await;
    assert_all_present(&db, &acked, &w).await;
    assert_eq!(
        db.count().await,
        90,
        "every acknowledged event exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_event() {
    let db = support::fresh_db().await;
    let mut w = Walcast::start(&db, &["--shutdown-timeout", "10s"]).await;
    let url = w.url("/v1/events");
    let mut producers = Vec::new();
    for p in 0..4 {
        let url = url.clone();
        producers.push(tokio::spawn(async move {
            let client = walcast::cmd::http_client::HttpClient::new();
            let mut acked = Vec::new();
            for i in 0..10_000 {
                let id = uuid::Uuid::now_v7().to_string();
                let body = json!({"id": id, "event_type": "load", "source": format!("p{p}"), "data": {"i": i}});
                match client
                    .post(&url, "application/json", None, body.to_string().into())
                    .await
                {
                    Ok(r) if r.status == 201 => acked.push(id),
                    Ok(r) => assert_eq!(r.status, 503, "refused only as shutting down"),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Let some load through, then SIGTERM.
    let ok = support::wait_until(Duration::from_secs(30), || async {
        db.count().await >= 200
    })
    .await;
    assert!(ok, "load reached the table");
    let started = std::time::Instant::now();
    let status = w
        .terminate(Duration::from_secs(15))
        .expect("exited within the timeout");
    assert!(
        status.success(),
        "clean exit: {status:?}; log:\n{}",
        w.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(11));
    let mut acked = HashSet::new();
    for p in producers {
        acked.extend(p.await.expect("producer"));
    }
    let have: HashSet<String> = table_ids(&db).await.into_iter().collect();
    let missing = acked.iter().filter(|id| !have.contains(*id)).count();
    assert_eq!(missing, 0, "acknowledged events missing after SIGTERM");
    assert!(w.log_text().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_snapshots_reach_the_stream_and_survive_an_outage() {
    let dir = support::temp_dir("persister");
    let cluster = support::start_cluster_blocking(&dir);
    let db = support::fresh_db_on(cluster.host(), cluster.port()).await;
    let w = Walcast::start(
        &db,
        &[
            "--metrics-interval",
            "1s",
            "--breaker-cooldown",
            "200ms",
            "--breaker-threshold",
            "1",
        ],
    )
    .await;
    let mut ws = support::ws::WsClient::connect(&w.ws_url("/ws")).await;
    ws.subscribe("m", json!({"event_type": "walcast.metrics"}))
        .await;
    let ev = ws.events(1, Duration::from_secs(10)).await;
    let rec = &ev[0]["record"];
    assert_eq!(rec["source"], db.node());
    assert!(
        rec["data"]["breaker"].is_string(),
        "snapshot carries the breaker state: {rec}"
    );
    assert!(rec["data"]["deliveries"].is_number());

    // Snapshots taken while Postgres is down wait in the spool and arrive afterwards.
    cluster
        .stop(StopMode::Immediate)
        .await
        .expect("stop postgres");
    let down_at = chrono::Utc::now();
    let ok = support::wait_until(Duration::from_secs(20), || async {
        support::get(&w.url("/metrics"))
            .await
            .1
            .lines()
            .any(|l| l.starts_with("walcast_events_spooled_total ") && !l.ends_with(" 0"))
    })
    .await;
    assert!(
        ok,
        "a snapshot was spooled during the outage; log:\n{}",
        w.log_text()
    );
    let up_at = chrono::Utc::now();
    cluster.restart().await.expect("restart postgres");
    let ok = support::wait_until(Duration::from_secs(30), || async {
        let c = db.client().await;
        let n: i64 = c
            .query_one(
                "select count(*) from monitoring_events where event_type = 'walcast.metrics' and timestamp between $1 and $2",
                &[&down_at, &up_at],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        n > 0
    })
    .await;
    if !ok {
        let rows = db
            .client()
            .await
            .query("select timestamp::text, data->>'breaker' from monitoring_events order by timestamp", &[])
            .await
            .expect("rows");
        let rows: Vec<(String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        panic!(
            "snapshots from the outage did not reach the table (down at {down_at}); rows: {rows:?}\nmetrics: {}\nlog:\n{}",
            support::get(&w.url("/metrics")).await.1,
            w.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batch_goes_to_the_dlq_and_dlq_retry_recovers_it() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    c.batch_execute(
        "create function poison_guard() returns trigger language plpgsql as $$
         begin
           if new.event_type = 'poison' then
             raise exception 'poison events are refused' using errcode = 'check_violation';
           end if;
           return new;
         end $$;
         create trigger poison_guard before insert on public.monitoring_events
           for each row execute function poison_guard();",
    )
    .await
    .expect("trigger");
    let w = Walcast::start(&db, &[]).await;
    let body = json!([
        {"event_type": "ok", "source": "s", "data": {"n": 1}},
        {"event_type": "poison", "source": "s", "data": {"n": 2}},
    ]);
    let (status, v) = support::post(
        &w.url("/v1/events"),
        "application/json",
        None,
        body.to_string(),
    )
    .await;
    assert_eq!(status, 202, "accepted into the dead-letter queue: {v}");
    assert_eq!(v["durable"], "dead_letter");
    assert_eq!(
        db.count().await,
        0,
        "nothing of the request is in the table"
    );
    let row = c
        .query_one(
            "select id, operation, error_code, error_message, status from walcast.dead_letter_queue",
            &[],
        )
        .await
        .expect("one dead letter");
    let id: i64 = row.get(0);
    assert_eq!(row.get::<_, String>(1), "ingest");
    assert_eq!(row.get::<_, String>(2), "sqlstate_23514");
    assert!(
        row.get::<_, String>(3)
            .contains("poison events are refused")
    );

    // Fix the cause, then retry from the CLI.
    c.batch_execute("drop trigger poison_guard on public.monitoring_events")
        .await
        .expect("drop");
    let (code, out, err) = support::run_cli(
        &[
            "dlq",
            "retry",
            &id.to_string(),
            "--now",
            "--database-url",
            &db.url,
        ],
        &[],
    );
    assert_eq!(code, 0, "dlq retry --now: {out}{err}");
    assert_eq!(db.count().await, 2, "both events recovered into the table");
    let status: String = c
        .query_one(
            "select status from walcast.dead_letter_queue where id = $1",
            &[&id],
        )
        .await
        .expect("status")
        .get(0);
    assert_eq!(status, "recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_spool_full_and_drops_nothing_accepted() {
    let dir = support::temp_dir("spool-full");
    let cluster = support::start_cluster_blocking(&dir);
    let db = support::fresh_db_on(cluster.host(), cluster.port()).await;
    let w = Walcast::start(
        &db,
        &[
            "--spool-max",
            "64KiB",
            "--breaker-cooldown",
            "200ms",
            "--breaker-threshold",
            "1",
        ],
    )
    .await;
    cluster
        .stop(StopMode::Immediate)
        .await
        .expect("stop postgres");
    let mut acked = HashSet::new();
    let mut refused = None;
    for _ in 0..200 {
        let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let body: Vec<_> = ids
            .iter()
            .map(|id| json!({"id": id, "event_type": "load", "source": "full", "data": {"pad": "x".repeat(1000)}}))
            .collect();
        let reply = support::post_with_headers(
            &w.url("/v1/events"),
            "application/json",
            None,
            serde_json::to_vec(&body).expect("json"),
        )
        .await;
        match reply.status {
            201 => {
                assert_eq!(reply.body["durable"], "spool", "{}", reply.body);
                acked.extend(ids);
            }
            _ => {
                refused = Some(reply);
                break;
            }
        }
    }
    let reply = refused.expect("the 64 KiB spool filled up");
    let (status, v) = (reply.status, &reply.body);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "spool_full", "{v}");
    // Clients are told when to try again: a whole number of seconds, at least one.
    let retry_after = reply
        .headers
        .get(hyper::header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("503 spool_full without Retry-After: {:?}", reply.headers));
    let seconds: u64 = retry_after
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After {retry_after:?} is not whole seconds"));
    assert!(seconds > 0, "Retry-After {seconds}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("spool is full"),
        "{v}"
    );
    assert!(!acked.is_empty(), "some requests fit in the spool first");
    cluster.restart().await.expect("restart postgres");
    assert_all_present(&db, &acked, &w).await;
    let (status, durable, _) = post_events(&w, 1).await;
    assert_eq!(
        (status, durable.as_str()),
        (201, "database"),
        "writes go to the table again"
    );
}
