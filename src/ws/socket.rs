//! What both WebSocket endpoints share about their sockets: limits, close codes, how a session
//! step ends, and timed writes.
//!
//! Sessions are generic over the socket's halves ([`ClientSink`], [`ClientStream`]): in the
//! server they are axum's split `WebSocket`; in unit tests, channels. Both write through an
//! [`Outbox`], which counts what they send.

use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream};

use crate::admin::clients::ClientHandle;
use crate::hub::Backlog;
use crate::metrics::Metrics;

/// Frames written per flush.
pub const WRITE_BATCH: usize = 256;
/// Bytes of changes a session takes from the hub for one batch (it stops at [`WRITE_BATCH`]
/// frames or once it holds this much): with small rows a batch is 256 frames, with 1 MB rows
/// it is one or two, so what a session holds privately stays small next to its byte budget.
pub const WRITE_BATCH_BYTES: u64 = 1 << 20;
/// A write that cannot complete in this time closes the connection (the peer stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection: clients send only small control frames, and the default
/// (128 KiB) would dominate the memory of idle connections.
pub const READ_BUFFER: usize = 4 << 10;
/// Largest message a client may send on `/ws` (control frames only). A larger one closes the
/// socket with [`CLOSE_TOO_BIG`].
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;
/// Room for a Realtime frame's envelope (topic, event, refs) around its payload: the hard frame
/// cap of the Realtime endpoint is its payload limit plus this.
pub const FRAME_ENVELOPE: usize = 64 << 10;
/// Bytes tungstenite may buffer for a slow socket before writes fail.
pub const MAX_WRITE_BUFFER: usize = 16 << 20;
/// Most subscriptions on one `/ws` connection.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// Most column conditions over all subscriptions of one `/ws` connection: every change is
/// matched against all of them, so they bound one client's share of the matching work.
pub const MAX_CONDITIONS: usize = 256;

/// Close code after a `lagged` frame or message: the client fell behind and must reconnect.
pub const CLOSE_LAGGED: u16 = 4008;
/// Close code on server shutdown (going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code after an idle timeout (a normal close).
pub const CLOSE_IDLE: u16 = 1000;
/// Close code when a client's token expires or its role loses the table (policy violation).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code after a client message over the endpoint's hard frame cap (message too big).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Whether a read error is a client message over the frame cap (the WebSocket library refuses
/// it before reading it whole).
pub fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Message too long") || text.contains("Space limit exceeded")
}

/// Wall-clock time as a session reads it: the Unix time at the session's start plus the
/// runtime's monotonic time since, so that token expiry follows the same clock as the
/// session's timers (and paused time in tests moves both).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix time in milliseconds at `start`.
    start_ms: i64,
    /// When the clock was started.
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Clock {
            start_ms: chrono::Utc::now().timestamp_millis(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(&self) -> i64 {
        self.unix_ms().div_euclid(1000)
    }
}

/// Why a session step stopped the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer went away or a write failed.
    Gone,
    /// The session closed the socket (lag, shutdown, idle, fatal error).
    Closed,
    /// The session's backlog went over its byte budget while it waited: it must let go of the
    /// hub and be cut with `lagged` (the socket is still open).
    OverBudget,
}

/// The write half of a client socket.
pub trait ClientSink: Sink<Message, Error = axum::Error> + Unpin + Send {}
impl<T: Sink<Message, Error = axum::Error> + Unpin + Send> ClientSink for T {}

/// The read half of a client socket.
pub trait ClientStream: Stream<Item = Result<Message, axum::Error>> + Unpin + Send {}
impl<T: Stream<Item = Result<Message, axum::Error>> + Unpin + Send> ClientStream for T {}

/// Maps a timed write's outcome: anything but success means the peer is gone.
fn timed<E>(r: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Result<(), End> {
    match r {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Gone),
    }
}

/// Queues a frame without flushing, within [`WRITE_TIMEOUT`].
pub async fn feed(sink: &mut impl ClientSink, msg: Message) -> Result<(), End> {
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.feed(msg)).await)
}

/// Flushes queued frames, within [`WRITE_TIMEOUT`].
pub async fn flush(sink: &mut impl ClientSink) -> Result<(), End> {
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.flush()).await)
}

/// Sends one text frame now, within [`WRITE_TIMEOUT`].
pub async fn send_text(sink: &mut impl ClientSink, text: String) -> Result<(), End> {
    let msg = Message::Text(Utf8Bytes::from(text));
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await)
}

/// Sends a close frame with `code` and `reason`, within [`WRITE_TIMEOUT`].
pub async fn close(sink: &mut impl ClientSink, code: u16, reason: &'static str) -> Result<(), End> {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await)
}

/// A session's write side: the socket's sink, with every frame counted in the client registry
/// and every delivery in the metrics. Every write (and whatever else the session wraps with
/// [`Outbox::guarded`]) is raced against the session's byte budget: a session stuck on a full
/// socket is told [`End::OverBudget`] as soon as its backlog passes the budget, not after the
/// write timeout.
pub struct Outbox<S> {
    /// The socket's write half.
    sink: S,
    /// Delivery counters.
    metrics: Arc<Metrics>,
    /// The session in the client registry (unregistered when the outbox is dropped).
    pub client: ClientHandle,
    /// The session's backlog in the hub, while it has one.
    budget: Option<Backlog>,
    /// In soft mode (a replay), an exceeded budget does not stop the write: it is noted here
    /// and the write goes on.
    soft: bool,
    /// The budget was exceeded during a soft-mode write.
    exceeded: bool,
}

/// Runs `step`, unless `budget` is exceeded first ([`End::OverBudget`]). A step that completes
/// at once never looks at the budget. In soft mode an exceeded budget sets `exceeded` and the
/// step runs to its end.
///
/// `step` is pinned by the caller: moved in here, it would take its room in this future twice
/// (the argument and the pinned copy), in every session's future.
async fn within<T, F: Future<Output = Result<T, End>>>(
    budget: Option<&Backlog>,
    soft: bool,
    exceeded: &mut bool,
    mut step: Pin<&mut F>,
) -> Result<T, End> {
    let Some(b) = budget.filter(|_| !*exceeded) else {
        return step.await;
    };
    tokio::select! {
        biased;
        r = step.as_mut() => return r,
        () = b.exceeded() => {}
    }
    if !soft {
        return Err(End::OverBudget);
    }
    *exceeded = true;
    step.await
}

impl<S: ClientSink> Outbox<S> {
    /// Writes to `sink`, counting in `metrics` and `client`, within the byte budget of
    /// `budget`.
    pub fn new(sink: S, metrics: Arc<Metrics>, client: ClientHandle, budget: Backlog) -> Self {
        Outbox {
            sink,
            metrics,
            client,
            budget: Some(budget),
            soft: false,
            exceeded: false,
        }
    }

    /// Stops watching the budget (the session is being cut and writes its last frames).
    pub fn unguard(&mut self) {
        self.budget = None;
    }

    /// Soft mode on or off: while on (a replay, which must run to its end), an exceeded budget
    /// does not stop a step; [`Outbox::take_exceeded`] tells the session afterwards.
    pub fn set_soft(&mut self, soft: bool) {
        self.soft = soft;
    }

    /// Whether the budget was exceeded during a soft-mode step (once).
    pub fn take_exceeded(&mut self) -> bool {
        std::mem::take(&mut self.exceeded)
    }

    /// Runs `step` (a wait that could take long: a database check, a replay), unless the
    /// session's budget is exceeded first.
    /// `step` is pinned by the caller (see [`within`]).
    pub async fn guarded<T, F: Future<Output = Result<T, End>>>(
        &mut self,
        step: Pin<&mut F>,
    ) -> Result<T, End> {
        within(self.budget.as_ref(), self.soft, &mut self.exceeded, step).await
    }

    /// Queues a frame without flushing (a delivery, counted at [`Outbox::flush`]).
    pub async fn feed(&mut self, msg: Message) -> Result<(), End> {
        // Most frames go straight into the socket's buffer: take them without arming the
        // write timeout or racing the byte budget, which only matter when the sink must wait.
        let ready = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut self.sink).poll_ready(cx))
        })
        .await;
        match ready {
            std::task::Poll::Ready(Ok(())) => {
                return std::pin::Pin::new(&mut self.sink)
                    .start_send(msg)
                    .map_err(|_| End::Gone);
            }
            std::task::Poll::Ready(Err(_)) => return Err(End::Gone),
            std::task::Poll::Pending => {}
        }
        let step = std::pin::pin!(feed(&mut self.sink, msg));
        within(self.budget.as_ref(), self.soft, &mut self.exceeded, step).await
    }

    /// Flushes queued frames, counting `n` deliveries.
    pub async fn flush(&mut self, n: usize) -> Result<(), End> {
        if n == 0 {
            return Ok(());
        }
        self.metrics.deliveries.add(n as u64);
        self.client.sent(n);
        let step = std::pin::pin!(flush(&mut self.sink));
        within(self.budget.as_ref(), self.soft, &mut self.exceeded, step).await
    }

    /// Sends one text frame now (a control frame, not a delivery).
    pub async fn send(&mut self, text: String) -> Result<(), End> {
        self.client.sent(1);
        let step = std::pin::pin!(send_text(&mut self.sink, text));
        within(self.budget.as_ref(), self.soft, &mut self.exceeded, step).await
    }

    /// Sends a close frame (never cut short by the budget).
    pub async fn close(&mut self, code: u16, reason: &'static str) -> Result<(), End> {
        close(&mut self.sink, code, reason).await
    }
}

/// A socket made of channels, for unit tests of the sessions.
#[cfg(test)]
pub(crate) mod testing {
    use axum::extract::ws::Message;
    use futures::channel::mpsc;
    use futures::{SinkExt, StreamExt};

    use super::{ClientSink, ClientStream};

    /// The client's end of a test socket.
    pub(crate) struct Peer {
        /// Frames to the session.
        pub(crate) tx: mpsc::Sender<Result<Message, axum::Error>>,
        /// Frames from the session.
        pub(crate) rx: mpsc::Receiver<Message>,
    }

    impl Peer {
        /// Sends a text frame to the session.
        pub(crate) async fn send(&mut self, text: &str) {
            self.tx
                .send(Ok(Message::Text(text.into())))
                .await
                .expect("session gone");
        }

        /// The next frame from the session (`None` when it dropped its sink).
        pub(crate) async fn next(&mut self) -> Option<Message> {
            self.rx.next().await
        }

        /// The next text frame, as JSON (panics on anything else).
        pub(crate) async fn next_json(&mut self) -> serde_json::Value {
            match self.next().await {
                Some(Message::Text(t)) => serde_json::from_str(&t).expect("JSON frame"),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }

        /// The next frame, which must be a close frame; its code.
        pub(crate) async fn next_close(&mut self) -> u16 {
            match self.next().await {
                Some(Message::Close(Some(f))) => f.code,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// A session's socket halves and the client's end.
    pub(crate) fn socket() -> (impl ClientSink, impl ClientStream, Peer) {
        socket_holding(1024)
    }

    /// Like [`socket`], where at most about `frames` frames wait for the client to read them
    /// (then writes block, as on a full TCP socket).
    pub(crate) fn socket_holding(frames: usize) -> (impl ClientSink, impl ClientStream, Peer) {
        let (to_session, from_client) = mpsc::channel(64);
        let (to_client, from_session) = mpsc::channel(frames);
        let sink = to_client.sink_map_err(axum::Error::new);
        (
            sink,
            from_client,
            Peer {
                tx: to_session,
                rx: from_session,
            },
        )
    }
}
