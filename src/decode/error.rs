//! The one error type of the decoder: every way a pgoutput byte stream can be malformed or
//! unexpected.
//!
//! The decoder never panics on input; whatever it cannot make sense of ends up here as a typed
//! [`DecodeError`] with a stable [`DecodeError::code`] for logs and metrics. This module only
//! describes errors; it never decides what to do about them (reconnecting, skipping or stopping
//! is up to the caller).

use std::fmt;

use super::change::Lsn;

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message had no bytes at all, not even a tag.
    #[error("empty pgoutput message")]
    Empty,
    /// The message ended before a field was complete.
    #[error("truncated {message} message: needed {needed} more bytes but only {remaining} remain")]
    Truncated {
        /// Which message (or part) was being read, e.g. `Insert`.
        message: &'static str,
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A string field had no terminating NUL byte.
    #[error("unterminated string in {message} message")]
    UnterminatedString {
        /// Which message was being read.
        message: &'static str,
    },
    /// Bytes were left over after the last field of a message.
    #[error("{extra} unexpected trailing bytes after {message} message")]
    TrailingBytes {
        /// Which message was read.
        message: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The first byte is not a pgoutput message tag.
    #[error("unknown pgoutput message tag {}", ByteDisplay(*.0))]
    UnknownMessage(u8),
    /// A valid pgoutput message that walcast does not handle (streaming or two-phase messages,
    /// which protocol version 1 never sends).
    #[error("unsupported pgoutput message: {0}")]
    Unsupported(&'static str),
    /// A marker byte inside a message had a value the format does not allow there.
    #[error("unexpected byte {} in {message} message, expected {expected}", ByteDisplay(*.found))]
    UnexpectedByte {
        /// Which message was being read.
        message: &'static str,
        /// What was allowed, e.g. `'K', 'O' or 'N'`.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A tuple column in a format walcast does not decode (`'b'` binary, or an unknown kind).
    #[error("unsupported tuple column format {}", ByteDisplay(*.0))]
    UnsupportedTupleFormat(u8),
    /// A string or text value was not valid UTF-8.
    #[error("invalid UTF-8 in {message} message")]
    InvalidUtf8 {
        /// Which message was being read.
        message: &'static str,
    },
    /// A row change referred to a relation OID no Relation message announced.
    #[error("change for unknown relation OID {0} (no Relation message seen for it)")]
    UnknownRelation(u32),
    /// A tuple had a different number of columns than its relation.
    #[error("tuple for relation OID {relation} has {found} columns, relation has {expected}")]
    ColumnCountMismatch {
        /// Relation OID.
        relation: u32,
        /// Columns announced by the Relation message.
        expected: usize,
        /// Columns in the tuple.
        found: usize,
    },
    /// A row change or Commit arrived while no transaction was open.
    #[error("row change or commit outside a transaction (no Begin seen)")]
    NoTransaction,
    /// The Commit's LSN differs from the `final_lsn` announced by the transaction's Begin.
    #[error("commit LSN {commit} does not match the transaction's final LSN {begin}")]
    CommitLsnMismatch {
        /// `final_lsn` of the Begin.
        begin: Lsn,
        /// `commit_lsn` of the Commit.
        commit: Lsn,
    },
    /// A transaction had more row changes than a cursor index can count (2^32).
    #[error("transaction has more than {} row changes", u32::MAX)]
    TooManyChanges,
}

impl DecodeError {
    /// A stable snake_case label for logs and metrics, e.g. `truncated`.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::UnterminatedString { .. } => "unterminated_string",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::UnknownMessage(_) => "unknown_message",
            DecodeError::Unsupported(_) => "unsupported",
            DecodeError::UnexpectedByte { .. } => "unexpected_byte",
            DecodeError::UnsupportedTupleFormat(_) => "unsupported_tuple_format",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::UnknownRelation(_) => "unknown_relation",
            DecodeError::ColumnCountMismatch { .. } => "column_count_mismatch",
            DecodeError::NoTransaction => "no_transaction",
            DecodeError::CommitLsnMismatch { .. } => "commit_lsn_mismatch",
            DecodeError::TooManyChanges => "too_many_changes",
        }
    }
}

/// Shows a protocol byte as `'X'` when it is printable ASCII, else as `0xNN`.
struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_bytes_readably() {
        assert_eq!(
            DecodeError::UnknownMessage(b'Z').to_string(),
            "unknown pgoutput message tag 'Z'"
        );
        assert_eq!(
            DecodeError::UnsupportedTupleFormat(0).to_string(),
            "unsupported tuple column format 0x00"
        );
        assert_eq!(DecodeError::NoTransaction.code(), "no_transaction");
        assert_eq!(
            DecodeError::Truncated {
                message: "Begin",
                needed: 8,
                remaining: 3
            }
            .code(),
            "truncated"
        );
    }
}
