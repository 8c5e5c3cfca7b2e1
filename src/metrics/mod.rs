//! Metrics: every counter walcast keeps, declared once in `declare_metrics!` below and served as
//! Prometheus text on `GET /metrics`.
//!
//! Labels stay low-cardinality (routes, status codes, error codes, protocol names; never client
//! ids, topics or row values) and are typed label sets ([`HttpLabels`], [`CodeLabel`], ...), so a
//! request pays no `format!` and a label value cannot carry a second label by accident.
//! `METRICS.md` at the repository root lists every series; a unit test checks it against
//! [`Metrics::render`].
//!
//! The registry and the text format come from `prometheus-client` (the Prometheus project's Rust
//! client). It was chosen over `metrics` + `metrics-exporter-prometheus` because walcast reads
//! its own counters back (`GET /v1/status`, the admin console, the `walcast.metrics` snapshots)
//! and keeps one registry per [`Metrics`] value (tests run several servers in one process):
//! `prometheus-client` hands out metric handles with `get()` and needs no global recorder.
//! Output uses its Prometheus text encoder (format 0.0.4, the content type `/metrics` always
//! had), so `# TYPE` lines and series names are what they were before the switch.
//!
//! The thin wrappers here ([`Counter`], [`Gauge`], [`LabeledCounter`], [`Histogram`]) keep the
//! call-site API (`inc`, `add`, `set`, `get`, `observe`) that the rest of the crate used before;
//! each holds a `prometheus-client` handle that shares its value with the registry. Counters are
//! atomics (one relaxed add on hot paths); a labeled counter takes a read lock on its family
//! map; a histogram takes a short mutex.

use std::hash::Hash;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::Histogram as PromHistogram;
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::render`]'s output (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Suffix the text encoder appends to every counter's name.
const COUNTER_SUFFIX: &str = "_total";

/// A metric that registers a handle to itself under a name and a help text.
trait Register {
    /// Adds this metric to `registry`. `name` is the series name as scraped; `help` has no
    /// trailing period (the registry adds one).
    fn register(&self, registry: &mut Registry, name: &'static str, help: &'static str);
}

/// The name a counter is registered under: the scraped name without the `_total` the encoder
/// appends. A counter declared without `_total` is a bug in the `declare_metrics!` list.
fn counter_name(name: &'static str) -> &'static str {
    name.strip_suffix(COUNTER_SUFFIX)
        .unwrap_or_else(|| panic!("counter {name} must end with {COUNTER_SUFFIX}"))
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(PromCounter);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl Register for Counter {
    fn register(&self, registry: &mut Registry, name: &'static str, help: &'static str) {
        registry.register(counter_name(name), help, self.0.clone());
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(PromGauge);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.inc_by(d);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

impl Register for Gauge {
    fn register(&self, registry: &mut Registry, name: &'static str, help: &'static str) {
        registry.register(name, help, self.0.clone());
    }
}

/// A share between 0 and 1, set in millionths (integer arithmetic at the call site) and
/// exported as a float gauge.
#[derive(Debug)]
pub struct RatioGauge {
    /// The exported value.
    ratio: PromGauge<f64, AtomicU64>,
    /// The value as set, in millionths.
    ppm: Gauge,
}

impl RatioGauge {
    /// A ratio starting at `ppm` millionths.
    fn with_ppm(ppm: i64) -> Self {
        let g = RatioGauge {
            ratio: PromGauge::default(),
            ppm: Gauge::default(),
        };
        g.set(ppm);
        g
    }
    /// Sets the value, in millionths.
    pub fn set(&self, ppm: i64) {
        self.ppm.set(ppm);
        self.ratio.set(ppm as f64 / 1e6);
    }
    /// Current value, in millionths.
    pub fn get(&self) -> i64 {
        self.ppm.get()
    }
}

impl Register for RatioGauge {
    fn register(&self, registry: &mut Registry, name: &'static str, help: &'static str) {
        registry.register(name, help, self.ratio.clone());
    }
}

/// A counter split by a typed label set `L`.
#[derive(Debug)]
pub struct LabeledCounter<L>(Family<L, PromCounter>);

impl<L: Clone + Hash + Eq> Default for LabeledCounter<L> {
    fn default() -> Self {
        LabeledCounter(Family::default())
    }
}

impl<L: Clone + Hash + Eq> LabeledCounter<L> {
    /// Adds `n` to the series with these labels (a single label's value converts into `L`).
    pub fn add(&self, labels: impl Into<L>, n: u64) {
        self.0.get_or_create(&labels.into()).inc_by(n);
    }
    /// Value of one series (0 when never touched; reading does not create it).
    pub fn get(&self, labels: impl Into<L>) -> u64 {
        self.0.get(&labels.into()).map_or(0, |c| c.get())
    }
}

impl<L> Register for LabeledCounter<L>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn register(&self, registry: &mut Registry, name: &'static str, help: &'static str) {
        registry.register(counter_name(name), help, Listed(self.0.clone()));
    }
}

/// A family whose `# HELP` and `# TYPE` lines are rendered even before its first series
/// (`prometheus-client` leaves empty families out; walcast always listed them, and scrapers and
/// tests look for them).
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
    // `is_empty` keeps its default, `false`.
}

/// A histogram with fixed bucket bounds (`+Inf` is implicit).
#[derive(Debug)]
pub struct Histogram(PromHistogram);

impl Histogram {
    /// A histogram over these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram(PromHistogram::new(bounds.iter().copied()))
    }
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }
}

impl Register for Histogram {
    fn register(&self, registry: &mut Registry, name: &'static str, help: &'static str) {
        registry.register(name, help, self.0.clone());
    }
}

/// Labels of `walcast_http_requests_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Route pattern as registered with the router (`/v1/dlq/{id}`), never the concrete path.
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// A `code` label: a stable error code.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code (`invalid_event`, `unauthorized`, ...).
    pub code: &'static str,
}

impl From<&'static str> for CodeLabel {
    fn from(code: &'static str) -> Self {
        CodeLabel { code }
    }
}

/// A `kind` label: an error or mismatch kind.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: &'static str,
}

impl From<&'static str> for KindLabel {
    fn from(kind: &'static str) -> Self {
        KindLabel { kind }
    }
}

/// A `protocol` label: the WebSocket protocol (`ws`, `realtime`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// The protocol.
    pub protocol: &'static str,
}

impl From<&'static str> for ProtocolLabel {
    fn from(protocol: &'static str) -> Self {
        ProtocolLabel { protocol }
    }
}

/// Seconds buckets for latencies.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Event-count buckets for batch sizes.
const SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];

/// Declares [`Metrics`]: one line per metric with its field (doc, name, type, initial value when
/// not `Default`), the series name as scraped and the help text. The registry renders metrics in
/// this order.
macro_rules! declare_metrics {
    (@init) => { Default::default() };
    (@init $init:expr) => { $init };
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty $(= $init:expr)? => $name:literal, $help:literal;
    )*) => {
        /// All of walcast's metrics, and the registry that renders them.
        #[derive(Debug)]
        pub struct Metrics {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
            /// Handles to every metric above, in declaration order.
            registry: Registry,
        }

        impl Default for Metrics {
            fn default() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field: $ty = declare_metrics!(@init $($init)?);
                    $field.register(&mut registry, $name, $help);
                )*
                Metrics { $($field,)* registry }
            }
        }
    };
}

declare_metrics! {
    /// HTTP requests by route and status (count one with [`Metrics::http_request`]).
    http_requests: LabeledCounter<HttpLabels>
        => "walcast_http_requests_total", "HTTP requests by route and status";
    /// Events committed through ingest.
    events_accepted: Counter
        => "walcast_events_accepted_total", "Events committed to monitoring_events through ingest";
    /// Requests rejected, by error code.
    events_rejected: LabeledCounter<CodeLabel>
        => "walcast_events_rejected_total", "Requests rejected by ingest, by error code";
    /// Events per database write.
    ingest_batch_events: Histogram = Histogram::new(SIZE_BUCKETS)
        => "walcast_ingest_batch_events", "Events per database write";
    /// Seconds per database write (one transaction).
    ingest_flush_seconds: Histogram = Histogram::new(SECONDS_BUCKETS)
        => "walcast_ingest_flush_seconds", "Duration of one database write (one transaction)";
    /// Database writes that failed.
    ingest_flush_errors: Counter
        => "walcast_ingest_flush_errors_total", "Database writes that failed";
    /// Events fsynced to the spool (database unavailable).
    events_spooled: Counter
        => "walcast_events_spooled_total",
           "Events fsynced to the local spool while the database was unavailable";
    /// Events stored in the dead-letter queue.
    events_dead_lettered: Counter
        => "walcast_events_dead_lettered_total",
           "Events stored in the dead-letter queue because Postgres rejects them";
    /// Events replayed from the spool into the table.
    spool_replayed: Counter
        => "walcast_spool_replayed_total", "Events replayed from the spool into the table";
    /// Bytes waiting in the spool.
    spool_bytes: Gauge => "walcast_spool_bytes", "Bytes waiting in the spool";
    /// Retries of database writes.
    ingest_retries: Counter
        => "walcast_ingest_retries_total", "Retries of database writes after transient errors";
    /// Circuit breaker state: 0 closed, 1 half-open, 2 open (set at scrape time).
    breaker_state: Gauge
        => "walcast_breaker_state",
           "Circuit breaker around database writes: 0 closed, 1 half-open, 2 open";
    /// Database pool: connections open (sampled by [`Metrics::render`]).
    pool_connections_size: Gauge
        => "walcast_pool_connections_size", "Database pool: connections open";
    /// Database pool: connections idle (sampled by [`Metrics::render`]).
    pool_connections_available: Gauge
        => "walcast_pool_connections_available", "Database pool: connections idle";
    /// Database pool: tasks waiting for a connection (sampled by [`Metrics::render`]).
    pool_connections_waiting: Gauge
        => "walcast_pool_connections_waiting",
           "Database pool: connections waiting for a connection";
    /// Database pool: configured maximum (sampled by [`Metrics::render`]).
    pool_connections_max: Gauge
        => "walcast_pool_connections_max", "Database pool: connections maximum";
    /// Changes decoded by the replication reader.
    replication_changes: Counter
        => "walcast_replication_changes_total", "Row changes decoded from the WAL";
    /// Transactions decoded by the replication reader.
    replication_transactions: Counter
        => "walcast_replication_transactions_total", "Transactions decoded from the WAL";
    /// Reconnects of the replication reader.
    replication_reconnects: Counter
        => "walcast_replication_reconnects_total", "Reconnects of the replication reader";
    /// Last LSN received from the server.
    replication_received_lsn: Gauge
        => "walcast_replication_received_lsn", "Last WAL position received from Postgres";
    /// LSN confirmed to the server (slot's confirmed_flush_lsn as walcast set it).
    replication_confirmed_lsn: Gauge
        => "walcast_replication_confirmed_lsn",
           "WAL position confirmed to Postgres (the slot keeps WAL after it)";
    /// Bytes of WAL between the server's current position and the confirmed LSN.
    slot_lag_bytes: Gauge
        => "walcast_slot_lag_bytes",
           "WAL bytes the slot retains behind the server's current position";
    /// Decode errors by kind.
    decode_errors: LabeledCounter<KindLabel>
        => "walcast_decode_errors_total", "pgoutput messages that failed to decode, by kind";
    /// Currently connected /ws clients.
    ws_clients: Gauge => "walcast_ws_clients", "Connected /ws clients";
    /// WebSocket connections accepted, by protocol.
    clients: LabeledCounter<ProtocolLabel>
        => "walcast_client_connections_total", "WebSocket connections accepted, by protocol";
    /// Frames delivered to clients (all protocols).
    deliveries: Counter => "walcast_deliveries_total", "Change frames written to clients";
    /// Clients closed because they fell behind.
    clients_lagged: Counter
        => "walcast_clients_lagged_total", "Clients closed with `lagged` because they fell behind";
    /// Clients closed with `lagged` because their backlog exceeded --client-queue-bytes.
    clients_over_budget: Counter
        => "walcast_clients_over_budget_total",
           "Clients closed with `lagged` because their backlog exceeded --client-queue-bytes (also counted in walcast_clients_lagged_total)";
    /// Bytes charged for the changes the hub holds (ring and sessions' batches).
    hub_bytes: Gauge
        => "walcast_hub_bytes",
           "Bytes charged for the changes held in memory for clients (decoded rows and shared frames, estimated)";
    /// Bytes charged for every change published to the hub.
    hub_published_bytes: Counter
        => "walcast_hub_published_bytes_total",
           "Bytes charged for the changes published to clients (decoded rows and shared frames, estimated)";
    /// Changes replayed to resuming clients.
    replayed_changes: Counter
        => "walcast_replayed_changes_total", "Changes replayed to resuming clients";
    /// Realtime broadcasts refused for their payload size.
    broadcasts_too_large: Counter
        => "walcast_broadcasts_too_large_total",
           "Realtime broadcasts not relayed because their payload exceeded --max-payload";
    /// Realtime sockets closed by a rate limit, by `kind` (`joins`, `messages`,
    /// `channel_messages`).
    realtime_rate_limited: LabeledCounter<KindLabel>
        => "walcast_realtime_rate_limited_total",
           "Realtime sockets closed for exceeding a per-second limit, by kind (joins, messages, channel_messages)";
    /// Realtime channels joined with a `resume_id`, by `kind`: `fresh` (no position yet),
    /// `resumed` (replayed or carried on from a position), `expired` (older than the retention
    /// window), `other_subject` (the position belongs to another token subject), `failed`
    /// (the position could not be read or replayed).
    realtime_resumes: LabeledCounter<KindLabel>
        => "walcast_realtime_resumes_total",
           "Realtime channel joins with a resume_id, by kind (fresh, resumed, expired, other_subject, failed)";
    /// Resume positions not saved because too many were waiting to be written.
    resume_positions_dropped: Counter
        => "walcast_resume_positions_dropped_total",
           "Realtime resume positions not saved because the write queue was full (such a channel resumes from an older position)";
    /// Resumes refused because --max-replays replays were running.
    replays_busy: Counter
        => "walcast_replays_busy_total",
           "Resumes answered `busy` because --max-replays replays were running";
    /// Change frames encoded (once per change and wire format).
    frames_encoded: Counter
        => "walcast_frames_encoded_total",
           "Change frames encoded (once per change and wire format)";
    /// Changes the consistency checker encoded through both wire formats and compared.
    consistency_checked: Counter
        => "walcast_consistency_checked_total",
           "Changes the consistency checker encoded through both wire formats and compared";
    /// Consistency mismatches by kind (`json_decode`, `json_field`, `realtime_decode`,
    /// `realtime_field`, `cross_path`, `delivery`).
    consistency_mismatches: LabeledCounter<KindLabel>
        => "walcast_consistency_mismatches_total",
           "Consistency mismatches found by the checker, by kind";
    /// Share of the last consistency sample without a mismatch, set in millionths.
    consistency_match_ratio_ppm: RatioGauge = RatioGauge::with_ppm(1_000_000)
        => "walcast_consistency_match_ratio",
           "Share of the last consistency sample without a mismatch (1 when empty)";
    /// Calls of `walcast.realtime_visible_sets` by the row level security gate.
    realtime_rls_calls: Counter
        => "walcast_realtime_rls_calls_total",
           "Calls of walcast.realtime_visible_sets by the row level security gate";
    /// (commit, claims group) checks answered by those calls.
    realtime_rls_checks: Counter
        => "walcast_realtime_rls_checks_total",
           "(commit, claims group) checks answered by the row level security gate's calls";
    /// Seconds per gate call (failed calls included).
    realtime_rls_call_seconds: Histogram = Histogram::new(SECONDS_BUCKETS)
        => "walcast_realtime_rls_call_seconds",
           "Duration of one row level security gate call (failed calls included)";
    /// Gate calls that failed (no connection, database error, timeout).
    realtime_rls_errors: Counter
        => "walcast_realtime_rls_errors_total",
           "Row level security gate calls that failed (no connection, database error, timeout)";
    // Edge limits (issue 12).
    /// Connections and upgrades refused by a cap, by `kind`: `total` (--max-connections, 503),
    /// `per_ip` (an address's open connections, 429 before any request) and `sessions_per_ip`
    /// (an address's WebSocket sessions, 429 at upgrade).
    connections_refused: LabeledCounter<KindLabel>
        => "walcast_connections_refused_total",
           "Connections and WebSocket upgrades refused by a cap, by kind (total, per_ip, sessions_per_ip)";
    /// Realtime messages not relayed because their channel was over its per-second budget.
    channel_messages_dropped: Counter
        => "walcast_channel_messages_dropped_total",
           "Realtime broadcast and presence messages not relayed because their channel was over --max-channel-messages-per-second";
    /// Broadcasts from the database (`realtime.messages` rows) handed to their topic's channels.
    db_broadcasts: Counter
        => "walcast_db_broadcasts_total",
           "Broadcasts from the database (realtime.messages rows) handed to the Realtime channels of their topic";
    /// `realtime.messages` rows the reader could not queue for delivery.
    db_broadcasts_dropped: Counter
        => "walcast_db_broadcasts_dropped_total",
           "realtime.messages rows not delivered because the queue from the replication reader was full";
    /// Broadcasts this node wrote to the WAL for the other nodes (`--cluster-broadcast`).
    cluster_broadcasts_sent: Counter
        => "walcast_cluster_broadcasts_sent_total",
           "Broadcasts accepted on this node and written to the WAL for the other nodes (--cluster-broadcast)";
    /// Broadcasts from other nodes handed to this node's channels.
    cluster_broadcasts_received: Counter
        => "walcast_cluster_broadcasts_received_total",
           "Broadcasts from other walcast nodes, read from the WAL and handed to this node's Realtime channels";
    /// Broadcasts between nodes lost, by `kind`: `send_queue` (the writer's queue was full),
    /// `write` (the database refused or was unreachable), `receive_queue` (the reader's queue
    /// was full; counts batches), `decode` (an unreadable batch; counts batches).
    cluster_broadcasts_dropped: LabeledCounter<KindLabel>
        => "walcast_cluster_broadcasts_dropped_total",
           "Broadcasts between walcast nodes lost, by kind (send_queue, write: broadcasts; receive_queue, decode: batches)";
    /// Failed admin console logins (wrong password or a broken SCRAM exchange).
    admin_login_failures: Counter
        => "walcast_admin_login_failures_total",
           "Failed admin console logins (wrong password or a broken SCRAM exchange)";
    /// Admin console logins refused because their address was locked out.
    admin_logins_throttled: Counter
        => "walcast_admin_logins_throttled_total",
           "Admin console logins refused because their address was locked out after --admin-max-failures failures";
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
    /// Counts one HTTP request; `route` is the router's pattern, not the concrete path.
    pub fn http_request(&self, route: &'static str, status: u16) {
        self.http_requests.add(HttpLabels { route, status }, 1);
    }

    /// Renders every metric in the Prometheus text exposition format ([`CONTENT_TYPE`]), with
    /// the pool gauges set from `pool` first.
    pub fn render(&self, pool: PoolStats) -> String {
        self.pool_connections_size.set(pool.size as i64);
        self.pool_connections_available.set(pool.available as i64);
        self.pool_connections_waiting.set(pool.waiting as i64);
        self.pool_connections_max.set(pool.max_size as i64);
        let mut out = String::with_capacity(8192);
        // Writing into a String does not fail, and no metric here refuses the text format
        // (only native-only histograms do).
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics could not be rendered");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Family names in `METRICS.md`'s table (the `_available` / `_waiting` / `_max` shorthand
    /// expanded).
    fn documented_names() -> Vec<String> {
        let mut names = Vec::new();
        for line in include_str!("../../METRICS.md").lines() {
            let Some(first) = line.strip_prefix("| `walcast_") else {
                continue;
            };
            let cell = first.split(" |").next().unwrap_or_default();
            let mut parts = cell.split(" / ");
            let base = format!(
                "walcast_{}",
                parts.next().unwrap_or_default().trim_matches('`')
            );
            for suffix in parts {
                let suffix = suffix.trim_matches('`');
                let stem = base.rsplit_once('_').map_or(base.as_str(), |(s, _)| s);
                names.push(format!("{stem}{suffix}"));
            }
            names.push(base);
        }
        names
    }

    /// Family names in the rendered text, from its `# TYPE` lines.
    fn rendered_names(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn metrics_md_lists_exactly_the_rendered_metrics() {
        let m = Metrics::default();
        let mut rendered = rendered_names(&m.render(PoolStats::default()));
        let mut documented = documented_names();
        rendered.sort();
        documented.sort();
        assert!(
            documented.len() > 30,
            "METRICS.md table not parsed: {documented:?}"
        );
        assert_eq!(rendered, documented);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.events_accepted.add(3);
        m.events_rejected.add("invalid_event", 2);
        m.http_request("/v1/events", 201);
        m.ingest_flush_seconds.observe(0.003);
        let text = m.render(PoolStats {
            size: 3,
            available: 2,
            waiting: 0,
            max_size: 16,
        });
        for line in [
            "# HELP walcast_events_accepted_total Events committed to monitoring_events through ingest.",
            "# TYPE walcast_events_accepted_total counter",
            "walcast_events_accepted_total 3",
            "walcast_events_rejected_total{code=\"invalid_event\"} 2",
            "walcast_http_requests_total{route=\"/v1/events\",status=\"201\"} 1",
            "walcast_ingest_flush_seconds_bucket{le=\"0.0025\"} 0",
            "walcast_ingest_flush_seconds_bucket{le=\"0.005\"} 1",
            "walcast_ingest_flush_seconds_count 1",
            "walcast_ingest_batch_events_bucket{le=\"10000\"} 0",
            "walcast_pool_connections_size 3",
            "walcast_pool_connections_available 2",
            "walcast_pool_connections_waiting 0",
            "walcast_pool_connections_max 16",
            "walcast_consistency_match_ratio 1.0",
            "# TYPE walcast_consistency_mismatches_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert_eq!(m.events_rejected.get("invalid_event"), 2);
        assert_eq!(m.events_rejected.get("unauthorized"), 0);
        assert_eq!(
            m.http_requests.get(HttpLabels {
                route: "/v1/events",
                status: 201
            }),
            1
        );
    }

    #[test]
    fn histogram_buckets_are_unchanged() {
        let m = Metrics::default();
        let text = m.render(PoolStats::default());
        let bounds = |name: &str| -> Vec<String> {
            let prefix = format!("{name}_bucket{{le=\"");
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .filter_map(|l| l.split('"').next())
                .map(str::to_owned)
                .collect()
        };
        let seconds = [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "2.5", "5", "+Inf",
        ];
        assert_eq!(bounds("walcast_ingest_flush_seconds"), seconds);
        assert_eq!(bounds("walcast_realtime_rls_call_seconds"), seconds);
        assert_eq!(
            bounds("walcast_ingest_batch_events"),
            [
                "1", "5", "10", "50", "100", "500", "1000", "5000", "10000", "+Inf"
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.decode_errors.add("a\nb \"c\" d\\e", 1);
        let text = m.render(PoolStats::default());
        let line = r#"walcast_decode_errors_total{kind="a\nb \"c\" d\\e"} 1"#;
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }

    #[test]
    fn ratio_gauge_exports_millionths_as_a_share() {
        let m = Metrics::default();
        assert_eq!(m.consistency_match_ratio_ppm.get(), 1_000_000);
        m.consistency_match_ratio_ppm.set(250_000);
        assert_eq!(m.consistency_match_ratio_ppm.get(), 250_000);
        let text = m.render(PoolStats::default());
        assert!(
            text.lines()
                .any(|l| l == "walcast_consistency_match_ratio 0.25")
        );
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
            "walcast_realtime_rls_call_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("walcast_realtime_rls_call_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("sum line");
        assert!((sum - 0.204).abs() < 1e-9, "{sum}");
    }
}
