//! Command-line surface: every subcommand, every option, and the environment variable behind it.
//!
//! This module only *describes* the command line (clap derive). Turning the raw values into a
//! validated [`crate::config`] happens in `config.rs`, before the Tokio runtime starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "walcast",
    version,
    about = "Stream the Postgres table monitoring_events, live and loss-free, to WebSocket clients.",
    long_about = "walcast writes monitoring events into Postgres (public.monitoring_events) and streams \
every committed change from the WAL (logical replication, pgoutput) to WebSocket clients: a plain JSON \
protocol on /ws and a Supabase-Realtime-compatible protocol on /realtime/v1/websocket.\n\n\
Quick start on a machine with PostgreSQL >= 15 installed (nothing else to set up):\n\n  \
walcast dev\n\n\
Against your own database:\n\n  \
walcast migrate --database-url postgres://postgres@localhost/app\n  \
walcast serve   --database-url postgres://postgres@localhost/app",
    after_help = "Every option can also be set through the environment variable shown next to it.\n\
Run `walcast <command> --help` for examples."
)]
pub struct Cli {
    /// Log filter, e.g. `info`, `walcast=debug`.
    #[arg(long, global = true, env = "WALCAST_LOG", default_value = "info")]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply walcast's embedded migrations to a database (idempotent).
    #[command(
        after_help = "Example:\n  walcast migrate --database-url postgres://postgres@localhost:5432/app\n\n\
Prints each migration it applied; prints nothing new on a second run."
    )]
    Migrate(MigrateArgs),

    /// Run the server against an existing, migrated database.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://postgres@localhost/app WALCAST_JWT_SECRET=... walcast serve\n\n\
Endpoints: POST /v1/events, GET /ws, GET /healthz, GET /readyz, GET /metrics."
    )]
    Serve(ServeArgs),

    /// Start a private Postgres cluster, migrate it and serve: everything on one machine.
    #[command(
        after_help = "Example:\n  walcast dev                      # data in ./.walcast\n  \
walcast dev --data-dir /tmp/wc   # somewhere else\n\n\
The cluster uses the installed PostgreSQL >= 15 binaries (PATH or /usr/lib/postgresql/*/bin, or \
WALCAST_PG_BIN); when run as root it runs them as the `postgres` user. A second run reuses the data. \
Ctrl-C stops the server and the cluster."
    )]
    Dev(DevArgs),

    /// Post events to a running walcast (from arguments or NDJSON on stdin).
    #[command(
        after_help = "Examples:\n  walcast emit --type cpu --source host-1 --data '{\"load\":0.7}'\n  \
cat events.ndjson | walcast emit --stdin\n\n\
Prints the ids of the committed events, one per line."
    )]
    Emit(EmitArgs),

    /// Print an `anon` and a `service_role` JWT signed with the configured secret.
    #[command(
        after_help = "Example:\n  WALCAST_JWT_SECRET=$(openssl rand -hex 32) walcast keys\n\n\
The tokens look like a Supabase project's API keys (HS256, claims `role`, `iss`, `iat`, `exp`)."
    )]
    Keys(KeysArgs),

    /// Print every change as one JSON line; reconnects and resumes by itself.
    #[command(
        after_help = "Examples:\n  walcast tail                                  # everything, from now on\n  \
walcast tail --type cpu --source host-1\n  \
walcast tail --filter 'data=neq.{}' --since 00000000016b3a2800000000\n\n\
Each line is {\"cursor\",\"op\",\"schema\",\"table\",\"commit_ts\",\"record\",\"old_record\"}. \
When the server goes away, tail reconnects with backoff and resumes after the last cursor it printed."
    )]
    Tail(TailArgs),

    /// Inspect or drop walcast's replication slot.
    #[command(subcommand)]
    Slot(SlotCommand),

    /// Measure walcast against a baseline on this machine (results for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `walcast tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// WebSocket URL of the server's /ws endpoint (default: ws://<WALCAST_LISTEN>/ws).
    #[arg(long, env = "WALCAST_WS_URL")]
    pub url: Option<String>,
    /// Listen address of the local server, used when --url is not given.
    #[arg(long, env = "WALCAST_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: String,
    /// Only these event types (repeatable).
    #[arg(long = "type", short = 't')]
    pub event_type: Vec<String>,
    /// Only these sources (repeatable).
    #[arg(long, short = 's')]
    pub source: Vec<String>,
    /// Row filters `column=op.value` with op eq, neq, lt, lte, gt, gte, in (repeatable).
    #[arg(long, short = 'f')]
    pub filter: Vec<String>,
    /// Resume after this cursor (as printed by a previous tail).
    #[arg(long)]
    pub since: Option<String>,
    /// Exit after this many changes.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// `walcast slot ...`.
#[derive(Debug, Subcommand)]
pub enum SlotCommand {
    /// Show the slot: confirmed position, lag, retained WAL, whether a session streams from it.
    #[command(
        after_help = "Example:\n  walcast slot status --database-url postgres://postgres@localhost/app"
    )]
    Status(SlotArgs),
    /// Drop the slot (walcast must be stopped; clients resuming from older cursors get cursor_expired).
    #[command(
        after_help = "Example:\n  walcast slot drop --database-url postgres://postgres@localhost/app --node node1"
    )]
    Drop(SlotArgs),
}

/// Options of `walcast slot`.
#[derive(Debug, Args)]
pub struct SlotArgs {
    /// Database holding the slot.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Node name (the slot is walcast_<node> unless --slot is given).
    #[arg(long, env = "WALCAST_NODE", default_value = "node1")]
    pub node: String,
    /// Slot name.
    #[arg(long, env = "WALCAST_SLOT")]
    pub slot: Option<String>,
}

/// Options to reach the database.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL (postgres://user:password@host:port/db?sslmode=disable).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

/// `walcast migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database to migrate.
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Server options shared by `serve` and `dev`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "WALCAST_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: String,

    /// HS256 secret that signs and checks JWTs (at least 32 characters).
    #[arg(long, env = "WALCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Name of this walcast node (letters, digits, `_`); names its replication slot.
    #[arg(long, env = "WALCAST_NODE", default_value = "node1")]
    pub node: String,

    /// Replication slot name (default: walcast_<node>).
    #[arg(long, env = "WALCAST_SLOT")]
    pub slot: Option<String>,

    /// Publication to stream from.
    #[arg(long, env = "WALCAST_PUBLICATION", default_value = "walcast_events")]
    pub publication: String,

    /// How long a client can come back with an old cursor and still resume (e.g. 15m, 1h).
    #[arg(long, env = "WALCAST_RETENTION", default_value = "15m")]
    pub retention: String,

    /// Most WAL the slot keeps for resuming clients (e.g. 1GiB); older cursors expire.
    #[arg(long, env = "WALCAST_RETENTION_BYTES", default_value = "1GiB")]
    pub retention_bytes: String,

    /// Frames a client may fall behind before it gets `lagged` and is closed.
    #[arg(long, env = "WALCAST_CLIENT_QUEUE", default_value_t = 8192)]
    pub client_queue: usize,

    /// Interval of server heartbeats on /ws (e.g. 30s).
    #[arg(long, env = "WALCAST_HEARTBEAT", default_value = "30s")]
    pub heartbeat: String,

    /// Largest accepted POST /v1/events body (e.g. 8MiB).
    #[arg(long, env = "WALCAST_MAX_BODY", default_value = "8MiB")]
    pub max_body: String,

    /// Most events in one POST /v1/events request.
    #[arg(long, env = "WALCAST_MAX_EVENTS", default_value_t = 10_000)]
    pub max_events: usize,

    /// Database connections in the pool.
    #[arg(long, env = "WALCAST_POOL_SIZE", default_value_t = 8)]
    pub pool_size: usize,

    /// Batch tier for high-frequency event types: MAX_EVENTS@MAX_WAIT.
    #[arg(long, env = "WALCAST_TIER_HIGH", default_value = "100@100ms")]
    pub tier_high: String,

    /// Batch tier for medium-frequency event types (and every type not listed elsewhere).
    #[arg(long, env = "WALCAST_TIER_MEDIUM", default_value = "50@500ms")]
    pub tier_medium: String,

    /// Batch tier for low-frequency event types.
    #[arg(long, env = "WALCAST_TIER_LOW", default_value = "10@2s")]
    pub tier_low: String,

    /// Event types in the high tier, comma separated; `prefix.*` matches a prefix.
    #[arg(
        long,
        env = "WALCAST_HIGH_TYPES",
        default_value = "cache.*,metric.*,metrics.*"
    )]
    pub high_types: String,

    /// Event types in the low tier, comma separated; `prefix.*` matches a prefix.
    #[arg(
        long,
        env = "WALCAST_LOW_TYPES",
        default_value = "health.*,health_check"
    )]
    pub low_types: String,

    /// Write a batch at once when no write is in flight, instead of waiting for the tier's MAX_WAIT.
    #[arg(long, env = "WALCAST_EAGER_FLUSH", default_value_t = true, action = clap::ArgAction::Set)]
    pub eager_flush: bool,

    /// Seconds to finish in-flight work after SIGTERM/SIGINT before exiting.
    #[arg(long, env = "WALCAST_SHUTDOWN_TIMEOUT", default_value = "30s")]
    pub shutdown_timeout: String,
}

/// `walcast serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Database to serve.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `walcast dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the private cluster keeps its data (reused by the next run).
    #[arg(long, env = "WALCAST_DEV_DIR", default_value = ".walcast")]
    pub data_dir: PathBuf,
    /// Port for the private cluster (default: a free one).
    #[arg(long, env = "WALCAST_DEV_PG_PORT")]
    pub pg_port: Option<u16>,
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `walcast emit`.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Base URL of the walcast server.
    #[arg(long, env = "WALCAST_URL")]
    pub url: Option<String>,
    /// Event type (with --source) for a single event given as arguments.
    #[arg(long = "type", short = 't')]
    pub event_type: Option<String>,
    /// Event source.
    #[arg(long, short = 's')]
    pub source: Option<String>,
    /// Event data, a JSON object.
    #[arg(long, short = 'd', default_value = "{}")]
    pub data: String,
    /// Event metadata, a JSON object.
    #[arg(long, default_value = "{}")]
    pub metadata: String,
    /// Read NDJSON events (one JSON object per line) from stdin instead.
    #[arg(long)]
    pub stdin: bool,
    /// service_role JWT to send as Bearer token (needed when the server has a JWT secret).
    #[arg(long, env = "WALCAST_SERVICE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Listen address of the local server, used when --url is not given.
    #[arg(long, env = "WALCAST_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: String,
}

/// `walcast keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// HS256 secret (at least 32 characters).
    #[arg(long, env = "WALCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Validity of the tokens (e.g. 10y, 1h).
    #[arg(long, default_value = "10y")]
    pub valid_for: String,
}

/// `walcast bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Events/s committed through POST /v1/events vs one INSERT per event on one connection.
    #[command(
        after_help = "Example:\n  walcast bench ingest                       # private cluster, defaults\n  \
walcast bench ingest --events 200000 --producers 8 --batch 500\n\n\
Starts its own private Postgres cluster and walcast server unless --database-url is given."
    )]
    Ingest(BenchIngestArgs),
    /// A burst through walcast to one /ws client vs pg_recvlogical draining the same burst.
    #[command(after_help = "Example:\n  walcast bench drain --txns 200 --rows 1000")]
    Drain(BenchDrainArgs),
    /// Commit-to-receipt latency on a /ws client at a steady commit rate, vs a bare replication client.
    #[command(after_help = "Example:\n  walcast bench latency --rate 1000 --seconds 10")]
    Latency(BenchLatencyArgs),
    /// A burst to many /ws clients: deliveries/s, vs LISTEN/NOTIFY fan-out to as many connections.
    #[command(after_help = "Example:\n  walcast bench fanout --clients 100 --txns 20 --rows 1000")]
    Fanout(BenchFanoutArgs),
    /// RSS idle, per idle client, and with one stalled client under load.
    #[command(after_help = "Example:\n  walcast bench memory --clients 1000")]
    Memory(BenchMemoryArgs),
}

/// `walcast bench drain`.
#[derive(Debug, Args)]
pub struct BenchDrainArgs {
    /// Transactions in the burst.
    #[arg(long, default_value_t = 200)]
    pub txns: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `walcast bench latency`.
#[derive(Debug, Args)]
pub struct BenchLatencyArgs {
    /// Single-row commits per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of load (the first second is discarded as warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `walcast bench fanout`.
#[derive(Debug, Args)]
pub struct BenchFanoutArgs {
    /// WebSocket clients, each receiving every row.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Transactions in the burst.
    #[arg(long, default_value_t = 20)]
    pub txns: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `walcast bench memory`.
#[derive(Debug, Args)]
pub struct BenchMemoryArgs {
    /// Idle clients to connect.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Rows written while one client is stalled.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `walcast bench ingest`.
#[derive(Debug, Args)]
pub struct BenchIngestArgs {
    /// Use this (migrated) database instead of a private cluster.
    #[arg(long, env = "WALCAST_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Events to send through HTTP.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Events for the one-INSERT-per-event baseline.
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
