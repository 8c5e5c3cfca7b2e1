//! Validated configuration: raw command-line/env values in, a [`ServerConfig`] out.
//!
//! Validation happens once, before the Tokio runtime starts. A bad value becomes a
//! [`ConfigError`] whose one-line message names the option and its environment variable; the
//! binary prints it and exits with code 2.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::ServerArgs;
use crate::units::{parse_bytes, parse_duration};

/// A configuration value that failed validation.
#[derive(Debug, thiserror::Error)]
#[error("invalid {option} ({env}): {reason}")]
pub struct ConfigError {
    /// The command-line option, e.g. `--listen`.
    pub option: &'static str,
    /// Its environment variable, e.g. `WALCAST_LISTEN`.
    pub env: &'static str,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for one option.
    pub fn new(option: &'static str, env: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            option,
            env,
            reason: reason.into(),
        }
    }
}

/// One adaptive batching tier: flush when this many events are pending or the oldest waited this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierConfig {
    /// Events that trigger a write.
    pub max_events: usize,
    /// Longest time a pending event waits for its batch.
    pub max_wait: Duration,
}

/// Batch tiers and which event types belong to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Tiers indexed by [`crate::ingest::Tier`]: high, medium, low.
    pub tiers: [TierConfig; 3],
    /// Patterns of high-frequency event types.
    pub high_types: Vec<String>,
    /// Patterns of low-frequency event types.
    pub low_types: Vec<String>,
    /// Write at once when no write is in flight.
    pub eager: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            tiers: [
                TierConfig {
                    max_events: 100,
                    max_wait: Duration::from_millis(100),
                },
                TierConfig {
                    max_events: 50,
                    max_wait: Duration::from_millis(500),
                },
                TierConfig {
                    max_events: 10,
                    max_wait: Duration::from_secs(2),
                },
            ],
            high_types: vec!["cache.*".into(), "metric.*".into(), "metrics.*".into()],
            low_types: vec!["health.*".into(), "health_check".into()],
            eager: true,
        }
    }
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Postgres URL for SQL and replication.
    pub database_url: String,
    /// HTTP/WebSocket listen address.
    pub listen: SocketAddr,
    /// HS256 secret for JWTs (`Debug` redacts it).
    pub jwt_secret: Option<crate::auth::SecretText>,
    /// What a token must also satisfy: issuer, audience, the roles it may name.
    pub token_policy: crate::auth::Policy,
    // Today's Supabase keys (issue 12): asymmetric signing keys (JWKS) and API keys.
    /// Where the asymmetric signing keys come from, and how often they are read again.
    pub jwks: Option<crate::auth::JwksConfig>,
    /// Publishable (`anon`) and secret (`service_role`) API keys; `Debug` shows only counts.
    pub api_keys: crate::auth::ApiKeys,
    /// How often a connected client's role privileges are asked again.
    pub role_recheck: Duration,
    /// Most replays running at once.
    pub max_replays: usize,
    /// HTTP connection cap and header timeout.
    pub http: HttpLimits,
    /// Largest Realtime broadcast payload, in bytes.
    pub max_payload: usize,
    /// Days of stored broadcasts kept in walcast's own `realtime.messages`.
    pub broadcast_retention_days: u32,
    /// Broadcasts reach the other walcast nodes of the database through the WAL.
    pub cluster_broadcast: bool,
    /// With `cluster_broadcast`: a node silent for this long loses its presences on the others.
    pub cluster_presence_ttl: Duration,
    /// The bearer token `/metrics` needs, when set.
    pub metrics_token: Option<crate::auth::SecretText>,
    /// Per-socket Realtime rate limits.
    pub realtime_limits: RealtimeLimits,
    /// What Realtime joins may ask for.
    pub realtime_joins: RealtimeJoins,
    /// Node name.
    pub node: String,
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Resume window in time.
    pub retention: Duration,
    /// Resume window in WAL bytes.
    pub retention_bytes: u64,
    /// Per-client queue bound in frames.
    pub client_queue: usize,
    // Memory bounded in bytes (issue 12).
    /// Per-client backlog bound in bytes (also about the most the shared ring holds).
    pub client_queue_bytes: u64,
    /// Heartbeat interval on /ws.
    pub heartbeat: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// Most events per request.
    pub max_events: usize,
    /// Pool size.
    pub pool_size: usize,
    /// Adaptive batching.
    pub batch: BatchConfig,
    /// Graceful shutdown budget.
    pub shutdown_timeout: Duration,
    /// Spool directory.
    pub spool_dir: std::path::PathBuf,
    /// Spool size limit in bytes.
    pub spool_max: u64,
    /// Circuit breaker thresholds.
    pub breaker: crate::ingest::BreakerConfig,
    /// Attempts per write on transient errors.
    pub write_attempts: u32,
    /// Metrics persister interval (None: off).
    pub metrics_interval: Option<Duration>,
    /// Interval of the in-server consistency check (None: off).
    pub validate_interval: Option<Duration>,
    /// The admin console (None: off).
    pub admin: Option<AdminConfig>,
}

/// Where the admin console listens, its password and how failed logins are throttled.
#[derive(Clone)]
pub struct AdminConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Password (any user name is accepted).
    pub password: String,
    /// Failed logins per client address before a lockout.
    pub throttle: LoginThrottle,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("password", &"<redacted>")
            .field("throttle", &self.throttle)
            .finish()
    }
}

/// Validates `--validate-interval`, `--admin-listen` and `--admin-password`.
fn validate_ops(args: &ServerArgs) -> Result<(Option<Duration>, Option<AdminConfig>), ConfigError> {
    let interval = parse_duration(&args.validate_interval)
        .map_err(|r| ConfigError::new("--validate-interval", "WALCAST_VALIDATE_INTERVAL", r))?;
    let interval = if interval.is_zero() {
        None
    } else if interval < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "--validate-interval",
            "WALCAST_VALIDATE_INTERVAL",
            "must be 0 (off) or at least 1s",
        ));
    } else {
        Some(interval)
    };
    let admin = match args.admin_listen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(listen) => {
            let listen: SocketAddr = listen.parse().map_err(|_| {
                ConfigError::new(
                    "--admin-listen",
                    "WALCAST_ADMIN_LISTEN",
                    format!("{listen:?} is not an address like 127.0.0.1:6432"),
                )
            })?;
            let password = match args.admin_password.as_deref() {
                Some(p) if !p.is_empty() => p.to_owned(),
                _ => {
                    return Err(ConfigError::new(
                        "--admin-password",
                        "WALCAST_ADMIN_PASSWORD",
                        "required when the admin console is on (--admin-listen)",
                    ));
                }
            };
            Some(AdminConfig {
                listen,
                password,
                throttle: validate_login_throttle(args)?,
            })
        }
    };
    Ok((interval, admin))
}

impl ServerConfig {
    /// Validates server options for a database URL.
    pub fn from_args(database_url: &str, args: &ServerArgs) -> Result<Self, ConfigError> {
        let database_url = validate_database_url(database_url)?;
        let listen: SocketAddr = args.listen.parse().map_err(|_| {
            ConfigError::new(
                "--listen",
                "WALCAST_LISTEN",
                format!("{:?} is not an address like 127.0.0.1:4000", args.listen),
            )
        })?;
        let jwt_secret = match &args.jwt_secret {
            Some(s) => Some(crate::auth::SecretText::new(validate_jwt_secret(s)?)),
            None => None,
        };
        let role_recheck = parse_duration(&args.role_recheck)
            .map_err(|r| ConfigError::new("--role-recheck", "WALCAST_ROLE_RECHECK", r))?;
        let max_payload = parse_bytes(&args.max_payload)
            .map_err(|r| ConfigError::new("--max-payload", "WALCAST_MAX_PAYLOAD", r))
            .and_then(|b| {
                usize::try_from(b)
                    .ok()
                    .filter(|b| (1..=16 << 20).contains(b))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "--max-payload",
                            "WALCAST_MAX_PAYLOAD",
                            "use 1 byte to 16MiB",
                        )
                    })
            })?;
        let join_error_backoff = parse_duration(&args.join_error_backoff)
            .ok()
            .filter(|d| *d <= Duration::from_secs(10))
            .ok_or_else(|| {
                ConfigError::new(
                    "--join-error-backoff",
                    "WALCAST_JOIN_ERROR_BACKOFF",
                    "use a duration from 0s to 10s, e.g. 1s",
                )
            })?;
        let cluster_presence_ttl = parse_duration(&args.cluster_presence_ttl).map_err(|r| {
            ConfigError::new("--cluster-presence-ttl", "WALCAST_CLUSTER_PRESENCE_TTL", r)
        })?;
        if !(Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&cluster_presence_ttl) {
            return Err(ConfigError::new(
                "--cluster-presence-ttl",
                "WALCAST_CLUSTER_PRESENCE_TTL",
                "use a duration from 3s to 1h, e.g. 15s",
            ));
        }
        let header_timeout = parse_duration(&args.header_timeout)
            .map_err(|r| ConfigError::new("--header-timeout", "WALCAST_HEADER_TIMEOUT", r))?;
        let per_ip = validate_per_ip(args)?;
        let mut token_policy = crate::auth::Policy {
            issuer: args.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: args.jwt_audience.clone().filter(|s| !s.is_empty()),
            ..crate::auth::Policy::default()
        };
        for role in args
            .extra_roles
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
        {
            let role = validate_identifier(role, "--extra-roles", "WALCAST_EXTRA_ROLES", 63)?;
            if !token_policy.roles.contains(&role) {
                token_policy.roles.push(role);
            }
        }
        let (node, slot) = resolve_slot(&args.node, args.slot.as_deref())?;
        let publication = validate_identifier(
            &args.publication,
            "--publication",
            "WALCAST_PUBLICATION",
            63,
        )?;
        let retention = parse_duration(&args.retention)
            .map_err(|r| ConfigError::new("--retention", "WALCAST_RETENTION", r))?;
        let retention_bytes = parse_bytes(&args.retention_bytes)
            .map_err(|r| ConfigError::new("--retention-bytes", "WALCAST_RETENTION_BYTES", r))?;
        if !(16..=1_000_000).contains(&args.client_queue) {
            return Err(ConfigError::new(
                "--client-queue",
                "WALCAST_CLIENT_QUEUE",
                format!("{} is out of range 16..=1000000", args.client_queue),
            ));
        }
        // Memory bounded in bytes (issue 12).
        let client_queue_bytes = parse_bytes(&args.client_queue_bytes).map_err(|r| {
            ConfigError::new("--client-queue-bytes", "WALCAST_CLIENT_QUEUE_BYTES", r)
        })?;
        if !(1 << 20..=1 << 40).contains(&client_queue_bytes) {
            return Err(ConfigError::new(
                "--client-queue-bytes",
                "WALCAST_CLIENT_QUEUE_BYTES",
                "must be between 1MiB and 1TiB (keep it at least 4x the largest change: 64MiB by default)",
            ));
        }
        let heartbeat = parse_duration(&args.heartbeat)
            .map_err(|r| ConfigError::new("--heartbeat", "WALCAST_HEARTBEAT", r))?;
        if heartbeat < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "--heartbeat",
                "WALCAST_HEARTBEAT",
                "must be at least 100ms",
            ));
        }
        let max_body = parse_bytes(&args.max_body)
            .map_err(|r| ConfigError::new("--max-body", "WALCAST_MAX_BODY", r))?;
        if !(1024..=1 << 30).contains(&max_body) {
            return Err(ConfigError::new(
                "--max-body",
                "WALCAST_MAX_BODY",
                "must be between 1KiB and 1GiB",
            ));
        }
        if !(1..=1_000_000).contains(&args.max_events) {
            return Err(ConfigError::new(
                "--max-events",
                "WALCAST_MAX_EVENTS",
                "must be between 1 and 1000000",
            ));
        }
        if !(2..=512).contains(&args.pool_size) {
            return Err(ConfigError::new(
                "--pool-size",
                "WALCAST_POOL_SIZE",
                "must be between 2 and 512",
            ));
        }
        let batch = BatchConfig {
            tiers: [
                parse_tier(&args.tier_high, "--tier-high", "WALCAST_TIER_HIGH")?,
                parse_tier(&args.tier_medium, "--tier-medium", "WALCAST_TIER_MEDIUM")?,
                parse_tier(&args.tier_low, "--tier-low", "WALCAST_TIER_LOW")?,
            ],
            high_types: parse_patterns(&args.high_types),
            low_types: parse_patterns(&args.low_types),
            eager: args.eager_flush,
        };
        let shutdown_timeout = parse_duration(&args.shutdown_timeout)
            .map_err(|r| ConfigError::new("--shutdown-timeout", "WALCAST_SHUTDOWN_TIMEOUT", r))?;
        let spool_dir = args
            .spool_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(format!(".walcast/spool-{node}")));
        let spool_max = parse_bytes(&args.spool_max)
            .map_err(|r| ConfigError::new("--spool-max", "WALCAST_SPOOL_MAX", r))?;
        if spool_max < 64 * 1024 {
            return Err(ConfigError::new(
                "--spool-max",
                "WALCAST_SPOOL_MAX",
                "must be at least 64KiB",
            ));
        }
        if !(1..=1000).contains(&args.breaker_threshold) {
            return Err(ConfigError::new(
                "--breaker-threshold",
                "WALCAST_BREAKER_THRESHOLD",
                "must be between 1 and 1000",
            ));
        }
        let cooldown = parse_duration(&args.breaker_cooldown)
            .map_err(|r| ConfigError::new("--breaker-cooldown", "WALCAST_BREAKER_COOLDOWN", r))?;
        if !(1..=20).contains(&args.write_attempts) {
            return Err(ConfigError::new(
                "--write-attempts",
                "WALCAST_WRITE_ATTEMPTS",
                "must be between 1 and 20",
            ));
        }
        let metrics_interval = parse_duration(&args.metrics_interval)
            .map_err(|r| ConfigError::new("--metrics-interval", "WALCAST_METRICS_INTERVAL", r))?;
        let metrics_interval = if metrics_interval.is_zero() {
            None
        } else if metrics_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "--metrics-interval",
                "WALCAST_METRICS_INTERVAL",
                "must be 0 (off) or at least 1s",
            ));
        } else {
            Some(metrics_interval)
        };
        let (validate_interval, admin) = validate_ops(args)?;
        // Today's Supabase keys (issue 12): asymmetric signing keys (JWKS) and API keys.
        let (jwks, api_keys) = validate_keys(args)?;
        let can_verify = jwt_secret.is_some() || jwks.is_some() || !api_keys.is_empty();
        // Checked last, so that a specific option's error is reported first.
        match (can_verify, args.insecure_no_auth) {
            (true, true) => {
                return Err(ConfigError::new(
                    "--insecure-no-auth",
                    "WALCAST_INSECURE_NO_AUTH",
                    "a way to verify tokens is set too (a JWT secret, a JWKS or API keys): drop \
                     --insecure-no-auth to check tokens with it",
                ));
            }
            (false, false) => {
                return Err(ConfigError::new(
                    "--jwt-secret",
                    "WALCAST_JWT_SECRET",
                    "walcast will not serve without a way to verify tokens: set the project's JWT \
                     secret (at least 32 characters; `walcast keys` mints keys for it), its \
                     signing keys (--jwks-url or --jwks-file) or its API keys \
                     (--publishable-keys, --secret-keys), or pass --insecure-no-auth to open \
                     every endpoint to anyone (local experiments only)",
                ));
            }
            _ => {}
        }
        Ok(ServerConfig {
            validate_interval,
            admin,
            metrics_interval,
            spool_dir,
            spool_max,
            breaker: crate::ingest::BreakerConfig {
                failure_threshold: args.breaker_threshold,
                cooldown,
            },
            write_attempts: args.write_attempts,
            database_url,
            listen,
            jwt_secret,
            token_policy,
            jwks,
            api_keys,
            role_recheck,
            max_replays: usize::from(args.max_replays),
            max_payload,
            broadcast_retention_days: args.broadcast_retention_days,
            cluster_broadcast: args.cluster_broadcast,
            cluster_presence_ttl,
            metrics_token: args
                .metrics_token
                .clone()
                .filter(|t| !t.is_empty())
                .map(crate::auth::SecretText::new),
            realtime_joins: RealtimeJoins {
                private_only: args.private_only,
                error_backoff: join_error_backoff,
            },
            realtime_limits: RealtimeLimits {
                joins_per_second: args.max_joins_per_second,
                messages_per_second: args.max_messages_per_second,
                channel_messages_per_second: args.max_channel_messages_per_second,
            },
            http: HttpLimits {
                max_connections: args.max_connections as usize,
                header_timeout,
                per_ip,
            },
            node,
            slot,
            publication,
            retention,
            retention_bytes,
            client_queue: args.client_queue,
            // Memory bounded in bytes (issue 12).
            client_queue_bytes,
            heartbeat,
            max_body: max_body as usize,
            max_events: args.max_events,
            pool_size: args.pool_size,
            batch,
            shutdown_timeout,
        })
    }
}

/// Checks that a database URL parses as a Postgres connection string.
pub fn validate_database_url(url: &str) -> Result<String, ConfigError> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| {
            ConfigError::new(
                "--database-url",
                "DATABASE_URL",
                format!("not a Postgres URL ({e}); expected postgres://user:password@host:5432/db"),
            )
        })
        .map(|_| url.to_owned())
}

/// Validates the node name and returns it with the slot name (`walcast_<node>` unless given).
pub fn resolve_slot(node: &str, slot: Option<&str>) -> Result<(String, String), ConfigError> {
    let node = validate_identifier(node, "--node", "WALCAST_NODE", 40)?;
    let slot = match slot {
        Some(s) => validate_identifier(s, "--slot", "WALCAST_SLOT", 63)?,
        None => format!("walcast_{node}"),
    };
    Ok((node, slot))
}

/// Per-socket rate limits of the Realtime endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealtimeLimits {
    /// Joins one socket may send per second; one more closes it.
    pub joins_per_second: u32,
    /// Broadcast and presence messages one socket may send per second; one more closes it.
    pub messages_per_second: u32,
    /// Broadcast and presence messages one channel may relay per second over all its sockets;
    /// beyond it the channel's heaviest sender in that second is closed.
    pub channel_messages_per_second: u32,
}

/// What Realtime joins may ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealtimeJoins {
    /// Public channels are refused.
    pub private_only: bool,
    /// Pause before a join error reply.
    pub error_backoff: Duration,
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections served at once (WebSocket sessions included).
    pub max_connections: usize,
    /// Longest time to read a request's headers, from when the server starts waiting for it
    /// (so also the idle time allowed before the first request and between requests).
    pub header_timeout: Duration,
    /// Caps per client address, and whose `X-Forwarded-For` is believed.
    pub per_ip: PerIpLimits,
}

// Edge limits: per-address caps, proxies, console login throttle (issue 12).

/// Per-client-address caps of the HTTP server (`--max-connections-per-ip`, `--per-ip-exempt`,
/// `--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerIpLimits {
    /// WebSocket sessions one address may hold at once.
    pub max_sessions: usize,
    /// Addresses the per-address caps do not apply to.
    pub exempt: Vec<AddrRange>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<AddrRange>,
}

/// An address or a CIDR range (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    /// The network address (bits past the prefix are zero).
    network: std::net::IpAddr,
    /// Prefix length in bits.
    prefix: u8,
}

impl AddrRange {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Result<AddrRange, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an address or a CIDR range like 10.0.0.0/8 or fd00::/8")
        })?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(AddrRange {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// `ip` with the bits past the first `prefix` set to zero.
pub fn mask(ip: std::net::IpAddr, prefix: u8) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V4(v4) => {
            let shift = 32 - u32::from(prefix.min(32));
            let bits = u32::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let shift = 128 - u32::from(prefix.min(128));
            let bits = u128::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

/// How failed admin console logins are throttled (`--admin-max-failures`, `--admin-lockout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    /// Failures from one address that start a lockout.
    pub max_failures: u32,
    /// How long the lockout lasts after the last failure; older failures are forgotten.
    pub lockout: Duration,
}

/// Validates `--max-connections-per-ip`, `--per-ip-exempt` and `--trusted-proxies`.
fn validate_per_ip(args: &ServerArgs) -> Result<PerIpLimits, ConfigError> {
    let ranges = |values: &[String], option: &'static str, env: &'static str| {
        values
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| AddrRange::parse(v).map_err(|r| ConfigError::new(option, env, r)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(PerIpLimits {
        max_sessions: args.max_connections_per_ip as usize,
        exempt: ranges(
            &args.per_ip_exempt,
            "--per-ip-exempt",
            "WALCAST_PER_IP_EXEMPT",
        )?,
        trusted_proxies: ranges(
            &args.trusted_proxies,
            "--trusted-proxies",
            "WALCAST_TRUSTED_PROXIES",
        )?,
    })
}

/// Validates `--admin-max-failures` and `--admin-lockout`.
fn validate_login_throttle(args: &ServerArgs) -> Result<LoginThrottle, ConfigError> {
    let lockout = parse_duration(&args.admin_lockout)
        .map_err(|r| ConfigError::new("--admin-lockout", "WALCAST_ADMIN_LOCKOUT", r))?;
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&lockout) {
        return Err(ConfigError::new(
            "--admin-lockout",
            "WALCAST_ADMIN_LOCKOUT",
            "use 1s to 24h",
        ));
    }
    Ok(LoginThrottle {
        max_failures: args.admin_max_failures,
        lockout,
    })
}

/// Today's Supabase keys (issue 12): the JWKS source with its refresh intervals, and the API
/// keys, validated.
fn validate_keys(
    args: &ServerArgs,
) -> Result<(Option<crate::auth::JwksConfig>, crate::auth::ApiKeys), ConfigError> {
    use crate::auth::fetch::JwksSource;
    let refresh = parse_duration(&args.jwks_refresh)
        .map_err(|r| ConfigError::new("--jwks-refresh", "WALCAST_JWKS_REFRESH", r))?;
    if refresh < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "--jwks-refresh",
            "WALCAST_JWKS_REFRESH",
            "use at least 1s (keys change rarely: minutes are plenty; unknown kids trigger a read anyway)",
        ));
    }
    let min_refresh = parse_duration(&args.jwks_min_refresh)
        .map_err(|r| ConfigError::new("--jwks-min-refresh", "WALCAST_JWKS_MIN_REFRESH", r))?;
    let source = match (&args.jwks_url, &args.jwks_file) {
        (Some(u), _) if !u.trim().is_empty() => {
            let url = url::Url::parse(u.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    ConfigError::new(
                        "--jwks-url",
                        "WALCAST_JWKS_URL",
                        "expected an http:// or https:// URL, like \
                         https://<project>.supabase.co/auth/v1/.well-known/jwks.json",
                    )
                })?;
            if url.scheme() == "http"
                && !matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
            {
                tracing::warn!(
                    url = %url,
                    "--jwks-url is plain http: whoever can tamper with the connection can make \
                     walcast accept their tokens; use https"
                );
            }
            Some(JwksSource::Url(url))
        }
        (_, Some(path)) if !path.as_os_str().is_empty() => Some(JwksSource::File(path.clone())),
        _ => None,
    };
    let jwks = source.map(|source| crate::auth::JwksConfig {
        source,
        refresh,
        min_refresh,
    });
    let api_keys = crate::auth::ApiKeys::new(&args.publishable_keys, &args.secret_keys).map_err(
        |e| match e.kind {
            crate::auth::api_keys::KeyKind::Publishable => ConfigError::new(
                "--publishable-keys",
                "WALCAST_PUBLISHABLE_KEYS",
                e.to_string(),
            ),
            crate::auth::api_keys::KeyKind::Secret => {
                ConfigError::new("--secret-keys", "WALCAST_SECRET_KEYS", e.to_string())
            }
        },
    )?;
    Ok((jwks, api_keys))
}

/// Checks a JWT secret's length.
pub fn validate_jwt_secret(secret: &str) -> Result<String, ConfigError> {
    if secret.len() < 32 {
        return Err(ConfigError::new(
            "--jwt-secret",
            "WALCAST_JWT_SECRET",
            format!(
                "secret has {} characters; use at least 32 (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        ));
    }
    Ok(secret.to_owned())
}

/// Checks a lower-case SQL identifier (`[a-z_][a-z0-9_]*`), used for node, slot and publication names.
fn validate_identifier(
    value: &str,
    option: &'static str,
    env: &'static str,
    max: usize,
) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !value.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::new(
            option,
            env,
            format!(
                "{value:?} must be 1-{max} characters of a-z, 0-9 and _, not starting with a digit"
            ),
        ))
    }
}

/// Parses `SIZE@WAIT`, e.g. `100@100ms`.
fn parse_tier(
    value: &str,
    option: &'static str,
    env: &'static str,
) -> Result<TierConfig, ConfigError> {
    let err = |reason: String| ConfigError::new(option, env, reason);
    let (size, wait) = value.split_once('@').ok_or_else(|| {
        err(format!(
            "{value:?} is not MAX_EVENTS@MAX_WAIT, e.g. 100@100ms"
        ))
    })?;
    let max_events: usize = size
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| {
            err(format!(
                "batch size {size:?} must be a number from 1 to 100000"
            ))
        })?;
    let max_wait = parse_duration(wait.trim()).map_err(err)?;
    Ok(TierConfig {
        max_events,
        max_wait,
    })
}

/// Splits a comma-separated list of event type patterns.
fn parse_patterns(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_no_secret() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "walcast",
            "serve",
            "--database-url",
            "postgres://u@localhost/db",
            "--jwt-secret",
            "a-jwt-secret-long-enough-0123456789abcdef",
            "--metrics-token",
            "a-metrics-token-xyz",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-password",
            "an-admin-password",
        ])
        .unwrap();
        let crate::cli::Command::Serve(serve) = cli.command else {
            panic!("serve expected")
        };
        let config = ServerConfig::from_args(&serve.db.database_url, &serve.server).unwrap();
        let shown = format!("{config:?}");
        for secret in [
            "a-jwt-secret-long-enough-0123456789abcdef",
            "a-metrics-token-xyz",
            "an-admin-password",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn tiers_and_identifiers() {
        let t = parse_tier("100@100ms", "--tier-high", "WALCAST_TIER_HIGH").unwrap();
        assert_eq!(t.max_events, 100);
        assert_eq!(t.max_wait, Duration::from_millis(100));
        let e = parse_tier("100", "--tier-high", "WALCAST_TIER_HIGH").unwrap_err();
        assert!(e.to_string().contains("--tier-high"));
        assert!(validate_identifier("walcast_node1", "--slot", "WALCAST_SLOT", 63).is_ok());
        assert!(validate_identifier("Bad-Slot", "--slot", "WALCAST_SLOT", 63).is_err());
        assert!(validate_identifier("1slot", "--slot", "WALCAST_SLOT", 63).is_err());
        assert!(validate_jwt_secret("short").is_err());
    }

    #[test]
    fn address_ranges() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let r = AddrRange::parse("10.1.0.0/16").unwrap();
        assert!(r.contains(ip("10.1.200.3")));
        assert!(!r.contains(ip("10.2.0.1")));
        assert!(
            r.contains(ip("::ffff:10.1.0.9")),
            "IPv4-mapped counts as IPv4"
        );
        let one = AddrRange::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(
            AddrRange::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(!AddrRange::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        let v6 = AddrRange::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12:3456::1")) && !v6.contains(ip("fe80::1")));
        assert!(
            AddrRange::parse("::/0")
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        assert!(AddrRange::parse("10.0.0.0/33").is_err());
        assert!(AddrRange::parse("localhost").is_err());
        assert!(AddrRange::parse("fd00::/129").is_err());
        assert_eq!(
            mask(ip("2001:db8:1:2:3:4:5:6"), 64),
            ip("2001:db8:1:2::"),
            "a /64 keeps the network half"
        );
    }
}
