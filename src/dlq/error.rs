//! Errors of the dead-letter queue, classified by [`DlqErrorKind`].
//!
//! The `walcast.dlq_*` functions raise walcast's own messages with three SQLSTATEs, mapped here:
//! `no_data_found` → [`DlqError::NotFound`], `invalid_parameter_value` →
//! [`DlqError::InvalidInput`], `object_not_in_prerequisite_state` → [`DlqError::Conflict`].
//! Connection failures are transient ([`DlqError::Unavailable`]); anything else is
//! [`DlqError::Query`], whose database text is logged but never shown to HTTP clients.

use tokio_postgres::error::SqlState;

/// Errors of [`crate::dlq`].
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The row does not exist.
    #[error("{message}")]
    NotFound {
        /// What was looked for.
        message: String,
    },
    /// An argument is invalid (a bad id, status, policy or duration).
    #[error("{message}")]
    InvalidInput {
        /// What is wrong and what is expected.
        message: String,
    },
    /// The row is in a state that does not allow the change (e.g. retrying a recovered row).
    #[error("{message}")]
    Conflict {
        /// Why, and what to do.
        message: String,
    },
    /// No connection could be taken from the pool.
    #[error("no database connection for the dead-letter queue")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The connection failed or Postgres is shutting down; retry later.
    #[error("the database is unavailable")]
    Unavailable(#[source] tokio_postgres::Error),
    /// Any other database error (e.g. the migration is missing).
    #[error("a dead-letter queue query failed")]
    Query(#[source] tokio_postgres::Error),
    /// A row holds a value walcast does not understand.
    #[error("dead letter column {column} holds an unexpected value: {detail}")]
    Decode {
        /// The column.
        column: &'static str,
        /// What was found.
        detail: String,
    },
}

/// Low-cardinality classification of [`DlqError`] (log field and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqErrorKind {
    /// The row does not exist.
    NotFound,
    /// Bad input.
    InvalidInput,
    /// The row's state forbids the change.
    Conflict,
    /// Transient: the database is unreachable or failing; retry with backoff.
    Unavailable,
    /// A definite database or data error.
    Database,
}

impl DlqErrorKind {
    /// The kind as a label.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqErrorKind::NotFound => "not_found",
            DlqErrorKind::InvalidInput => "invalid_input",
            DlqErrorKind::Conflict => "conflict",
            DlqErrorKind::Unavailable => "unavailable",
            DlqErrorKind::Database => "database",
        }
    }
}

impl DlqError {
    /// The error's kind.
    pub fn kind(&self) -> DlqErrorKind {
        match self {
            DlqError::NotFound { .. } => DlqErrorKind::NotFound,
            DlqError::InvalidInput { .. } => DlqErrorKind::InvalidInput,
            DlqError::Conflict { .. } => DlqErrorKind::Conflict,
            DlqError::Pool(_) | DlqError::Unavailable(_) => DlqErrorKind::Unavailable,
            DlqError::Query(_) | DlqError::Decode { .. } => DlqErrorKind::Database,
        }
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind() == DlqErrorKind::Unavailable
    }

    /// An [`DlqError::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> DlqError {
        DlqError::InvalidInput {
            message: message.into(),
        }
    }

    /// Classifies a database error raised while running a `walcast.dlq_*` statement.
    pub fn from_pg(e: tokio_postgres::Error) -> DlqError {
        let Some(db) = e.as_db_error() else {
            return DlqError::Unavailable(e);
        };
        let code = db.code();
        let with_hint = || match db.hint() {
            Some(h) => format!("{} ({h})", db.message()),
            None => db.message().to_owned(),
        };
        if *code == SqlState::NO_DATA_FOUND {
            DlqError::NotFound {
                message: with_hint(),
            }
        } else if *code == SqlState::INVALID_PARAMETER_VALUE {
            DlqError::InvalidInput {
                message: with_hint(),
            }
        } else if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE {
            DlqError::Conflict {
                message: with_hint(),
            }
        } else if is_transient_state(code.code()) {
            DlqError::Unavailable(e)
        } else {
            DlqError::Query(e)
        }
    }
}

/// SQLSTATEs after which the same statement may succeed later: connection exceptions (08),
/// insufficient resources (53), operator intervention (57: shutdown, cancel), and
/// serialization failures and deadlocks (40).
pub(crate) fn is_transient_state(code: &str) -> bool {
    ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_transience() {
        assert_eq!(DlqError::invalid("x").kind(), DlqErrorKind::InvalidInput);
        assert!(!DlqError::invalid("x").is_transient());
        assert!(is_transient_state("08006"));
        assert!(is_transient_state("57P01"));
        assert!(!is_transient_state("23514"));
        assert_eq!(DlqErrorKind::NotFound.as_str(), "not_found");
    }
}
