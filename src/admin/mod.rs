//! The operator surface: who is connected, how the pipeline is doing, and a Postgres-protocol
//! console to ask.
//!
//! - [`clients`]: the client registry every WebSocket session registers in (id, protocol, peer,
//!   subscriptions, counters).
//! - [`status`]: `GET /v1/status`, one JSON document for dashboards and operators (a
//!   `service_role` token; it holds no row data and no tokens), with a cached dead-letter
//!   summary.
//! - [`tables`]: the console's resources as rows of text (`SHOW CLIENTS`, `SHOW STATS`, ...).
//! - [`console`]: the admin console, spoken over the Postgres wire protocol so that `psql` and
//!   any Postgres driver can query it; off unless `--admin-listen` is set, password protected
//!   (SCRAM-SHA-256).
//! - [`login`]: failed console logins per client address, and the lockout they lead to.
//!
//! Must not: run SQL of its own (slot, flags and dead letters are read through
//! [`crate::replication::slot`], [`crate::flags`] and [`crate::dlq`]), change anything (the
//! console is read-only), or block other work (the console runs on its own tasks, with a cap on
//! connections).

pub(crate) mod clients;
pub(crate) mod console;
mod error;
pub(crate) mod login;
pub(crate) mod status;
pub(crate) mod tables;

pub use clients::ClientRegistry;
pub use error::AdminError;

use std::sync::Arc;

/// The node as the operator surface sees it: configuration facts and every part's status, read
/// by `/v1/status`, the console, and the health endpoints.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Validated configuration.
    pub config: Arc<crate::config::ServerConfig>,
    /// Database pool.
    pub pool: deadpool_postgres::Pool,
    /// The resilient write path (breaker, spool).
    pub writer: Arc<crate::ingest::Writer>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Fan-out hub.
    pub hub: crate::hub::Hub,
    /// Replication reader status.
    pub reader: Arc<crate::replication::ReaderStatus>,
    /// Feature flags.
    pub flags: crate::flags::Flags,
    /// Every connected WebSocket session.
    pub clients: Arc<ClientRegistry>,
    /// What the continuous consistency check found.
    pub consistency: Arc<crate::validate::Consistency>,
    /// Start time and cached summaries behind `/v1/status`.
    pub status: Arc<status::StatusState>,
    /// Whether every long-running task runs.
    pub tasks: Arc<crate::supervise::TaskStates>,
}
