//! Trust at the edge: each attack on an endpoint, and the refusal it gets.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, TestDb, Walcast, sign};

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// walcast with the test secret and `extra` options.
async fn walcast(db: &TestDb, extra: &[&str]) -> Walcast {
    Walcast::start_with_env(db, extra, &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// The status and body of a refused Realtime upgrade (panics if it is accepted).
async fn realtime_refusal(w: &Walcast, token: &str) -> (u16, Value) {
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={token}&vsn=1.0.0"));
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("upgrade accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Connects to the Realtime endpoint with `token` and joins a broadcast channel; the reply.
async fn realtime_join(w: &Walcast, token: &str) -> Value {
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={token}&vsn=1.0.0"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let join = json!({"topic": "realtime:room", "event": "phx_join", "ref": "1",
                      "join_ref": "1", "payload": {"config": {"broadcast": {"self": false}}}});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply within 10 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "phx_reply" {
                return v["payload"].clone();
            }
        }
    }
}

/// A validly signed token naming a role that is not an API role is refused at the door
/// (finding: a token with `role: "postgres"` saw rows its policies hide).
#[tokio::test]
async fn tokens_naming_other_roles_are_refused() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    for role in ["postgres", "authenticator", "supabase_admin"] {
        let t = sign(json!({"role": role, "exp": now() + 600}));
        assert_eq!(
            realtime_refusal(&w, &t).await,
            (401, json!({"error": "Token role is not an API role"})),
            "{role}"
        );
        let (status, body) = support::post(
            &w.url("/v1/events"),
            "application/json",
            Some(&t),
            r#"{"event_type":"x","source":"y"}"#,
        )
        .await;
        assert_eq!(status, 401, "{role}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is not an API role"),
            "{body}"
        );
    }
}

/// A role configured as an extra API role is still refused when it is a superuser or bypasses
/// row level security: what the database says wins over what the token says.
#[tokio::test]
async fn privileged_roles_are_refused_even_when_configured() {
    let db = support::fresh_db().await;
    let (su, bypass, plain) = (
        format!("su_{}", db.name),
        format!("bypass_{}", db.name),
        format!("plain_{}", db.name),
    );
    let c = db.client().await;
    c.batch_execute(&format!(
        "create role {su} superuser nologin; create role {bypass} bypassrls nologin; \
         create role {plain} nologin;"
    ))
    .await
    .unwrap();
    let extra = format!("--extra-roles={su},{bypass},{plain}");
    let w = walcast(&db, &[&extra]).await;
    for role in [&su, &bypass] {
        let reply = realtime_join(&w, &sign(json!({"role": role, "exp": now() + 600}))).await;
        assert_eq!(reply["status"], "error", "{role}: {reply}");
        assert_eq!(
            reply["response"]["reason"], "InvalidJWTToken: Token role is not an API role",
            "{role}: {reply}"
        );
    }
    let reply = realtime_join(&w, &sign(json!({"role": plain, "exp": now() + 600}))).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    c.batch_execute(&format!(
        "drop role {su}; drop role {bypass}; drop role {plain};"
    ))
    .await
    .unwrap();
}

/// `nbf` in the future is refused everywhere; `iss` and `aud` are checked when configured.
#[tokio::test]
async fn nbf_iss_and_aud_are_checked() {
    let db = support::fresh_db().await;
    let w = walcast(
        &db,
        &[
            "--jwt-issuer=https://project.supabase.co/auth/v1",
            "--jwt-audience=authenticated",
        ],
    )
    .await;
    let good = json!({"role": "service_role", "exp": now() + 600,
                      "iss": "https://project.supabase.co/auth/v1", "aud": "authenticated"});
    let post = |t: String| {
        let url = w.url("/v1/events");
        async move {
            support::post(
                &url,
                "application/json",
                Some(&t),
                r#"{"event_type":"x","source":"y"}"#,
            )
            .await
        }
    };
    let (status, body) = post(sign(good.clone())).await;
    assert_eq!(status, 201, "{body}");
    let cases = [
        (
            "nbf",
            json!(now() + 86_400),
            "not valid yet",
            "Token is not valid yet",
        ),
        (
            "iss",
            json!("https://elsewhere/auth/v1"),
            "wrong issuer",
            "Token issuer is not accepted",
        ),
        (
            "aud",
            json!("anon"),
            "wrong audience",
            "Token audience is not accepted",
        ),
    ];
    for (claim, value, http, realtime) in cases {
        let mut claims = good.clone();
        claims[claim] = value;
        let t = sign(claims);
        let (status, body) = post(t.clone()).await;
        assert_eq!(status, 401, "{claim}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(http),
            "{claim}: {body}"
        );
        assert_eq!(
            realtime_refusal(&w, &t).await,
            (401, json!({"error": realtime})),
            "{claim}"
        );
    }
}

/// A user token: `role` with `sub` (the own-rows policy shows a user the rows whose `source`
/// is their `sub`).
fn user(role: &str, sub: &str) -> String {
    sign(json!({"role": role, "sub": sub, "exp": now() + 600}))
}

/// The status and `error` object of a refused `/ws` upgrade (panics if it is accepted).
async fn ws_refusal(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, Value) {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("upgrade accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body["error"].clone())
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// `/ws` with `token` in the address.
fn ws_url(w: &Walcast, token: &str) -> String {
    w.ws_url(&format!("/ws?apikey={token}"))
}

/// Finding: `/ws` had no authentication at all. Now a token is required, from a header or the
/// address, and checked like everywhere else.
#[tokio::test]
async fn ws_needs_a_valid_token() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let plain = w.ws_url("/ws").into_client_request().unwrap();
    let (status, error) = ws_refusal(plain).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("unauthorized")),
        "{error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("missing token"),
        "{error}"
    );
    for bad in [
        "not.a.jwt".to_owned(),
        sign(json!({"role": "anon", "exp": now() - 5})),
        sign(json!({"role": "postgres", "exp": now() + 600})),
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"role": "service_role", "exp": now() + 600}),
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0123"),
        )
        .unwrap(),
    ] {
        let (status, error) = ws_refusal(ws_url(&w, &bad).into_client_request().unwrap()).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (401, Some("unauthorized")),
            "{error}"
        );
    }
    // Every way of sending a good token works.
    let key = support::service_key();
    support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    support::ws::WsClient::connect(&w.ws_url(&format!("/ws?access_token={key}"))).await;
    for (name, value) in [
        ("authorization", format!("Bearer {key}")),
        ("apikey", key.clone()),
    ] {
        let mut req = w.ws_url("/ws").into_client_request().unwrap();
        req.headers_mut().insert(name, value.parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(req).await.expect(name);
        drop(socket);
    }
}

/// Finding: without a secret, everything was open and nothing said so. Now `serve` refuses to
/// start unless the operator opens it explicitly, and then it says what is open.
#[tokio::test]
async fn serve_fails_closed_without_a_secret() {
    let db = support::fresh_db().await;
    let (code, _, err) = support::run_cli(&["serve", "--database-url", &db.url], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--jwt-secret") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    let (code, _, err) = support::run_cli(
        &["serve", "--database-url", &db.url, "--insecure-no-auth"],
        &[("WALCAST_JWT_SECRET", support::SECRET)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a way to verify tokens is set too"), "{err}");
    // The harness starts walcast without a secret with --insecure-no-auth: it warns.
    let w = Walcast::start(&db, &[]).await;
    let opened = support::wait_until(Duration::from_secs(10), || async {
        w.log_text()
            .contains("--insecure-no-auth: every endpoint is open")
    })
    .await;
    assert!(opened, "no warning in the log:\n{}", w.log_text());
}

/// Finding: `/v1/status` (client addresses, subscription filters) was open.
#[tokio::test]
async fn status_needs_a_service_role_token() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let url = w.url("/v1/status");
    assert_eq!(support::get_as(&url, None).await.0, 401);
    assert_eq!(support::get_as(&url, Some(&user("anon", "x"))).await.0, 403);
    assert_eq!(
        support::get_as(&url, Some(&user("authenticated", "x")))
            .await
            .0,
        403
    );
    assert_eq!(
        support::get_as(&url, Some(&support::service_key())).await.0,
        200
    );
}

/// The event frames of a client within `wait`, by the row's `source` (or `-` without one).
async fn sources(c: &mut support::ws::WsClient, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(f) = c.next_frame(wait).await {
        if f["type"] == "event" {
            let row = if f["op"] == "DELETE" {
                &f["old_record"]
            } else {
                &f["record"]
            };
            out.push(row["source"].as_str().unwrap_or("-").to_owned());
        }
    }
    out
}

/// `/ws` shows each role what its row level security policies allow, live and on resume: two
/// users see their own rows, anon sees none, service_role sees all; a DELETE reaches everyone
/// with the key only.
#[tokio::test]
async fn ws_rows_follow_row_level_security_live_and_on_resume() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let w = walcast(&db, &[]).await;
    let c = db.client().await;
    let mut service = support::ws::WsClient::connect(&ws_url(&w, &support::service_key())).await;
    let mut alice =
        support::ws::WsClient::connect(&ws_url(&w, &user("authenticated", "alice"))).await;
    let mut bob = support::ws::WsClient::connect(&ws_url(&w, &user("authenticated", "bob"))).await;
    let mut anon = support::ws::WsClient::connect(&ws_url(&w, &user("anon", "x"))).await;
    for client in [&mut service, &mut alice, &mut bob, &mut anon] {
        client.subscribe("all", json!({})).await;
    }
    c.batch_execute(
        "insert into public.monitoring_events (event_type, source) \
         values ('cpu', 'alice'), ('cpu', 'bob'), ('cpu', 'carol')",
    )
    .await
    .unwrap();
    let quiet = Duration::from_millis(1500);
    let mut all = sources(&mut service, quiet).await;
    all.sort();
    assert_eq!(all, ["alice", "bob", "carol"]);
    assert_eq!(sources(&mut alice, quiet).await, ["alice"]);
    assert_eq!(sources(&mut bob, quiet).await, ["bob"]);
    assert!(sources(&mut anon, quiet).await.is_empty());

    // A DELETE cannot be checked (the row is gone): everyone gets the key, nothing else.
    c.execute(
        "delete from public.monitoring_events where source = 'carol'",
        &[],
    )
    .await
    .unwrap();
    for client in [&mut alice, &mut anon, &mut bob, &mut service] {
        let f = client
            .next_frame(Duration::from_secs(10))
            .await
            .expect("delete");
        assert_eq!(f["op"], "DELETE", "{f}");
        let keys: Vec<&String> = f["old_record"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id"], "{f}");
    }

    // Resume: bob comes back after rows were written without him, and gets only his.
    let cursor = {
        c.execute(
            "insert into public.monitoring_events (event_type, source) values ('cpu', 'bob')",
            &[],
        )
        .await
        .unwrap();
        let f = bob
            .next_frame(Duration::from_secs(10))
            .await
            .expect("bob's row");
        f["cursor"].as_str().unwrap().to_owned()
    };
    drop(bob);
    c.batch_execute(
        "insert into public.monitoring_events (event_type, source) \
         values ('cpu', 'alice'), ('cpu', 'bob'), ('mem', 'bob'), ('cpu', 'carol')",
    )
    .await
    .unwrap();
    // Wait until the live clients saw them, so that the replay has something to replay.
    assert_eq!(sources(&mut alice, quiet).await, ["alice"]);
    let mut bob = support::ws::WsClient::connect(&ws_url(&w, &user("authenticated", "bob"))).await;
    bob.subscribe("all", json!({})).await;
    let (replayed, resumed) = bob.resume(&cursor, Duration::from_secs(20)).await;
    let got: Vec<&str> = replayed
        .iter()
        .map(|f| f["record"]["source"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["bob", "bob"], "{resumed}");
    let mut anon = support::ws::WsClient::connect(&ws_url(&w, &user("anon", "x"))).await;
    anon.subscribe("all", json!({})).await;
    let (replayed, _) = anon.resume(&cursor, Duration::from_secs(20)).await;
    assert!(replayed.is_empty(), "{replayed:?}");
}

/// Finding: column privileges were frozen at join. A client of a role with column privileges
/// only sees those columns, and a revoke reaches a connected client within --role-recheck;
/// a role that loses the table is disconnected.
#[tokio::test]
async fn ws_columns_follow_privileges_while_connected() {
    let db = support::fresh_db().await;
    let role = format!("narrow_{}", db.name);
    let c = db.client().await;
    c.batch_execute(&format!(
        "create role {role} nologin; \
         grant select (id, event_type, source, data) on public.monitoring_events to {role}; \
         create policy narrow_read on public.monitoring_events for select to {role} using (true);"
    ))
    .await
    .unwrap();
    let extra = format!("--extra-roles={role}");
    let w = walcast(&db, &[&extra, "--role-recheck=1s"]).await;
    let mut narrow = support::ws::WsClient::connect(&ws_url(&w, &user(&role, "n"))).await;
    narrow.subscribe("all", json!({})).await;
    let insert = "insert into public.monitoring_events (event_type, source, data) \
                  values ('cpu', 'h', '{\"v\": 1}')";
    c.execute(insert, &[]).await.unwrap();
    let f = narrow
        .next_frame(Duration::from_secs(10))
        .await
        .expect("event");
    let mut cols: Vec<&String> = f["record"].as_object().unwrap().keys().collect();
    cols.sort();
    assert_eq!(cols, ["data", "event_type", "id", "source"], "{f}");

    c.batch_execute(&format!(
        "revoke select (data) on public.monitoring_events from {role}"
    ))
    .await
    .unwrap();
    // Within a few re-checks (1 s apart) the column stops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut stopped = false;
    while !stopped && tokio::time::Instant::now() < deadline {
        c.execute(insert, &[]).await.unwrap();
        let f = narrow
            .next_frame(Duration::from_secs(5))
            .await
            .expect("event");
        stopped = f["record"].get("data").is_none();
        if !stopped {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(stopped, "the revoked column kept coming");

    c.batch_execute(&format!(
        "revoke select on public.monitoring_events from {role}; \
         drop policy narrow_read on public.monitoring_events;"
    ))
    .await
    .unwrap();
    let mut refused = None;
    for _ in 0..20 {
        match narrow.next_raw(Duration::from_secs(5)).await {
            Some(f) if f["type"] == "error" => refused = Some(f),
            Some(_) => continue,
            None => break,
        }
    }
    let refused = refused.expect("an error frame before the close");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(narrow.closed, Some(1008));
    c.batch_execute(&format!("drop role {role}")).await.unwrap();
}

/// The response headers of `GET path` (lower-case names), read over a plain socket.
async fn headers_of(w: &Walcast, path: &str) -> std::collections::HashMap<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = w
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Finding: the dashboard page had no CSP, frame or nosniff headers.
#[tokio::test]
async fn the_dashboard_page_cannot_be_framed_or_fed_scripts() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let h = headers_of(&w, "/").await;
    assert_eq!(
        h.get("x-frame-options").map(String::as_str),
        Some("DENY"),
        "{h:?}"
    );
    assert_eq!(
        h.get("x-content-type-options").map(String::as_str),
        Some("nosniff"),
        "{h:?}"
    );
    let csp = h.get("content-security-policy").expect("a CSP");
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
}

/// Finding: every `resume` opened a replication connection with no bound, until Postgres had no
/// walsender left. Now at most --max-replays run at once; a resume beyond that gets `busy` (the
/// connection stays usable) and succeeds once a replay has ended, also one whose client stopped
/// reading.
#[tokio::test]
async fn replays_are_capped_and_busy_is_answered() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--max-replays=1"]).await;
    let key = support::service_key();
    let c = db.client().await;
    // A backlog that takes a replay far longer to send than a request takes to arrive.
    let mut watcher = support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    watcher.subscribe("all", json!({})).await;
    c.execute(
        "insert into public.monitoring_events (event_type, source) values ('start', 'h')",
        &[],
    )
    .await
    .unwrap();
    let start = watcher
        .next_frame(Duration::from_secs(10))
        .await
        .expect("start");
    let start = start["cursor"].as_str().unwrap().to_owned();
    c.execute(
        "insert into public.monitoring_events (event_type, source, data) \
         select 'bulk', 'h', jsonb_build_object('pad', repeat('x', 1000)) \
         from generate_series(1, 5000)",
        &[],
    )
    .await
    .unwrap();
    let mut last = String::new();
    while let Some(f) = watcher.next_frame(Duration::from_secs(5)).await {
        if let Some(c) = f["cursor"].as_str() {
            last = c.to_owned();
        }
    }
    assert!(!last.is_empty());

    // Two clients resume from the start at the same moment: one replay runs (it takes far
    // longer than the other's request needs to arrive), the other is answered `busy`.
    let mut a = support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    let mut b = support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    a.subscribe("all", json!({})).await;
    b.subscribe("all", json!({})).await;
    let resume = json!({"type": "resume", "cursor": start});
    tokio::join!(a.send(resume.clone()), b.send(resume));
    let (fa, fb) = tokio::join!(
        a.next_non_event(Duration::from_secs(20)),
        b.next_non_event(Duration::from_secs(20))
    );
    let busy: Vec<Value> = [fa, fb]
        .into_iter()
        .flatten()
        .filter(|f| f["type"] == "error")
        .collect();
    assert_eq!(busy.len(), 1, "exactly one busy answer: {busy:?}");
    assert_eq!(busy[0]["code"], "busy", "{busy:?}");
    assert!(
        busy[0]["message"]
            .as_str()
            .unwrap()
            .contains("--max-replays"),
        "{busy:?}"
    );
    // Both go away; the permit comes back and a later resume goes through.
    drop((a, b));
    let mut other = support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    other.subscribe("all", json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut resumed = false;
    while !resumed && tokio::time::Instant::now() < deadline {
        other.send(json!({"type": "resume", "cursor": last})).await;
        resumed = other
            .next_non_event(Duration::from_secs(10))
            .await
            .is_some_and(|f| f["type"] == "resumed");
        if !resumed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(resumed, "the permit did not come back");
    let (_, text) = support::get(&w.url("/metrics")).await;
    assert!(
        support::metric(&text, "walcast_replays_busy_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
}

/// Finding: silent connections stayed open forever and, at the open-files limit, `/healthz`
/// stopped answering. Now a connection that sends no request is closed after --header-timeout,
/// and one over --max-connections is answered 503 and closed at once.
#[tokio::test]
async fn silent_connections_are_closed_and_the_cap_holds() {
    use tokio::io::AsyncReadExt;
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--header-timeout=3s", "--max-connections=3"]).await;
    let addr = w
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // Connections that send nothing: up to the cap they are held (no answer yet); the next
    // one is answered 503 and closed at once.
    let mut silent = Vec::new();
    let mut answer = None;
    for _ in 0..6 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = Vec::new();
        match tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut buf)).await {
            Ok(_) if !buf.is_empty() => {
                answer = Some(String::from_utf8_lossy(&buf).into_owned());
                break;
            }
            _ => silent.push(s),
        }
    }
    let answer = answer.expect("a connection over the cap is answered");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(
        silent.len() <= 3,
        "{} connections held over a cap of 3",
        silent.len()
    );
    // The silent ones are closed by the header timeout.
    for mut s in silent {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "a silent connection stayed open");
    }
    // Their places are free again.
    let (status, _) = support::get(&w.url("/healthz")).await;
    assert_eq!(status, 200);
}

/// Reads Realtime v1 frames until one satisfies `pred` (10 s at most).
async fn realtime_wait(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s"))
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

/// Finding: column privileges were frozen at join on the Realtime endpoint. A joined channel's
/// role is asked again every --role-recheck: a revoked column stops; a role that loses the
/// table gets Supabase's "You no longer have permission…" and the channel closes.
#[tokio::test]
async fn realtime_channels_follow_privileges_while_joined() {
    let db = support::fresh_db().await;
    let role = format!("narrowrt_{}", db.name);
    let c = db.client().await;
    c.batch_execute(&format!(
        "create role {role} nologin; \
         grant select (id, event_type, source, data) on public.monitoring_events to {role}; \
         create policy narrowrt_read on public.monitoring_events for select to {role} using (true);"
    ))
    .await
    .unwrap();
    let extra = format!("--extra-roles={role}");
    let w = walcast(&db, &[&extra, "--role-recheck=1s"]).await;
    let token = sign(json!({"role": role, "exp": now() + 600}));
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={token}&vsn=1.0.0"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let join = json!({"topic": "realtime:room", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"postgres_changes": [
            {"event": "*", "schema": "public", "table": "monitoring_events"}]}}});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    realtime_wait(&mut ws, "the subscription", |v| {
        v["event"] == "system" && v["payload"]["extension"] == "postgres_changes"
    })
    .await;
    let insert = "insert into public.monitoring_events (event_type, source, data) \
                  values ('cpu', 'h', '{\"v\": 1}')";
    let is_change = |v: &Value| v["event"] == "postgres_changes";
    c.execute(insert, &[]).await.unwrap();
    let f = realtime_wait(&mut ws, "a change", is_change).await;
    assert!(f["payload"]["data"]["record"].get("data").is_some(), "{f}");

    c.batch_execute(&format!(
        "revoke select (data) on public.monitoring_events from {role}"
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut stopped = false;
    while !stopped && tokio::time::Instant::now() < deadline {
        c.execute(insert, &[]).await.unwrap();
        let f = realtime_wait(&mut ws, "a change", is_change).await;
        stopped = f["payload"]["data"]["record"].get("data").is_none();
        if !stopped {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(stopped, "the revoked column kept coming");

    c.batch_execute(&format!(
        "revoke select on public.monitoring_events from {role}; \
         drop policy narrowrt_read on public.monitoring_events;"
    ))
    .await
    .unwrap();
    let sys = realtime_wait(&mut ws, "the revocation", |v| {
        v["event"] == "system" && v["payload"]["status"] == "error"
    })
    .await;
    assert_eq!(
        sys["payload"]["message"],
        "You no longer have permission to read from this Channel topic: room",
        "{sys}"
    );
    realtime_wait(&mut ws, "phx_close", |v| v["event"] == "phx_close").await;
    c.batch_execute(&format!("drop role {role}")).await.unwrap();
}

/// Finding: any client frame over 64 KiB killed the socket by dropping TCP. Now a Realtime
/// broadcast over --max-payload (256 KiB by default, as Supabase's free tier) is not relayed
/// and, with `ack`, answered `payload_size_exceeded`, the socket staying open; a frame over the
/// hard cap, on either endpoint, gets a proper 1009 close.
#[tokio::test]
async fn oversized_messages_get_an_answer_and_a_1009_close() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let key = support::service_key();
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={key}&vsn=1.0.0"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let join = json!({"topic": "realtime:room", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"broadcast": {"ack": true, "self": true}}}});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    realtime_wait(&mut ws, "the join reply", |v| v["event"] == "phx_reply").await;
    let broadcast = |size: usize, r: &str| {
        json!({"topic": "realtime:room", "event": "broadcast", "ref": r, "join_ref": "1",
               "payload": {"type": "broadcast", "event": "big", "payload": {"x": "y".repeat(size)}}})
        .to_string()
    };
    ws.send(Message::Text(broadcast(300 << 10, "2").into()))
        .await
        .unwrap();
    let reply = realtime_wait(&mut ws, "the ack", |v| {
        v["event"] == "phx_reply" && v["ref"] == "2"
    })
    .await;
    assert_eq!(reply["payload"]["status"], "error", "{reply}");
    assert_eq!(
        reply["payload"]["response"], "payload_size_exceeded",
        "{reply}"
    );
    // The socket is still there: a small broadcast goes through (self: true) and is acked.
    ws.send(Message::Text(broadcast(10, "3").into()))
        .await
        .unwrap();
    let reply = realtime_wait(&mut ws, "the ack", |v| {
        v["event"] == "phx_reply" && v["ref"] == "3"
    })
    .await;
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    // Over the hard cap (payload limit + 64 KiB): closed with 1009.
    ws.send(Message::Text(broadcast(400 << 10, "4").into()))
        .await
        .ok();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break Some(u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(1009));

    let mut plain = support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    plain.send_text(&"x".repeat(100 << 10)).await;
    assert!(plain.next_raw(Duration::from_secs(10)).await.is_none());
    assert_eq!(plain.closed, Some(1009));
}

/// Finding: jsonb deeper than 128 levels (valid, written by SQL) reached both endpoints as a
/// string, silently. Now both get the same explicit marker object.
#[tokio::test]
async fn deep_json_gets_the_same_marker_on_both_endpoints() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let key = support::service_key();
    let mut plain = support::ws::WsClient::connect(&ws_url(&w, &key)).await;
    plain.subscribe("all", json!({})).await;
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={key}&vsn=1.0.0"));
    let (mut rt, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let join = json!({"topic": "realtime:deep", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"postgres_changes": [
            {"event": "*", "schema": "public", "table": "monitoring_events"}]}}});
    rt.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    realtime_wait(&mut rt, "the subscription", |v| {
        v["event"] == "system" && v["payload"]["extension"] == "postgres_changes"
    })
    .await;
    let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    db.client()
        .await
        .execute(
            "insert into public.monitoring_events (event_type, source, data) \
             values ('deep', 'h', $1::text::jsonb)",
            &[&deep],
        )
        .await
        .unwrap();
    let e = plain
        .next_frame(Duration::from_secs(10))
        .await
        .expect("event");
    let r = realtime_wait(&mut rt, "the change", |v| v["event"] == "postgres_changes").await;
    let on_ws = &e["record"]["data"];
    let on_rt = &r["payload"]["data"]["record"]["data"];
    assert_eq!(on_ws["walcast_error"], "json_too_deep", "{e}");
    assert_eq!(on_ws, on_rt);
}

/// Finding: one anonymous client sent 17,647 broadcasts/s and got every normal member of the
/// channel closed. Now the flooding socket alone gets "Too many messages per second" and is
/// closed; a member of the same channel carries on. Joining too often is refused likewise.
#[tokio::test]
async fn floods_close_the_flooder_only() {
    let db = support::fresh_db().await;
    let w = walcast(
        &db,
        &["--max-messages-per-second=20", "--max-joins-per-second=5"],
    )
    .await;
    let key = support::service_key();
    let connect = || {
        let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={key}&vsn=1.0.0"));
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("upgrade")
                .0
        }
    };
    let join = |topic: &str, r: usize| {
        json!({"topic": topic, "event": "phx_join", "ref": r.to_string(), "join_ref": r.to_string(),
               "payload": {"config": {"broadcast": {"self": false}}}})
        .to_string()
    };
    let mut calm = connect().await;
    calm.send(Message::Text(join("realtime:room", 1).into()))
        .await
        .unwrap();
    realtime_wait(&mut calm, "the join reply", |v| v["event"] == "phx_reply").await;
    let mut flood = connect().await;
    flood
        .send(Message::Text(join("realtime:room", 1).into()))
        .await
        .unwrap();
    realtime_wait(&mut flood, "the join reply", |v| v["event"] == "phx_reply").await;
    for i in 0..100 {
        let b = json!({"topic": "realtime:room", "event": "broadcast", "ref": format!("b{i}"),
            "join_ref": "1", "payload": {"type": "broadcast", "event": "spam", "payload": {"i": i}}});
        if flood
            .send(Message::Text(b.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let sys = realtime_wait(&mut flood, "the refusal", |v| v["event"] == "system").await;
    assert_eq!(
        sys["payload"]["message"], "Too many messages per second",
        "{sys}"
    );
    realtime_wait(&mut flood, "phx_close", |v| v["event"] == "phx_close").await;
    // The calm member got at most what the limit lets through and is still served.
    let mut got = 0;
    calm.send(Message::Text(
        json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "hb"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let v = realtime_wait(&mut calm, "the heartbeat reply", |_| true).await;
        if v["event"] == "broadcast" {
            got += 1;
        } else if v["topic"] == "phoenix" {
            assert_eq!(v["payload"]["status"], "ok");
            break;
        }
    }
    assert!(
        got <= 20,
        "{got} broadcasts relayed over a limit of 20 per second"
    );

    // Joins: the sixth in a second is refused with Supabase's reason, and the socket closes.
    let mut joiner = connect().await;
    let mut refused = None;
    for i in 0..10 {
        joiner
            .send(Message::Text(join(&format!("realtime:t{i}"), i + 1).into()))
            .await
            .ok();
    }
    for _ in 0..10 {
        let v = realtime_wait(&mut joiner, "a join reply", |v| v["event"] == "phx_reply").await;
        if v["payload"]["status"] == "error" {
            refused = Some(v);
            break;
        }
    }
    let refused = refused.expect("a refused join");
    assert_eq!(
        refused["payload"]["response"]["reason"],
        "ClientJoinRateLimitReached: Too many joins per second",
        "{refused}"
    );
}

/// Finding: many filters on one connection multiplied the work per change. The conditions of
/// one connection are capped (256 over all its subscriptions).
#[tokio::test]
async fn filter_conditions_per_connection_are_capped() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let mut c = support::ws::WsClient::connect(&ws_url(&w, &support::service_key())).await;
    let filters: Vec<String> = (0..32).map(|i| format!("source=neq.h{i}")).collect();
    for i in 0..8 {
        c.subscribe(&format!("s{i}"), json!({"filters": filters}))
            .await;
    }
    c.send(json!({"type": "subscribe", "id": "one-more", "filters": ["source=eq.x"]}))
        .await;
    let e = c
        .next_non_event(Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(e["code"], "too_many_subscriptions", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("256 filter conditions"),
        "{e}"
    );
}

/// Finding: a slot dropped outside walcast was created again before walcast stopped, hiding
/// the gap. Now walcast stops with an error naming the slot and leaves no new slot behind.
#[tokio::test]
async fn a_slot_dropped_outside_is_not_created_again() {
    let db = support::fresh_db().await;
    let mut w = walcast(&db, &[]).await;
    let c = db.client().await;
    let slot = format!("walcast_{}", db.node());
    // Drop it under walcast: end its walsender first, then drop it while it is inactive.
    let dropped = support::wait_until(Duration::from_secs(20), || {
        let (c, slot) = (&c, &slot);
        async move {
            let _ = c
                .execute(
                    "select pg_terminate_backend(active_pid) from pg_replication_slots \
                     where slot_name = $1 and active_pid is not null",
                    &[slot],
                )
                .await;
            c.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                 where slot_name = $1 and not active",
                &[slot],
            )
            .await
            .is_ok_and(|n| n == 1)
        }
    })
    .await;
    assert!(dropped, "could not drop the slot");
    // walcast notices on its next connection and stops, non-zero, naming the slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = w.child.try_wait() {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "walcast kept running:\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{status:?}");
    let log = w.log_text();
    assert!(
        log.contains(&slot) && log.contains("no longer existed"),
        "{log}"
    );
    let left = c
        .query_opt(
            "select 1 from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert!(left.is_none(), "a new slot was created");
}

/// `/metrics` is open by default (Prometheus scrapes it) and, with --metrics-token, needs that
/// bearer token.
#[tokio::test]
async fn metrics_can_require_a_token() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--metrics-token=scrape-me-0123456789"]).await;
    let url = w.url("/metrics");
    let (status, body) = support::get_as(&url, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        support::get_as(&url, Some("scrape-me-012345678x")).await.0,
        401
    );
    let (status, body) = support::get_as(&url, Some("scrape-me-0123456789")).await;
    assert_eq!(status, 200);
    assert!(body.contains("walcast_"), "{body}");
}

/// When the row check cannot be made (the database fails), a `/ws` client of a role is told
/// `internal` with the cursor to resume from and closed (1011); resuming from that cursor once
/// the database answers again delivers the change it missed — nothing is lost.
#[tokio::test]
async fn a_failed_row_check_names_a_cursor_that_loses_nothing() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let w = walcast(&db, &[]).await;
    let c = db.client().await;
    let mut alice =
        support::ws::WsClient::connect(&ws_url(&w, &user("authenticated", "alice"))).await;
    alice.subscribe("all", json!({})).await;
    c.execute(
        "insert into public.monitoring_events (event_type, source) values ('one', 'alice')",
        &[],
    )
    .await
    .unwrap();
    let first = alice
        .next_frame(Duration::from_secs(10))
        .await
        .expect("the first row");
    // The check fails.
    c.batch_execute(
        "alter function walcast.realtime_visible_sets(bigint[], oid[], jsonb[], text[], text[], \
           integer[], oid[], integer) rename to sets_gone",
    )
    .await
    .unwrap();
    c.execute(
        "insert into public.monitoring_events (event_type, source) values ('two', 'alice')",
        &[],
    )
    .await
    .unwrap();
    let error = alice
        .next_non_event(Duration::from_secs(10))
        .await
        .expect("an error frame");
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "internal", "{error}");
    let message = error["message"].as_str().unwrap();
    let cursor = message
        .rsplit(' ')
        .next()
        .expect("a cursor at the end of the message");
    assert_eq!(cursor, first["cursor"].as_str().unwrap(), "{message}");
    c.batch_execute("alter function walcast.sets_gone rename to realtime_visible_sets")
        .await
        .unwrap();
    let mut again =
        support::ws::WsClient::connect(&ws_url(&w, &user("authenticated", "alice"))).await;
    again.subscribe("all", json!({})).await;
    let (replayed, _) = again.resume(cursor, Duration::from_secs(20)).await;
    let types: Vec<&str> = replayed
        .iter()
        .map(|f| f["record"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["two"]);
}
