//! The change model every later stage sees: one [`Change`] per row change, in commit order.
//!
//! A change is identified by its [`Cursor`]: the LSN of its transaction's commit record plus its
//! index inside that transaction. Cursors are totally ordered in the order Postgres streams
//! committed transactions, so "everything after cursor C" is well defined even when many changes
//! share one commit LSN.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A WAL position (log sequence number). Displays the way Postgres does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error for a string that is not an LSN in `X/Y` hex form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Position of one change in the stream: commit LSN of its transaction and its index inside it.
///
/// Clients see it as an opaque 24-character hex string (see [`Cursor::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    /// LSN of the transaction's commit record (pgoutput Begin `final_lsn`).
    pub commit_lsn: Lsn,
    /// Zero-based index of the change inside its transaction.
    pub index: u32,
}

/// Error for a cursor string that walcast did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: pass back a cursor exactly as walcast sent it")]
pub struct ParseCursorError(pub String);

impl Cursor {
    /// The opaque text form: 16 hex digits of commit LSN then 8 of index.
    pub fn encode(&self) -> String {
        format!("{:016x}{:08x}", self.commit_lsn.0, self.index)
    }

    /// Parses the text form produced by [`Cursor::encode`].
    pub fn decode(s: &str) -> Result<Self, ParseCursorError> {
        let err = || ParseCursorError(s.to_owned());
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let lsn = u64::from_str_radix(&s[..16], 16).map_err(|_| err())?;
        let index = u32::from_str_radix(&s[16..], 16).map_err(|_| err())?;
        Ok(Cursor {
            commit_lsn: Lsn(lsn),
            index,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A new row (`record` set).
    Insert,
    /// A changed row (`record` set; `old_record` set when the replica identity sends it).
    Update,
    /// A removed row (`old_record` holds the key columns, or all columns with `REPLICA IDENTITY FULL`).
    Delete,
    /// The table was truncated (no record).
    Truncate,
    /// Not a row change: a WAL message at this position could not be decoded, so a change may
    /// be missing here. `record` holds `code`, `message` and `lsn`; the relation is empty. It
    /// reaches every `/ws` subscription (whatever its filters) and no Realtime binding.
    Gap,
}

impl Operation {
    /// Upper-case SQL name, as sent on the wire: `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
            Operation::Gap => "GAP",
        }
    }
}

/// One column of a relation as announced by a pgoutput Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: Arc<str>,
    /// Type OID (`pg_type.oid`); drives the JSON conversion of values.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub is_key: bool,
}

/// The table a change belongs to (shared by all changes of that table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub oid: u32,
    /// Schema name, e.g. `public`.
    pub schema: Arc<str>,
    /// Table name, e.g. `monitoring_events`.
    pub table: Arc<str>,
    /// Replica identity setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order.
    pub columns: Arc<[Column]>,
}

/// A row image: column name to JSON value, in table column order.
///
/// Columns whose value was an unchanged TOAST datum are *absent* from `values` and listed in
/// `unchanged_toast` instead: walcast never invents a value it did not receive.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Column values converted to JSON by type OID (`null` for SQL NULL).
    pub values: Map<String, Value>,
    /// Names of columns whose value was not sent because it is an unchanged TOAST value.
    pub unchanged_toast: Vec<Arc<str>>,
}

/// One committed row change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Position in the stream (commit LSN + index in the transaction).
    pub cursor: Cursor,
    /// Transaction id.
    pub xid: u32,
    /// Commit timestamp of the transaction.
    pub commit_ts: DateTime<Utc>,
    /// The table.
    pub relation: Arc<Relation>,
    /// What happened.
    pub op: Operation,
    /// New row image (INSERT, UPDATE).
    pub record: Option<Row>,
    /// Old row image (DELETE; UPDATE when sent).
    pub old_record: Option<Row>,
}

impl Change {
    /// A `monitoring_events` INSERT committed at `lsn` (for unit tests of the layers above).
    #[cfg(test)]
    pub(crate) fn sample(lsn: u64) -> Change {
        use super::value::oid;
        let col = |name: &str, type_oid: u32, is_key: bool| Column {
            name: Arc::from(name),
            type_oid,
            type_modifier: -1,
            is_key,
        };
        let relation = Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "monitoring_events".into(),
            replica_identity: b'd',
            columns: vec![
                col("id", oid::UUID, true),
                col("event_type", oid::TEXT, false),
                col("source", oid::TEXT, false),
            ]
            .into(),
        });
        let mut values = Map::new();
        values.insert(
            "id".into(),
            Value::String(uuid::Uuid::from_u128(u128::from(lsn)).to_string()),
        );
        values.insert("event_type".into(), Value::String("cpu".into()));
        values.insert("source".into(), Value::String("host-1".into()));
        Change {
            cursor: Cursor {
                commit_lsn: Lsn(lsn),
                index: 0,
            },
            xid: 1,
            commit_ts: chrono::Utc::now(),
            relation,
            op: Operation::Insert,
            record: Some(Row {
                values,
                unchanged_toast: Vec::new(),
            }),
            old_record: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn cursor_round_trips_and_orders() {
        let a = Cursor {
            commit_lsn: Lsn(0x1_0000_0010),
            index: 3,
        };
        let b = Cursor {
            commit_lsn: Lsn(0x1_0000_0010),
            index: 4,
        };
        let c = Cursor {
            commit_lsn: Lsn(0x1_0000_0020),
            index: 0,
        };
        assert!(a < b && b < c);
        assert_eq!(Cursor::decode(&a.encode()).unwrap(), a);
        assert!(Cursor::decode("zz").is_err());
        assert!(Cursor::decode("00000001000000100000000g").is_err());
    }
}
