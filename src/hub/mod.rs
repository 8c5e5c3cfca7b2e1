//! Fan-out hub: every change the reader hands off reaches every subscribed session.
//!
//! The reader calls [`Hub::publish`], which never blocks: changes go into one bounded broadcast
//! ring ([`Hub::new`] `capacity`), shared by all sessions. Each session filters on its own task
//! ([`crate::filter`]) and pulls the encoded frame from the item, which is encoded at most once
//! per wire format by the encoder the session passes in ([`HubItem::ws_frame`],
//! [`HubItem::realtime_data`]) and shared by reference among all clients. A session that falls
//! more than `capacity` items behind sees `Lagged` and must close with an explicit `lagged`
//! frame; the reader and other sessions are unaffected. The hub knows no wire format, socket
//! or pgoutput: a [`Frame`] is only shared UTF-8 text.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast;

use crate::decode::{Change, Cursor};
use crate::metrics::Metrics;

/// An encoded text frame, shared by reference among all sessions that send it (UTF-8 bytes
/// that a WebSocket text message takes without copying or re-checking).
pub type Frame = axum::extract::ws::Utf8Bytes;

/// One change in the ring, with its lazily encoded frames.
#[derive(Debug)]
pub struct HubItem {
    /// The change.
    pub change: Change,
    /// The `/ws` event frame, encoded on first use.
    ws: OnceLock<Frame>,
    /// The Realtime change `data` object, encoded on first use.
    realtime: OnceLock<Arc<str>>,
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
    pub rx: broadcast::Receiver<Arc<HubItem>>,
    /// The newest cursor published before `rx` was created (`None`: nothing yet).
    pub last: Option<Cursor>,
    /// Where a session without a resume cursor starts: `max(last, floor)`.
    pub live_from: Option<Cursor>,
}

impl Hub {
    /// A hub whose ring holds `capacity` changes.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Hub {
            inner: Arc::new(Inner {
                tx,
                positions: Mutex::new(Positions::default()),
            }),
        }
    }

    /// Hands one change to every session. Changes at or before the last published cursor are
    /// dropped (the reader re-streams the retention window after a reconnect). Never blocks.
    pub fn publish(&self, change: Change) -> bool {
        let mut pos = self.lock();
        if pos.last.is_some_and(|l| change.cursor <= l) {
            return false;
        }
        pos.last = Some(change.cursor);
        let _ = self.inner.tx.send(Arc::new(HubItem {
            change,
            ws: OnceLock::new(),
            realtime: OnceLock::new(),
        }));
        true
    }

    /// Sets the startup floor (see [`Subscription::live_from`]); the reader calls it once.
    pub fn set_floor(&self, floor: Cursor) {
        let mut pos = self.lock();
        if pos.floor.is_none() {
            pos.floor = Some(floor);
        }
    }

    /// Subscribes to items published from now on.
    pub fn subscribe(&self) -> Subscription {
        let pos = self.lock();
        let rx = self.inner.tx.subscribe();
        let live_from = match (pos.last, pos.floor) {
            (Some(l), Some(f)) => Some(l.max(f)),
            (l, f) => l.or(f),
        };
        Subscription {
            rx,
            last: pos.last,
            live_from,
        }
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
