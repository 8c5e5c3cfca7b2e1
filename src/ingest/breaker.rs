//! Circuit breaker around database writes: closed → open after consecutive failures → half-open
//! after a cool-down (one probe) → closed on success, open again on failure.
//!
//! While the breaker is not closed, ingest does not wait on a failing database: accepted events
//! go to the durable spool instead (see [`super::spool`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker state as reported in metrics (`walcast_breaker_state`) and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Writes go to the database.
    Closed,
    /// Writes are refused until the cool-down ends.
    Open,
    /// One probe write is allowed.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(2),
        }
    }
}

/// Mutable breaker state.
#[derive(Debug)]
struct Inner {
    /// Current state.
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    /// When an open breaker may probe.
    open_until: Instant,
    /// A half-open probe is in flight.
    probing: bool,
}

/// The breaker (shared by writers and the spool replayer).
#[derive(Debug)]
pub struct Breaker {
    /// Thresholds.
    config: BreakerConfig,
    /// State.
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                open_until: Instant::now(),
                probing: false,
            }),
        }
    }

    /// Locks the state.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open breaker past its cool-down reports half-open).
    pub fn state(&self) -> BreakerState {
        let g = self.lock();
        match g.state {
            BreakerState::Open if Instant::now() >= g.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// May a write try the database now? In half-open, only one caller gets `true` until it reports.
    pub fn allow(&self) -> bool {
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                if Instant::now() >= g.open_until {
                    g.state = BreakerState::HalfOpen;
                    g.probing = true;
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if g.probing {
                    false
                } else {
                    g.probing = true;
                    true
                }
            }
        }
    }

    /// A write succeeded: close.
    pub fn on_success(&self) {
        let mut g = self.lock();
        if g.state != BreakerState::Closed {
            tracing::info!("database writes work again: circuit breaker closed");
        }
        g.state = BreakerState::Closed;
        g.failures = 0;
        g.probing = false;
    }

    /// A write failed with a transient error: count it; open at the threshold or after a failed probe.
    pub fn on_failure(&self) {
        let mut g = self.lock();
        g.probing = false;
        match g.state {
            BreakerState::Closed => {
                g.failures += 1;
                if g.failures >= self.config.failure_threshold {
                    tracing::warn!(
                        failures = g.failures,
                        "database writes failing: circuit breaker open"
                    );
                    g.state = BreakerState::Open;
                    g.open_until = Instant::now() + self.config.cooldown;
                }
            }
            BreakerState::Open | BreakerState::HalfOpen => {
                g.state = BreakerState::Open;
                g.open_until = Instant::now() + self.config.cooldown;
            }
        }
    }

    /// Opens at once (e.g. the pool cannot connect at all).
    pub fn trip(&self) {
        let mut g = self.lock();
        g.state = BreakerState::Open;
        g.probing = false;
        g.open_until = Instant::now() + self.config.cooldown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 2,
            cooldown: Duration::from_millis(0),
        });
        assert!(b.allow());
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        // cool-down of zero: the next allow is the half-open probe, and only one
        assert!(b.allow());
        assert!(!b.allow());
        b.on_failure();
        assert!(b.allow());
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow() && b.allow());
    }

    #[test]
    fn stays_open_during_cooldown() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            cooldown: Duration::from_secs(60),
        });
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
    }
}
