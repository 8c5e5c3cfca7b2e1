//! Fan-out hub: every change the reader hands off reaches every subscribed session.
//!
//! The reader calls [`Hub::publish`], which never blocks: changes go into one bounded broadcast
//! ring ([`Hub::new`] `capacity`), shared by all sessions. Each session filters on its own task
//! ([`crate::filter`], with the change's shared [`ColumnTexts`]) and pulls the encoded frame from
//! the item, which is encoded at most once per wire format by the encoder the session passes in
//! ([`HubItem::ws_frame`], [`HubItem::realtime_data`]) and shared by reference among all
//! clients. The hub knows no socket or pgoutput: a [`Frame`] is only shared UTF-8 text.
//!
//! # Two budgets per session: changes and bytes
//!
//! A change stays in memory until every session has taken it from the ring, so the ring holds
//! the backlog of the slowest session, and nothing else.
//! - **Count.** A session that falls more than `capacity` changes behind sees `Lagged`.
//! - **Bytes.** Every change is charged what it holds when it is published ([`HubItem::bytes`]:
//!   its decoded rows plus the texts of the wire formats in use, one for `/ws` and two for
//!   Realtime (the `data` object and one shared whole frame), estimated by [`Change::size`]),
//!   and the hub counts the bytes published so far. A session's [`Backlog`] is the bytes
//!   published after the newest change it took; over the client byte budget, the session must
//!   be cut exactly like a lagged one. A session stuck writing to a full socket cannot see the
//!   ring, so it races every blocking step against [`Backlog::exceeded`], which the hub wakes
//!   whenever the bytes published cross a step of an eighth of the budget.
//!
//! Changes are freed once every session has taken them, so all changes held lie in the last
//! budget's worth of bytes published, plus the batch each session has taken and is writing
//! (bounded by the session: see [`crate::ws::socket::WRITE_BATCH_BYTES`]): the ring's worst case
//! is one client budget, however many clients stall. `walcast_hub_bytes` shows what is held.
//!
//! Either way the reader and the other sessions are unaffected.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use crate::decode::{Change, Cursor};
use crate::filter::ColumnTexts;
use crate::metrics::Metrics;

/// An encoded text frame, shared by reference among all sessions that send it (UTF-8 bytes
/// that a WebSocket text message takes without copying or re-checking).
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Bytes charged for an item besides its rows: the item, its `Arc`, the ring slot, the
/// frames' envelopes (cursor, table, timestamps).
const ITEM_OVERHEAD: u64 = 512;

/// The smallest step of bytes published at which sessions waiting on their budget are woken.
const MIN_WAKE_STEP: u64 = 64 << 10;

/// One change in the ring, with its lazily encoded frames.
#[derive(Debug)]
pub struct HubItem {
    /// The change.
    pub change: Change,
    /// Compact texts of the filtered row's columns, made once for all subscribers' filters.
    pub texts: ColumnTexts,
    /// The `/ws` event frame, encoded on first use.
    ws: OnceLock<Frame>,
    /// The Realtime change `data` object, encoded on first use.
    realtime: OnceLock<Arc<str>>,
    /// A whole Realtime frame of the change, with what it was made for (topic, binding ids,
    /// serializer: a key the Realtime sessions define), kept for every channel that would send
    /// the same text: typically every subscriber of one topic with the same bindings.
    realtime_frame: OnceLock<(Box<dyn std::any::Any + Send + Sync>, Frame)>,
    /// Bytes charged for this item.
    bytes: u64,
    /// Bytes published up to and including this item.
    end: u64,
    /// Where `bytes` is shown while the item lives.
    metrics: Arc<Metrics>,
}

impl HubItem {
    /// The plain `/ws` event frame (encoded once by `encode`, then shared).
    pub fn ws_frame(&self, metrics: &Metrics, encode: impl FnOnce(&Change) -> String) -> Frame {
        self.ws
            .get_or_init(|| {
                metrics.frames_encoded.inc();
                Frame::from(encode(&self.change))
            })
            .clone()
    }

    /// The Realtime `postgres_changes` `data` object (encoded once by `encode`, then shared;
    /// each channel only wraps it with its topic and binding ids).
    pub fn realtime_data(
        &self,
        metrics: &Metrics,
        encode: impl FnOnce(&Change) -> String,
    ) -> Arc<str> {
        Arc::clone(self.realtime.get_or_init(|| {
            metrics.frames_encoded.inc();
            Arc::from(encode(&self.change))
        }))
    }

    /// A Realtime frame of this change for the channel whose key `matches`: the one kept on the
    /// item when it was made for an equal key, else `make`'s (kept when none is yet). `make`
    /// returns the key and the frame's text.
    pub fn realtime_frame<K: std::any::Any + Send + Sync>(
        &self,
        matches: impl FnOnce(&K) -> bool,
        make: impl FnOnce() -> (K, String),
    ) -> Frame {
        if let Some((key, frame)) = self.realtime_frame.get() {
            if key.downcast_ref::<K>().is_some_and(matches) {
                return frame.clone();
            }
            return Frame::from(make().1);
        }
        let (key, text) = make();
        let frame = Frame::from(text);
        // Another session may have kept its own meanwhile: either is right for its own key.
        let _ = self.realtime_frame.set((Box::new(key), frame.clone()));
        frame
    }

    /// An item outside the ring, for one session's own use (a replay read again from the WAL):
    /// nothing is charged for it.
    pub fn detached(change: Change, metrics: Arc<Metrics>) -> HubItem {
        HubItem {
            change,
            texts: ColumnTexts::new(),
            ws: OnceLock::new(),
            realtime: OnceLock::new(),
            realtime_frame: OnceLock::new(),
            bytes: 0,
            end: 0,
            metrics,
        }
    }

    /// Bytes charged for this item: its rows and the texts of the wire formats in use (one for
    /// `/ws`, two for Realtime: the `data` object and one whole frame).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for HubItem {
    fn drop(&mut self) {
        self.metrics.hub_bytes.add(-(self.bytes as i64));
    }
}

/// Which frames a subscriber takes from the items (decides what a change is charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `/ws` event frames.
    Ws,
    /// Realtime `data` objects.
    Realtime,
    /// None (a subscriber that encodes for itself, like the consistency checker).
    None,
}

/// Shared handle to the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Shared state.
    inner: Arc<Inner>,
}

/// The hub's shared state.
#[derive(Debug)]
struct Inner {
    /// The ring.
    tx: broadcast::Sender<Arc<HubItem>>,
    /// Position bookkeeping, locked together with sends so that a subscription sees exactly the
    /// items published after the position it is told.
    positions: Mutex<Positions>,
    /// Bytes charged for every item published so far (written under `positions`).
    published: AtomicU64,
    /// Most bytes a session may have published after the newest item it took.
    client_bytes: u64,
    /// Sessions waiting on their budget are woken each time `published` crosses a multiple.
    wake_step: u64,
    /// Wakes sessions waiting on their budget.
    advanced: Notify,
    /// Subscribers taking `/ws` frames.
    ws_subscribers: AtomicUsize,
    /// Subscribers taking Realtime frames.
    realtime_subscribers: AtomicUsize,
    /// Counters and the bytes gauge.
    metrics: Arc<Metrics>,
}

impl Inner {
    /// The subscriber count of a format.
    fn subscribers(&self, format: Format) -> Option<&AtomicUsize> {
        match format {
            Format::Ws => Some(&self.ws_subscribers),
            Format::Realtime => Some(&self.realtime_subscribers),
            Format::None => None,
        }
    }
}

/// What has been published.
#[derive(Debug, Default, Clone, Copy)]
struct Positions {
    /// The newest published cursor.
    last: Option<Cursor>,
    /// Changes at or before this cursor were committed before walcast started; a new session
    /// without a resume cursor does not receive them when the reader re-streams them.
    floor: Option<Cursor>,
}

/// A session's view of the hub.
#[derive(Debug)]
pub struct Subscription {
    /// Items published after `start`.
    rx: broadcast::Receiver<Arc<HubItem>>,
    /// The newest cursor published before `rx` was created (`None`: nothing yet).
    pub last: Option<Cursor>,
    /// Where a session without a resume cursor starts: `max(last, floor)`.
    pub live_from: Option<Cursor>,
    /// The session's backlog in bytes.
    backlog: Backlog,
    /// Which frames it takes (counted while it lives).
    format: Format,
}

/// A session's backlog in bytes: what was published after the newest change it took. Cloned
/// into the session's write side, which races its blocking writes against [`Backlog::exceeded`].
#[derive(Debug, Clone)]
pub struct Backlog {
    /// The hub.
    hub: Arc<Inner>,
    /// Bytes published up to the newest item taken (`u64::MAX` once released).
    taken: Arc<AtomicU64>,
}

impl Backlog {
    /// Bytes published after the newest change taken.
    pub fn bytes(&self) -> u64 {
        self.hub
            .published
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.load(Ordering::Acquire))
    }

    /// Whether the backlog is over the client byte budget.
    pub fn over(&self) -> bool {
        self.bytes() > self.hub.client_bytes
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.hub.client_bytes
    }

    /// Completes once the backlog is over the budget (at once if it is already).
    pub async fn exceeded(&self) {
        loop {
            let notified = self.hub.advanced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.over() {
                return;
            }
            notified.await;
        }
    }
}

impl Subscription {
    /// The next item (cancel safe). Taking it moves the session's backlog past it.
    pub async fn recv(&mut self) -> Result<Arc<HubItem>, RecvError> {
        let item = self.rx.recv().await?;
        self.backlog.taken.store(item.end, Ordering::Release);
        Ok(item)
    }

    /// The next item if one is ready.
    pub fn try_recv(&mut self) -> Result<Arc<HubItem>, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.backlog.taken.store(item.end, Ordering::Release);
        Ok(item)
    }

    /// The session's backlog (a handle sharing its position).
    pub fn backlog(&self) -> Backlog {
        self.backlog.clone()
    }

    /// Lets go of the ring: every change not yet taken is freed for this session, and the
    /// backlog reads zero from now on. For a session that is being cut.
    pub fn release(&mut self) {
        let (_, closed) = broadcast::channel(1);
        self.rx = closed;
        self.backlog.taken.store(u64::MAX, Ordering::Release);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(n) = self.backlog.hub.subscribers(self.format) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Hub {
    /// A hub whose ring holds `capacity` changes, where a session may have at most
    /// `client_bytes` published after the newest change it took.
    pub fn new(capacity: usize, client_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Hub {
            inner: Arc::new(Inner {
                tx,
                positions: Mutex::new(Positions::default()),
                published: AtomicU64::new(0),
                client_bytes,
                wake_step: (client_bytes / 8).max(MIN_WAKE_STEP),
                advanced: Notify::new(),
                ws_subscribers: AtomicUsize::new(0),
                realtime_subscribers: AtomicUsize::new(0),
                metrics,
            }),
        }
    }

    /// Hands one change to every session. Changes at or before the last published cursor are
    /// dropped (the reader re-streams the retention window after a reconnect). Never blocks.
    pub fn publish(&self, change: Change) -> bool {
        let inner = &self.inner;
        let size = change.size();
        // Realtime keeps two texts: the change's `data` and one whole frame.
        let formats = usize::from(inner.ws_subscribers.load(Ordering::Relaxed) > 0)
            + 2 * usize::from(inner.realtime_subscribers.load(Ordering::Relaxed) > 0);
        let bytes = ITEM_OVERHEAD + (size.heap + formats * size.text) as u64;
        let mut pos = self.lock();
        if pos.last.is_some_and(|l| change.cursor <= l) {
            return false;
        }
        pos.last = Some(change.cursor);
        let before = inner.published.load(Ordering::Relaxed);
        let end = before.saturating_add(bytes);
        inner.published.store(end, Ordering::Release);
        inner.metrics.hub_bytes.add(bytes as i64);
        inner.metrics.hub_published_bytes.add(bytes);
        let _ = inner.tx.send(Arc::new(HubItem {
            change,
            texts: ColumnTexts::new(),
            ws: OnceLock::new(),
            realtime: OnceLock::new(),
            realtime_frame: OnceLock::new(),
            bytes,
            end,
            metrics: Arc::clone(&inner.metrics),
        }));
        drop(pos);
        if end / inner.wake_step != before / inner.wake_step {
            inner.advanced.notify_waiters();
        }
        true
    }

    /// Sets the startup floor (see [`Subscription::live_from`]); the reader calls it once.
    pub fn set_floor(&self, floor: Cursor) {
        let mut pos = self.lock();
        if pos.floor.is_none() {
            pos.floor = Some(floor);
        }
    }

    /// Subscribes to items published from now on, taking `format`'s frames.
    pub fn subscribe(&self, format: Format) -> Subscription {
        if let Some(n) = self.inner.subscribers(format) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let pos = self.lock();
        let rx = self.inner.tx.subscribe();
        let taken = self.inner.published.load(Ordering::Acquire);
        Subscription {
            rx,
            last: pos.last,
            live_from: live_from(&pos),
            backlog: Backlog {
                hub: Arc::clone(&self.inner),
                taken: Arc::new(AtomicU64::new(taken)),
            },
            format,
        }
    }

    /// Subscribes `sub` again, from now on, keeping its backlog handle (which its write side
    /// holds): items published before are no longer its to take.
    pub fn resubscribe(&self, sub: &mut Subscription) {
        let pos = self.lock();
        sub.rx = self.inner.tx.subscribe();
        sub.last = pos.last;
        sub.live_from = live_from(&pos);
        sub.backlog.taken.store(
            self.inner.published.load(Ordering::Acquire),
            Ordering::Release,
        );
    }

    /// Where a session subscribing now starts (see [`Subscription::live_from`]).
    pub fn live_from(&self) -> Option<Cursor> {
        live_from(&self.lock())
    }

    /// The newest published cursor.
    pub fn last_published(&self) -> Option<Cursor> {
        self.lock().last
    }

    /// Sessions currently subscribed.
    pub fn receiver_count(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// Locks the positions (a poisoned lock still holds valid data).
    fn lock(&self) -> std::sync::MutexGuard<'_, Positions> {
        self.inner
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// `max(last, floor)`.
fn live_from(pos: &Positions) -> Option<Cursor> {
    match (pos.last, pos.floor) {
        (Some(l), Some(f)) => Some(l.max(f)),
        (l, f) => l.or(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change whose `data` holds `n` bytes of text.
    fn big(lsn: u64, n: usize) -> Change {
        let mut c = Change::sample(lsn);
        c.record
            .as_mut()
            .unwrap()
            .values
            .insert("data".into(), serde_json::json!({ "pad": "x".repeat(n) }));
        c
    }

    #[test]
    fn a_realtime_frame_is_shared_by_equal_keys_only() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(16, 1 << 20, Arc::clone(&metrics));
        let mut rt = hub.subscribe(Format::Realtime);
        hub.publish(big(1, 10));
        let item = rt.try_recv().unwrap();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let frame = |topic: &'static str| {
            item.realtime_frame(
                |k: &&str| *k == topic,
                || {
                    made.fetch_add(1, Ordering::Relaxed);
                    (topic, format!("frame for {topic}"))
                },
            )
        };
        let a = frame("realtime:a");
        let again = frame("realtime:a");
        assert_eq!(made.load(Ordering::Relaxed), 1, "made once for one key");
        assert_eq!(
            a.as_str().as_ptr(),
            again.as_str().as_ptr(),
            "the same bytes"
        );
        // Another key gets its own text, every time (only the first key is kept).
        assert_eq!(frame("realtime:b").as_str(), "frame for realtime:b");
        assert_eq!(frame("realtime:b").as_str(), "frame for realtime:b");
        assert_eq!(made.load(Ordering::Relaxed), 3);
        // A key of another type never matches.
        let other = item.realtime_frame(|_: &u32| true, || (7u32, "other".to_owned()));
        assert_eq!(other.as_str(), "other");
    }

    #[test]
    fn an_item_is_charged_its_rows_and_the_frames_of_the_formats_in_use() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(16, 1 << 20, Arc::clone(&metrics));
        let mut none = hub.subscribe(Format::None);
        hub.publish(big(1, 10_000));
        let rows_only = none.try_recv().unwrap().bytes();
        assert!((10_000..12_000).contains(&rows_only), "{rows_only}");
        let mut ws = hub.subscribe(Format::Ws);
        hub.publish(big(2, 10_000));
        let with_ws = ws.try_recv().unwrap().bytes();
        assert!((20_000..23_000).contains(&with_ws), "{with_ws}");
        let _rt = hub.subscribe(Format::Realtime);
        hub.publish(big(3, 10_000));
        // Realtime keeps two texts: the `data` object and one whole frame.
        let with_both = ws.try_recv().unwrap().bytes();
        assert!((40_000..45_000).contains(&with_both), "{with_both}");
        drop(ws);
        drop(_rt);
        drop(none);
        // Everything taken or released: nothing held.
        assert_eq!(metrics.hub_bytes.get(), 0);
    }

    #[test]
    fn the_backlog_is_what_was_published_after_the_newest_item_taken() {
        let hub = Hub::new(1024, 100_000, Arc::default());
        let mut sub = hub.subscribe(Format::Ws);
        let backlog = sub.backlog();
        assert_eq!(backlog.bytes(), 0);
        for lsn in 1..=4 {
            hub.publish(big(lsn, 10_000));
        }
        let four = backlog.bytes();
        assert!(four > 80_000 && !backlog.over(), "{four}");
        let first = sub.try_recv().unwrap();
        assert_eq!(backlog.bytes(), four - first.end);
        hub.publish(big(5, 10_000));
        hub.publish(big(6, 10_000));
        assert!(backlog.over(), "{}", backlog.bytes());
        // Taking everything brings it back to zero.
        while sub.try_recv().is_ok() {}
        assert_eq!(backlog.bytes(), 0);
        // A released subscription has no backlog, whatever is published.
        sub.release();
        hub.publish(big(7, 100_000));
        assert_eq!(backlog.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn exceeded_wakes_a_waiting_session_once_the_budget_is_crossed() {
        let hub = Hub::new(1024, 200_000, Arc::default());
        let sub = hub.subscribe(Format::Ws);
        let backlog = sub.backlog();
        let waiter = tokio::spawn(async move { backlog.exceeded().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut lsn = 0;
        while !sub.backlog().over() {
            lsn += 1;
            hub.publish(big(lsn, 10_000));
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn resubscribing_keeps_the_handle_and_starts_afresh() {
        let hub = Hub::new(1024, 1 << 20, Arc::default());
        let mut sub = hub.subscribe(Format::Ws);
        let backlog = sub.backlog();
        hub.publish(big(1, 10_000));
        assert!(backlog.bytes() > 0);
        hub.resubscribe(&mut sub);
        assert_eq!(backlog.bytes(), 0);
        assert!(sub.try_recv().is_err());
        assert_eq!(sub.last.map(|c| c.commit_lsn.0), Some(1));
    }
}
