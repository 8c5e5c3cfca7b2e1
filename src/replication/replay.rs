//! Replay for resuming clients: the changes between a client's cursor and the live stream,
//! read again from the WAL the slot retains.
//!
//! A replay opens its own replication session, copies the main slot into a *temporary* slot
//! owned by that session (`pg_copy_logical_replication_slot`, so the main slot is never touched
//! and the copy vanishes with the session), and streams from the copy's confirmed position —
//! which the reader keeps at the oldest transaction of the resume window. Changes after the
//! cursor and up to `until` are sent to the caller, in commit order; then the session ends.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationEvent};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::error::ReplicationError;
use super::reader::ReaderStatus;
use super::settings::ReplicationSettings;
use crate::decode::{Change, Cursor, Decoded, Decoder, Lsn};

/// Changes buffered between the replay session and the consumer.
const REPLAY_BUFFER: usize = 1024;
/// Bytes of changes (decoded, as [`Change::size`] estimates them) buffered between the replay
/// session and the consumer, in KiB: with small rows the count above binds, with rows of 1 MB
/// this does (a few rows, not a thousand, per resuming client).
const REPLAY_BUFFER_KIB: u32 = 4 << 10;
/// A replay that receives nothing for this long fails (it should always progress).
const REPLAY_STALL: Duration = Duration::from_secs(30);

/// Replays of the main slot's changes: what a resuming client needs. Each replay holds one
/// replication connection (a walsender) while it runs, so at most `max` run at once: Postgres
/// keeps walsenders free for the reader, standbys and other clients.
#[derive(Debug, Clone)]
pub struct Replays {
    /// Replication connection facts.
    settings: ReplicationSettings,
    /// The slot replays copy.
    main_slot: String,
    /// One permit per replay that may run.
    permits: Arc<Semaphore>,
    /// The cap, for messages.
    max: usize,
    /// The reader's status: which positions are still resumable.
    status: Option<Arc<ReaderStatus>>,
}

/// The right to run one replay; released when the replay ends.
#[derive(Debug)]
pub struct ReplayPermit {
    /// Held while the replay runs.
    _held: OwnedSemaphorePermit,
}

impl Replays {
    /// Replays that copy `main_slot`, at most `max` at once.
    pub fn new(settings: ReplicationSettings, main_slot: String, max: usize) -> Self {
        Replays {
            settings,
            main_slot,
            permits: Arc::new(Semaphore::new(max)),
            max,
            status: None,
        }
    }

    /// Replays that judge positions by what the reader retains (a position before the slot's
    /// confirmed one is still resumable when no transaction left the window in between).
    pub fn with_status(mut self, status: Arc<ReaderStatus>) -> Self {
        self.status = Some(status);
        self
    }

    /// The right to start a replay now, if fewer than the cap are running.
    pub fn try_permit(&self) -> Option<ReplayPermit> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
            .map(|p| ReplayPermit { _held: p })
    }

    /// The right to start a replay, once fewer than the cap are running (waits for it).
    pub async fn permit(&self) -> ReplayPermit {
        let held = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the replay semaphore is never closed");
        ReplayPermit { _held: held }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Starts a replay of the changes in `(after, until]` (see [`spawn_replay`]); it keeps
    /// `permit` until it ends (also when its receiver is dropped: the client went away).
    pub fn replay(&self, permit: ReplayPermit, after: Cursor, until: Cursor) -> ReplayRx {
        let (tx, rx) = ReplayTx::channel();
        let (settings, main_slot) = (self.settings.clone(), self.main_slot.clone());
        let status = self.status.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let status = status.as_deref();
            if let Err(e) = replay(&settings, &main_slot, status, after, until, &tx).await {
                tx.fail(e).await;
            }
        });
        rx
    }
}

/// The sending half of a replay's buffer: at most [`REPLAY_BUFFER`] changes and
/// [`REPLAY_BUFFER_KIB`] of them.
struct ReplayTx {
    /// Changes, each with its share of the byte budget.
    tx: mpsc::Sender<Result<(Change, OwnedSemaphorePermit), ReplicationError>>,
    /// The byte budget, in KiB.
    bytes: Arc<Semaphore>,
}

/// The receiving half of a replay's buffer.
pub struct ReplayRx {
    /// Changes, each with its share of the byte budget (given back when taken).
    rx: mpsc::Receiver<Result<(Change, OwnedSemaphorePermit), ReplicationError>>,
}

impl ReplayTx {
    /// A buffer.
    fn channel() -> (ReplayTx, ReplayRx) {
        let (tx, rx) = mpsc::channel(REPLAY_BUFFER);
        let bytes = Arc::new(Semaphore::new(REPLAY_BUFFER_KIB as usize));
        (ReplayTx { tx, bytes }, ReplayRx { rx })
    }

    /// Sends a change once the buffer has room for it; false when the receiver is gone.
    async fn send(&self, change: Change) -> bool {
        let kib = u32::try_from(change.size().heap >> 10)
            .unwrap_or(u32::MAX)
            .clamp(1, REPLAY_BUFFER_KIB);
        let Ok(share) = Arc::clone(&self.bytes).acquire_many_owned(kib).await else {
            return false;
        };
        self.tx.send(Ok((change, share))).await.is_ok()
    }

    /// Sends the error that ends the replay.
    async fn fail(&self, e: ReplicationError) {
        let _ = self.tx.send(Err(e)).await;
    }
}

impl ReplayRx {
    /// The next replayed change (its room in the buffer is free again), the error that ended
    /// the replay, or `None` after the last.
    pub async fn recv(&mut self) -> Option<Result<Change, ReplicationError>> {
        self.rx
            .recv()
            .await
            .map(|r| r.map(|(change, _share)| change))
    }
}

/// Starts a replay of the changes in `(after, until]`; read them from the returned channel.
/// The channel ends after `until`, or yields one error (e.g. `CursorExpired`).
pub fn spawn_replay(
    settings: ReplicationSettings,
    main_slot: String,
    after: Cursor,
    until: Cursor,
) -> ReplayRx {
    let (tx, rx) = ReplayTx::channel();
    tokio::spawn(async move {
        if let Err(e) = replay(&settings, &main_slot, None, after, until, &tx).await {
            tx.fail(e).await;
        }
    });
    rx
}

/// The replay session.
async fn replay(
    settings: &ReplicationSettings,
    main_slot: &str,
    status: Option<&ReaderStatus>,
    after: Cursor,
    until: Cursor,
    tx: &ReplayTx,
) -> Result<(), ReplicationError> {
    // Slot names are validated identifiers ([a-z0-9_]), so they can be embedded in SQL.
    let temp = format!("walcast_replay_{:016x}", rand::random::<u64>());
    let cfg = settings.session(&temp, 0, None);
    let mut client = ReplicationClient::connect_gated(cfg)
        .await
        .map_err(ReplicationError::Stream)?;
    client
        .simple_query(&format!(
            "select 1 from pg_copy_logical_replication_slot('{main_slot}', '{temp}', true)"
        ))
        .await
        .map_err(ReplicationError::Stream)?;
    let rows = client
        .simple_query(&format!(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = '{temp}'"
        ))
        .await
        .map_err(ReplicationError::Stream)?;
    let confirmed: Lsn = rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_ref())
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    // Postgres re-sends every transaction whose commit record is at or after `confirmed`, so the
    // oldest resumable cursor is the position just before it: resuming after `oldest` replays
    // everything retained.
    let copied = Cursor {
        commit_lsn: Lsn(confirmed.0.saturating_sub(1)),
        index: u32::MAX,
    };
    // The reader knows better: transactions between a position and the copy's start may never
    // have existed (read after the copy, so never more than the copy retains).
    let oldest = status
        .and_then(ReaderStatus::oldest_resumable)
        .map_or(copied, |o| o.min(copied));
    if after < oldest {
        return Err(ReplicationError::CursorExpired { oldest });
    }
    client.start().await.map_err(ReplicationError::Stream)?;
    client
        .wait_started()
        .await
        .map_err(ReplicationError::Stream)?;
    let mut decoder = Decoder::new();
    // Inside a transaction (between Begin and Commit).
    let mut in_txn = false;
    loop {
        let ev = tokio::time::timeout(REPLAY_STALL, client.recv())
            .await
            .map_err(|_| ReplicationError::ReplayTimeout(REPLAY_STALL))?
            .map_err(ReplicationError::Stream)?;
        let Some(ev) = ev else {
            break;
        };
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                if final_lsn.0 > until.commit_lsn.0 {
                    break;
                }
                in_txn = true;
                decoder.begin(Lsn(final_lsn.0), xid, commit_time_micros);
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                // An undecodable message is a gap here too, at the same cursor as it was live.
                let changes = match decoder.decode(&data) {
                    Ok(Decoded::Change(c)) => vec![c],
                    Ok(Decoded::Changes(cs)) => cs,
                    Ok(_) => Vec::new(),
                    Err(e) => vec![decoder.gap(&e, Lsn(wal_end.0), chrono::Utc::now())],
                };
                for c in changes {
                    if c.cursor > after && c.cursor <= until && !tx.send(c).await {
                        client.abort();
                        return Ok(());
                    }
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                let _ = decoder.commit(Lsn(lsn.0), Lsn(end_lsn.0), commit_time_micros);
                in_txn = false;
                if lsn.0 >= until.commit_lsn.0 {
                    break;
                }
            }
            // `until` need not be a commit (where a socket started, say): once the server has
            // read the WAL past it (a keepalive carries the end of the last record it read;
            // records are read whole) outside a transaction, every commit before it was sent.
            // Strictly past: the first keepalive carries the copy's start, which may be `until`.
            ReplicationEvent::KeepAlive { wal_end, .. }
                if !in_txn && wal_end.0 > until.commit_lsn.0 =>
            {
                break;
            }
            _ => {}
        }
    }
    client.abort();
    Ok(())
}

#[cfg(test)]
mod permit_tests {
    use super::*;

    #[test]
    fn replays_are_capped_and_permits_come_back() {
        let settings =
            ReplicationSettings::from_url("postgres://u@127.0.0.1:1/db", "p", "test").unwrap();
        let replays = Replays::new(settings, "walcast_x".into(), 2);
        let a = replays.try_permit().expect("first");
        let b = replays.try_permit().expect("second");
        assert!(
            replays.try_permit().is_none(),
            "a third runs beyond the cap"
        );
        drop(a);
        assert!(
            replays.try_permit().is_some(),
            "an ended replay frees its permit"
        );
        drop(b);
        assert_eq!(replays.max(), 2);
    }
}
