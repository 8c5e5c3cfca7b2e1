//! The admin console (Postgres protocol) with the real `psql` and with tokio-postgres (extended
//! protocol), and `GET /v1/status`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use walcast::validate::observe::{RealtimeObserver, SubscribeSpec, WsObserver};

use crate::support::{self, TestDb, Walcast};

/// The console password in these tests.
const PASSWORD: &str = "console-secret";

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// walcast with the console on `port` and the test JWT secret.
async fn walcast_with_console(db: &TestDb, port: u16) -> Walcast {
    let listen = format!("127.0.0.1:{port}");
    Walcast::start_with_env(
        db,
        &["--admin-listen", &listen, "--validate-interval", "1s"],
        &[
            ("WALCAST_JWT_SECRET", support::SECRET),
            ("WALCAST_ADMIN_PASSWORD", PASSWORD),
        ],
    )
    .await
}

/// `psql` in unaligned, tuples-only mode; returns (exit code, stdout, stderr).
fn psql(port: u16, password: &str, commands: &[&str]) -> (i32, String, String) {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user=admin password={password} dbname=walcast sslmode=disable connect_timeout=10"
    );
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo).arg("-At").arg("-X");
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = cmd
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .output()
        .expect("run psql");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `psql` that must succeed; returns its rows as `|`-separated fields.
async fn rows(port: u16, command: &str) -> Vec<Vec<String>> {
    let command = command.to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || psql(port, PASSWORD, &[&command]))
        .await
        .expect("psql thread");
    assert_eq!(code, 0, "psql failed: {err}");
    out.lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// The `value` of a `name|value` row.
fn value<'a>(rows: &'a [Vec<String>], name: &str) -> &'a str {
    rows.iter()
        .find(|r| r[0] == name)
        .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))[1]
        .as_str()
}

/// One `/ws` and one Realtime client receiving everything, until `stop`.
async fn clients(w: &Walcast, stop: &CancellationToken) {
    let key = walcast::auth::mint(support::SECRET, "service_role", Duration::from_secs(600))
        .expect("mint");
    let spec = SubscribeSpec::default();
    let ws = WsObserver::connect(&w.ws_url(""), &key, &spec, None)
        .await
        .expect("ws client");
    let rt = RealtimeObserver::connect(&w.ws_url(""), &key, &spec)
        .await
        .expect("realtime client");
    tokio::spawn(ws.run(stop.clone()));
    tokio::spawn(rt.run(stop.clone()));
}

#[tokio::test]
async fn psql_runs_every_command() {
    let db = support::fresh_db().await;
    let port = free_port();
    let w = walcast_with_console(&db, port).await;
    let stop = CancellationToken::new();
    clients(&w, &stop).await;

    let c = rows(port, "SHOW CLIENTS").await;
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c.iter().all(|r| r.len() == 8), "{c:?}");
    let mut protocols: Vec<&str> = c.iter().map(|r| r[1].as_str()).collect();
    protocols.sort();
    assert_eq!(protocols, ["realtime", "ws"]);
    assert!(
        c.iter().all(|r| r[2].starts_with("127.0.0.1:")),
        "peer: {c:?}"
    );

    let s = rows(port, "show subscriptions;").await;
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(
        s.iter().any(|r| r[2] == "walcast-validate" && r[1] == "ws"),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|r| r[2] == "realtime:walcast-validate" && r[3].contains("monitoring_events")),
        "{s:?}"
    );

    let st = rows(port, "Show Stats").await;
    assert_eq!(value(&st, "node"), db.node());
    assert_eq!(value(&st, "clients_ws"), "1");
    assert_eq!(value(&st, "clients_realtime"), "1");
    assert_eq!(value(&st, "replication_streaming"), "true");
    assert_eq!(value(&st, "ingest_breaker"), "closed");

    let slot = rows(port, "SHOW SLOT").await;
    assert_eq!(slot.len(), 1);
    assert_eq!(slot[0][0], format!("walcast_{}", db.node()));
    assert_eq!(slot[0][1], "true", "{slot:?}");

    let flags = rows(port, "SHOW FLAGS").await;
    assert!(
        flags.iter().any(|r| r[0] == "broadcaster_mode"),
        "{flags:?}"
    );

    let dlq = rows(port, "SHOW DLQ").await;
    assert!(dlq.is_empty(), "{dlq:?}");

    let cons = rows(port, "SHOW CONSISTENCY").await;
    assert_eq!(value(&cons, "enabled"), "true");

    let help = rows(port, "show help").await;
    assert!(help.iter().any(|r| r[0] == "SHOW CLIENTS"), "{help:?}");

    for resource in [
        "clients",
        "subscriptions",
        "stats",
        "slot",
        "flags",
        "dlq",
        "consistency",
    ] {
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            psql(port, PASSWORD, &[&format!("select * from {resource};")])
        })
        .await
        .expect("psql");
        assert_eq!(code, 0, "select * from {resource}: {err}");
    }
    // Column names are lower case.
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let conninfo = format!(
            "host=127.0.0.1 port={port} user=admin password={PASSWORD} dbname=walcast sslmode=disable"
        );
        let o = Command::new("psql")
            .args([&conninfo, "-X", "-A", "-c", "SHOW CLIENTS"])
            .output()
            .expect("psql");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .expect("psql");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(
            "id|protocol|peer|connected_at|connected_secs|subscriptions|frames_sent|changes_sent"
        ),
        "{out}"
    );
    stop.cancel();
}

#[tokio::test]
async fn the_extended_protocol_works() {
    let db = support::fresh_db().await;
    let port = free_port();
    let _w = walcast_with_console(&db, port).await;
    let conninfo = format!(
        "host=127.0.0.1 port={port} user=admin password={PASSWORD} dbname=walcast sslmode=disable"
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect to the console");
    tokio::spawn(conn);
    let rows = client
        .query("SELECT * FROM stats", &[])
        .await
        .expect("query stats");
    let node: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>("name") == "node")
        .map(|r| r.get("value"))
        .collect();
    assert_eq!(node, [db.node()]);
    let slot = client.query_one("show slot", &[]).await.expect("slot");
    assert_eq!(
        slot.get::<_, String>("slot"),
        format!("walcast_{}", db.node())
    );
    assert_eq!(
        slot.get::<_, Option<String>>("exists").as_deref(),
        Some("true")
    );
    // A prepared statement describes its columns before it runs.
    let stmt = client.prepare("SHOW CLIENTS").await.expect("prepare");
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names[..3], ["id", "protocol", "peer"]);
    assert!(client.query(&stmt, &[]).await.expect("clients").is_empty());
    // Errors come back as errors, and the connection stays usable.
    let e = client
        .query("DELETE FROM clients", &[])
        .await
        .expect_err("unsupported");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e:?}");
    assert_eq!(client.query("show dlq", &[]).await.expect("dlq").len(), 0);
    // The simple protocol through the same driver.
    let msgs = client
        .simple_query("show consistency; show help")
        .await
        .expect("simple");
    assert!(msgs.len() > 10);
}

#[tokio::test]
async fn wrong_passwords_and_statements_are_refused() {
    let db = support::fresh_db().await;
    let port = free_port();
    let _w = walcast_with_console(&db, port).await;
    let (code, _, err) = tokio::task::spawn_blocking(move || psql(port, "wrong", &["SHOW STATS"]))
        .await
        .expect("psql");
    assert_ne!(code, 0);
    assert!(err.contains("password authentication failed"), "{err}");

    let (code, _, err) = tokio::task::spawn_blocking(move || {
        psql(port, PASSWORD, &["DROP TABLE monitoring_events"])
    })
    .await
    .expect("psql");
    assert_ne!(code, 0);
    assert!(err.contains("supports only SHOW <resource>"), "{err}");
    assert!(
        err.contains("clients, subscriptions, stats, slot, flags, dlq, consistency"),
        "{err}"
    );

    let (code, _, err) = tokio::task::spawn_blocking(move || psql(port, PASSWORD, &["SHOW POOLS"]))
        .await
        .expect("psql");
    assert_ne!(code, 0);
    assert!(err.contains("unknown resource"), "{err}");
}

#[tokio::test]
async fn the_console_is_off_by_default_and_needs_a_password() {
    let db = support::fresh_db().await;
    let port = free_port();
    let w = Walcast::start(&db, &[]).await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "something listens on the console port");
    let (code, body) = support::get(&w.url("/v1/status")).await;
    assert_eq!(code, 200, "{body}");

    let listen = format!("127.0.0.1:{port}");
    let (code, _, err) = support::run_cli(
        &[
            "serve",
            "--database-url",
            &db.url,
            "--admin-listen",
            &listen,
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--admin-password"), "{err}");
}

#[tokio::test]
async fn status_describes_the_node() {
    let db = support::fresh_db().await;
    let port = free_port();
    let w = walcast_with_console(&db, port).await;
    let stop = CancellationToken::new();
    clients(&w, &stop).await;
    let (code, body) = support::get_as(&w.url("/v1/status"), Some(&support::service_key())).await;
    assert_eq!(code, 200, "{body}");
    let s: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(s["node"], db.node());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_secs"].as_f64().is_some());
    assert_eq!(s["broadcaster"]["mode"], "dual");
    assert_eq!(s["clients"]["total"], 2);
    assert_eq!(s["clients"]["ws"], 1);
    assert_eq!(s["clients"]["realtime"], 1);
    let sessions = s["clients"]["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2);
    for session in sessions {
        assert!(
            session["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:"))
        );
        assert_eq!(session["subscriptions"][0]["everything"], true, "{session}");
    }
    assert_eq!(s["replication"]["streaming"], true);
    assert_eq!(s["replication"]["slot"], format!("walcast_{}", db.node()));
    assert_eq!(s["ingest"]["breaker"], "closed");
    assert_eq!(s["consistency"]["enabled"], true);
    assert_eq!(s["dlq"]["total"], 0, "{body}");
    assert!(!body.contains(support::SECRET));
    stop.cancel();
    // Sessions leave the registry when they end.
    let gone = support::wait_until(Duration::from_secs(10), || async {
        let (_, body) = support::get_as(&w.url("/v1/status"), Some(&support::service_key())).await;
        serde_json::from_str::<Value>(&body).expect("json")["clients"]["total"] == 0
    })
    .await;
    assert!(gone, "sessions stayed registered");
}

/// The console authenticates with SCRAM-SHA-256, never MD5 or cleartext: its first answer to a
/// startup message is `AuthenticationSASL` offering SCRAM-SHA-256 only (psql 15 has no
/// `require_auth`, so the server's request is read here; `psql` and tokio-postgres log in with
/// it in the tests above).
#[tokio::test]
async fn the_console_asks_for_scram_sha_256() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = support::fresh_db().await;
    let port = free_port();
    let _w = walcast_with_console(&db, port).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut params = Vec::new();
    params.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
    for p in ["user", "admin", "database", "walcast"] {
        params.extend_from_slice(p.as_bytes());
        params.push(0);
    }
    params.push(0);
    let mut startup = ((params.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&params);
    s.write_all(&startup).await.unwrap();
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(head[0], b'R', "an authentication request");
    let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.unwrap();
    let method = i32::from_be_bytes(body[..4].try_into().unwrap());
    assert_eq!(
        method, 10,
        "AuthenticationSASL (5 would be MD5, 3 cleartext)"
    );
    let mechanisms: Vec<&str> = std::str::from_utf8(&body[4..])
        .unwrap()
        .split('\0')
        .filter(|m| !m.is_empty())
        .collect();
    assert_eq!(mechanisms, ["SCRAM-SHA-256"]);
}

/// Failed logins are throttled per address: after --admin-max-failures wrong passwords, the
/// next attempt is refused even with the right password, with an error that says why and for
/// how long; the failures and refusals are counted; after --admin-lockout the right password
/// works again, and the console is still read-only.
#[tokio::test]
async fn failed_logins_are_throttled() {
    let db = support::fresh_db().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let w = Walcast::start_with_env(
        &db,
        &[
            "--admin-listen",
            &listen,
            "--admin-max-failures=3",
            "--admin-lockout=3s",
        ],
        &[
            ("WALCAST_JWT_SECRET", support::SECRET),
            ("WALCAST_ADMIN_PASSWORD", PASSWORD),
        ],
    )
    .await;
    let run = |password: &'static str, command: &'static str| {
        tokio::task::spawn_blocking(move || psql(port, password, &[command]))
    };
    for _ in 0..3 {
        let (code, _, err) = run("guess", "SHOW STATS").await.expect("psql");
        assert_ne!(code, 0);
        assert!(err.contains("password authentication failed"), "{err}");
    }
    let (code, _, err) = run(PASSWORD, "SHOW STATS").await.expect("psql");
    assert_ne!(code, 0, "the right password got in during the lockout");
    assert!(
        err.contains("too many failed login attempts from 127.0.0.1")
            && err.contains("--admin-lockout"),
        "{err}"
    );
    let (_, text) = support::get(&w.url("/metrics")).await;
    assert_eq!(
        support::metric(&text, "walcast_admin_login_failures_total"),
        Some(3.0)
    );
    assert!(
        support::metric(&text, "walcast_admin_logins_throttled_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(w.log_text().contains("locked out"), "the lockout is logged");
    // After the lockout the right password works, and the console is still read-only.
    let back = support::wait_until(Duration::from_secs(10), || async {
        run(PASSWORD, "SHOW STATS").await.expect("psql").0 == 0
    })
    .await;
    assert!(back, "the address stayed locked out");
    let (code, _, err) = run(PASSWORD, "DELETE FROM clients").await.expect("psql");
    assert_ne!(code, 0);
    assert!(err.contains("supports only SHOW <resource>"), "{err}");
}
