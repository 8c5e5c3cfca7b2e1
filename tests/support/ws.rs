//! A test client for the plain `/ws` protocol.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The socket type.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected `/ws` client.
pub struct WsClient {
    /// The socket.
    pub socket: Socket,
    /// Close code seen, if any.
    pub closed: Option<u16>,
}

impl WsClient {
    /// Connects and reads the welcome frame.
    pub async fn connect(url: &str) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let mut c = WsClient {
            socket,
            closed: None,
        };
        let w = c
            .next_frame(Duration::from_secs(10))
            .await
            .expect("welcome");
        assert_eq!(w["type"], "welcome", "first frame: {w}");
        c
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) {
        self.socket
            .send(Message::text(v.to_string()))
            .await
            .expect("ws send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, t: &str) {
        self.socket
            .send(Message::text(t.to_owned()))
            .await
            .expect("ws send");
    }

    /// Subscribes with the given fields (merged into the frame) and waits for `subscribed`.
    pub async fn subscribe(&mut self, id: &str, fields: Value) {
        let mut frame = json!({"type": "subscribe", "id": id});
        if let Value::Object(m) = fields {
            for (k, v) in m {
                frame[k] = v;
            }
        }
        self.send(frame).await;
        let r = self
            .next_non_event(Duration::from_secs(10))
            .await
            .expect("subscribe reply");
        assert_eq!(r["type"], "subscribed", "subscribe reply: {r}");
    }

    /// The next frame of any type (heartbeats skipped), or None on timeout/close.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("json frame");
                    if v["type"] == "heartbeat" {
                        continue;
                    }
                    return Some(v);
                }
                Ok(Message::Close(f)) => {
                    self.closed = f.map(|f| u16::from(f.code));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame that is not an event.
    pub async fn next_non_event(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let f = self.next_frame(timeout).await?;
            if f["type"] != "event" {
                return Some(f);
            }
        }
    }

    /// Collects `n` event frames (fails the test on timeout, showing how many arrived).
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(f) if f["type"] == "event" => out.push(f),
                Some(_) => {}
                None => panic!("got {} of {n} events before timeout/close", out.len()),
            }
        }
        out
    }

    /// Asserts that no event arrives within `d`.
    pub async fn expect_no_event(&mut self, d: Duration) {
        if let Some(f) = self.next_frame(d).await {
            assert_ne!(f["type"], "event", "unexpected event: {f}");
        }
    }
}
