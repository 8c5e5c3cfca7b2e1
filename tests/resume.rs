//! Resume on the Realtime endpoint with `?resume_id=…`, spoken to by a raw Phoenix client: a
//! channel that comes back gets what it missed (and only what its role may see), then live
//! changes, without a gap; another subject or an expired position gets no replay.

use std::time::Duration;

use serde_json::{Value, json};

use crate::realtime::{Frame, Rt, all_changes, change_for, insert, pg_join, subscribed};
use crate::support::{self, TestDb, Walcast};

/// How long a saved position may take to reach the table (written once a second).
const SAVED: Duration = Duration::from_secs(10);

/// A token for `role` with `sub` (none when `None`), valid for ten minutes.
fn token(role: &str, sub: Option<&str>) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"role": role, "exp": now + 600, "iat": now});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    support::sign(claims)
}

/// walcast with the test JWT secret.
async fn walcast(db: &TestDb) -> Walcast {
    Walcast::start_with_env(db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// The saved position (commit LSN, index) of every channel of `resume_id`.
async fn saved(db: &TestDb, resume_id: &str) -> Vec<(String, String, i64)> {
    db.client()
        .await
        .query(
            "select topic, commit_lsn::text, change_index from walcast.realtime_resume_positions \
             where resume_id = $1 order by topic",
            &[&resume_id],
        )
        .await
        .expect("resume positions")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Waits until the saved positions of `resume_id` differ from `before` (and exist).
async fn saved_changes(db: &TestDb, resume_id: &str, before: &[(String, String, i64)]) {
    let moved = support::wait_until(SAVED, || async {
        let now = saved(db, resume_id).await;
        !now.is_empty() && now != before
    })
    .await;
    assert!(moved, "the resume position of {resume_id} was never saved");
}

/// Whether a frame is a postgres_changes frame.
fn is_change(f: &Frame) -> bool {
    f.event == "postgres_changes"
}

/// The id of the row a change frame carries.
fn row_id(f: &Frame) -> String {
    f.payload["data"]["record"]["id"]
        .as_str()
        .expect("record id")
        .to_owned()
}

/// Collects `n` change frames' row ids, in order.
async fn ids(rt: &mut Rt, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = rt.wait_for("postgres_changes", is_change).await;
        out.push(row_id(&f));
    }
    out
}

/// A counter on /metrics.
async fn resumes_metric(w: &Walcast, kind: &str) -> f64 {
    let (_, text) = support::get(&w.url("/metrics")).await;
    support::metric(
        &text,
        &format!("walcast_realtime_resumes_total{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A channel joined with a resume_id, dropped and joined again: the rows committed meanwhile
/// come first (only those after what the client had acknowledged by heartbeats), then live
/// rows; a client with another resume_id, or the same id with another token subject, gets no
/// replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_channel_gets_what_it_missed_then_live_changes() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let service = token("service_role", None);
    let rid = "resume_id=dashboard-0001";
    let topic = "realtime:resume";

    let mut a = Rt::connect_with(&w, &service, true, rid).await;
    a.join(topic, pg_join(all_changes())).await;
    assert_eq!(subscribed(&mut a, topic).await.payload["status"], "ok");
    saved_changes(&db, "dashboard-0001", &[]).await;
    let first = saved(&db, "dashboard-0001").await;
    let mut seen = Vec::new();
    for n in 1..=3 {
        let id = insert(&db, &format!("before-{n}")).await;
        change_for(&mut a, &id).await;
        seen.push(id);
    }
    // Two heartbeats: the position at the first is known received at the second.
    a.heartbeat().await;
    a.heartbeat().await;
    saved_changes(&db, "dashboard-0001", &first).await;
    drop(a);

    let mut missed = Vec::new();
    for n in 1..=2 {
        missed.push(insert(&db, &format!("missed-{n}")).await);
    }
    let mut b = Rt::connect_with(&w, &service, true, rid).await;
    b.join(topic, pg_join(all_changes())).await;
    assert_eq!(subscribed(&mut b, topic).await.payload["status"], "ok");
    assert_eq!(
        ids(&mut b, 2).await,
        missed,
        "the replay: what was missed, in order"
    );
    let live = insert(&db, "live").await;
    assert_eq!(
        ids(&mut b, 1).await,
        std::slice::from_ref(&live),
        "then live, nothing repeated"
    );
    assert_eq!(resumes_metric(&w, "resumed").await, 1.0);

    // Another resume_id: a fresh channel, live only.
    let mut other = Rt::connect_with(&w, &service, true, "resume_id=dashboard-0002").await;
    other.join(topic, pg_join(all_changes())).await;
    subscribed(&mut other, topic).await;
    // The same resume_id under another subject: no replay of what that subject missed.
    let intruder = token("service_role", Some("intruder"));
    let mut c = Rt::connect_with(&w, &intruder, false, rid).await;
    c.join(topic, pg_join(all_changes())).await;
    subscribed(&mut c, topic).await;
    let after = insert(&db, "after").await;
    assert_eq!(ids(&mut other, 1).await, std::slice::from_ref(&after));
    assert_eq!(ids(&mut c, 1).await, std::slice::from_ref(&after));
    assert_eq!(ids(&mut b, 1).await, [after]);
    assert_eq!(resumes_metric(&w, "other_subject").await, 1.0);
    assert!(resumes_metric(&w, "fresh").await >= 2.0);
    assert!(
        w.log_text()
            .contains("resume_id reused by another token subject"),
        "{}",
        w.log_text()
    );
}

/// A saved position older than the slot retains: a `system` error naming the oldest resumable
/// position, then the channel is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_position_gets_its_error_and_the_channel_goes_live() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let service = token("service_role", None);
    let rid = "resume_id=expired-0001";
    let topic = "realtime:expired";
    let mut a = Rt::connect_with(&w, &service, false, rid).await;
    a.join(topic, pg_join(all_changes())).await;
    subscribed(&mut a, topic).await;
    saved_changes(&db, "expired-0001", &[]).await;
    drop(a);
    let meanwhile = insert(&db, "meanwhile").await;
    db.client()
        .await
        .execute(
            "update walcast.realtime_resume_positions set commit_lsn = '0/1', change_index = 0",
            &[],
        )
        .await
        .expect("age the position");
    let mut b = Rt::connect_with(&w, &service, false, rid).await;
    b.join(topic, pg_join(all_changes())).await;
    assert_eq!(subscribed(&mut b, topic).await.payload["status"], "ok");
    let expired = b
        .wait_for("the expiry", |f| {
            f.event == "system" && f.payload["status"] == "error"
        })
        .await;
    let message = expired.payload["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Resume position 0/1 has expired: changes are kept from "),
        "{message}"
    );
    assert!(
        message.ends_with("refetch, then carry on live"),
        "{message}"
    );
    assert_eq!(expired.payload["extension"], "postgres_changes");
    let live = insert(&db, "live").await;
    // Live from the join on: "meanwhile" too when walcast had not read it yet at the join.
    let mut got = ids(&mut b, 1).await;
    if got == [meanwhile.clone()] {
        got = ids(&mut b, 1).await;
    }
    assert_eq!(got, [live]);
    assert_eq!(resumes_metric(&w, "expired").await, 1.0);
}

/// Two users resume on the same topic: each replay shows only the rows that user's policies
/// let it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_follow_row_level_security() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let w = walcast(&db).await;
    let topic = "realtime:own";
    let users = ["user-a", "user-b"];
    for user in users {
        let tok = token("authenticated", Some(user));
        let mut rt = Rt::connect_with(&w, &tok, true, &format!("resume_id=rls-{user}")).await;
        rt.join(topic, pg_join(all_changes())).await;
        assert_eq!(subscribed(&mut rt, topic).await.payload["status"], "ok");
        saved_changes(&db, &format!("rls-{user}"), &[]).await;
    }
    // Both dropped; rows of each user (and of nobody) committed meanwhile.
    let mut rows: Vec<(String, String)> = Vec::new();
    for source in ["user-a", "user-b", "nobody", "user-b", "user-a"] {
        rows.push((source.to_owned(), insert(&db, source).await));
    }
    for user in users {
        let tok = token("authenticated", Some(user));
        let mut rt = Rt::connect_with(&w, &tok, true, &format!("resume_id=rls-{user}")).await;
        rt.join(topic, pg_join(all_changes())).await;
        subscribed(&mut rt, topic).await;
        let own: Vec<String> = rows
            .iter()
            .filter(|(s, _)| s == user)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(ids(&mut rt, own.len()).await, own, "{user}");
        rt.expect_none("a row of another user", is_change).await;
    }
}

/// A resume_id that is not 8 to 128 characters of the allowed set is refused before the
/// upgrade, with a message that says what is allowed.
#[tokio::test]
async fn a_bad_resume_id_is_refused_before_the_upgrade() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let service = token("service_role", None);
    for (rid, expect) in [
        ("short", "8 to 128 characters"),
        ("has%20a%20space", "may hold only letters"),
        (&"x".repeat(129)[..], "8 to 128 characters"),
    ] {
        let url = w.url(&format!(
            "/realtime/v1/websocket?apikey={service}&vsn=2.0.0&resume_id={rid}"
        ));
        let (status, body) = support::get(&url).await;
        assert_eq!(status, 400, "{rid}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json body");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(expect),
            "{rid}: {body}"
        );
    }
}

/// Positions not saved for longer than `--retention` are deleted (they could not be resumed),
/// fresh ones are kept.
#[tokio::test]
async fn positions_older_than_the_retention_window_are_deleted() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    c.batch_execute(
        "insert into walcast.realtime_resume_positions \
           (resume_id, topic, private, bindings_key, subject, commit_lsn, change_index, updated_at) \
         values ('gone-for-days', 'realtime:a', false, md5('[]'), 'role:anon', '0/1', 0, now() - interval '3 days'), \
                ('back-in-a-minute', 'realtime:a', false, md5('[]'), 'role:anon', '0/1', 0, now())",
    )
    .await
    .expect("positions");
    let _w = Walcast::start_with_env(
        &db,
        &["--retention", "1h"],
        &[("WALCAST_JWT_SECRET", support::SECRET)],
    )
    .await;
    let left = || async {
        c.query(
            "select resume_id from walcast.realtime_resume_positions order by resume_id",
            &[],
        )
        .await
        .expect("positions")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
    };
    let swept = support::wait_until(Duration::from_secs(10), || async {
        left().await == ["back-in-a-minute"]
    })
    .await;
    assert!(swept, "left: {:?}", left().await);
}

/// A long replay still answers heartbeats (realtime-js closes a socket whose heartbeat goes
/// unanswered for 25 s, which would make a large replay start over forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_answered_during_a_long_replay() {
    const ROWS: usize = 30_000;
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let service = token("service_role", None);
    let rid = "resume_id=long-replay-01";
    let topic = "realtime:long";
    let mut a = Rt::connect_with(&w, &service, true, rid).await;
    a.join(topic, pg_join(all_changes())).await;
    subscribed(&mut a, topic).await;
    saved_changes(&db, "long-replay-01", &[]).await;
    drop(a);
    db.client()
        .await
        .execute(
            "insert into public.monitoring_events (event_type, source) \
             select 'cpu', 'bulk-' || g from generate_series(1, $1::int) g",
            &[&(ROWS as i32)],
        )
        .await
        .expect("bulk insert");
    let mut b = Rt::connect_with(&w, &service, true, rid).await;
    b.join(topic, pg_join(all_changes())).await;
    b.push(None, "phoenix", "heartbeat", json!({})).await;
    let mut changes = 0usize;
    let mut answered_after = None;
    while changes < ROWS {
        let Some(crate::realtime::In::Text(f)) = b.next(Duration::from_secs(30)).await else {
            panic!("the replay stopped after {changes} of {ROWS} rows");
        };
        if f.event == "postgres_changes" {
            changes += 1;
        } else if f.topic == "phoenix" && f.payload["status"] == "ok" && answered_after.is_none() {
            answered_after = Some(changes);
        }
    }
    let answered_after = answered_after.expect("the heartbeat was never answered");
    assert!(
        answered_after < ROWS,
        "the heartbeat was answered only after the whole replay ({answered_after} rows)"
    );
}
