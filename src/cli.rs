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
    after_help = "Examples:\n  walcast dev\n  \
walcast emit --type cpu --source host-1 --data '{\"load\":0.7}'\n  \
walcast tail --type cpu\n\n\
Every option can also be set through the environment variable shown next to it.\n\
Run `walcast <command> --help` for more examples."
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
Endpoints: POST /v1/events, GET /ws, GET /healthz, GET /readyz, GET /metrics, GET /v1/status."
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

    /// Inspect, retry and purge the dead-letter queue (work walcast could not complete).
    #[command(
        subcommand,
        after_help = "Examples:\n  walcast dlq stats --database-url postgres://postgres@localhost/app\n  \
walcast dlq list --status failed\n  \
walcast dlq show 42\n  \
walcast dlq retry 42 --now\n  \
walcast dlq purge --older-than 7d --status recovered\n\n\
See docs/dlq.md for the table, the retry policies and the SQL functions."
    )]
    Dlq(DlqCommand),

    /// Feature flags: list, change, roll out, override, evaluate, history (SQL on --database-url).
    #[command(
        subcommand,
        after_help = "Examples:\n  walcast flags list --database-url postgres://postgres@localhost/app\n  \
walcast flags rollout use_realtime 25\n  \
walcast flags set broadcaster_mode --default-variant realtime\n  \
walcast flags override use_realtime --subject user-42\n  \
walcast flags eval user-42 --segments beta\n  \
walcast flags history use_realtime\n\n\
Changes go through the walcast.flag_* SQL functions (validation, history, NOTIFY): running servers \
follow them within a second. See docs/flags.md."
    )]
    Flags(FlagsCommand),

    /// Check that /ws and the Realtime endpoint deliver the same changes (and the table agrees).
    #[command(
        after_help = "Examples:\n  walcast validate                                   # 10 s against http://127.0.0.1:4000\n  \
walcast validate --duration 30s --type cpu --json\n  \
walcast validate --generate 100 --database-url postgres://postgres@localhost/app\n\n\
Subscribes on both paths (INSERT, UPDATE, DELETE of public.monitoring_events), optionally reads \
the rows inserted during the window with SQL, and reports matched, missing, duplicated and \
out-of-order changes per path, field mismatches and latency (receive time minus commit time). \
Exit code 1 when anything was missing, duplicated, out of order or mismatched. See docs/validate.md."
    )]
    Validate(ValidateArgs),
}

/// `walcast validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Base URL of the walcast server (default: `http://<WALCAST_LISTEN>`).
    #[arg(long, env = "WALCAST_URL")]
    pub url: Option<String>,
    /// Listen address of the local server, used when --url is not given.
    #[arg(long, env = "WALCAST_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: String,
    /// How long to watch (e.g. 10s, 2m).
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// After the window, how long to keep listening for changes committed inside it.
    #[arg(long, default_value = "2s")]
    pub drain: String,
    /// Only these event types (repeatable).
    #[arg(long = "type", short = 't')]
    pub event_type: Vec<String>,
    /// Only these sources (repeatable).
    #[arg(long, short = 's')]
    pub source: Vec<String>,
    /// Row filters `column=op.value` (repeatable; all must hold).
    #[arg(long, short = 'f')]
    pub filter: Vec<String>,
    /// JWT for the Realtime endpoint (default: a service_role key minted from WALCAST_JWT_SECRET).
    #[arg(long, env = "WALCAST_APIKEY", hide_env_values = true)]
    pub apikey: Option<String>,
    /// The server's JWT secret, to mint the Realtime key and authorize --generate.
    #[arg(long, env = "WALCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Read the rows inserted during the window from this database as the reference.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Insert this many events through POST /v1/events during the window.
    #[arg(long, default_value_t = 0)]
    pub generate: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Testing aid: drop every N-th change received on /ws before comparing.
    #[arg(long, hide = true)]
    pub debug_drop_every: Option<u64>,
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
    /// JWT for /ws (a service_role key sees every change; another role what its policies allow).
    #[arg(long, env = "WALCAST_APIKEY", hide_env_values = true)]
    pub apikey: Option<String>,
    /// The server's JWT secret, to mint a service_role key when --apikey is not given.
    #[arg(long, env = "WALCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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

    /// Accept only tokens whose `iss` claim is this (e.g. https://<project>.supabase.co/auth/v1).
    #[arg(long, env = "WALCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Accept only tokens whose `aud` claim is (or lists) this, e.g. `authenticated`.
    #[arg(long, env = "WALCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Serve every endpoint without authentication (no JWT secret, JWKS or API key). Anyone who
    /// can reach the port may then write events, read every row, purge dead letters and change
    /// flags: for local experiments only. Without it, walcast refuses to start with no way to
    /// verify tokens.
    #[arg(long, env = "WALCAST_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// How often a connected client's role privileges are asked again (`/ws` connections and
    /// joined Realtime channels): a revoked column stops, a role that lost the table is cut off.
    #[arg(long, env = "WALCAST_ROLE_RECHECK", default_value = "60s", value_parser = duration_text)]
    pub role_recheck: String,

    /// Most replays (`resume`, `since`) running at once, each a replication connection; more
    /// get a `busy` error and retry. Keep it well below Postgres' max_wal_senders.
    #[arg(long, env = "WALCAST_MAX_REPLAYS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_replays: u16,

    /// Most HTTP and WebSocket connections served at once; more are answered 503 and closed.
    /// Keep it below the open-files limit (`ulimit -n`) minus the database pool.
    #[arg(long, env = "WALCAST_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Longest time to read a request's headers (a connection that sends nothing is closed).
    #[arg(long, env = "WALCAST_HEADER_TIMEOUT", default_value = "10s", value_parser = duration_text)]
    pub header_timeout: String,

    /// When set, `GET /metrics` needs `Authorization: Bearer <this token>` (Prometheus'
    /// `authorization` setting); open by default.
    #[arg(long, env = "WALCAST_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Largest Realtime broadcast payload a client may send (Supabase's free tier: 256 KiB).
    /// Larger ones are not relayed (with `ack`, the reply says `payload_size_exceeded`);
    /// frames larger still (payload + 64 KiB) close the socket with 1009.
    #[arg(long, env = "WALCAST_MAX_PAYLOAD", default_value = "256KiB")]
    pub max_payload: String,

    /// Days of stored broadcasts (`realtime.messages`) kept for replay: older daily partitions
    /// are dropped, hourly. Only for a `realtime.messages` walcast created; a Supabase
    /// project's table is left to Supabase.
    #[arg(long, env = "WALCAST_BROADCAST_RETENTION_DAYS", default_value_t = 3)]
    pub broadcast_retention_days: u32,

    /// Realtime joins one socket may send per second; one more is answered
    /// `ClientJoinRateLimitReached` and the socket is closed.
    #[arg(long, env = "WALCAST_MAX_JOINS_PER_SECOND", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_joins_per_second: u32,

    /// Realtime broadcast and presence messages one socket may send per second; one more gets
    /// "Too many messages per second" on its channels and the socket is closed (others carry on).
    #[arg(long, env = "WALCAST_MAX_MESSAGES_PER_SECOND", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_messages_per_second: u32,

    /// Roles a token may name besides anon, authenticated and service_role (comma-separated).
    /// A role that is a superuser or bypasses RLS is refused whatever the token says.
    #[arg(long, env = "WALCAST_EXTRA_ROLES", value_delimiter = ',')]
    pub extra_roles: Vec<String>,

    // Today's Supabase keys (issue 12): asymmetric signing keys (JWKS) and API keys.
    /// URL of the project's JWKS, to verify user tokens signed with its asymmetric keys (ES256,
    /// RS256, ...): https://<project>.supabase.co/auth/v1/.well-known/jwks.json. Fetched at
    /// start, every --jwks-refresh, and when a token names an unknown `kid` (at most once per
    /// --jwks-min-refresh). Works with or without --jwt-secret (which keeps checking HS256).
    #[arg(long, env = "WALCAST_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,

    /// A JWKS file instead of --jwks-url (e.g. for self-hosted keys); read at start (it must
    /// hold a usable key) and again on each refresh, so replacing the file rotates keys.
    #[arg(long, env = "WALCAST_JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,

    /// How often the JWKS is read again (new keys arrive, revoked ones stop verifying).
    #[arg(long, env = "WALCAST_JWKS_REFRESH", default_value = "10m", value_parser = duration_text)]
    pub jwks_refresh: String,

    /// Least time between two JWKS reads caused by tokens with an unknown `kid`: tokens with
    /// made-up kids cannot make walcast fetch more often than this.
    #[arg(long, env = "WALCAST_JWKS_MIN_REFRESH", default_value = "30s", value_parser = duration_text)]
    pub jwks_min_refresh: String,

    /// The project's publishable API keys (sb_publishable_…, comma-separated): a request with
    /// one (`apikey` header or `?apikey=`, as supabase-js sends it) acts as `anon` unless it also
    /// carries a user JWT. Prefer the environment variable to the flag (visible in `ps`).
    #[arg(
        long,
        env = "WALCAST_PUBLISHABLE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub publishable_keys: Vec<String>,

    /// The project's secret API keys (sb_secret_…, comma-separated): a request with one acts as
    /// `service_role` unless it also carries a user JWT. Servers only: never ship one to a
    /// browser. Prefer the environment variable to the flag (visible in `ps`).
    #[arg(
        long,
        env = "WALCAST_SECRET_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret_keys: Vec<String>,

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
    #[arg(long, env = "WALCAST_CLIENT_QUEUE", default_value_t = 65536)]
    pub client_queue: usize,

    // Memory bounded in bytes (issue 12): the client byte budget.
    /// Bytes of changes a client may fall behind before it gets `lagged` and is closed, like
    /// --client-queue but in bytes (e.g. 16MiB, 256MiB). A change is charged its decoded row
    /// plus its encoded texts (one for /ws, two for Realtime), once however many clients hold
    /// it: the changes are shared, so this is also about the most memory stalled clients pin
    /// together. Keep it at least 4x the largest change (a 1 MiB row costs up to 4 MiB) so
    /// readers are not cut by one large row; raise it to let slow clients ride out longer
    /// bursts.
    #[arg(long, env = "WALCAST_CLIENT_QUEUE_BYTES", default_value = "64MiB")]
    pub client_queue_bytes: String,

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

    /// Directory of the durable spool that holds accepted events while Postgres is unreachable
    /// (default: .walcast/spool-<node> under the current directory).
    #[arg(long, env = "WALCAST_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Largest spool; when full, ingest answers 503 with Retry-After (e.g. 1GiB).
    #[arg(long, env = "WALCAST_SPOOL_MAX", default_value = "1GiB")]
    pub spool_max: String,

    /// Consecutive failed database writes that open the circuit breaker.
    #[arg(long, env = "WALCAST_BREAKER_THRESHOLD", default_value_t = 3)]
    pub breaker_threshold: u32,

    /// How long the breaker stays open before a probe write (e.g. 2s).
    #[arg(long, env = "WALCAST_BREAKER_COOLDOWN", default_value = "2s")]
    pub breaker_cooldown: String,

    /// Attempts per database write on transient errors (exponential backoff with jitter).
    #[arg(long, env = "WALCAST_WRITE_ATTEMPTS", default_value_t = 3)]
    pub write_attempts: u32,

    /// Interval at which walcast writes its own counters as `walcast.metrics` events (0 = off).
    #[arg(long, env = "WALCAST_METRICS_INTERVAL", default_value = "60s")]
    pub metrics_interval: String,

    /// Interval of the in-server consistency check of both wire formats (0 = off).
    #[arg(long, env = "WALCAST_VALIDATE_INTERVAL", default_value = "30s")]
    pub validate_interval: String,

    /// Address of the admin console (Postgres protocol; off unless set), e.g. 127.0.0.1:6432.
    #[arg(long, env = "WALCAST_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Password of the admin console (required when --admin-listen is set).
    #[arg(long, env = "WALCAST_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    // Realtime channel joins (Supabase's per-project settings).
    /// Refuse Realtime joins of public channels (`PrivateOnly: This project only allows private
    /// channels`): every channel then follows the `realtime.messages` policies.
    #[arg(long, env = "WALCAST_PRIVATE_ONLY")]
    pub private_only: bool,

    /// Delay before a Realtime join error is answered, as Supabase Realtime pauses, so that a
    /// client rejoining in a loop is slowed down (0 = answer at once).
    #[arg(long, env = "WALCAST_JOIN_ERROR_BACKOFF", default_value = "0s")]
    pub join_error_backoff: String,

    // Edge limits: per-address caps, proxies, per-channel rate, console login throttle (issue 12).
    /// WebSocket sessions one client address may hold at once (both endpoints together); one
    /// more upgrade is answered 429 "Too many connected users". The address's open TCP
    /// connections are capped a little higher (this + 8), so that it can still make plain
    /// requests and be told 429; beyond that a connection is refused at once. IPv6 addresses
    /// count per /64. Loopback is not exempt: see --per-ip-exempt.
    #[arg(long, env = "WALCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,

    /// Addresses or CIDR ranges (comma-separated) that --max-connections-per-ip does not apply
    /// to, e.g. `127.0.0.1/32` for a local dashboard or load test. --max-connections still does.
    #[arg(long, env = "WALCAST_PER_IP_EXEMPT", value_delimiter = ',')]
    pub per_ip_exempt: Vec<String>,

    /// Reverse proxies (addresses or CIDR ranges, comma-separated; e.g. the TLS terminator)
    /// whose `X-Forwarded-For` header names the client. Their own connections are not capped
    /// per address; each WebSocket session through them counts against the client the header
    /// names (the nearest address that is not itself a listed proxy). Off by default: the
    /// header is ignored and the peer address counts, so a client cannot pick its address.
    #[arg(long, env = "WALCAST_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Realtime broadcast and presence messages one channel (topic) may relay per second, over
    /// all its sockets (Supabase's free tier: 100 messages per second). Beyond it messages are
    /// not relayed; the socket that sent the most in that second gets "Too many messages per
    /// second" and is closed, the other members keep their sockets.
    #[arg(long, env = "WALCAST_MAX_CHANNEL_MESSAGES_PER_SECOND", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channel_messages_per_second: u32,

    /// Realtime broadcasts reach the channel's members on every walcast node of this database:
    /// each broadcast accepted here (socket or REST) is also written to the WAL with
    /// pg_logical_emit_message, and broadcasts other nodes wrote are read from this node's slot.
    /// Costs one WAL message per batch of broadcasts, decoded by every node's slot. Presence
    /// crosses nodes the same way (see --cluster-presence-ttl). Off by default (one node needs
    /// nothing). See docs/scaling.md.
    #[arg(long, env = "WALCAST_CLUSTER_BROADCAST")]
    pub cluster_broadcast: bool,

    /// With --cluster-broadcast: each node writes an `alive` message every third of this, and a
    /// node not heard from for this long is given up: its presences leave every other node's
    /// presence_state (members get the leaves in presence_diff). From 3s to 1h.
    #[arg(long, env = "WALCAST_CLUSTER_PRESENCE_TTL", default_value = "15s", value_parser = duration_text)]
    pub cluster_presence_ttl: String,

    /// Failed admin console logins one client address may make before it is locked out for
    /// --admin-lockout: every attempt is then refused, the right password too.
    #[arg(long, env = "WALCAST_ADMIN_MAX_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub admin_max_failures: u32,

    /// How long a client address stays locked out of the admin console after its last failed
    /// login once it reached --admin-max-failures (e.g. 60s, 15m); failures older than this are
    /// forgotten.
    #[arg(long, env = "WALCAST_ADMIN_LOCKOUT", default_value = "60s", value_parser = duration_text)]
    pub admin_lockout: String,
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

/// `walcast dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    #[command(
        after_help = "Examples:\n  walcast dlq list --database-url postgres://postgres@localhost/app\n  \
walcast dlq list --status failed --operation ingest --limit 20\n  \
walcast dlq list --before 1200 --json      # the page after id 1200, as JSON lines"
    )]
    List(DlqListArgs),
    /// Show one dead letter: payload, error, hint, attempts, timestamps.
    #[command(
        after_help = "Example:\n  walcast dlq show 42 --database-url postgres://postgres@localhost/app"
    )]
    Show(DlqShowArgs),
    /// Retry dead letters: back to pending, due now, with a fresh attempt budget.
    #[command(
        after_help = "Examples:\n  walcast dlq retry 42            # the running server's retry worker picks it up\n  \
walcast dlq retry 42 --now      # retry here, at once, and print the outcome\n  \
walcast dlq retry --all --now   # every failed row\n\n\
With --now the exit code is 1 when a retried row is not recovered."
    )]
    Retry(DlqRetryArgs),
    /// Delete old dead letters (default: recovered ones last changed more than 7 days ago).
    #[command(
        after_help = "Examples:\n  walcast dlq purge                                   # recovered, older than 7d\n  \
walcast dlq purge --older-than 30d --status recovered,failed"
    )]
    Purge(DlqPurgeArgs),
    /// Counts by status, the oldest pending dead letter, the next due attempt.
    #[command(
        after_help = "Example:\n  walcast dlq stats --database-url postgres://postgres@localhost/app --json"
    )]
    Stats(DlqStatsArgs),
}

/// `walcast dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Database holding the queue.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Only rows in this status.
    #[arg(long, value_parser = ["pending", "retrying", "recovered", "failed"])]
    pub status: Option<String>,
    /// Only rows of this operation (e.g. ingest, deliver).
    #[arg(long)]
    pub operation: Option<String>,
    /// Most rows to print (1-1000).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Only rows with a smaller id (the next page after the last id printed).
    #[arg(long)]
    pub before: Option<i64>,
    /// Print one JSON object per row.
    #[arg(long)]
    pub json: bool,
}

/// `walcast dlq show`.
#[derive(Debug, Args)]
pub struct DlqShowArgs {
    /// Database holding the queue.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The dead letter's id.
    pub id: i64,
    /// Print the row as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `walcast dlq retry`.
#[derive(Debug, Args)]
pub struct DlqRetryArgs {
    /// Database holding the queue.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The dead letter to retry.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<i64>,
    /// Every failed row, and every manual_retry row waiting for an operator.
    #[arg(long)]
    pub all: bool,
    /// Retry here at once (one attempt per row) and print the outcome.
    #[arg(long)]
    pub now: bool,
    /// Node name recorded as the worker of --now attempts.
    #[arg(long, env = "WALCAST_NODE", default_value = "node1")]
    pub node: String,
    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `walcast dlq purge`.
#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    /// Database holding the queue.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Only rows last changed longer ago than this (e.g. 12h, 7d, 0s).
    #[arg(long, default_value = "7d", value_parser = duration_text)]
    pub older_than: String,
    /// Statuses to delete, comma separated (retrying rows are never deleted).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "recovered",
        value_parser = ["pending", "recovered", "failed"]
    )]
    pub status: Vec<String>,
}

/// `walcast dlq stats`.
#[derive(Debug, Args)]
pub struct DlqStatsArgs {
    /// Database holding the queue.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A duration argument (`7d`, `12h`, `0s`), checked and kept as written.
fn duration_text(value: &str) -> Result<String, String> {
    crate::units::parse_duration(value).map(|_| value.to_owned())
}

/// `walcast flags ...`.
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// List every flag with its switch, rollout, variants and overrides.
    #[command(
        after_help = "Example:\n  walcast flags list --database-url postgres://postgres@localhost/app\n  walcast flags list --json"
    )]
    List(FlagsListArgs),
    /// Create a flag (on/off, or with weighted variants).
    #[command(
        after_help = "Examples:\n  walcast flags create new_chart --description 'the new chart widget'\n  \
walcast flags create theme --variants light=50,dark=50 --default-variant light --rollout 10"
    )]
    Create(FlagsCreateArgs),
    /// Change a flag's switch, description, variants or default variant.
    #[command(
        after_help = "Examples:\n  walcast flags set broadcaster_mode --default-variant realtime\n  \
walcast flags set use_realtime --disable\n  \
walcast flags set theme --variants light=20,dark=80"
    )]
    Set(FlagsSetArgs),
    /// Set the share of subjects that get a flag (0-100, two decimals at most).
    #[command(after_help = "Example:\n  walcast flags rollout use_realtime 25\n\n\
Raising the percentage only adds subjects: everyone in at 25 stays in at 50.")]
    Rollout(FlagsRolloutArgs),
    /// Turn a flag on or off (or pin a variant) for one subject or segment, or clear that.
    #[command(
        after_help = "Examples:\n  walcast flags override use_realtime --subject user-42\n  \
walcast flags override use_realtime --segment beta --off\n  \
walcast flags override broadcaster_mode --subject node2 --variant realtime\n  \
walcast flags override use_realtime --subject user-42 --clear"
    )]
    Override(FlagsOverrideArgs),
    /// Evaluate every flag for a subject, the way the database does (no environment tier).
    #[command(after_help = "Example:\n  walcast flags eval user-42 --segments beta,eu")]
    Eval(FlagsEvalArgs),
    /// Show who changed what, newest first.
    #[command(
        after_help = "Examples:\n  walcast flags history                  # every flag\n  \
walcast flags history use_realtime --limit 5"
    )]
    History(FlagsHistoryArgs),
    /// Delete a flag and its overrides (its history stays).
    #[command(after_help = "Example:\n  walcast flags delete new_chart")]
    Delete(FlagsDeleteArgs),
}

/// Options shared by the flag changes.
#[derive(Debug, Clone, Args)]
pub struct FlagsChangeArgs {
    /// Database holding the flags.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Who to record in the history (default: the database role, current_user).
    #[arg(long, env = "WALCAST_FLAGS_WHO")]
    pub who: Option<String>,
}

/// `walcast flags list`.
#[derive(Debug, Args)]
pub struct FlagsListArgs {
    /// Database holding the flags.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `walcast flags create`.
#[derive(Debug, Args)]
pub struct FlagsCreateArgs {
    /// Flag name: `[a-z][a-z0-9_]*`.
    pub name: String,
    /// What the flag is for.
    #[arg(long)]
    pub description: Option<String>,
    /// Variants with weights summing to 100: `a=50,b=50` or a JSON list.
    #[arg(long)]
    pub variants: Option<String>,
    /// Variant of subjects that are off (default: the first variant).
    #[arg(long)]
    pub default_variant: Option<String>,
    /// Create it switched off (off for everyone, overrides included).
    #[arg(long)]
    pub disabled: bool,
    /// Rollout percentage, 0-100.
    #[arg(long)]
    pub rollout: Option<String>,
    /// Database and author.
    #[command(flatten)]
    pub change: FlagsChangeArgs,
}

/// `walcast flags set`.
#[derive(Debug, Args)]
pub struct FlagsSetArgs {
    /// Flag name.
    pub name: String,
    /// Switch the flag on (the rollout and overrides apply again).
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Switch the flag off for everyone, overrides included.
    #[arg(long)]
    pub disable: bool,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// New variants: `a=50,b=50`, a JSON list, or '' for none.
    #[arg(long)]
    pub variants: Option<String>,
    /// New default variant.
    #[arg(long)]
    pub default_variant: Option<String>,
    /// Database and author.
    #[command(flatten)]
    pub change: FlagsChangeArgs,
}

/// `walcast flags rollout`.
#[derive(Debug, Args)]
pub struct FlagsRolloutArgs {
    /// Flag name.
    pub name: String,
    /// Percentage of subjects, 0-100 (e.g. 25 or 12.5).
    pub percentage: String,
    /// Database and author.
    #[command(flatten)]
    pub change: FlagsChangeArgs,
}

/// `walcast flags override`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["subject", "segment"])))]
pub struct FlagsOverrideArgs {
    /// Flag name.
    pub name: String,
    /// The subject (user, client or node id).
    #[arg(long)]
    pub subject: Option<String>,
    /// The segment (a group such as beta).
    #[arg(long)]
    pub segment: Option<String>,
    /// Turn the flag off for it (default: on).
    #[arg(long, conflicts_with_all = ["variant", "clear"])]
    pub off: bool,
    /// Pin this variant.
    #[arg(long, conflicts_with = "clear")]
    pub variant: Option<String>,
    /// Remove the override instead.
    #[arg(long)]
    pub clear: bool,
    /// Database and author.
    #[command(flatten)]
    pub change: FlagsChangeArgs,
}

/// `walcast flags eval`.
#[derive(Debug, Args)]
pub struct FlagsEvalArgs {
    /// The subject (user, client or node id).
    pub subject: String,
    /// The subject's segments, most specific first, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub segments: Vec<String>,
    /// Database holding the flags.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `walcast flags history`.
#[derive(Debug, Args)]
pub struct FlagsHistoryArgs {
    /// Only this flag.
    pub name: Option<String>,
    /// Most entries to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
    /// Database holding the flags.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `walcast flags delete`.
#[derive(Debug, Args)]
pub struct FlagsDeleteArgs {
    /// Flag name.
    pub name: String,
    /// Database and author.
    #[command(flatten)]
    pub change: FlagsChangeArgs,
}
