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

// ---------------------------------------------------------------------------------------------
// Added for tests/stream.rs: raw frames, non-panicking connects, and an auto-resuming collector.
// ---------------------------------------------------------------------------------------------

impl WsClient {
    /// Connects without panicking; returns the client and its `welcome` frame.
    pub async fn try_connect(url: &str, timeout: Duration) -> Result<(WsClient, Value), String> {
        let (socket, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| format!("connect to {url} timed out"))?
            .map_err(|e| format!("connect to {url}: {e}"))?;
        let mut c = WsClient {
            socket,
            closed: None,
        };
        let w = c
            .next_frame(timeout)
            .await
            .ok_or_else(|| format!("no welcome frame from {url}"))?;
        if w["type"] != "welcome" {
            return Err(format!("first frame is not welcome: {w}"));
        }
        Ok((c, w))
    }

    /// The next frame of any type, heartbeats included (None on timeout or close).
    pub async fn next_raw(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(&t).expect("json frame"));
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

    /// Sends `resume` and collects the replayed events up to the `resumed` frame; returns them
    /// with that frame. Fails the test on any other frame, timeout or close.
    pub async fn resume(&mut self, cursor: &str, timeout: Duration) -> (Vec<Value>, Value) {
        self.send(json!({"type": "resume", "cursor": cursor})).await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(f) if f["type"] == "event" => events.push(f),
                Some(f) if f["type"] == "resumed" => return (events, f),
                Some(f) => panic!(
                    "unexpected frame while resuming from {cursor} after {} events: {f}",
                    events.len()
                ),
                None => panic!(
                    "no `resumed` frame (timeout or close {:?}) after {} replayed events",
                    self.closed,
                    events.len()
                ),
            }
        }
    }
}

/// The parts of an event frame the collector keeps (200,000 full frames would be large).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// The event's cursor.
    pub cursor: String,
    /// INSERT, UPDATE, DELETE or TRUNCATE.
    pub op: String,
    /// `record.id`, else `old_record.id`.
    pub id: Option<String>,
}

impl SeenEvent {
    /// Extracts the kept parts of an event frame.
    pub fn from_frame(f: &Value) -> SeenEvent {
        let id = f["record"]["id"]
            .as_str()
            .or_else(|| f["old_record"]["id"].as_str())
            .map(str::to_owned);
        SeenEvent {
            cursor: f["cursor"].as_str().expect("event cursor").to_owned(),
            op: f["op"].as_str().unwrap_or_default().to_owned(),
            id,
        }
    }
}

/// What a [`ResumingCollector`] saw.
#[derive(Debug, Default)]
pub struct Collected {
    /// Every event frame, in arrival order (duplicates included, so tests can detect them).
    pub events: Vec<SeenEvent>,
    /// `lagged` frames received.
    pub lagged: usize,
    /// Reconnections made (after `lagged`, a close or a lost connection).
    pub reconnects: usize,
    /// Sum of `replayed` over all `resumed` frames.
    pub replayed: u64,
    /// `error` frames received.
    pub errors: Vec<Value>,
    /// The stop condition was reached (false: timed out or gave up).
    pub done: bool,
    /// Notes on closes and reconnects, for failure messages.
    pub notes: Vec<String>,
}

/// A client that does what real clients do: on `lagged` or a lost connection it reconnects,
/// subscribes again and resumes from the last cursor it has.
///
/// It sends `subscribe` and `resume` back to back (the protocol allows that: the server answers
/// frames in order), and until the `resumed` frame arrives it does not take a new resume cursor
/// from events or `lagged` frames: a session that has not processed the `resume` yet reports
/// positions of its own live stream, which started when the connection opened, not where the
/// client left off. When `resumed` arrives, the newest event cursor received on the connection
/// becomes the cursor (live changes that arrived between `subscribe` and `resume` come before the
/// replayed ones and are not replayed again, so the newest is not necessarily the last).
pub struct ResumingCollector {
    /// The `/ws` URL.
    url: String,
    /// Subscribe fields (as for [`WsClient::subscribe`]).
    fields: Value,
    /// The current connection.
    client: Option<WsClient>,
    /// The cursor to resume from (last event, or a `lagged` frame's cursor).
    cursor: Option<String>,
    /// A `resume` was sent on this connection and its `resumed` has not arrived.
    resume_pending: bool,
    /// The newest event cursor received on the current connection.
    newest_on_connection: Option<String>,
    /// Events received so far (shared, for the test's wait conditions).
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// What was seen.
    pub out: Collected,
}

impl ResumingCollector {
    /// Connects and subscribes (fails the test if that does not work).
    pub async fn connect(url: &str, fields: Value) -> ResumingCollector {
        let mut client = WsClient::connect(url).await;
        client.subscribe("c", fields.clone()).await;
        ResumingCollector {
            url: url.to_owned(),
            fields,
            client: Some(client),
            cursor: None,
            resume_pending: false,
            newest_on_connection: None,
            progress: Default::default(),
            out: Collected::default(),
        }
    }

    /// A counter of events received, readable from other tasks.
    pub fn progress(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        std::sync::Arc::clone(&self.progress)
    }

    /// Reconnects (retrying while the server is down), then sends `subscribe` and `resume`.
    /// Returns false when the deadline passed first.
    async fn reconnect(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut attempts = 0u32;
        loop {
            if tokio::time::Instant::now() >= deadline || attempts > 10_000 {
                self.out
                    .notes
                    .push(format!("gave up reconnecting after {attempts} attempts"));
                return false;
            }
            attempts += 1;
            match WsClient::try_connect(&self.url, Duration::from_secs(5)).await {
                Ok((mut c, _)) => {
                    let mut frame = json!({"type": "subscribe", "id": "c"});
                    if let Value::Object(m) = self.fields.clone() {
                        for (k, v) in m {
                            frame[k] = v;
                        }
                    }
                    let mut frames = vec![frame];
                    if let Some(cur) = &self.cursor {
                        frames.push(json!({"type": "resume", "cursor": cur}));
                    }
                    let mut ok = true;
                    for f in &frames {
                        ok &= c.socket.feed(Message::text(f.to_string())).await.is_ok();
                    }
                    ok &= c.socket.flush().await.is_ok();
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    self.resume_pending = self.cursor.is_some();
                    self.newest_on_connection = None;
                    self.out.notes.push(match &self.cursor {
                        Some(cur) => format!("reconnected; resume from {cur}"),
                        None => "reconnected without a cursor: live only".to_owned(),
                    });
                    self.out.reconnects += 1;
                    self.client = Some(c);
                    return true;
                }
                Err(e) => {
                    if attempts == 1 {
                        self.out.notes.push(format!("reconnect failed: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Reads until `stop` (called once per event, in order) returns true or `timeout` passes.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&SeenEvent) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.client.is_none() && !self.reconnect(deadline).await {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                self.out.notes.push("timed out".to_owned());
                return;
            }
            let client = self.client.as_mut().expect("connected");
            let frame = client.next_raw(left).await;
            let Some(f) = frame else {
                if tokio::time::Instant::now() >= deadline {
                    self.out
                        .notes
                        .push(format!("timed out after {} events", self.out.events.len()));
                    return;
                }
                let code = client.closed;
                self.out.notes.push(format!(
                    "connection ended (close code {code:?}) after {} events{}",
                    self.out.events.len(),
                    if self.resume_pending {
                        ", before `resumed`"
                    } else {
                        ""
                    }
                ));
                self.client = None;
                continue;
            };
            match f["type"].as_str() {
                Some("event") => {
                    let ev = SeenEvent::from_frame(&f);
                    if self
                        .newest_on_connection
                        .as_ref()
                        .is_none_or(|c| *c < ev.cursor)
                    {
                        self.newest_on_connection = Some(ev.cursor.clone());
                    }
                    if !self.resume_pending {
                        self.cursor = Some(ev.cursor.clone());
                    }
                    let stop_now = stop(&ev);
                    self.out.events.push(ev);
                    self.progress
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if stop_now {
                        self.out.done = true;
                        return;
                    }
                }
                Some("lagged") => {
                    self.out.lagged += 1;
                    if self.resume_pending {
                        self.out.notes.push(format!(
                            "lagged before `resumed` (cursor {}): keeping {:?}",
                            f["cursor"], self.cursor
                        ));
                    } else if let Some(c) = f["cursor"].as_str() {
                        self.cursor = Some(c.to_owned());
                    }
                }
                Some("resumed") => {
                    self.resume_pending = false;
                    self.out.replayed += f["replayed"].as_u64().unwrap_or(0);
                    if let Some(c) = &self.newest_on_connection {
                        self.cursor = Some(c.clone());
                    }
                }
                Some("error") => {
                    let fatal = f["code"] == "cursor_expired";
                    self.out.errors.push(f);
                    if fatal {
                        self.out.notes.push("cursor_expired: giving up".to_owned());
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads until `n` distinct ids have arrived or `timeout` passes.
    pub async fn collect(&mut self, n: usize, timeout: Duration) {
        let mut ids = std::collections::HashSet::with_capacity(n);
        self.collect_until(timeout, |ev| {
            if let Some(id) = &ev.id {
                ids.insert(id.clone());
            }
            ids.len() >= n
        })
        .await;
    }

    /// Closes the connection (if any) and returns what was seen.
    pub async fn finish(mut self) -> Collected {
        if let Some(mut c) = self.client.take() {
            let _ = c.socket.close(None).await;
        }
        self.out
    }
}

/// Connects, subscribes with `subscribe_fields`, and collects until `n` distinct ids arrived
/// (or `timeout`), reconnecting and resuming from the last cursor after `lagged` or a lost
/// connection, as real clients do.
pub async fn collect_with_resume(
    url: &str,
    subscribe_fields: Value,
    n: usize,
    timeout: Duration,
) -> Collected {
    let mut c = ResumingCollector::connect(url, subscribe_fields).await;
    c.collect(n, timeout).await;
    c.finish().await
}
