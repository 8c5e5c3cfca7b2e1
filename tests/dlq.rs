//! Tests: the dead-letter queue — every `walcast.dlq_*` function called as from psql (backoff,
//! final failure, requeue, cleanup, stats, invalid input, privileges), concurrent claimers, the
//! retry worker and `walcast dlq retry --now` against a constraint that rejects an event, the
//! advisory lock that keeps the worker on one node, and the `/v1/dlq` endpoints with and without
//! a `service_role` token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use walcast::dlq::{
    self, DeadLetter, Operation, RETRY_LOCK_KEY, RetryPolicy, RetryWorkerConfig, RetryWorkerStatus,
    Status,
};

use crate::support::{self, Walcast};

/// The SQLSTATE of a failed statement.
#[track_caller]
fn sqlstate<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>) -> SqlState {
    let e = r.expect_err("statement should have failed");
    e.code()
        .unwrap_or_else(|| panic!("not a database error: {e}"))
        .clone()
}

/// Pushes a row from SQL with a policy; returns its id.
async fn push_sql(c: &tokio_postgres::Client, operation: &str, policy: Value) -> i64 {
    c.query_one(
        "select walcast.dlq_push($1, 'node1', '[]'::jsonb, 'e1', 'first error', null, $2)",
        &[&operation, &policy],
    )
    .await
    .expect("dlq_push")
    .get(0)
}

/// A row's (status, attempts, seconds from updated_at to next_attempt_at, error_code).
async fn state(c: &tokio_postgres::Client, id: i64) -> (String, i32, Option<f64>, String) {
    let r = c
        .query_one(
            "select status, attempts, extract(epoch from next_attempt_at - updated_at)::float8, \
             error_code from walcast.dead_letter_queue where id = $1",
            &[&id],
        )
        .await
        .expect("row");
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Makes a row due now (the test's stand-in for waiting out its backoff).
async fn make_due(c: &tokio_postgres::Client, id: i64) {
    c.execute(
        "update walcast.dead_letter_queue set next_attempt_at = now() where id = $1",
        &[&id],
    )
    .await
    .expect("make due");
}

/// Claims from SQL; returns the claimed ids.
async fn claim_ids(c: &tokio_postgres::Client, batch: i32, worker: &str) -> Vec<i64> {
    c.query(
        "select id from walcast.dlq_claim($1, $2)",
        &[&batch, &worker],
    )
    .await
    .expect("dlq_claim")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_functions_work_from_psql() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let policy = json!({"kind": "timed_retry", "max_attempts": 3, "backoff_base_secs": 10, "backoff_max_secs": 25});
    let timed = push_sql(&c, "ingest", policy).await;
    let later = push_sql(&c, "ingest", json!({"kind": "timed_retry"})).await;
    let manual = push_sql(&c, "deliver", json!({"kind": "manual_retry"})).await;
    let never = push_sql(&c, "deliver", json!({"kind": "no_retry"})).await;

    // Defaults filled in; first attempt after backoff_base_secs; no_retry is final at once.
    let r = c
        .query_one(
            "select retry_policy, status, hint, extract(epoch from next_attempt_at - created_at)::float8 \
             from walcast.dead_letter_queue where id = $1",
            &[&later],
        )
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, Value>(0),
        json!({"kind": "timed_retry", "max_attempts": 5, "backoff_base_secs": 30, "backoff_max_secs": 3600})
    );
    assert_eq!(r.get::<_, String>(1), "pending");
    assert!(
        r.get::<_, String>(2).contains("walcast dlq show"),
        "default hint"
    );
    assert_eq!(r.get::<_, f64>(3), 30.0);
    assert_eq!(state(&c, manual).await.0, "pending");
    assert_eq!(
        state(&c, manual).await.2,
        None,
        "manual_retry waits for an operator"
    );
    assert_eq!(state(&c, never).await.0, "failed");

    // Nothing is due yet.
    assert!(claim_ids(&c, 10, "w1").await.is_empty());
    make_due(&c, timed).await;

    // Attempts 1 and 2 fail: back to pending after 10 s, then 20 s.
    for (attempt, delay) in [(1, 10.0), (2, 20.0)] {
        assert_eq!(claim_ids(&c, 10, "w1").await, [timed], "attempt {attempt}");
        let r = c
            .query_one(
                "select status, attempts, claimed_by, extract(epoch from next_attempt_at - now())::float8 \
                 from walcast.dead_letter_queue where id = $1",
                &[&timed],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), "retrying");
        assert_eq!(r.get::<_, i32>(1), attempt);
        assert_eq!(r.get::<_, String>(2), "w1");
        let lease: f64 = r.get(3);
        assert!((299.0..=300.0).contains(&lease), "lease {lease}");
        assert!(claim_ids(&c, 10, "w2").await.is_empty(), "claimed twice");
        c.execute(
            "select walcast.dlq_mark_failed($1, $2, 'attempt failed')",
            &[&timed, &format!("e{}", attempt + 1)],
        )
        .await
        .expect("dlq_mark_failed");
        assert_eq!(
            state(&c, timed).await,
            (
                "pending".to_owned(),
                attempt,
                Some(delay),
                format!("e{}", attempt + 1)
            )
        );
        make_due(&c, timed).await;
    }
    // Attempt 3 of 3 fails: failed for good.
    assert_eq!(claim_ids(&c, 10, "w1").await, [timed]);
    c.execute(
        "select walcast.dlq_mark_failed($1, 'e4', 'last', 'a new hint')",
        &[&timed],
    )
    .await
    .unwrap();
    assert_eq!(
        state(&c, timed).await,
        ("failed".to_owned(), 3, None, "e4".to_owned())
    );
    let hint: String = c
        .query_one(
            "select hint from walcast.dead_letter_queue where id = $1",
            &[&timed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hint, "a new hint");

    // The backoff is capped by backoff_max_secs (25 s here: 10, 20, 25).
    let capped = push_sql(
        &c,
        "ingest",
        json!({"kind": "timed_retry", "max_attempts": 10, "backoff_base_secs": 10, "backoff_max_secs": 25}),
    )
    .await;
    for delay in [10.0, 20.0, 25.0, 25.0] {
        make_due(&c, capped).await;
        assert_eq!(claim_ids(&c, 10, "w1").await, [capped]);
        c.execute("select walcast.dlq_mark_failed($1, 'x', 'y')", &[&capped])
            .await
            .unwrap();
        assert_eq!(state(&c, capped).await.2, Some(delay));
    }
    // give_up ends a row with attempts left.
    make_due(&c, capped).await;
    assert_eq!(claim_ids(&c, 10, "w1").await, [capped]);
    c.execute(
        "select walcast.dlq_mark_failed($1, 'invalid_payload', 'bad', null, true)",
        &[&capped],
    )
    .await
    .unwrap();
    assert_eq!(state(&c, capped).await.0, "failed");

    // Invalid input and wrong states.
    let bad_pushes: &[&str] = &[
        "select walcast.dlq_push('', 's', '{}', 'c', 'm')",
        "select walcast.dlq_push('ingest', '', '{}', 'c', 'm')",
        "select walcast.dlq_push('ingest', 's', null, 'c', 'm')",
        "select walcast.dlq_push('ingest', 's', '{}', '', 'm')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', '')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '{\"kind\": \"sometimes\"}')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '\"timed_retry\"')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '{\"kind\": \"timed_retry\", \"max_attempts\": \"5\"}')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '{\"kind\": \"timed_retry\", \"max_attempts\": 0}')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '{\"kind\": \"timed_retry\", \"max_attempts\": 1.5}')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '{\"kind\": \"timed_retry\", \"backoff_base_secs\": 10, \"backoff_max_secs\": 5}')",
        "select walcast.dlq_push('ingest', 's', '{}', 'c', 'm', null, '{\"kind\": \"timed_retry\", \"jitter\": true}')",
        "select walcast.dlq_claim(0, 'w')",
        "select walcast.dlq_claim(10, '')",
        "select walcast.dlq_claim(10, 'w', null, null, '-1 second')",
        "select walcast.dlq_cleanup('-1 day')",
        "select walcast.dlq_cleanup('1 day', array['retrying'])",
        "select walcast.dlq_cleanup('1 day', array[]::text[])",
        "select walcast.dlq_mark_failed(1, '', 'm')",
    ];
    for sql in bad_pushes {
        assert_eq!(
            sqlstate(c.execute(*sql, &[]).await),
            SqlState::INVALID_PARAMETER_VALUE,
            "{sql}"
        );
    }
    for sql in [
        "select walcast.dlq_mark_failed(999999, 'c', 'm')",
        "select walcast.dlq_mark_recovered(999999)",
        "select walcast.dlq_requeue(999999)",
    ] {
        assert_eq!(
            sqlstate(c.execute(sql, &[]).await),
            SqlState::NO_DATA_FOUND,
            "{sql}"
        );
    }
    // Only a claimed row can fail an attempt; no_retry rows cannot be requeued.
    assert_eq!(
        sqlstate(
            c.execute("select walcast.dlq_mark_failed($1, 'c', 'm')", &[&later])
                .await
        ),
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
    );
    assert_eq!(
        sqlstate(c.execute("select walcast.dlq_requeue($1)", &[&never]).await),
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
    );

    // Manual retry of one row: pending, due now, fresh budget.
    let r = c
        .query_one(
            "select status, attempts, requeues, next_attempt_at <= now() from walcast.dlq_requeue($1)",
            &[&timed],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, i32>(1),
            r.get::<_, i32>(2),
            r.get::<_, bool>(3)
        ),
        ("pending".to_owned(), 0, 1, true)
    );
    // Requeue of all: the failed timed row (capped) and the manual row waiting for an operator;
    // not the no_retry row, not the row still waiting for its backoff.
    let mut all: Vec<i64> = c
        .query("select id from walcast.dlq_requeue()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    all.sort();
    assert_eq!(all, [manual, capped]);
    assert_eq!(state(&c, never).await.0, "failed");
    assert_eq!(state(&c, later).await.0, "pending");

    // Recovered: from a claim, and (idempotently) again.
    let mut claimed = claim_ids(&c, 10, "w1").await;
    claimed.sort();
    assert_eq!(claimed, [timed, manual, capped]);
    for _ in 0..2 {
        let r = c
            .query_one(
                "select status, recovered_at is not null, next_attempt_at from walcast.dlq_mark_recovered($1)",
                &[&timed],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), "recovered");
        assert!(r.get::<_, bool>(1));
        assert_eq!(r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2), None);
    }
    assert_eq!(
        sqlstate(c.execute("select walcast.dlq_requeue($1)", &[&timed]).await),
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "a recovered row cannot be requeued"
    );
    // manual_retry: a failed attempt is final (no timed retries).
    c.execute(
        "select walcast.dlq_mark_failed($1, 'c', 'still broken')",
        &[&manual],
    )
    .await
    .unwrap();
    assert_eq!(state(&c, manual).await.0, "failed");

    // Stats: counts by status, oldest pending.
    let r = c
        .query_one(
            "select pending, retrying, recovered, failed, total, oldest_pending_age >= interval '0', \
             next_attempt_at is not null from walcast.dlq_stats()",
            &[],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    assert_eq!(
        counts,
        (1, 1, 1, 2, 5),
        "(pending, retrying, recovered, failed, total)"
    );
    assert!(r.get::<_, bool>(5) && r.get::<_, bool>(6));

    // Cleanup: by age and status; retrying rows are never deleted.
    let n: i64 = c
        .query_one(
            "select walcast.dlq_cleanup('1 day', array['recovered', 'failed'])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing is a day old");
    let n: i64 = c
        .query_one("select walcast.dlq_cleanup('0 seconds')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the recovered row (default statuses)");
    let n: i64 = c
        .query_one(
            "select walcast.dlq_cleanup('0 seconds', array['failed', 'pending'])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let left: i64 = c
        .query_one("select count(*) from walcast.dead_letter_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the retrying row stays");

    // Privileges: service_role reads and calls the functions but cannot change rows directly;
    // anon and authenticated get nothing.
    let sr = db.client().await;
    sr.batch_execute("set role service_role").await.unwrap();
    let id: i64 = sr
        .query_one(
            "select walcast.dlq_push('ingest', 's', '[]', 'c', 'm')",
            &[],
        )
        .await
        .expect("service_role pushes")
        .get(0);
    sr.query("select * from walcast.dead_letter_queue", &[])
        .await
        .expect("service_role reads");
    sr.query("select * from walcast.dlq_stats()", &[])
        .await
        .unwrap();
    for sql in [
        "update walcast.dead_letter_queue set status = 'recovered'",
        "delete from walcast.dead_letter_queue",
        "insert into walcast.dead_letter_queue (operation, source, payload, error_code, error_message, hint, retry_policy) \
         values ('x', 'y', '{}', 'c', 'm', 'h', '{\"kind\": \"no_retry\"}')",
        "truncate walcast.dead_letter_queue",
    ] {
        assert_eq!(
            sqlstate(sr.execute(sql, &[]).await),
            SqlState::INSUFFICIENT_PRIVILEGE,
            "service_role: {sql}"
        );
    }
    assert_eq!(state(&c, id).await.0, "pending");
    for role in ["anon", "authenticated"] {
        let a = db.client().await;
        a.batch_execute(&format!("set role {role}")).await.unwrap();
        for sql in [
            "select * from walcast.dead_letter_queue",
            "select walcast.dlq_stats()",
            "select walcast.dlq_push('ingest', 's', '[]', 'c', 'm')",
        ] {
            assert_eq!(
                sqlstate(a.execute(sql, &[]).await),
                SqlState::INSUFFICIENT_PRIVILEGE,
                "{role}: {sql}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_share_a_row() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    c.execute(
        "select walcast.dlq_push('ingest', 'node1', jsonb_build_array(i), 'c', 'm', null, \
         '{\"kind\": \"timed_retry\", \"backoff_base_secs\": 0}') from generate_series(1, 1000) i",
        &[],
    )
    .await
    .expect("push 1000");
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = db.clone();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            let c = db.client().await;
            start.wait().await;
            let mut mine = Vec::new();
            loop {
                let got = claim_ids(&c, 7, &format!("w{w}")).await;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got);
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut claimers_with_rows = 0;
    for t in tasks {
        let ids = t.await.expect("claimer");
        claimers_with_rows += usize::from(!ids.is_empty());
        total += ids.len();
        for id in ids {
            assert!(seen.insert(id), "row {id} claimed twice");
        }
    }
    assert_eq!(total, 1000, "every row claimed exactly once");
    assert!(
        claimers_with_rows > 1,
        "the claimers did not run in parallel"
    );
    let r = c
        .query_one(
            "select count(*) filter (where status = 'retrying' and attempts = 1), \
             count(distinct claimed_by) from walcast.dead_letter_queue",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 1000);
    assert_eq!(r.get::<_, i64>(1), claimers_with_rows as i64);
}

/// A trigger that rejects events of type `poison` with check_violation.
const POISON_TRIGGER: &str = "
create function public.reject_poison() returns trigger language plpgsql as $$
begin
  if new.event_type = 'poison' then
    raise exception 'poison event refused' using errcode = 'check_violation';
  end if;
  return new;
end $$;
create trigger reject_poison before insert on public.monitoring_events
  for each row execute function public.reject_poison();";

/// Fast worker settings for tests.
fn fast_worker(name: &str) -> RetryWorkerConfig {
    RetryWorkerConfig {
        worker: name.to_owned(),
        batch_size: 10,
        poll_min: Duration::from_millis(20),
        poll_max: Duration::from_millis(100),
        lock_retry: Duration::from_millis(50),
        lease: Duration::from_secs(60),
    }
}

/// Runs the walcast binary off the async threads.
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::run_cli(&args, &[])
    })
    .await
    .expect("cli thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_worker_and_cli_recover_after_the_cause_is_fixed() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    c.batch_execute(POISON_TRIGGER).await.expect("trigger");
    let event = walcast::events::EventRecord {
        id: uuid::Uuid::now_v7(),
        event_type: "poison".into(),
        timestamp: chrono::Utc::now(),
        source: "host-1".into(),
        data: serde_json::Map::from_iter([("load".to_owned(), json!(0.7))]),
        metadata: serde_json::Map::new(),
    };
    let mut letter = DeadLetter::ingest(
        "node1",
        &[&event],
        "rejected",
        "postgres rejected the events",
    );
    letter.retry_policy = RetryPolicy::TimedRetry {
        max_attempts: 2,
        backoff_base_secs: 0.05,
        backoff_max_secs: 0.1,
    };
    let id = dlq::push(&c, &letter).await.expect("push");
    // A payload the worker cannot read: given up at the first attempt.
    let broken = dlq::push(
        &c,
        &DeadLetter {
            operation: Operation::Ingest,
            source: "node1".into(),
            payload: json!([{"event_type": "no id"}]),
            error_code: "rejected".into(),
            error_message: "m".into(),
            hint: None,
            retry_policy: RetryPolicy::TimedRetry {
                max_attempts: 5,
                backoff_base_secs: 0.0,
                backoff_max_secs: 0.0,
            },
        },
    )
    .await
    .unwrap();
    // Rows the worker never claims.
    let deliver = dlq::push(
        &c,
        &DeadLetter::deliver("node1", json!({"lsn": "0/16B3A28"}), "decode", "m"),
    )
    .await
    .unwrap();

    let pool = walcast::db::pool(&db.url, 2, "test_dlq").unwrap();
    let status = Arc::new(RetryWorkerStatus::default());
    let stop = CancellationToken::new();
    let worker =
        dlq::spawn_retry_worker(pool, fast_worker("t1"), Arc::clone(&status), stop.clone());
    let gave_up = support::wait_until(Duration::from_secs(20), || {
        let c = &c;
        async move {
            let a = dlq::show(c, id).await.unwrap();
            let b = dlq::show(c, broken).await.unwrap();
            a.status == Status::Failed && b.status == Status::Failed
        }
    })
    .await;
    stop.cancel();
    worker.await.expect("worker");
    assert!(
        gave_up,
        "the worker did not use up the attempts: {:?}",
        dlq::show(&c, id).await
    );
    assert!(!status.holds_lock(), "the lock is released on shutdown");
    assert!(status.failed_attempts() >= 3, "{status:?}");
    let row = dlq::show(&c, id).await.unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(row.error_code, "23514");
    assert!(
        row.error_message.contains("poison event refused"),
        "{row:?}"
    );
    assert!(
        row.hint.contains(&format!("walcast dlq retry {id} --now")),
        "{row:?}"
    );
    assert_eq!(row.claimed_by.as_deref(), Some("t1"));
    let b = dlq::show(&c, broken).await.unwrap();
    assert_eq!(
        (b.error_code.as_str(), b.attempts),
        ("invalid_payload", 1),
        "{b:?}"
    );
    assert_eq!(dlq::show(&c, deliver).await.unwrap().attempts, 0);
    assert_eq!(db.count().await, 0);

    // The operator's view.
    let (code, out, err) = cli(&["dlq", "list", "--database-url", &db.url]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("23514") && out.contains("invalid_payload") && out.contains("deliver"),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "dlq",
        "list",
        "--database-url",
        &db.url,
        "--status",
        "failed",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, out, err) = cli(&["dlq", "show", &id.to_string(), "--database-url", &db.url]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("poison event refused") && out.contains("\"event_type\": \"poison\""),
        "{out}"
    );
    let (code, out, err) = cli(&["dlq", "stats", "--database-url", &db.url, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).expect("stats JSON");
    assert_eq!(
        (s["failed"].as_i64(), s["total"].as_i64()),
        (Some(3), Some(3)),
        "{s}"
    );

    // Retrying now while the cause is still there: one attempt, fails again, exit 1.
    let (code, out, err) = cli(&[
        "dlq",
        "retry",
        &id.to_string(),
        "--now",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!(
            "dead letter {id}: pending, attempt 1 failed (23514"
        )),
        "{out}"
    );

    // Fix the cause; retry now: recovered, and the event is in monitoring_events.
    c.batch_execute("drop trigger reject_poison on public.monitoring_events")
        .await
        .unwrap();
    let (code, out, err) = cli(&[
        "dlq",
        "retry",
        &id.to_string(),
        "--now",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("dead letter {id}: recovered")),
        "{out}"
    );
    let row = dlq::show(&c, id).await.unwrap();
    assert_eq!(row.status, Status::Recovered);
    assert!(row.recovered_at.is_some());
    let stored: Value = c
        .query_one(
            "select data from public.monitoring_events where id = $1 and event_type = 'poison'",
            &[&event.id],
        )
        .await
        .expect("the event was written")
        .get(0);
    assert_eq!(stored, json!({"load": 0.7}));

    // A recovered row cannot be retried; unknown ids and bad arguments are errors.
    let (code, _, err) = cli(&["dlq", "retry", &id.to_string(), "--database-url", &db.url]).await;
    assert_eq!(code, 1);
    assert!(err.contains("recovered"), "{err}");
    let (code, _, err) = cli(&["dlq", "show", "999999", "--database-url", &db.url]).await;
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    let (code, _, err) = cli(&[
        "dlq",
        "retry",
        &deliver.to_string(),
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("no_retry"), "{err}");
    let (code, _, err) = cli(&[
        "dlq",
        "purge",
        "--older-than",
        "soon",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&[
        "dlq",
        "purge",
        "--status",
        "retrying",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(&["dlq", "retry", "--database-url", &db.url]).await;
    assert_eq!(code, 2, "retry needs an id or --all");

    // Retrying twice writes the event once (idempotent by id).
    c.execute(
        "select walcast.dlq_push('ingest', 'node1', $1, 'c', 'm', null, '{\"kind\": \"manual_retry\"}')",
        &[&letter.payload],
    )
    .await
    .unwrap();
    let (code, out, err) =
        cli(&["dlq", "retry", "--all", "--now", "--database-url", &db.url]).await;
    assert_eq!(
        code, 1,
        "the broken row stays failed\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("1 recovered, 1 not recovered"), "{out}");
    assert_eq!(db.count().await, 1);

    // Purge: recovered rows (the default status) last changed more than 0 s ago.
    let (code, out, err) = cli(&[
        "dlq",
        "purge",
        "--older-than",
        "0s",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 2 dead letter(s)"), "{out}");
    let (code, out, _) = cli(&[
        "dlq",
        "purge",
        "--older-than",
        "0s",
        "--status",
        "failed,pending",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("deleted 2 dead letter(s)"), "{out}");
    let (_, out, _) = cli(&["dlq", "list", "--database-url", &db.url]).await;
    assert!(out.contains("no dead letters"), "{out}");
}

/// Who holds the retry worker's advisory lock in `db`: the number of sessions.
async fn lock_holders(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "select count(*) from pg_locks l join pg_database d on d.oid = l.database \
         where l.locktype = 'advisory' and l.granted and d.datname = current_database() \
           and ((l.classid::int8 << 32) | l.objid::int8) = $1",
        &[&RETRY_LOCK_KEY],
    )
    .await
    .expect("pg_locks")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_node_runs_the_retry_worker() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let nodes: Vec<(
        Arc<RetryWorkerStatus>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )> = (0..2)
        .map(|i| {
            let pool = walcast::db::pool(&db.url, 2, "test_dlq").unwrap();
            let status = Arc::new(RetryWorkerStatus::default());
            let stop = CancellationToken::new();
            let task = dlq::spawn_retry_worker(
                pool,
                fast_worker(&format!("n{i}")),
                Arc::clone(&status),
                stop.clone(),
            );
            (status, stop, task)
        })
        .collect();
    let holders = |nodes: &[(
        Arc<RetryWorkerStatus>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )]| { nodes.iter().filter(|(s, _, _)| s.holds_lock()).count() };
    assert!(
        support::wait_until(Duration::from_secs(10), || async { holders(&nodes) == 1 }).await,
        "no node took the lock"
    );
    // Several lock retries later, still exactly one, and Postgres agrees.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(holders(&nodes), 1);
    assert_eq!(lock_holders(&c).await, 1);
    let leader = nodes.iter().position(|(s, _, _)| s.holds_lock()).unwrap();
    let follower = 1 - leader;
    assert!(nodes[leader].0.passes() > 0, "the leader polls");
    assert_eq!(nodes[follower].0.passes(), 0, "the follower never polls");

    // The leader stops: the other node takes over.
    nodes[leader].1.cancel();
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            nodes[follower].0.holds_lock() && !nodes[leader].0.holds_lock()
        })
        .await,
        "the other node did not take over"
    );
    assert_eq!(lock_holders(&c).await, 1);
    for (_, stop, task) in nodes {
        stop.cancel();
        task.await.expect("worker");
    }
    assert!(
        support::wait_until(Duration::from_secs(5), || async {
            lock_holders(&c).await == 0
        })
        .await,
        "the lock outlived the workers"
    );
}

/// An HTTP request to walcast; returns (status, JSON body).
async fn request(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Asserts an error answer's status and code.
#[track_caller]
fn assert_error(what: &str, got: &(u16, Value), status: u16, code: &str) {
    let (s, b) = got;
    assert_eq!(*s, status, "{what}: status; body {b}");
    assert_eq!(b["error"]["code"], code, "{what}: code; body {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: message; body {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_need_a_service_role_token() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let never = push_sql(&c, "deliver", json!({"kind": "no_retry"})).await;
    let manual = push_sql(&c, "deliver", json!({"kind": "manual_retry"})).await;
    let done = push_sql(&c, "deliver", json!({"kind": "manual_retry"})).await;
    c.execute("select walcast.dlq_mark_recovered($1)", &[&done])
        .await
        .unwrap();
    let w = Walcast::start_with_env(&db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    let hour = Duration::from_secs(3600);
    let service = walcast::auth::mint(support::SECRET, "service_role", hour).unwrap();
    let anon = walcast::auth::mint(support::SECRET, "anon", hour).unwrap();
    let sr = Some(service.as_str());

    let endpoints = [
        ("GET", "/v1/dlq".to_owned()),
        ("GET", "/v1/dlq/stats".to_owned()),
        ("GET", format!("/v1/dlq/{never}")),
        ("POST", format!("/v1/dlq/{manual}/retry")),
        ("POST", "/v1/dlq/retry".to_owned()),
        ("DELETE", "/v1/dlq?older_than=0s".to_owned()),
    ];
    for (method, path) in &endpoints {
        let what = format!("{method} {path}");
        assert_error(
            &what,
            &request(method, &w.url(path), None).await,
            401,
            "unauthorized",
        );
        assert_error(
            &what,
            &request(method, &w.url(path), Some("not.a.jwt")).await,
            401,
            "unauthorized",
        );
        assert_error(
            &what,
            &request(method, &w.url(path), Some(&anon)).await,
            403,
            "forbidden",
        );
    }
    assert_eq!(
        state(&c, manual).await.0,
        "pending",
        "refused requests changed nothing"
    );

    let (s, b) = request("GET", &w.url("/v1/dlq"), sr).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["count"], 3);
    assert_eq!(b["dead_letters"][0]["id"], done, "newest first: {b}");
    let (s, b) = request("GET", &w.url("/v1/dlq?status=failed&limit=5"), sr).await;
    assert_eq!((s, b["count"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(b["dead_letters"][0]["retry_policy"]["kind"], "no_retry");
    let (s, b) = request("GET", &w.url("/v1/dlq?limit=1"), sr).await;
    assert_eq!(
        (s, b["count"].as_u64(), b["next_before"].as_i64()),
        (200, Some(1), Some(done)),
        "{b}"
    );
    let (s, b) = request("GET", &w.url(&format!("/v1/dlq/{never}")), sr).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["id"].as_i64(), b["status"].as_str()),
        (Some(never), Some("failed"))
    );
    let (s, b) = request("GET", &w.url("/v1/dlq/stats"), sr).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["pending"].as_i64(),
            b["failed"].as_i64(),
            b["recovered"].as_i64(),
            b["total"].as_i64()
        ),
        (Some(1), Some(1), Some(1), Some(3)),
        "{b}"
    );

    let bad = [
        (
            "GET",
            "/v1/dlq?status=done".to_owned(),
            400,
            "invalid_request",
        ),
        ("GET", "/v1/dlq?limit=0".to_owned(), 400, "invalid_request"),
        ("GET", "/v1/dlq?limit=x".to_owned(), 400, "invalid_request"),
        (
            "GET",
            "/v1/dlq?colour=red".to_owned(),
            400,
            "invalid_request",
        ),
        ("GET", "/v1/dlq/abc".to_owned(), 400, "invalid_request"),
        ("GET", "/v1/dlq/999999".to_owned(), 404, "not_found"),
        ("POST", "/v1/dlq/999999/retry".to_owned(), 404, "not_found"),
        ("POST", format!("/v1/dlq/{never}/retry"), 409, "conflict"),
        ("POST", format!("/v1/dlq/{done}/retry"), 409, "conflict"),
        (
            "POST",
            format!("/v1/dlq/{manual}/retry?now=maybe"),
            400,
            "invalid_request",
        ),
        (
            "DELETE",
            "/v1/dlq?older_than=soon".to_owned(),
            400,
            "invalid_request",
        ),
        (
            "DELETE",
            "/v1/dlq?older_than=0s&status=retrying".to_owned(),
            400,
            "invalid_request",
        ),
    ];
    for (method, path, status, code) in &bad {
        let what = format!("{method} {path}");
        assert_error(
            &what,
            &request(method, &w.url(path), sr).await,
            *status,
            code,
        );
    }

    let (s, b) = request("POST", &w.url(&format!("/v1/dlq/{manual}/retry")), sr).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["status"].as_str(), b["requeues"].as_i64()),
        (Some("pending"), Some(1)),
        "{b}"
    );
    let (s, b) = request("POST", &w.url("/v1/dlq/retry"), sr).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["requeued"], 0,
        "the manual row is already due; no_retry rows are skipped: {b}"
    );

    // An ingest row retried at once through HTTP ends recovered (by this request, or by the
    // server's own retry worker if it got there first).
    let event_id = uuid::Uuid::now_v7();
    let payload = json!([{"id": event_id, "event_type": "cpu", "timestamp": "2026-11-23T18:00:00Z", "source": "h"}]);
    let ingest: i64 = c
        .query_one(
            "select walcast.dlq_push('ingest', 'node1', $1, 'rejected', 'm', null, '{\"kind\": \"manual_retry\"}')",
            &[&payload],
        )
        .await
        .unwrap()
        .get(0);
    let (s, b) = request(
        "POST",
        &w.url(&format!("/v1/dlq/{ingest}/retry?now=true")),
        sr,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        matches!(b["status"].as_str(), Some("recovered" | "retrying")),
        "{b}"
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            state(&c, ingest).await.0 == "recovered"
        })
        .await
    );
    assert_eq!(db.count().await, 1);

    let (s, b) = request(
        "DELETE",
        &w.url("/v1/dlq?older_than=0s&status=recovered"),
        sr,
    )
    .await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(2)), "{b}");
    let m = support::get(&w.url("/metrics")).await.1;
    for series in [
        "walcast_http_requests_total{route=\"/v1/dlq\",status=\"401\"} 4",
        "walcast_http_requests_total{route=\"/v1/dlq/stats\",status=\"200\"} 1",
        "walcast_http_requests_total{route=\"/v1/dlq/{id}\",status=\"404\"} 1",
    ] {
        assert!(m.lines().any(|l| l == series), "no {series} in\n{m}");
    }
    w.stop(&db).await;

    // Without a JWT secret the endpoints are open, like POST /v1/events.
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let (s, b) = request("GET", &w.url("/v1/dlq/stats"), None).await;
    assert_eq!((s, b["total"].as_i64()), (200, Some(0)), "{b}");
    w.stop(&db).await;
}

#[test]
fn dlq_help_texts_have_examples() {
    for sub in [
        &[][..],
        &["list"],
        &["show"],
        &["retry"],
        &["purge"],
        &["stats"],
    ] {
        let mut args = vec!["dlq"];
        args.extend_from_slice(sub);
        args.push("--help");
        let (code, out, err) = support::run_cli(&args, &[]);
        let name = format!("walcast {}", args.join(" "));
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("Example"), "{name} shows no example:\n{out}");
        if !sub.is_empty() {
            assert!(
                out.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains("[env: DATABASE_URL"),
                "{name} does not name DATABASE_URL:\n{out}"
            );
        }
    }
}
