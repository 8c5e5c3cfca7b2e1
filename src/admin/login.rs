//! Failed admin console logins, counted per client address (`--admin-max-failures`,
//! `--admin-lockout`).
//!
//! An address that failed `max_failures` times is locked out until `lockout` has passed since
//! its last failure: every login from it is refused before any password exchange, the right
//! password too, so guessing costs at least `lockout` per `max_failures` guesses. Failures
//! older than `lockout` are forgotten, and a successful login forgets the address's failures.
//! Refused attempts do not extend the lockout, so an operator sharing the address gets in
//! `lockout` after the last real failure. IPv6 addresses count per /64.
//!
//! The table is bounded ([`MAX_TRACKED`] addresses): when full, expired entries go first, then
//! the one whose last failure is oldest. No I/O, no clock of its own: callers pass `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{LoginThrottle, mask};

/// Most addresses with failures remembered at once. An attacker spreading guesses over more
/// addresses than this gains nothing it would not gain from more addresses anyway; 4096 entries
/// are a few hundred KiB.
pub const MAX_TRACKED: usize = 4096;

/// IPv6 addresses are counted per network of this prefix length.
const IPV6_PREFIX: u8 = 64;

/// One address's recent failures.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures not yet forgotten.
    failures: u32,
    /// When the last one happened.
    last: Instant,
}

/// The address is locked out for this much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedOut(pub Duration);

/// The failed-login table (see the module docs).
#[derive(Debug)]
pub struct LoginGuard {
    /// Failures that lock an address out, and for how long.
    config: LoginThrottle,
    /// Failures by address key.
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl LoginGuard {
    /// An empty table.
    pub fn new(config: LoginThrottle) -> Self {
        LoginGuard {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> LoginThrottle {
        self.config
    }

    /// The key an address is counted under.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => v4,
            v6 => mask(v6, IPV6_PREFIX),
        }
    }

    /// Locks the table (a poisoned lock still holds a consistent map).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `entry` is forgotten at `now`.
    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last) >= self.config.lockout
    }

    /// Whether `ip` may try to log in at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), LockedOut> {
        let key = Self::key(ip);
        let mut entries = self.lock();
        let Some(entry) = entries.get(&key).copied() else {
            return Ok(());
        };
        if self.expired(&entry, now) {
            entries.remove(&key);
            return Ok(());
        }
        if entry.failures >= self.config.max_failures {
            let until = entry.last + self.config.lockout;
            return Err(LockedOut(until.saturating_duration_since(now)));
        }
        Ok(())
    }

    /// Records a failed login of `ip` at `now`; `true` when this failure starts a lockout.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let key = Self::key(ip);
        let mut entries = self.lock();
        if !entries.contains_key(&key) && entries.len() >= MAX_TRACKED {
            self.make_room(&mut entries, now);
        }
        let entry = entries.entry(key).or_insert(Entry {
            failures: 0,
            last: now,
        });
        if self.expired(entry, now) {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        entry.failures == self.config.max_failures
    }

    /// Forgets the failures of `ip` (it logged in).
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&Self::key(ip));
    }

    /// Frees one place: expired entries first, else the oldest.
    fn make_room(&self, entries: &mut HashMap<IpAddr, Entry>, now: Instant) {
        entries.retain(|_, e| !self.expired(e, now));
        if entries.len() < MAX_TRACKED {
            return;
        }
        if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
            entries.remove(&oldest);
        }
    }

    /// Addresses remembered (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max_failures: u32, lockout_secs: u64) -> LoginGuard {
        LoginGuard::new(LoginThrottle {
            max_failures,
            lockout: Duration::from_secs(lockout_secs),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn locks_out_after_max_failures_until_lockout_after_the_last() {
        let g = guard(3, 60);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert!(!g.failed(a, t0));
        assert!(!g.failed(a, t0 + Duration::from_secs(1)));
        assert_eq!(g.check(a, t0 + Duration::from_secs(2)), Ok(()));
        assert!(
            g.failed(a, t0 + Duration::from_secs(2)),
            "the third starts it"
        );
        assert_eq!(
            g.check(a, t0 + Duration::from_secs(12)),
            Err(LockedOut(Duration::from_secs(50)))
        );
        // Another address is not affected.
        assert_eq!(
            g.check(ip("192.0.2.2"), t0 + Duration::from_secs(12)),
            Ok(())
        );
        // Refused attempts do not extend it; it ends `lockout` after the last failure.
        assert_eq!(g.check(a, t0 + Duration::from_secs(62)), Ok(()));
        assert_eq!(g.tracked(), 0, "forgotten once expired");
    }

    #[test]
    fn old_failures_are_forgotten_and_success_clears() {
        let g = guard(2, 10);
        let a = ip("2001:db8::1");
        let t0 = Instant::now();
        g.failed(a, t0);
        // Ten seconds later the first failure no longer counts.
        assert!(!g.failed(a, t0 + Duration::from_secs(10)));
        assert!(g.check(a, t0 + Duration::from_secs(10)).is_ok());
        // Same /64: same entry.
        assert!(g.failed(ip("2001:db8::2"), t0 + Duration::from_secs(11)));
        assert!(g.check(a, t0 + Duration::from_secs(11)).is_err());
        g.succeeded(a);
        assert!(g.check(a, t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn the_table_is_bounded() {
        let g = guard(5, 60);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.failed(a, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(g.tracked(), MAX_TRACKED);
        // The oldest went first.
        assert!(!g.lock().contains_key(&ip("10.0.0.0")));
        assert!(g.lock().contains_key(&ip("10.0.16.9")));
    }
}
