//! Limits at the edge: per-address caps on WebSocket sessions and TCP connections (Supabase's
//! 429 "Too many connected users"), `X-Forwarded-For` from trusted proxies only, the timeouts
//! before and between requests, and the per-channel message budget on the Realtime endpoint.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{self, TestDb, Walcast};

/// A Realtime socket.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// walcast with the test secret and `extra` options.
async fn walcast(db: &TestDb, extra: &[&str]) -> Walcast {
    Walcast::start_with_env(db, extra, &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// Upgrades to `path` (with the service key) sending `X-Forwarded-For: forwarded` if given;
/// the socket, or the refusal's status and JSON body.
async fn upgrade(w: &Walcast, path: &str, forwarded: Option<&str>) -> Result<Socket, (u16, Value)> {
    let key = support::service_key();
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut req = w
        .ws_url(&format!("{path}{sep}apikey={key}"))
        .into_client_request()
        .unwrap();
    if let Some(f) = forwarded {
        req.headers_mut()
            .insert("x-forwarded-for", f.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The Realtime endpoint's path.
const REALTIME: &str = "/realtime/v1/websocket?vsn=1.0.0";

/// The series' value in `/metrics` (0 when absent).
async fn metric(w: &Walcast, series: &str) -> f64 {
    let (_, text) = support::get(&w.url("/metrics")).await;
    support::metric(&text, series).unwrap_or(0.0)
}

/// An address's WebSocket sessions are capped: one more upgrade is answered 429 with
/// Supabase's body on the Realtime endpoint and the house envelope on `/ws`; the address can
/// still make plain requests; a closed session frees its place. Without --trusted-proxies,
/// `X-Forwarded-For` is ignored (a client cannot pick another address).
#[tokio::test]
async fn sessions_per_address_are_capped_with_supabases_429() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--max-connections-per-ip=2"]).await;
    let a = upgrade(&w, REALTIME, None).await.expect("first session");
    let _b = upgrade(&w, "/ws", None).await.expect("second session");
    assert_eq!(
        upgrade(&w, REALTIME, None).await.err(),
        Some((429, json!({"error": "Too many connected users"})))
    );
    let (status, body) = upgrade(&w, "/ws", Some("198.51.100.7"))
        .await
        .expect_err("refused although it names another address");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_connected_users", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-connections-per-ip"),
        "{body}"
    );
    // Plain requests still get through (the connection cap has headroom over the sessions).
    let (status, _) = support::get(&w.url("/healthz")).await;
    assert_eq!(status, 200);
    assert!(
        metric(
            &w,
            "walcast_connections_refused_total{kind=\"sessions_per_ip\"}"
        )
        .await
            >= 2.0
    );
    // A closed session gives its place back.
    drop(a);
    let back = support::wait_until(Duration::from_secs(10), || async {
        upgrade(&w, REALTIME, None).await.is_ok()
    })
    .await;
    assert!(back, "the place did not come back");
}

/// An address's open TCP connections are capped at the session cap plus a small headroom:
/// beyond it a connection is answered 429 at once, before any request, and closed. Silent
/// connections are closed by the header timeout (the idle timeout before the first request),
/// so is a connection that stops in the middle of its request line, and a keep-alive
/// connection idle after its request.
#[tokio::test]
async fn connections_per_address_are_capped_before_any_request() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--max-connections-per-ip=1", "--header-timeout=3s"]).await;
    // 1 + 8 places: nine silent connections are held, the tenth is answered at once.
    let mut held = Vec::new();
    let mut answer = None;
    for _ in 0..12 {
        let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
        let mut buf = Vec::new();
        match tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut buf)).await {
            Ok(_) if !buf.is_empty() => {
                answer = Some(String::from_utf8_lossy(&buf).into_owned());
                break;
            }
            _ => held.push(s),
        }
    }
    let answer = answer.expect("a connection over the cap is answered");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connected_users"), "{answer}");
    assert_eq!(held.len(), 9, "1 session + 8 connections of headroom");
    // One stops in the middle of its request line.
    held[0].write_all(b"GET /healthz HTT").await.unwrap();
    // Every one of them is closed by the header timeout.
    for mut s in held {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "a silent connection stayed open");
    }
    assert!(metric(&w, "walcast_connections_refused_total{kind=\"per_ip\"}").await >= 1.0);
    // A keep-alive connection: answered, then closed when idle for the header timeout.
    let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
}

/// Behind a trusted proxy, each session counts against the client `X-Forwarded-For` names (the
/// nearest entry that is not a proxy), and the proxy's own connections are not capped.
#[tokio::test]
async fn trusted_proxies_forward_the_client_address() {
    let db = support::fresh_db().await;
    let w = walcast(
        &db,
        &["--max-connections-per-ip=1", "--trusted-proxies=127.0.0.1"],
    )
    .await;
    let _a = upgrade(&w, REALTIME, Some("198.51.100.1"))
        .await
        .expect("a");
    let _b = upgrade(&w, REALTIME, Some("203.0.113.9, 198.51.100.2, 127.0.0.1"))
        .await
        .expect("b");
    assert_eq!(
        upgrade(&w, REALTIME, Some("198.51.100.1")).await.err(),
        Some((429, json!({"error": "Too many connected users"})))
    );
    assert_eq!(
        upgrade(&w, "/ws", Some("10.9.9.9, 198.51.100.2"))
            .await
            .err()
            .map(|(s, _)| s),
        Some(429),
        "the entry nearest the proxy counts, not the first"
    );
    // The proxy's own connections: many more than 1 + 8 are held.
    let mut held = Vec::new();
    for _ in 0..12 {
        let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
        let mut buf = [0u8; 64];
        let answered = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        assert!(answered.is_err(), "a proxy connection was refused");
        held.push(s);
    }
}

/// Sends a Realtime v1 frame.
async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// Reads v1 frames until one satisfies `pred` (10 s at most); `None` when the socket ends.
async fn wait_for(ws: &mut Socket, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")?;
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if pred(&v) {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Joins `realtime:room` for broadcasts with `ack`.
async fn join_room(w: &Walcast) -> Socket {
    let mut ws = upgrade(w, REALTIME, None).await.expect("upgrade");
    send(
        &mut ws,
        json!({"topic": "realtime:room", "event": "phx_join", "ref": "1", "join_ref": "1",
               "payload": {"config": {"broadcast": {"ack": true, "self": false}}}}),
    )
    .await;
    let reply = wait_for(&mut ws, |v| v["event"] == "phx_reply")
        .await
        .expect("join reply");
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    ws
}

/// A broadcast frame on `realtime:room`.
fn broadcast(r: &str, n: usize) -> Value {
    json!({"topic": "realtime:room", "event": "broadcast", "ref": r, "join_ref": "1",
           "payload": {"type": "broadcast", "event": "msg", "payload": {"n": n}}})
}

/// A channel has a budget of messages per second over all its sockets. A flooder that stays
/// under the per-socket limit still exhausts it: it alone gets "Too many messages per second"
/// and is disconnected; the other members keep their sockets, lose only what was over the
/// budget, and go on sending and receiving.
#[tokio::test]
async fn the_channel_budget_disconnects_its_heaviest_sender_only() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--max-channel-messages-per-second=20"]).await;
    let mut listener = join_room(&w).await;
    let mut calm = join_room(&w).await;
    let mut flood = join_room(&w).await;
    // The calm member speaks first, within the budget.
    send(&mut calm, broadcast("c0", 500)).await;
    let ack = wait_for(&mut calm, |v| v["ref"] == "c0")
        .await
        .expect("ack");
    assert_eq!(ack["payload"]["status"], "ok", "{ack}");
    // The flood: 200 broadcasts at once, under the per-socket limit (500/s).
    for i in 0..200 {
        if flood
            .send(Message::Text(
                broadcast(&format!("f{i}"), i).to_string().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let sys = wait_for(&mut flood, |v| v["event"] == "system")
        .await
        .expect("the refusal");
    assert_eq!(
        sys["payload"]["message"], "Too many messages per second",
        "{sys}"
    );
    assert_eq!(sys["payload"]["status"], "error", "{sys}");
    wait_for(&mut flood, |v| v["event"] == "phx_close")
        .await
        .expect("phx_close");
    assert!(
        wait_for(&mut flood, |_| false).await.is_none(),
        "the flooder's socket is closed"
    );
    // The calm member is still connected: once a new second starts, its broadcast is acked
    // (within the flooder's second it may be told "Too many messages per second" instead).
    let mut acked = false;
    for i in 1..40 {
        let r = format!("c{i}");
        send(&mut calm, broadcast(&r, 1000 + i)).await;
        let reply = wait_for(&mut calm, |v| v["ref"] == r.as_str())
            .await
            .expect("the calm socket stays open");
        if reply["payload"]["status"] == "ok" {
            acked = true;
            break;
        }
        assert_eq!(
            reply["payload"]["response"]["reason"], "Too many messages per second",
            "{reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        acked,
        "the calm member's broadcasts never went through again"
    );
    // The listener got the calm member's first broadcast, at most the budget of the flood (it
    // may straddle two seconds), then the calm member's later broadcast.
    let mut from_flood = 0;
    let last = loop {
        let v = wait_for(&mut listener, |v| v["event"] == "broadcast")
            .await
            .expect("the listener stays open");
        let n = v["payload"]["payload"]["n"].as_u64().unwrap();
        if n >= 1000 {
            break v;
        }
        if n < 200 {
            from_flood += 1;
        }
    };
    assert!(
        from_flood <= 40,
        "{from_flood} flood broadcasts relayed over a budget of 20/s"
    );
    assert_eq!(last["payload"]["event"], "msg");
    assert!(
        metric(
            &w,
            "walcast_realtime_rate_limited_total{kind=\"channel_messages\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric(&w, "walcast_channel_messages_dropped_total").await >= 1.0);
}

/// walcast takes the hard open-files limit at start and warns when --max-connections cannot
/// fit under it (every connection is a file descriptor).
#[tokio::test]
async fn max_connections_above_the_open_files_limit_is_warned_about() {
    let db = support::fresh_db().await;
    let hard: u64 = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u64::MAX);
    if hard >= u64::from(u32::MAX) {
        // Unlimited: nothing a --max-connections could exceed.
        return;
    }
    let asked = (hard + 1).to_string();
    let w = walcast(&db, &["--max-connections", &asked]).await;
    let log = w.log_text();
    assert!(
        log.contains("--max-connections is above what the open-files limit allows"),
        "{log}"
    );
}
