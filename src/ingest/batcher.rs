//! Adaptive batching: requests from many producers are grouped into shared database writes.
//!
//! Each request is placed in a tier (high, medium, low frequency) by its event types. A tier is
//! written when it holds `max_events` events, when its oldest request has waited `max_wait`, or —
//! with eager flushing on — at once when no write is in flight, so an idle server adds no latency
//! and a busy one builds larger batches. Up to [`MAX_WRITERS`] writes run concurrently. A request
//! is never split: its events share one statement (one transaction), and its producer is answered
//! only after that commit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::{IngestError, IngestErrorCode};
use super::request::{Durability, Request};
use super::writer::Writer;
use crate::config::BatchConfig;
use crate::events::EventRecord;

/// Most database writes in flight at once.
pub const MAX_WRITERS: usize = 4;
/// Capacity of the request queue into the batcher; a full queue makes producers wait
/// (backpressure), it never drops.
pub const QUEUE_CAPACITY: usize = 1024;

/// Batch tiers, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// High-frequency event types.
    High = 0,
    /// Medium frequency, and every type not listed elsewhere.
    Medium = 1,
    /// Low-frequency event types.
    Low = 2,
}

impl BatchConfig {
    /// The tier of one event type.
    pub fn tier_of(&self, event_type: &str) -> Tier {
        if self
            .high_types
            .iter()
            .any(|p| pattern_matches(p, event_type))
        {
            Tier::High
        } else if self
            .low_types
            .iter()
            .any(|p| pattern_matches(p, event_type))
        {
            Tier::Low
        } else {
            Tier::Medium
        }
    }

    /// The tier of a request: the one with the shortest wait among its events' tiers.
    pub fn tier_of_request(&self, events: &[EventRecord]) -> Tier {
        let mut best = Tier::Low;
        let mut best_wait = Duration::MAX;
        for e in events {
            let t = self.tier_of(&e.event_type);
            let w = self.tiers[t as usize].max_wait;
            if w < best_wait {
                best = t;
                best_wait = w;
            }
        }
        best
    }
}

/// `prefix.*` matches by prefix; anything else matches exactly.
fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Handle producers use to submit requests.
#[derive(Debug, Clone)]
pub struct Batcher {
    /// Queue into the batcher task.
    tx: mpsc::Sender<(Tier, Request)>,
    /// Tier configuration.
    config: Arc<BatchConfig>,
}

impl Batcher {
    /// Starts the batcher task; it runs until `shutdown` is cancelled, then writes what is pending.
    pub fn spawn(
        writer: Arc<Writer>,
        config: BatchConfig,
        shutdown: CancellationToken,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let config = Arc::new(config);
        let task = BatcherTask {
            writer,
            config: Arc::clone(&config),
            rx,
            pending: Default::default(),
            writers: JoinSet::new(),
        };
        let handle = tokio::spawn(task.run(shutdown));
        (Batcher { tx, config }, handle)
    }

    /// Writes the events and returns once they are durable, saying where.
    pub async fn submit(&self, events: Vec<EventRecord>) -> Result<Durability, IngestError> {
        let tier = self.config.tier_of_request(&events);
        let (reply, rx) = oneshot::channel();
        let req = Request {
            events,
            reply,
            queued_at: Instant::now(),
        };
        self.tx
            .send((tier, req))
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }
}

/// The error producers get once the batcher has stopped.
fn shutting_down() -> IngestError {
    IngestError::new(
        IngestErrorCode::ShuttingDown,
        "walcast is shutting down and accepts no more events; retry against another node or later",
    )
}

/// Pending requests of one tier.
#[derive(Debug, Default)]
struct TierQueue {
    /// Requests in arrival order.
    requests: VecDeque<Request>,
    /// Events in `requests`.
    events: usize,
}

/// The batcher's state, owned by its task.
struct BatcherTask {
    /// Writes batches (database, spool, dead letters).
    writer: Arc<Writer>,
    /// Tiers.
    config: Arc<BatchConfig>,
    /// Incoming requests.
    rx: mpsc::Receiver<(Tier, Request)>,
    /// Pending requests per tier.
    pending: [TierQueue; 3],
    /// Writes in flight.
    writers: JoinSet<()>,
}

impl BatcherTask {
    /// The event loop.
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            self.start_due_writes(false);
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown; stop taking requests, write everything pending.
                _ = shutdown.cancelled() => break,
                // PRIORITY 2: a write finished; a writer slot is free.
                Some(_) = self.writers.join_next(), if !self.writers.is_empty() => {}
                // PRIORITY 3: a new request.
                msg = self.rx.recv() => match msg {
                    Some((tier, req)) => self.push(tier, req),
                    None => break,
                },
                // PRIORITY 4: a tier's wait ran out.
                _ = sleep_until(deadline) => {}
            }
        }
        self.rx.close();
        while let Ok((tier, req)) = self.rx.try_recv() {
            self.push(tier, req);
        }
        loop {
            self.start_due_writes(true);
            if self.writers.join_next().await.is_none()
                && self.pending.iter().all(|q| q.requests.is_empty())
            {
                break;
            }
        }
    }

    /// Queues a request in its tier.
    fn push(&mut self, tier: Tier, req: Request) {
        let q = &mut self.pending[tier as usize];
        q.events += req.events.len();
        q.requests.push_back(req);
    }

    /// The earliest time a tier's oldest request reaches its wait.
    fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .zip(self.config.tiers.iter())
            .filter_map(|(q, t)| q.requests.front().map(|r| r.queued_at + t.max_wait))
            .min()
    }

    /// Starts writes for every tier that is due while writer slots are free.
    fn start_due_writes(&mut self, flush_all: bool) {
        let now = Instant::now();
        for tier in 0..3 {
            loop {
                if self.writers.len() >= MAX_WRITERS {
                    return;
                }
                let cfg = self.config.tiers[tier];
                let q = &self.pending[tier];
                let Some(oldest) = q.requests.front() else {
                    break;
                };
                let due = flush_all
                    || q.events >= cfg.max_events
                    || now >= oldest.queued_at + cfg.max_wait
                    || (self.config.eager && self.writers.is_empty());
                if !due {
                    break;
                }
                let batch = self.take_batch(tier, cfg.max_events);
                let writer = Arc::clone(&self.writer);
                self.writers
                    .spawn(async move { writer.write_batch(batch).await });
            }
        }
    }

    /// Takes whole requests from a tier until `max_events` is reached (at least one request).
    fn take_batch(&mut self, tier: usize, max_events: usize) -> Vec<Request> {
        let q = &mut self.pending[tier];
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(front) = q.requests.front() {
            if !out.is_empty() && n + front.events.len() > max_events {
                break;
            }
            n += front.events.len();
            if let Some(r) = q.requests.pop_front() {
                out.push(r);
            }
        }
        q.events -= n;
        out
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_patterns() {
        let c = BatchConfig::default();
        assert_eq!(c.tier_of("cache.hit_rate"), Tier::High);
        assert_eq!(c.tier_of("metrics.cpu"), Tier::High);
        assert_eq!(c.tier_of("health_check"), Tier::Low);
        assert_eq!(c.tier_of("health.db"), Tier::Low);
        assert_eq!(c.tier_of("session"), Tier::Medium);
        assert!(pattern_matches("a.*", "a.b"));
        assert!(!pattern_matches("a.*", "ab"));
    }
}
