//! A small cache of answers that expire: role checks and private-channel read checks are
//! reused for a while instead of asking Postgres on every join.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;

/// Answers reused for a while (`ttl`); cleared when `max` are held. Holds role checks and
/// private-channel read checks.
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    /// Answers and when they were asked.
    entries: Mutex<HashMap<K, (Instant, V)>>,
    /// How long an answer is reused.
    ttl: Duration,
    /// Most answers held.
    max: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    /// An empty cache.
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// The answer for `key` if it is recent enough.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        lock(&self.entries)
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `value` for `key`.
    pub(crate) fn put(&self, key: K, value: V) {
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }
}
