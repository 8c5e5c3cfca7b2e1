//! Stored broadcasts in `realtime.messages`: a client broadcast sent with `persist`, the
//! replay a private channel asks for when it joins (`config.broadcast.replay`), and the daily
//! partitions of a `realtime.messages` walcast created. The statements live in `sql/realtime/`;
//! the probes of private-channel checks are [`super::private`]'s.
//!
//! Rows are written and read as walcast's own database user: the channel's policies were asked
//! before (the join's read check, the write check of the first broadcast).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Pool;
use uuid::Uuid;

/// Longest wait for one statement of this module (a store holds up its client's socket).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most ids of stored broadcasts waiting for their own row to come back from the WAL (see
/// [`Echoes`]). A row comes back within the replication lag, so 4096 covers seconds of a busy
/// node; an id pushed out early only costs one duplicate delivery.
pub const MAX_ECHOES: usize = 4096;

/// Stores one client broadcast: `$1` id, `$2` topic, `$3` event, `$4` payload (jsonb), `$5`
/// binary payload.
const STORE_SQL: &str = include_str!("../../sql/realtime/store_broadcast.sql");

/// The newest `$3` private broadcasts of topic `$1` inserted since `$2` (ms since the epoch).
const REPLAY_SQL: &str = include_str!("../../sql/realtime/replay_broadcasts.sql");

/// Creates and drops daily partitions (`$1` days kept, `$2` days ahead).
const MAINTAIN_SQL: &str = include_str!("../../sql/realtime/maintain_messages.sql");

/// What went wrong with `realtime.messages`.
#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    /// No pool connection.
    #[error("no database connection for realtime.messages")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The statement failed.
    #[error("a statement on realtime.messages failed")]
    Db(#[source] tokio_postgres::Error),
    /// The statement took longer than [`STORE_TIMEOUT`].
    #[error("a statement on realtime.messages timed out")]
    Timeout,
}

impl MessagesError {
    /// A low-cardinality label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MessagesError::Pool(_) => "pool",
            MessagesError::Db(_) => "db",
            MessagesError::Timeout => "timeout",
        }
    }
}

/// The payload of a stored broadcast.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredPayload {
    /// A JSON payload (`payload`).
    Json(serde_json::Value),
    /// Raw bytes (`binary_payload`).
    Binary(Vec<u8>),
}

/// A broadcast read back for a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBroadcast {
    /// The row id.
    pub id: String,
    /// The event (empty when the row has none).
    pub event: String,
    /// The JSON payload, as text (`None`: SQL NULL).
    pub payload: Option<String>,
    /// The binary payload, when the message was sent as bytes.
    pub binary: Option<Vec<u8>>,
}

/// Ids of broadcasts this node relayed itself and stored: their rows come back from the WAL
/// and must not be delivered a second time. Bounded by [`MAX_ECHOES`].
#[derive(Debug, Default)]
pub struct Echoes {
    /// The ids, and their order for eviction.
    inner: Mutex<(HashSet<Uuid>, VecDeque<Uuid>)>,
}

impl Echoes {
    /// Locks the set (a poisoned lock still holds a consistent set).
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashSet<Uuid>, VecDeque<Uuid>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expects the row `id` back from the WAL.
    pub fn expect(&self, id: Uuid) {
        let mut g = self.lock();
        let (set, order) = &mut *g;
        if set.insert(id) {
            order.push_back(id);
        }
        while order.len() > MAX_ECHOES {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    /// Whether `id` was expected (and no longer is): the row is an echo to skip.
    pub fn take(&self, id: &Uuid) -> bool {
        let mut g = self.lock();
        let (set, order) = &mut *g;
        let found = set.remove(id);
        if found && let Some(i) = order.iter().position(|x| x == id) {
            order.remove(i);
        }
        found
    }
}

/// The store (see the module docs).
#[derive(Debug)]
pub struct MessageStore {
    /// Connections.
    pool: Pool,
    /// Stored broadcasts whose rows are still to come back from the WAL.
    echoes: Echoes,
}

impl MessageStore {
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        MessageStore {
            pool,
            echoes: Echoes::default(),
        }
    }

    /// The ids of broadcasts stored by this node and already relayed.
    pub fn echoes(&self) -> &Echoes {
        &self.echoes
    }

    /// Stores a broadcast this node relays itself on private channel `sub_topic`; its row is
    /// expected back from the WAL (and then skipped). Returns the row id.
    pub async fn store(
        &self,
        sub_topic: &str,
        event: &str,
        payload: StoredPayload,
    ) -> Result<Uuid, MessagesError> {
        let id = Uuid::new_v4();
        self.echoes.expect(id);
        let (json, binary) = match payload {
            StoredPayload::Json(v) => (Some(v), None),
            StoredPayload::Binary(b) => (None, Some(b)),
        };
        let run = async {
            let client = self.pool.get().await.map_err(MessagesError::Pool)?;
            client
                .execute(STORE_SQL, &[&id, &sub_topic, &event, &json, &binary])
                .await
                .map_err(MessagesError::Db)
        };
        let stored = tokio::time::timeout(STORE_TIMEOUT, run)
            .await
            .map_err(|_| MessagesError::Timeout)
            .and_then(|r| r);
        match stored {
            Ok(_) => Ok(id),
            Err(e) => {
                self.echoes.take(&id);
                Err(e)
            }
        }
    }

    /// The newest `limit` private broadcasts of `sub_topic` stored since `since_ms`
    /// (milliseconds since the Unix epoch), oldest first.
    pub async fn replay(
        &self,
        sub_topic: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<StoredBroadcast>, MessagesError> {
        let run = async {
            let client = self.pool.get().await.map_err(MessagesError::Pool)?;
            client
                .query(REPLAY_SQL, &[&sub_topic, &(since_ms as f64), &limit])
                .await
                .map_err(MessagesError::Db)
        };
        let rows = tokio::time::timeout(STORE_TIMEOUT, run)
            .await
            .map_err(|_| MessagesError::Timeout)??;
        let mut out: Vec<StoredBroadcast> = rows
            .iter()
            .map(|r| StoredBroadcast {
                id: r.get(0),
                event: r.get::<_, Option<String>>(1).unwrap_or_default(),
                payload: r.get(2),
                binary: r.get(3),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Keeps the daily partitions of a `realtime.messages` walcast created: creates them up to
    /// `ahead_days` ahead and drops those older than `keep_days`. Returns what it did, as
    /// (`created` or `dropped`, partition name); nothing for a table walcast did not create.
    pub async fn maintain(
        &self,
        keep_days: u32,
        ahead_days: u32,
    ) -> Result<Vec<(String, String)>, MessagesError> {
        let keep = i32::try_from(keep_days).unwrap_or(i32::MAX);
        let ahead = i32::try_from(ahead_days).unwrap_or(i32::MAX);
        let run = async {
            let client = self.pool.get().await.map_err(MessagesError::Pool)?;
            client
                .query(MAINTAIN_SQL, &[&keep, &ahead])
                .await
                .map_err(MessagesError::Db)
        };
        let rows = tokio::time::timeout(STORE_TIMEOUT, run)
            .await
            .map_err(|_| MessagesError::Timeout)??;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_taken_once_and_bounded() {
        let e = Echoes::default();
        let a = Uuid::new_v4();
        e.expect(a);
        assert!(e.take(&a));
        assert!(!e.take(&a), "an echo is skipped once");
        let first = Uuid::new_v4();
        e.expect(first);
        for _ in 0..MAX_ECHOES {
            e.expect(Uuid::new_v4());
        }
        assert!(!e.take(&first), "the oldest id was pushed out");
        assert!(e.lock().0.len() <= MAX_ECHOES);
    }
}
