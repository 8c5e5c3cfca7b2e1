//! walcast serving as a role that is neither a superuser nor bypasses row level security, set up
//! with `sql/deploy/runtime_role.sql` exactly as README tells operators to.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::realtime::Rt;
use crate::support::{self, TestDb, Walcast, sign};

/// A role with LOGIN and REPLICATION, granted what `sql/deploy/runtime_role.sql` grants, and the
/// test database's URL as that role.
fn runtime_role(db: &TestDb) -> (String, TestDb) {
    let role = format!("app_{}", &db.name[2..]);
    let sql = |args: &[&str]| {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &db.host])
            .args(["-p", &db.port.to_string(), "-U", "postgres", "-d", &db.name])
            .args(args)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql(&["-c", &format!("create role {role} login replication")]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/deploy/runtime_role.sql");
    sql(&["-v", &format!("role={role}"), "-f", script]);
    let mut as_role = db.clone();
    as_role.url = format!("postgres://{role}@{}:{}/{}", db.host, db.port, db.name);
    (role, as_role)
}

/// The `source` of every row a `/ws` client receives until `quiet` passes without one.
async fn sources(c: &mut support::ws::WsClient, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(f) = c.next_frame(quiet).await {
        out.push(f["record"]["source"].as_str().unwrap_or("-").to_owned());
    }
    out.sort();
    out
}

/// README's least-privilege deployment works end to end: ingest writes, the reader creates its
/// slot and streams, `/ws` shows each user its own rows through the RLS gate, the dead-letter
/// queue and flags answer, and the role really is unprivileged.
#[tokio::test]
async fn serves_as_a_role_that_is_not_a_superuser() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let (role, as_role) = runtime_role(&db);
    let c = db.client().await;
    let row = c
        .query_one(
            "select rolsuper, rolbypassrls, rolreplication from pg_roles where rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let (sup, bypass, repl): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    assert!(
        !sup && !bypass && repl,
        "{role}: super {sup} bypass {bypass} repl {repl}"
    );

    let w =
        Walcast::start_with_env(&as_role, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    // The slot is owned by a walsender of the unprivileged role.
    let slot_user: String = c
        .query_one(
            "select a.usename::text from pg_replication_slots s \
               join pg_stat_activity a on a.pid = s.active_pid where s.slot_name = $1",
            &[&format!("walcast_{}", db.node())],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slot_user, role);

    let user = |sub: &str| {
        sign(json!({"role": "authenticated", "sub": sub,
                    "exp": chrono::Utc::now().timestamp() + 600}))
    };
    let url = |t: &str| w.ws_url(&format!("/ws?apikey={t}"));
    let mut alice = support::ws::WsClient::connect(&url(&user("alice"))).await;
    let mut service = support::ws::WsClient::connect(&url(&support::service_key())).await;
    alice.subscribe("all", json!({})).await;
    service.subscribe("all", json!({})).await;

    let body = json!([{"event_type": "cpu", "source": "alice"},
                      {"event_type": "cpu", "source": "bob"}]);
    let (status, reply) = support::post(
        &w.url("/v1/events"),
        "application/json",
        Some(&support::service_key()),
        body.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["durable"], "database", "{reply}");

    let quiet = Duration::from_millis(1500);
    assert_eq!(sources(&mut service, quiet).await, ["alice", "bob"]);
    assert_eq!(sources(&mut alice, quiet).await, ["alice"]);

    // The SQL-backed side tables answer for the unprivileged role too.
    for path in ["/v1/dlq", "/v1/flags"] {
        let (status, text) = support::get_as(&w.url(path), Some(&support::service_key())).await;
        assert_eq!(status, 200, "{path}: {text}");
        let _: Value = serde_json::from_str(&text).expect("JSON");
    }

    // Broadcast from Database streams through the role's slot, a private broadcast sent with
    // persist is stored and replayed, and the partitions of realtime.messages are kept.
    let service_key = support::service_key();
    let mut rt = Rt::connect(&w, &service_key, false).await;
    let private = json!({"config": {"private": true, "broadcast": {"replay": {"since": 0}}}});
    let (_, reply) = rt.join("realtime:room", json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let send = "select realtime.send('{\"n\": 1}', 'e', 'room', false)";
    c.batch_execute(send).await.unwrap();
    rt.wait_for("the database broadcast", |f| {
        f.event == "broadcast" && f.payload["payload"]["n"] == 1
    })
    .await;
    let (status, reply) = support::post(
        &w.url("/realtime/v1/api/broadcast/vault/events/e?private=true&persist=true"),
        "application/json",
        Some(&service_key),
        json!({"n": 2}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let (_, reply) = rt.join("realtime:vault", private).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let f = rt
        .wait_for("the replayed broadcast", |f| f.event == "broadcast")
        .await;
    assert_eq!(f.payload["payload"]["n"], 2, "{f:?}");
    assert_eq!(f.payload["meta"]["replayed"], true, "{f:?}");
    assert!(
        !w.log_text().contains("could not maintain"),
        "{}",
        w.log_text()
    );
    w.stop(&db).await;
}
