//! Replication errors, each classified: transient (reconnect with backoff) or fatal (stop, with a
//! message that says how to fix it).

use crate::decode::DecodeError;

/// Errors of the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is {0:?}, walcast needs logical: run `ALTER SYSTEM SET wal_level = logical` (or set it in postgresql.conf) and restart Postgres"
    )]
    WalLevel(String),
    /// The publication is missing or does not include the table.
    #[error(
        "publication {0:?} is missing or does not include public.monitoring_events: run `walcast migrate`, or `ALTER PUBLICATION {0} ADD TABLE public.monitoring_events`"
    )]
    Publication(String),
    /// The role may not replicate.
    #[error(
        "the database role has no REPLICATION privilege: run `ALTER ROLE <role> WITH REPLICATION` as a superuser, or connect as a role that has it"
    )]
    NoReplicationPrivilege,
    /// The slot exists but cannot be used.
    #[error("replication slot {slot:?} cannot be used: {reason}")]
    SlotUnusable {
        /// Slot name.
        slot: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The slot disappeared or moved while walcast was using it.
    #[error(
        "replication slot {slot:?} was dropped or advanced by someone else ({detail}): changes may have been lost, so walcast stops instead of continuing past a gap; check the slot, then restart walcast (clients resuming from older cursors will get cursor_expired)"
    )]
    SlotReplaced {
        /// Slot name.
        slot: String,
        /// What was observed.
        detail: String,
    },
    /// The database URL cannot be used for replication.
    #[error("database URL cannot be used for replication: {0}")]
    Url(String),
    /// An SQL query failed.
    #[error("replication query failed")]
    Sql(#[source] tokio_postgres::Error),
    /// The replication stream failed.
    #[error("replication stream failed")]
    Stream(#[source] pgwire_replication::PgWireError),
    /// A pgoutput message could not be decoded.
    #[error("could not decode a WAL message")]
    Decode(#[source] DecodeError),
    /// A resume cursor is older than the retention window.
    #[error("cursor is older than the retention window")]
    CursorExpired {
        /// Oldest resumable position.
        oldest: crate::decode::Cursor,
    },
    /// Replay stalled.
    #[error("replay made no progress for {0:?}")]
    ReplayTimeout(std::time::Duration),
}

impl ReplicationError {
    /// True when reconnecting may help; false for misconfiguration that needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Sql(_)
            | ReplicationError::Stream(_)
            | ReplicationError::ReplayTimeout(_) => true,
            ReplicationError::WalLevel(_)
            | ReplicationError::Publication(_)
            | ReplicationError::NoReplicationPrivilege
            | ReplicationError::SlotUnusable { .. }
            | ReplicationError::SlotReplaced { .. }
            | ReplicationError::Url(_)
            | ReplicationError::Decode(_)
            | ReplicationError::CursorExpired { .. } => false,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplicationError::WalLevel(_) => "wal_level",
            ReplicationError::Publication(_) => "publication",
            ReplicationError::NoReplicationPrivilege => "privilege",
            ReplicationError::SlotUnusable { .. } => "slot_unusable",
            ReplicationError::SlotReplaced { .. } => "slot_replaced",
            ReplicationError::Url(_) => "url",
            ReplicationError::Sql(_) => "sql",
            ReplicationError::Stream(_) => "stream",
            ReplicationError::Decode(_) => "decode",
            ReplicationError::CursorExpired { .. } => "cursor_expired",
            ReplicationError::ReplayTimeout(_) => "replay_timeout",
        }
    }
}
