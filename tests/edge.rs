//! Limits at the edge: per-address caps on WebSocket sessions and TCP connections (Supabase's
//! 429 "Too many connected users"), `X-Forwarded-For` from trusted proxies only, the timeouts
//! before and between requests.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
