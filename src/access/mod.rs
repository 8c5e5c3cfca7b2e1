//! Row visibility: which changed rows a role may see, asked of Postgres with that role's own
//! row level security policies and column privileges, for every table of walcast's publication.
//!
//! `service_role` sees everything and never reaches the gate. For any other role, INSERT and
//! UPDATE rows are checked in Postgres by `walcast.realtime_visible_sets` (a migration), which
//! for each (claims group, table) sets `role` and `request.jwt.claims` transaction-locally and
//! selects the asked rows from that table by primary key under that role's policies ([`RowKey`]:
//! the table's OID and the key as JSON, cast to the key's column types in Postgres), answering
//! one row per pair with the visible rows as an array. The pairs run without a subtransaction
//! each; only a pair that fails (a role that lost a privilege, say) is run again alone in its
//! own, so one bad pair costs the others nothing and hides nothing from them. One call
//! covers every check waiting, across commits, tables and claims groups ([`batch`]): a session
//! whose check is not answered yet queues it and takes its turn; the turn's holder runs one call
//! for everything queued, so checks that arrive while a call runs are all answered by the next
//! one. However many subscribers, distinct users, tables and commits there are, one call is in
//! flight at a time. Answers are cached per (claims group, commit LSN), so every subscriber of a
//! group reuses them. The check reads the row's *current* version, not the version in the WAL
//! (see `docs/realtime.md`). A table without a primary key cannot be asked about: its rows reach
//! `service_role` only (the endpoints decide what others get).
//!
//! [`facts`] reads what the gate and the encoders need to know about each published table
//! (columns, types, primary key, RLS; [`crate::catalog::Tables`]), reloaded every
//! [`TABLE_FACTS_TTL`] and when a change (or a binding) names a table facts read before it
//! arrived do not know (a table added with `ALTER PUBLICATION ... ADD TABLE` is served at once),
//! and which tables a role may read at all, with which columns ([`RoleTables`]). The statements
//! live in `sql/access/`.
//!
//! It never logs tokens or row values, never lets database error text reach a client, and
//! holds no lock across an await (waiters for a call park on a notification, not a lock).

mod batch;
pub(crate) mod cache;
mod facts;
pub mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::auth::Token;
use crate::metrics::Metrics;
use cache::TtlCache;

pub use batch::{Ask, COMMIT_VISIBLE_WAIT, MAX_CACHED_ANSWERS, RowKey};
pub use facts::{RoleTables, TableAccess};

/// How long table facts (which tables are published, their columns, primary key, RLS flag) are
/// reused before they are read again. Short: a table added to or dropped from the publication,
/// or a policy switched on, is seen within this time even when no change of it arrives.
pub const TABLE_FACTS_TTL: Duration = Duration::from_secs(10);

/// How long a failed read of the table facts is not tried again (the facts read last are used
/// meanwhile), so a database that cannot be reached does not hold every delivery.
pub const TABLE_FACTS_MISS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a role check (may this role read the table at all) is reused.
pub const ROLE_CHECK_TTL: Duration = Duration::from_secs(60);

/// Most role check results kept (the cache is cleared when full).
pub const MAX_CACHED_ROLE_CHECKS: usize = 4096;

/// Time limit of one gate statement (set as `statement_timeout`) and, with a margin, of one
/// gate round trip.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// `statement_timeout` of every gate transaction: [`GATE_TIMEOUT`].
pub(crate) fn statement_timeout() -> String {
    format!("{}ms", GATE_TIMEOUT.as_millis())
}

/// The primary key of a change's new row, as the gate asks about it: `None` when the table has
/// no primary key or the row does not carry every key column (such a row cannot be checked).
pub fn row_key(
    change: &crate::decode::Change,
    facts: &crate::catalog::TableFacts,
) -> Option<RowKey> {
    let row = change.record.as_ref()?;
    RowKey::of(facts.oid, &facts.primary_key, row)
}

/// Who a subscriber is, for row level security: the role and the full claims. Subscribers with
/// equal groups see the same rows, so they share the gate's answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimsGroup {
    /// The `role` claim (a Postgres role).
    pub role: String,
    /// All claims as compact JSON (keys sorted), passed as `request.jwt.claims`.
    pub claims_json: String,
}

impl ClaimsGroup {
    /// The group of a verified token: its role and every claim (compact JSON, keys sorted).
    pub fn of(token: &Token) -> Arc<ClaimsGroup> {
        Arc::new(ClaimsGroup {
            role: token.role.clone(),
            claims_json: serde_json::Value::Object(token.claims.clone()).to_string(),
        })
    }
}

/// Why the gate could not answer.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No pool connection.
    #[error("no database connection for the row level security check")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The statement failed.
    #[error("the row level security check failed")]
    Db(#[source] tokio_postgres::Error),
    /// The round trip took longer than [`GATE_TIMEOUT`].
    #[error("the row level security check timed out")]
    Timeout,
    /// The role may not read the table (or does not exist).
    #[error("role {role:?} may not read {what}")]
    Denied {
        /// The role.
        role: String,
        /// What it may not read: `public.orders`, or "any table of walcast's publication".
        what: String,
    },
    /// The role is a superuser or bypasses row level security: refused whatever it may read.
    #[error("role {role:?} is a superuser or bypasses row level security: walcast refuses it")]
    Privileged {
        /// The role.
        role: String,
    },
    /// The shared check that covered this commit and group failed (its cause was logged by
    /// the session that ran it).
    #[error("the shared row level security check for this commit failed ({kind})")]
    Shared {
        /// The failed check's [`GateError::kind`].
        kind: &'static str,
    },
}

impl GateError {
    /// A low-cardinality label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GateError::Pool(_) => "pool",
            GateError::Db(_) => "db",
            GateError::Timeout => "timeout",
            GateError::Denied { .. } => "denied",
            GateError::Privileged { .. } => "privileged",
            GateError::Shared { kind } => kind,
        }
    }
}

/// The shared row level security gate (see the module docs).
#[derive(Debug)]
pub struct RlsGate {
    /// Connections for the checks.
    pool: Pool,
    /// walcast's publication.
    publication: String,
    /// Visibility queries run.
    queries: AtomicU64,
    /// Table facts of every published table, read last.
    facts: Mutex<Option<Arc<crate::catalog::Tables>>>,
    /// Serialises facts reloads; holds when the last reload failed, and why.
    facts_load: tokio::sync::Mutex<Option<(std::time::Instant, &'static str)>>,
    /// Visibility answers.
    answers: Mutex<batch::AnswerCache>,
    /// Checks waiting for a call.
    queue: batch::CheckQueue,
    /// Role checks: which tables (and columns) each role may read.
    roles: TtlCache<String, Arc<RoleTables>>,
    /// Whether a role is a superuser or bypasses row level security.
    privileged: TtlCache<String, bool>,
    /// Where calls, checks, durations and failures are counted (`walcast_realtime_rls_*`).
    metrics: Option<Arc<Metrics>>,
}

/// Locks a std mutex; a poisoned lock still holds consistent data here (every critical section
/// is a plain map update).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RlsGate {
    /// A gate using `pool`, for walcast's `publication`.
    pub fn new(pool: Pool, publication: &str) -> Self {
        RlsGate {
            pool,
            publication: publication.to_owned(),
            queries: AtomicU64::new(0),
            facts: Mutex::new(None),
            facts_load: tokio::sync::Mutex::new(None),
            answers: Mutex::new(batch::AnswerCache::default()),
            queue: batch::CheckQueue::default(),
            roles: TtlCache::new(ROLE_CHECK_TTL, MAX_CACHED_ROLE_CHECKS),
            privileged: TtlCache::new(ROLE_CHECK_TTL, MAX_CACHED_ROLE_CHECKS),
            metrics: None,
        }
    }

    /// The gate counting its calls in `metrics` (`walcast_realtime_rls_*` on `GET /metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// walcast's publication: the tables the gate knows.
    pub fn publication(&self) -> &str {
        &self.publication
    }

    /// Visibility calls run so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}
