//! Where the slot's confirmed position may be: the resume window, as pure logic.
//!
//! walcast keeps no log of its own: the slot is the log. Confirming an LSN tells Postgres it may
//! drop WAL before it, so walcast confirms the *commit LSN of the oldest transaction still inside
//! the window*; Postgres then re-sends that transaction and every later one to any copy of the
//! slot, which is how a resuming client is replayed (see `replay`). A transaction leaves the
//! window when it is older than the time bound or when the WAL the slot retains exceeds the byte
//! bound. The newest transaction never leaves the window through time alone, so an idle stream
//! keeps its last cursor resumable; only the byte bound (other tables writing WAL) moves the
//! confirmed position past it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One committed transaction inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WindowTxn {
    /// LSN of the commit record.
    commit_lsn: u64,
    /// LSN just past the commit record.
    end_lsn: u64,
    /// When walcast received it.
    received: Instant,
}

/// The resume window.
#[derive(Debug)]
pub struct Window {
    /// Transactions in commit order.
    txns: VecDeque<WindowTxn>,
    /// Time bound.
    max_age: Duration,
    /// WAL bytes bound.
    max_bytes: u64,
    /// The confirmed position (never goes backwards).
    confirmed: u64,
    /// The newest commit LSN that may no longer be replayed: of the newest transaction that left
    /// the window, or just before the slot's start. A cursor at or after it (its whole
    /// transaction) is resumable even when older than `confirmed`: every later transaction is
    /// still retained.
    expired_through: u64,
}

impl Window {
    /// A window starting at the slot's confirmed position.
    pub fn new(confirmed: u64, max_age: Duration, max_bytes: u64) -> Self {
        Window {
            txns: VecDeque::new(),
            max_age,
            max_bytes,
            confirmed,
            expired_through: confirmed.saturating_sub(1),
        }
    }

    /// Records a committed transaction that has been handed to the hub.
    pub fn committed(&mut self, commit_lsn: u64, end_lsn: u64, now: Instant) {
        if self.txns.back().is_some_and(|t| t.commit_lsn >= commit_lsn)
            || commit_lsn < self.confirmed
        {
            return; // re-streamed after a reconnect: already known
        }
        self.txns.push_back(WindowTxn {
            commit_lsn,
            end_lsn,
            received: now,
        });
    }

    /// The position to confirm now, given the server's WAL end. Never lower than before.
    pub fn confirm_target(&mut self, server_wal_end: u64, now: Instant) -> u64 {
        // Time bound: drop old transactions, but keep the newest.
        while self.txns.len() > 1
            && self
                .txns
                .front()
                .is_some_and(|t| now.duration_since(t.received) > self.max_age)
        {
            if let Some(t) = self.txns.pop_front() {
                self.expired_through = self.expired_through.max(t.commit_lsn);
            }
        }
        // Byte bound: drop transactions whose WAL would exceed it.
        while let Some(front) = self.txns.front() {
            if server_wal_end.saturating_sub(front.commit_lsn) <= self.max_bytes {
                break;
            }
            let t = self.txns.pop_front();
            if let Some(t) = t {
                self.expired_through = self.expired_through.max(t.commit_lsn);
            }
            if self.txns.is_empty()
                && let Some(t) = t
            {
                self.confirmed = self.confirmed.max(t.end_lsn);
            }
        }
        match self.txns.front() {
            Some(front) => self.confirmed = self.confirmed.max(front.commit_lsn),
            None => {
                if server_wal_end.saturating_sub(self.confirmed) > self.max_bytes {
                    self.confirmed = self.confirmed.max(server_wal_end);
                    self.expired_through = self.expired_through.max(self.confirmed - 1);
                }
            }
        }
        self.confirmed
    }

    /// The confirmed position.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Takes a recorded edge from an earlier process (see `window_store`), when it is older
    /// than the default (just before the slot's confirmed position) and so more precise.
    pub fn restore_expired_through(&mut self, recorded: u64) {
        self.expired_through = self.expired_through.min(recorded);
    }

    /// The newest commit LSN that can no longer be replayed (see the field).
    pub fn expired_through(&self) -> u64 {
        self.expired_through
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_oldest_commit_in_window() {
        let t0 = Instant::now();
        let mut w = Window::new(100, Duration::from_secs(60), 1 << 30);
        w.committed(200, 250, t0);
        w.committed(300, 350, t0 + Duration::from_secs(30));
        assert_eq!(w.confirm_target(400, t0 + Duration::from_secs(31)), 200);
        // the first leaves the window by age
        assert_eq!(w.confirm_target(400, t0 + Duration::from_secs(61)), 300);
        // the newest stays even when old
        assert_eq!(w.confirm_target(400, t0 + Duration::from_secs(1000)), 300);
        // re-streamed transactions are ignored
        w.committed(200, 250, t0);
        assert_eq!(w.confirm_target(400, t0 + Duration::from_secs(1000)), 300);
    }

    #[test]
    fn expired_through_names_the_newest_transaction_that_left() {
        let t0 = Instant::now();
        let mut w = Window::new(100, Duration::from_secs(60), 1 << 30);
        assert_eq!(w.expired_through(), 99, "before the slot's start");
        w.committed(200, 250, t0);
        w.committed(300, 350, t0 + Duration::from_secs(30));
        // Confirmed moves to the first commit, but nothing left: a cursor at 150 (between the
        // slot's start and the first transaction) is still resumable.
        assert_eq!(w.confirm_target(400, t0 + Duration::from_secs(31)), 200);
        assert_eq!(w.expired_through(), 99);
        assert_eq!(w.confirm_target(400, t0 + Duration::from_secs(61)), 300);
        assert_eq!(w.expired_through(), 200);
    }

    #[test]
    fn byte_bound_moves_past_everything() {
        let t0 = Instant::now();
        let mut w = Window::new(0, Duration::from_secs(3600), 1000);
        w.committed(100, 150, t0);
        w.committed(900, 950, t0);
        assert_eq!(w.confirm_target(1050, t0), 100);
        assert_eq!(w.confirm_target(1500, t0), 900);
        // everything is past the bound: nothing left to keep
        assert_eq!(w.confirm_target(5000, t0), 5000);
        // idle with other WAL growing: moves to the server's end once past the bound
        assert_eq!(w.confirm_target(5900, t0), 5000);
        assert_eq!(w.confirm_target(6100, t0), 6100);
    }
}
