//! Metrics: every counter walcast keeps, declared in one place and rendered as Prometheus text
//! on `GET /metrics`.
//!
//! Metric names are constants on [`Metrics`]; labels stay low-cardinality (routes, status codes,
//! error codes, protocol names; never client ids, topics or row values). Counters are plain
//! atomics so hot paths (the replication reader, the hub) pay one relaxed add. `METRICS.md` at
//! the repository root lists them all.

pub mod persister;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter split by one low-cardinality label value.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    /// Adds `n` to the series with this label value.
    pub fn add(&self, label: &str, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(label) {
            Some(v) => *v += n,
            None => {
                map.insert(label.to_owned(), n);
            }
        }
    }
    /// Value of one series (0 when never touched).
    pub fn get(&self, label: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(label).copied().unwrap_or(0)
    }
    /// Snapshot of all series.
    fn snapshot(&self) -> Vec<(String, u64)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets (exclusive of +Inf).
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative), plus one for +Inf.
    buckets: Vec<AtomicU64>,
    /// Sum of observations, in millionths.
    sum_micro: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

impl Histogram {
    /// A histogram over these bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Seconds buckets for latencies.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Event-count buckets for batch sizes.
const SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];

/// All of walcast's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP requests by `route status`.
    pub http_requests: LabeledCounter,
    /// Events committed through ingest.
    pub events_accepted: Counter,
    /// Requests rejected, by error code.
    pub events_rejected: LabeledCounter,
    /// Events per database write.
    pub ingest_batch_events: Histogram,
    /// Seconds per database write (one transaction).
    pub ingest_flush_seconds: Histogram,
    /// Database writes that failed.
    pub ingest_flush_errors: Counter,
    /// Events fsynced to the spool (database unavailable).
    pub events_spooled: Counter,
    /// Events stored in the dead-letter queue.
    pub events_dead_lettered: Counter,
    /// Events replayed from the spool into the table.
    pub spool_replayed: Counter,
    /// Bytes waiting in the spool.
    pub spool_bytes: Gauge,
    /// Retries of database writes.
    pub ingest_retries: Counter,
    /// Circuit breaker state: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Gauge,
    /// Changes decoded by the replication reader.
    pub replication_changes: Counter,
    /// Transactions decoded by the replication reader.
    pub replication_transactions: Counter,
    /// Reconnects of the replication reader.
    pub replication_reconnects: Counter,
    /// Last LSN received from the server.
    pub replication_received_lsn: Gauge,
    /// LSN confirmed to the server (slot's confirmed_flush_lsn as walcast set it).
    pub replication_confirmed_lsn: Gauge,
    /// Bytes of WAL between the server's current position and the confirmed LSN.
    pub slot_lag_bytes: Gauge,
    /// Decode errors by kind.
    pub decode_errors: LabeledCounter,
    /// Connected WebSocket clients by protocol.
    pub clients: LabeledCounter,
    /// Currently connected /ws clients.
    pub ws_clients: Gauge,
    /// Frames delivered to clients (all protocols).
    pub deliveries: Counter,
    /// Clients closed because they fell behind.
    pub clients_lagged: Counter,
    /// Changes replayed to resuming clients.
    pub replayed_changes: Counter,
    /// Change frames encoded (once per change and wire format).
    pub frames_encoded: Counter,
    /// Changes the consistency checker encoded through both wire formats and compared.
    pub consistency_checked: Counter,
    /// Consistency mismatches by kind (`json_decode`, `json_field`, `realtime_decode`,
    /// `realtime_field`, `cross_path`, `delivery`).
    pub consistency_mismatches: LabeledCounter,
    /// Share of the last consistency sample without a mismatch, in millionths.
    pub consistency_match_ratio_ppm: Gauge,
    /// Calls of `walcast.realtime_visible_ids` by the Realtime row level security gate.
    pub realtime_rls_calls: Counter,
    /// (commit, claims group) checks answered by those calls.
    pub realtime_rls_checks: Counter,
    /// Seconds per gate call (failed calls included).
    pub realtime_rls_call_seconds: Histogram,
    /// Gate calls that failed (no connection, database error, timeout).
    pub realtime_rls_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http_requests: LabeledCounter::default(),
            events_accepted: Counter::default(),
            events_rejected: LabeledCounter::default(),
            ingest_batch_events: Histogram::new(SIZE_BUCKETS),
            ingest_flush_seconds: Histogram::new(SECONDS_BUCKETS),
            ingest_flush_errors: Counter::default(),
            events_spooled: Counter::default(),
            events_dead_lettered: Counter::default(),
            spool_replayed: Counter::default(),
            spool_bytes: Gauge::default(),
            ingest_retries: Counter::default(),
            breaker_state: Gauge::default(),
            replication_changes: Counter::default(),
            replication_transactions: Counter::default(),
            replication_reconnects: Counter::default(),
            replication_received_lsn: Gauge::default(),
            replication_confirmed_lsn: Gauge::default(),
            slot_lag_bytes: Gauge::default(),
            decode_errors: LabeledCounter::default(),
            clients: LabeledCounter::default(),
            ws_clients: Gauge::default(),
            deliveries: Counter::default(),
            clients_lagged: Counter::default(),
            replayed_changes: Counter::default(),
            frames_encoded: Counter::default(),
            consistency_checked: Counter::default(),
            consistency_mismatches: LabeledCounter::default(),
            consistency_match_ratio_ppm: Gauge(AtomicI64::new(1_000_000)),
            realtime_rls_calls: Counter::default(),
            realtime_rls_checks: Counter::default(),
            realtime_rls_call_seconds: Histogram::new(SECONDS_BUCKETS),
            realtime_rls_errors: Counter::default(),
        }
    }
}

/// Pool figures sampled at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    /// Connections open.
    pub size: usize,
    /// Connections idle.
    pub available: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
    /// Configured maximum.
    pub max_size: usize,
}

impl Metrics {
    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self, pool: PoolStats) -> String {
        let mut out = String::with_capacity(4096);
        labeled(
            &mut out,
            "walcast_http_requests_total",
            "HTTP requests by route and status.",
            &["route", "status"],
            &self.http_requests,
        );
        counter(
            &mut out,
            "walcast_events_accepted_total",
            "Events committed to monitoring_events through ingest.",
            self.events_accepted.get(),
        );
        labeled(
            &mut out,
            "walcast_events_rejected_total",
            "Requests rejected by ingest, by error code.",
            &["code"],
            &self.events_rejected,
        );
        histogram(
            &mut out,
            "walcast_ingest_batch_events",
            "Events per database write.",
            &self.ingest_batch_events,
        );
        histogram(
            &mut out,
            "walcast_ingest_flush_seconds",
            "Duration of one database write (one transaction).",
            &self.ingest_flush_seconds,
        );
        counter(
            &mut out,
            "walcast_ingest_flush_errors_total",
            "Database writes that failed.",
            self.ingest_flush_errors.get(),
        );
        counter(
            &mut out,
            "walcast_events_spooled_total",
            "Events fsynced to the local spool while the database was unavailable.",
            self.events_spooled.get(),
        );
        counter(
            &mut out,
            "walcast_events_dead_lettered_total",
            "Events stored in the dead-letter queue because Postgres rejects them.",
            self.events_dead_lettered.get(),
        );
        counter(
            &mut out,
            "walcast_spool_replayed_total",
            "Events replayed from the spool into the table.",
            self.spool_replayed.get(),
        );
        gauge(
            &mut out,
            "walcast_spool_bytes",
            "Bytes waiting in the spool.",
            self.spool_bytes.get(),
        );
        counter(
            &mut out,
            "walcast_ingest_retries_total",
            "Retries of database writes after transient errors.",
            self.ingest_retries.get(),
        );
        gauge(
            &mut out,
            "walcast_breaker_state",
            "Circuit breaker around database writes: 0 closed, 1 half-open, 2 open.",
            self.breaker_state.get(),
        );
        for (name, help, v) in [
            ("size", "open", pool.size),
            ("available", "idle", pool.available),
            ("waiting", "waiting for a connection", pool.waiting),
            ("max", "maximum", pool.max_size),
        ] {
            gauge(
                &mut out,
                &format!("walcast_pool_connections_{name}"),
                &format!("Database pool: connections {help}."),
                v as i64,
            );
        }
        counter(
            &mut out,
            "walcast_replication_changes_total",
            "Row changes decoded from the WAL.",
            self.replication_changes.get(),
        );
        counter(
            &mut out,
            "walcast_replication_transactions_total",
            "Transactions decoded from the WAL.",
            self.replication_transactions.get(),
        );
        counter(
            &mut out,
            "walcast_replication_reconnects_total",
            "Reconnects of the replication reader.",
            self.replication_reconnects.get(),
        );
        gauge(
            &mut out,
            "walcast_replication_received_lsn",
            "Last WAL position received from Postgres.",
            self.replication_received_lsn.get(),
        );
        gauge(
            &mut out,
            "walcast_replication_confirmed_lsn",
            "WAL position confirmed to Postgres (the slot keeps WAL after it).",
            self.replication_confirmed_lsn.get(),
        );
        gauge(
            &mut out,
            "walcast_slot_lag_bytes",
            "WAL bytes the slot retains behind the server's current position.",
            self.slot_lag_bytes.get(),
        );
        labeled(
            &mut out,
            "walcast_decode_errors_total",
            "pgoutput messages that failed to decode, by kind.",
            &["kind"],
            &self.decode_errors,
        );
        gauge(
            &mut out,
            "walcast_ws_clients",
            "Connected /ws clients.",
            self.ws_clients.get(),
        );
        labeled(
            &mut out,
            "walcast_client_connections_total",
            "WebSocket connections accepted, by protocol.",
            &["protocol"],
            &self.clients,
        );
        counter(
            &mut out,
            "walcast_deliveries_total",
            "Change frames written to clients.",
            self.deliveries.get(),
        );
        counter(
            &mut out,
            "walcast_clients_lagged_total",
            "Clients closed with `lagged` because they fell behind.",
            self.clients_lagged.get(),
        );
        counter(
            &mut out,
            "walcast_replayed_changes_total",
            "Changes replayed to resuming clients.",
            self.replayed_changes.get(),
        );
        counter(
            &mut out,
            "walcast_frames_encoded_total",
            "Change frames encoded (once per change and wire format).",
            self.frames_encoded.get(),
        );
        counter(
            &mut out,
            "walcast_consistency_checked_total",
            "Changes the consistency checker encoded through both wire formats and compared.",
            self.consistency_checked.get(),
        );
        labeled(
            &mut out,
            "walcast_consistency_mismatches_total",
            "Consistency mismatches found by the checker, by kind.",
            &["kind"],
            &self.consistency_mismatches,
        );
        let _ = writeln!(
            out,
            "# HELP walcast_consistency_match_ratio Share of the last consistency sample without a mismatch (1 when empty).\n\
             # TYPE walcast_consistency_match_ratio gauge\n\
             walcast_consistency_match_ratio {}",
            self.consistency_match_ratio_ppm.get() as f64 / 1e6
        );
        counter(
            &mut out,
            "walcast_realtime_rls_calls_total",
            "Calls of walcast.realtime_visible_ids by the Realtime row level security gate.",
            self.realtime_rls_calls.get(),
        );
        counter(
            &mut out,
            "walcast_realtime_rls_checks_total",
            "(commit, claims group) checks answered by the row level security gate's calls.",
            self.realtime_rls_checks.get(),
        );
        histogram(
            &mut out,
            "walcast_realtime_rls_call_seconds",
            "Duration of one row level security gate call (failed calls included).",
            &self.realtime_rls_call_seconds,
        );
        counter(
            &mut out,
            "walcast_realtime_rls_errors_total",
            "Row level security gate calls that failed (no connection, database error, timeout).",
            self.realtime_rls_errors.get(),
        );
        out
    }
}

/// Writes one counter.
fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// Writes one gauge.
fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// Writes a labeled counter; a label value holding several labels separates them with a space.
fn labeled(out: &mut String, name: &str, help: &str, keys: &[&str], c: &LabeledCounter) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (label, v) in c.snapshot() {
        let parts: Vec<&str> = label.splitn(keys.len(), ' ').collect();
        let labels: Vec<String> = keys
            .iter()
            .zip(parts.iter().chain(std::iter::repeat(&"")))
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
    }
}

/// Writes a histogram with cumulative buckets.
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, b) in h.buckets.iter().enumerate() {
        cumulative += b.load(Ordering::Relaxed);
        match h.bounds.get(i) {
            Some(le) => {
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let sum = h.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", h.count());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.events_accepted.add(3);
        m.events_rejected.add("invalid_event", 2);
        m.http_requests.add("/v1/events 201", 1);
        m.ingest_flush_seconds.observe(0.003);
        let text = m.render(PoolStats::default());
        assert!(text.contains("walcast_events_accepted_total 3"));
        assert!(text.contains("walcast_events_rejected_total{code=\"invalid_event\"} 2"));
        assert!(
            text.contains("walcast_http_requests_total{route=\"/v1/events\",status=\"201\"} 1")
        );
        assert!(text.contains("walcast_ingest_flush_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("walcast_ingest_flush_seconds_count 1"));
    }

    #[test]
    fn renders_realtime_rls_gate_metrics() {
        let m = Metrics::default();
        let text = m.render(PoolStats::default());
        for zero in [
            "walcast_realtime_rls_calls_total 0",
            "walcast_realtime_rls_checks_total 0",
            "walcast_realtime_rls_errors_total 0",
            "walcast_realtime_rls_call_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == zero), "{zero} in:\n{text}");
        }
        m.realtime_rls_calls.add(2);
        m.realtime_rls_checks.add(5);
        m.realtime_rls_errors.inc();
        m.realtime_rls_call_seconds.observe(0.004);
        m.realtime_rls_call_seconds.observe(0.2);
        let text = m.render(PoolStats::default());
        for line in [
            "# TYPE walcast_realtime_rls_calls_total counter",
            "walcast_realtime_rls_calls_total 2",
            "# TYPE walcast_realtime_rls_checks_total counter",
            "walcast_realtime_rls_checks_total 5",
            "# TYPE walcast_realtime_rls_errors_total counter",
            "walcast_realtime_rls_errors_total 1",
            "# TYPE walcast_realtime_rls_call_seconds histogram",
            "walcast_realtime_rls_call_seconds_bucket{le=\"0.0025\"} 0",
            "walcast_realtime_rls_call_seconds_bucket{le=\"0.005\"} 1",
            "walcast_realtime_rls_call_seconds_bucket{le=\"0.25\"} 2",
            "walcast_realtime_rls_call_seconds_bucket{le=\"+Inf\"} 2",
            "walcast_realtime_rls_call_seconds_sum 0.204",
            "walcast_realtime_rls_call_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
