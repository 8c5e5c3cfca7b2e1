//! Errors of the admin surface (`/v1/status`, the admin console).

/// Why the admin console could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The console's listener could not bind.
    #[error("the admin console cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No database connection for a command that needs one.
    #[error("the database is unreachable")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The database did not answer in time.
    #[error("the database did not answer within {0} s")]
    Timeout(u64),
    /// Reading the replication slot failed.
    #[error("reading the replication slot failed")]
    Slot(#[source] crate::replication::ReplicationError),
    /// Reading the dead-letter queue failed.
    #[error("reading the dead-letter queue failed")]
    Dlq(#[source] crate::dlq::DlqError),
}

impl AdminError {
    /// A low-cardinality label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminError::Bind { .. } => "bind",
            AdminError::Pool(_) => "pool",
            AdminError::Timeout(_) => "timeout",
            AdminError::Slot(_) => "slot",
            AdminError::Dlq(_) => "dlq",
        }
    }
}
