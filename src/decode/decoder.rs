//! The stateful decoder: feeds on pgoutput messages one at a time and yields [`Decoded`] items,
//! turning row changes into [`Change`]s with their cursor, transaction id and commit time.
//!
//! It owns the relation cache and the state of the open transaction (its Begin and how many
//! changes it produced so far). It never does I/O, never filters tables or operations (every
//! relation's changes come out) and never buffers a transaction: each change is yielded as soon
//! as its message is decoded, so holding changes back until Commit is up to the caller.
//!
//! One cohesive job, the message-by-message state machine, in one file (about half of it tests
//! of that state machine).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::change::{Change, Cursor, Lsn, Operation, Relation, Row};
use super::error::DecodeError;
use super::pgoutput::{self, OldTuple, PgOutputMessage, TupleData, TupleValue};
use super::relation_cache::RelationCache;
use super::value::text_to_json;

/// Seconds from the Unix epoch to the Postgres epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Converts a Postgres timestamp (microseconds since 2000-01-01 UTC) to a UTC date-time.
///
/// Values beyond what `DateTime` can hold (including Postgres' ±infinity) are clamped to
/// `DateTime::<Utc>::MIN_UTC` / `MAX_UTC`.
pub fn pg_micros_to_utc(micros_since_2000: i64) -> DateTime<Utc> {
    let seconds = micros_since_2000.div_euclid(1_000_000);
    // In 0..1_000_000, so the nanosecond count fits a u32.
    let micros = micros_since_2000.rem_euclid(1_000_000);
    seconds
        .checked_add(PG_EPOCH_UNIX_SECONDS)
        .and_then(|s| DateTime::from_timestamp(s, u32::try_from(micros * 1000).ok()?))
        .unwrap_or(if micros_since_2000 < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

/// What one pgoutput message amounted to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A transaction started; its changes follow.
    Begin {
        /// LSN of the commit record: the cursor LSN of every change of this transaction.
        final_lsn: Lsn,
        /// Transaction id.
        xid: u32,
        /// Commit time of the transaction.
        commit_ts: DateTime<Utc>,
    },
    /// One Insert, Update or Delete.
    Change(Change),
    /// The transaction committed.
    Commit {
        /// LSN of the commit record (equals the Begin's `final_lsn`).
        commit_lsn: Lsn,
        /// LSN just past the transaction: confirm this once the transaction is processed.
        end_lsn: Lsn,
        /// Commit time.
        commit_ts: DateTime<Utc>,
        /// How many changes (cursor indices) the transaction produced.
        change_count: u32,
    },
    /// A logical decoding message (`pg_logical_emit_message`), passed on as sent.
    Message {
        /// Emitted inside a transaction (delivered at its commit) rather than immediately.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix chosen by the writer.
        prefix: String,
        /// Content bytes.
        content: Vec<u8>,
    },
    /// A Truncate: one change per truncated relation (op `Truncate`, no records), each with its
    /// own cursor index. Always this variant for a Truncate, even of a single relation.
    Changes(Vec<Change>),
    /// Relation, Type and Origin messages: remembered or ignored, nothing to emit.
    Nothing,
}

/// The transaction between a Begin and its Commit.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    /// `final_lsn` of the Begin.
    final_lsn: Lsn,
    /// Transaction id.
    xid: u32,
    /// Commit time from the Begin.
    commit_ts: DateTime<Utc>,
    /// Changes produced so far; also the cursor index of the next change.
    change_count: u32,
}

/// The empty relation of [`Operation::Gap`] changes (shared).
fn gap_relation() -> Arc<Relation> {
    static GAP: std::sync::OnceLock<Arc<Relation>> = std::sync::OnceLock::new();
    Arc::clone(GAP.get_or_init(|| {
        Arc::new(Relation {
            oid: 0,
            schema: Arc::from(""),
            table: Arc::from(""),
            replica_identity: b'n',
            columns: Arc::from(Vec::new()),
        })
    }))
}

/// Decodes a pgoutput stream, message by message.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// Relations and types announced on this stream.
    relations: RelationCache,
    /// The open transaction, if any.
    transaction: Option<Transaction>,
}

impl Decoder {
    /// A decoder with no relations and no open transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one pgoutput message (any kind, including Begin and Commit).
    ///
    /// A Begin while a transaction is open replaces it (as [`Decoder::begin`] does). Errors leave
    /// the state as it was, except that a failed Commit still closes the transaction.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        match pgoutput::parse(bytes)? {
            PgOutputMessage::Begin(m) => {
                let final_lsn = Lsn(m.final_lsn);
                self.begin(final_lsn, m.xid, m.commit_ts);
                Ok(Decoded::Begin {
                    final_lsn,
                    xid: m.xid,
                    commit_ts: pg_micros_to_utc(m.commit_ts),
                })
            }
            PgOutputMessage::Commit(m) => {
                self.commit(Lsn(m.commit_lsn), Lsn(m.end_lsn), m.commit_ts)
            }
            PgOutputMessage::Origin(_) => Ok(Decoded::Nothing),
            PgOutputMessage::Relation(m) => {
                self.relations.insert_relation(&m);
                Ok(Decoded::Nothing)
            }
            PgOutputMessage::Type(m) => {
                self.relations.insert_type(&m);
                Ok(Decoded::Nothing)
            }
            PgOutputMessage::Insert(m) => {
                let relation = self.target(m.relation_oid)?;
                let record = build_row(&relation, &m.new, false, "Insert")?;
                self.emit(relation, Operation::Insert, Some(record), None)
                    .map(Decoded::Change)
            }
            PgOutputMessage::Update(m) => {
                let relation = self.target(m.relation_oid)?;
                let old_record = match &m.old {
                    Some(old) => Some(build_old_row(&relation, old, "Update")?),
                    None => None,
                };
                let record = build_row(&relation, &m.new, false, "Update")?;
                self.emit(relation, Operation::Update, Some(record), old_record)
                    .map(Decoded::Change)
            }
            PgOutputMessage::Delete(m) => {
                let relation = self.target(m.relation_oid)?;
                let old_record = build_old_row(&relation, &m.old, "Delete")?;
                self.emit(relation, Operation::Delete, None, Some(old_record))
                    .map(Decoded::Change)
            }
            PgOutputMessage::Truncate(m) => {
                let relations = m
                    .relation_oids
                    .iter()
                    .map(|&oid| self.target(oid))
                    .collect::<Result<Vec<_>, _>>()?;
                self.emit_truncates(relations).map(Decoded::Changes)
            }
            PgOutputMessage::Message(m) => Ok(Decoded::Message {
                transactional: m.is_transactional(),
                lsn: Lsn(m.lsn),
                prefix: m.prefix.to_owned(),
                content: m.content.to_vec(),
            }),
        }
    }

    /// Opens a transaction from a Begin the transport already parsed. Replaces any open one.
    pub fn begin(&mut self, final_lsn: Lsn, xid: u32, commit_time_micros_since_2000: i64) {
        self.transaction = Some(Transaction {
            final_lsn,
            xid,
            commit_ts: pg_micros_to_utc(commit_time_micros_since_2000),
            change_count: 0,
        });
    }

    /// Closes the open transaction from a Commit the transport already parsed.
    ///
    /// Fails with [`DecodeError::NoTransaction`] when none is open, and with
    /// [`DecodeError::CommitLsnMismatch`] (after closing it) when `commit_lsn` is not the
    /// Begin's `final_lsn`.
    pub fn commit(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_micros_since_2000: i64,
    ) -> Result<Decoded, DecodeError> {
        let transaction = self.transaction.take().ok_or(DecodeError::NoTransaction)?;
        if transaction.final_lsn != commit_lsn {
            return Err(DecodeError::CommitLsnMismatch {
                begin: transaction.final_lsn,
                commit: commit_lsn,
            });
        }
        Ok(Decoded::Commit {
            commit_lsn,
            end_lsn,
            commit_ts: pg_micros_to_utc(commit_time_micros_since_2000),
            change_count: transaction.change_count,
        })
    }

    /// Whether a Begin was seen and its Commit not yet.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// The relation with this OID, if a Relation message announced it on this stream.
    pub fn relation(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.relation(oid)
    }

    /// All relations and type names announced on this stream.
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// Forgets the open transaction and all relations and types: call it when the replication
    /// stream restarts (Postgres announces relations again on a new stream).
    pub fn reset(&mut self) {
        self.transaction = None;
        self.relations.clear();
    }

    /// The relation a row change applies to, after checking a transaction is open.
    fn target(&self, oid: u32) -> Result<Arc<Relation>, DecodeError> {
        if self.transaction.is_none() {
            return Err(DecodeError::NoTransaction);
        }
        self.relations
            .relation(oid)
            .map(Arc::clone)
            .ok_or(DecodeError::UnknownRelation(oid))
    }

    /// A [`Operation::Gap`] for a message that could not be decoded (`error`) at WAL position
    /// `at`: inside a transaction it takes the next cursor index, so the changes around it keep
    /// their order and the cursor a client holds stays valid; outside one it sits at `at`, with
    /// `now` (the caller's clock) as its time.
    pub fn gap(&mut self, error: &DecodeError, at: Lsn, now: DateTime<Utc>) -> Change {
        let (cursor, xid, commit_ts) = match self.transaction.as_mut() {
            Some(t) => {
                let index = t.change_count;
                t.change_count = index.saturating_add(1);
                (
                    Cursor {
                        commit_lsn: t.final_lsn,
                        index,
                    },
                    t.xid,
                    t.commit_ts,
                )
            }
            None => (
                Cursor {
                    commit_lsn: at,
                    index: 0,
                },
                0,
                now,
            ),
        };
        let mut record = Row::default();
        record
            .values
            .insert("code".into(), Value::String(error.code().to_owned()));
        record
            .values
            .insert("message".into(), Value::String(error.to_string()));
        record
            .values
            .insert("lsn".into(), Value::String(at.to_string()));
        Change {
            cursor,
            xid,
            commit_ts,
            relation: gap_relation(),
            op: Operation::Gap,
            record: Some(record),
            old_record: None,
        }
    }

    /// Builds the next change of the open transaction, taking the next cursor index.
    fn emit(
        &mut self,
        relation: Arc<Relation>,
        op: Operation,
        record: Option<Row>,
        old_record: Option<Row>,
    ) -> Result<Change, DecodeError> {
        let transaction = self
            .transaction
            .as_mut()
            .ok_or(DecodeError::NoTransaction)?;
        let index = transaction.change_count;
        transaction.change_count = index.checked_add(1).ok_or(DecodeError::TooManyChanges)?;
        Ok(Change {
            cursor: Cursor {
                commit_lsn: transaction.final_lsn,
                index,
            },
            xid: transaction.xid,
            commit_ts: transaction.commit_ts,
            relation,
            op,
            record,
            old_record,
        })
    }

    /// Builds one `Truncate` change per relation, taking consecutive cursor indices.
    fn emit_truncates(
        &mut self,
        relations: Vec<Arc<Relation>>,
    ) -> Result<Vec<Change>, DecodeError> {
        let transaction = self
            .transaction
            .as_mut()
            .ok_or(DecodeError::NoTransaction)?;
        let first = transaction.change_count;
        let count = u32::try_from(relations.len()).map_err(|_| DecodeError::TooManyChanges)?;
        transaction.change_count = first
            .checked_add(count)
            .ok_or(DecodeError::TooManyChanges)?;
        let transaction = *transaction;
        Ok((first..)
            .zip(relations)
            .map(|(index, relation)| Change {
                cursor: Cursor {
                    commit_lsn: transaction.final_lsn,
                    index,
                },
                xid: transaction.xid,
                commit_ts: transaction.commit_ts,
                relation,
                op: Operation::Truncate,
                record: None,
                old_record: None,
            })
            .collect())
    }
}

/// Builds the old row of an Update or Delete: only the key columns for a `'K'` tuple (the other
/// columns are sent as NULL placeholders), every column for an `'O'` tuple.
fn build_old_row(
    relation: &Relation,
    old: &OldTuple<'_>,
    message: &'static str,
) -> Result<Row, DecodeError> {
    build_row(relation, old.tuple(), old.is_key_only(), message)
}

/// Builds a [`Row`] from a tuple using the relation's column names and types; with `keys_only`
/// non-key columns are skipped.
fn build_row(
    relation: &Relation,
    tuple: &TupleData<'_>,
    keys_only: bool,
    message: &'static str,
) -> Result<Row, DecodeError> {
    if tuple.columns.len() != relation.columns.len() {
        return Err(DecodeError::ColumnCountMismatch {
            relation: relation.oid,
            expected: relation.columns.len(),
            found: tuple.columns.len(),
        });
    }
    let mut row = Row::default();
    for (column, value) in relation.columns.iter().zip(&tuple.columns) {
        if keys_only && !column.is_key {
            continue;
        }
        let json = match value {
            TupleValue::Null => Value::Null,
            TupleValue::UnchangedToast => {
                row.unchanged_toast.push(Arc::clone(&column.name));
                continue;
            }
            TupleValue::Text(bytes) => {
                let text =
                    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { message })?;
                text_to_json(column.type_oid, text)
            }
        };
        row.values.insert(String::from(&*column.name), json);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::tests::{XorShift, corrupt, sample_messages};
    use crate::decode::pgoutput::{
        BeginMessage, CommitMessage, DeleteMessage, InsertMessage, LogicalMessage, OriginMessage,
        RelationColumn, RelationMessage, TruncateMessage, TypeMessage, UpdateMessage,
    };
    use serde_json::json;

    /// OID of the test `public.monitoring_events` relation.
    const EVENTS: u32 = 16_384;
    /// OID of a second test relation.
    const OTHER: u32 = 16_400;
    /// Commit LSN of the test transaction.
    const LSN: u64 = 0x16_B374_D848;
    /// Commit time of the test transaction: 2025-12-31 23:59:59.5 UTC.
    const TS: i64 = 820_540_799_500_000;

    /// Wire bytes of a message.
    fn bytes(message: PgOutputMessage<'_>) -> Vec<u8> {
        message.to_bytes()
    }

    /// Relation message for `public.monitoring_events` (id key, severity, payload, tags, at).
    fn events_relation() -> Vec<u8> {
        let column = |flags, name, type_oid| RelationColumn {
            flags,
            name,
            type_oid,
            type_modifier: -1,
        };
        bytes(PgOutputMessage::Relation(RelationMessage {
            oid: EVENTS,
            namespace: "public",
            name: "monitoring_events",
            replica_identity: b'd',
            columns: vec![
                column(1, "id", 20),
                column(0, "severity", 25),
                column(0, "payload", 3802),
                column(0, "tags", 1009),
                column(0, "at", 1184),
            ],
        }))
    }

    /// Relation message for a one-column table `public.other`.
    fn other_relation() -> Vec<u8> {
        bytes(PgOutputMessage::Relation(RelationMessage {
            oid: OTHER,
            namespace: "public",
            name: "other",
            replica_identity: b'f',
            columns: vec![RelationColumn {
                flags: 0,
                name: "n",
                type_oid: 23,
                type_modifier: -1,
            }],
        }))
    }

    /// Begin message of the test transaction.
    fn begin() -> Vec<u8> {
        bytes(PgOutputMessage::Begin(BeginMessage {
            final_lsn: LSN,
            commit_ts: TS,
            xid: 991,
        }))
    }

    /// Commit message of the test transaction.
    fn commit() -> Vec<u8> {
        bytes(PgOutputMessage::Commit(CommitMessage {
            flags: 0,
            commit_lsn: LSN,
            end_lsn: LSN + 0x30,
            commit_ts: TS,
        }))
    }

    /// A full `monitoring_events` tuple with id `id`.
    fn events_tuple(id: &'static str) -> TupleData<'static> {
        TupleData {
            columns: vec![
                TupleValue::Text(id.as_bytes()),
                TupleValue::Text(b"warn"),
                TupleValue::Text(br#"{"cpu": 97.5}"#),
                TupleValue::Text(br#"{a,"b c"}"#),
                TupleValue::Text(b"2025-12-31 23:59:59.5+01"),
            ],
        }
    }

    /// Insert of `events_tuple(id)`.
    fn insert(id: &'static str) -> Vec<u8> {
        bytes(PgOutputMessage::Insert(InsertMessage {
            relation_oid: EVENTS,
            new: events_tuple(id),
        }))
    }

    /// Decodes a message that must yield exactly one change.
    fn change(decoder: &mut Decoder, message: &[u8]) -> Change {
        match decoder.decode(message) {
            Ok(Decoded::Change(change)) => change,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn full_transaction_through_decode() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(&events_relation()), Ok(Decoded::Nothing));
        assert_eq!(d.decode(&other_relation()), Ok(Decoded::Nothing));
        assert!(!d.in_transaction());
        let ts = pg_micros_to_utc(TS);
        assert_eq!(ts.to_rfc3339(), "2025-12-31T23:59:59.500+00:00");
        assert_eq!(
            d.decode(&begin()),
            Ok(Decoded::Begin {
                final_lsn: Lsn(LSN),
                xid: 991,
                commit_ts: ts
            })
        );
        assert!(d.in_transaction());

        let mut changes = Vec::new();
        for id in ["1", "2", "3"] {
            changes.push(change(&mut d, &insert(id)));
        }
        let first = changes.first().unwrap();
        assert_eq!(first.op, Operation::Insert);
        assert_eq!(&*first.relation.table, "monitoring_events");
        assert_eq!(first.old_record, None);
        let record = first.record.as_ref().unwrap();
        assert_eq!(
            serde_json::Value::Object(record.values.clone()),
            json!({
                "id": 1,
                "severity": "warn",
                "payload": {"cpu": 97.5},
                "tags": ["a", "b c"],
                "at": "2025-12-31T22:59:59.5Z",
            })
        );
        assert!(record.unchanged_toast.is_empty());

        // Update of the key: old key tuple, payload unchanged TOAST in the new row.
        let update = bytes(PgOutputMessage::Update(UpdateMessage {
            relation_oid: EVENTS,
            old: Some(OldTuple::Key(TupleData {
                columns: vec![
                    TupleValue::Text(b"3"),
                    TupleValue::Null,
                    TupleValue::Null,
                    TupleValue::Null,
                    TupleValue::Null,
                ],
            })),
            new: TupleData {
                columns: vec![
                    TupleValue::Text(b"30"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Text(b"{}"),
                    TupleValue::Text(b"2025-12-31 23:59:59+00"),
                ],
            },
        }));
        let updated = change(&mut d, &update);
        assert_eq!(updated.op, Operation::Update);
        let record = updated.record.as_ref().unwrap();
        assert_eq!(
            serde_json::Value::Object(record.values.clone()),
            json!({"id": 30, "severity": null, "tags": [], "at": "2025-12-31T23:59:59Z"})
        );
        assert_eq!(record.unchanged_toast, vec![Arc::<str>::from("payload")]);
        let old = updated.old_record.as_ref().unwrap();
        assert_eq!(
            serde_json::Value::Object(old.values.clone()),
            json!({"id": 3})
        );
        changes.push(updated);

        let delete = bytes(PgOutputMessage::Delete(DeleteMessage {
            relation_oid: EVENTS,
            old: OldTuple::Key(TupleData {
                columns: vec![
                    TupleValue::Text(b"2"),
                    TupleValue::Null,
                    TupleValue::Null,
                    TupleValue::Null,
                    TupleValue::Null,
                ],
            }),
        }));
        let deleted = change(&mut d, &delete);
        assert_eq!(deleted.op, Operation::Delete);
        assert_eq!(deleted.record, None);
        assert_eq!(
            serde_json::Value::Object(deleted.old_record.as_ref().unwrap().values.clone()),
            json!({"id": 2})
        );
        changes.push(deleted);

        let truncate = bytes(PgOutputMessage::Truncate(TruncateMessage {
            options: 0,
            relation_oids: vec![EVENTS, OTHER],
        }));
        let Ok(Decoded::Changes(truncated)) = d.decode(&truncate) else {
            panic!("expected changes");
        };
        assert_eq!(truncated.len(), 2);
        for (t, table) in truncated.iter().zip(["monitoring_events", "other"]) {
            assert_eq!(t.op, Operation::Truncate);
            assert_eq!(&*t.relation.table, table);
            assert_eq!((&t.record, &t.old_record), (&None, &None));
        }
        changes.extend(truncated);

        for (index, c) in changes.iter().enumerate() {
            assert_eq!(
                c.cursor,
                Cursor {
                    commit_lsn: Lsn(LSN),
                    index: index as u32
                }
            );
            assert_eq!((c.xid, c.commit_ts), (991, ts));
        }
        assert_eq!(
            d.decode(&commit()),
            Ok(Decoded::Commit {
                commit_lsn: Lsn(LSN),
                end_lsn: Lsn(LSN + 0x30),
                commit_ts: ts,
                change_count: 7
            })
        );
        assert!(!d.in_transaction());

        // The next transaction starts again at index 0.
        d.begin(Lsn(LSN + 0x100), 992, TS);
        assert_eq!(change(&mut d, &insert("4")).cursor.index, 0);
    }

    #[test]
    fn begin_and_commit_from_the_transport() {
        let mut d = Decoder::new();
        d.decode(&events_relation()).unwrap();
        d.begin(Lsn(LSN), 5, TS);
        assert!(d.in_transaction());
        let c = change(&mut d, &insert("9"));
        assert_eq!(
            (c.cursor, c.xid, c.commit_ts),
            (
                Cursor {
                    commit_lsn: Lsn(LSN),
                    index: 0
                },
                5,
                pg_micros_to_utc(TS)
            )
        );
        assert_eq!(change(&mut d, &insert("10")).cursor.index, 1);
        assert_eq!(
            d.commit(Lsn(LSN), Lsn(LSN + 8), TS + 1),
            Ok(Decoded::Commit {
                commit_lsn: Lsn(LSN),
                end_lsn: Lsn(LSN + 8),
                commit_ts: pg_micros_to_utc(TS + 1),
                change_count: 2
            })
        );
        assert!(!d.in_transaction());
        assert_eq!(
            d.commit(Lsn(LSN), Lsn(LSN + 8), TS),
            Err(DecodeError::NoTransaction)
        );
    }

    #[test]
    fn empty_transaction_commits_with_no_changes() {
        let mut d = Decoder::new();
        d.decode(&begin()).unwrap();
        assert!(matches!(
            d.decode(&commit()),
            Ok(Decoded::Commit {
                change_count: 0,
                ..
            })
        ));
    }

    #[test]
    fn commit_lsn_must_match_begin() {
        let mut d = Decoder::new();
        d.begin(Lsn(LSN), 1, TS);
        assert_eq!(
            d.commit(Lsn(LSN + 1), Lsn(LSN + 2), TS),
            Err(DecodeError::CommitLsnMismatch {
                begin: Lsn(LSN),
                commit: Lsn(LSN + 1)
            })
        );
        assert!(!d.in_transaction());
    }

    #[test]
    fn changes_outside_a_transaction_are_rejected() {
        let mut d = Decoder::new();
        d.decode(&events_relation()).unwrap();
        d.decode(&other_relation()).unwrap();
        let delete = bytes(PgOutputMessage::Delete(DeleteMessage {
            relation_oid: EVENTS,
            old: OldTuple::Full(events_tuple("1")),
        }));
        let truncate = bytes(PgOutputMessage::Truncate(TruncateMessage {
            options: 0,
            relation_oids: vec![OTHER],
        }));
        for message in [insert("1"), delete, truncate, commit()] {
            assert_eq!(d.decode(&message), Err(DecodeError::NoTransaction));
        }
        // Even for a relation never announced, the missing transaction is reported first.
        let unknown = bytes(PgOutputMessage::Insert(InsertMessage {
            relation_oid: 1,
            new: TupleData::default(),
        }));
        assert_eq!(d.decode(&unknown), Err(DecodeError::NoTransaction));
    }

    #[test]
    fn unknown_relations_are_rejected() {
        let mut d = Decoder::new();
        d.decode(&begin()).unwrap();
        assert_eq!(
            d.decode(&insert("1")),
            Err(DecodeError::UnknownRelation(EVENTS))
        );
        d.decode(&events_relation()).unwrap();
        let truncate = bytes(PgOutputMessage::Truncate(TruncateMessage {
            options: 0,
            relation_oids: vec![EVENTS, OTHER],
        }));
        assert_eq!(
            d.decode(&truncate),
            Err(DecodeError::UnknownRelation(OTHER))
        );
        // Failed changes take no index.
        assert_eq!(change(&mut d, &insert("1")).cursor.index, 0);
    }

    #[test]
    fn column_count_must_match_relation() {
        let mut d = Decoder::new();
        d.decode(&events_relation()).unwrap();
        d.decode(&begin()).unwrap();
        let short = bytes(PgOutputMessage::Insert(InsertMessage {
            relation_oid: EVENTS,
            new: TupleData {
                columns: vec![TupleValue::Text(b"1")],
            },
        }));
        assert_eq!(
            d.decode(&short),
            Err(DecodeError::ColumnCountMismatch {
                relation: EVENTS,
                expected: 5,
                found: 1
            })
        );
    }

    #[test]
    fn invalid_utf8_values_are_rejected() {
        let mut d = Decoder::new();
        d.decode(&other_relation()).unwrap();
        d.decode(&begin()).unwrap();
        let bad = bytes(PgOutputMessage::Insert(InsertMessage {
            relation_oid: OTHER,
            new: TupleData {
                columns: vec![TupleValue::Text(&[0xC3, 0x28])],
            },
        }));
        assert_eq!(
            d.decode(&bad),
            Err(DecodeError::InvalidUtf8 { message: "Insert" })
        );
    }

    #[test]
    fn full_old_rows_keep_every_column() {
        let mut d = Decoder::new();
        d.decode(&other_relation()).unwrap();
        d.decode(&begin()).unwrap();
        let row = |n: &'static [u8]| TupleData {
            columns: vec![TupleValue::Text(n)],
        };
        let update = bytes(PgOutputMessage::Update(UpdateMessage {
            relation_oid: OTHER,
            old: Some(OldTuple::Full(row(b"1"))),
            new: row(b"2"),
        }));
        let c = change(&mut d, &update);
        let values =
            |r: &Option<Row>| serde_json::Value::Object(r.as_ref().unwrap().values.clone());
        assert_eq!(values(&c.old_record), json!({"n": 1}));
        assert_eq!(values(&c.record), json!({"n": 2}));
        let delete = bytes(PgOutputMessage::Delete(DeleteMessage {
            relation_oid: OTHER,
            old: OldTuple::Full(row(b"2")),
        }));
        let c = change(&mut d, &delete);
        assert_eq!(values(&c.old_record), json!({"n": 2}));
        assert_eq!(c.cursor.index, 1);
        let plain = bytes(PgOutputMessage::Update(UpdateMessage {
            relation_oid: OTHER,
            old: None,
            new: row(b"3"),
        }));
        assert_eq!(change(&mut d, &plain).old_record, None);
    }

    #[test]
    fn relation_messages_replace_the_cached_relation() {
        let mut d = Decoder::new();
        d.decode(&other_relation()).unwrap();
        let before = Arc::clone(d.relation(OTHER).unwrap());
        let renamed = bytes(PgOutputMessage::Relation(RelationMessage {
            oid: OTHER,
            namespace: "public",
            name: "other",
            replica_identity: b'd',
            columns: vec![RelationColumn {
                flags: 1,
                name: "m",
                type_oid: 25,
                type_modifier: -1,
            }],
        }));
        d.decode(&begin()).unwrap();
        d.decode(&renamed).unwrap();
        let insert = bytes(PgOutputMessage::Insert(InsertMessage {
            relation_oid: OTHER,
            new: TupleData {
                columns: vec![TupleValue::Text(b"7")],
            },
        }));
        let c = change(&mut d, &insert);
        assert_eq!(
            serde_json::Value::Object(c.record.unwrap().values),
            json!({"m": "7"})
        );
        assert_eq!(before.columns.first().map(|c| &*c.name), Some("n"));
        assert!(Arc::ptr_eq(&c.relation, d.relation(OTHER).unwrap()));
    }

    #[test]
    fn other_messages_yield_nothing_or_pass_through() {
        let mut d = Decoder::new();
        let origin = bytes(PgOutputMessage::Origin(OriginMessage {
            origin_lsn: 1,
            name: "o",
        }));
        assert_eq!(d.decode(&origin), Ok(Decoded::Nothing));
        let type_msg = bytes(PgOutputMessage::Type(TypeMessage {
            oid: 70_000,
            namespace: "public",
            name: "severity",
        }));
        assert_eq!(d.decode(&type_msg), Ok(Decoded::Nothing));
        assert_eq!(
            d.relations().type_name(70_000).map(|t| &*t.name),
            Some("severity")
        );
        let message = bytes(PgOutputMessage::Message(LogicalMessage {
            flags: 0,
            lsn: 0x42,
            prefix: "walcast",
            content: b"hi",
        }));
        assert_eq!(
            d.decode(&message),
            Ok(Decoded::Message {
                transactional: false,
                lsn: Lsn(0x42),
                prefix: "walcast".to_owned(),
                content: b"hi".to_vec()
            })
        );
    }

    #[test]
    fn reset_forgets_transaction_and_relations() {
        let mut d = Decoder::new();
        d.decode(&events_relation()).unwrap();
        d.decode(&begin()).unwrap();
        d.reset();
        assert!(!d.in_transaction());
        assert!(d.relation(EVENTS).is_none());
        d.decode(&begin()).unwrap();
        assert_eq!(
            d.decode(&insert("1")),
            Err(DecodeError::UnknownRelation(EVENTS))
        );
    }

    #[test]
    fn postgres_timestamps_convert_and_clamp() {
        assert_eq!(
            pg_micros_to_utc(0).to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
        assert_eq!(
            pg_micros_to_utc(-1).to_rfc3339(),
            "1999-12-31T23:59:59.999999+00:00"
        );
        assert_eq!(pg_micros_to_utc(i64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(pg_micros_to_utc(i64::MIN), DateTime::<Utc>::MIN_UTC);
    }

    /// Every message of a full test stream, in order.
    fn stream() -> Vec<Vec<u8>> {
        let mut messages = vec![events_relation(), other_relation(), begin(), insert("1")];
        messages.extend(sample_messages().iter().map(|m| m.to_bytes()));
        messages.push(commit());
        messages
    }

    #[test]
    fn every_prefix_of_every_message_is_an_error() {
        for message in stream() {
            for len in 0..message.len() {
                let mut d = Decoder::new();
                d.decode(&events_relation()).unwrap();
                d.decode(&begin()).unwrap();
                let prefix = message.get(..len).unwrap_or_default();
                assert!(d.decode(prefix).is_err(), "prefix {len} of {message:?}");
            }
        }
    }

    #[test]
    fn randomly_corrupted_streams_never_panic() {
        let stream = stream();
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut d = Decoder::new();
        let mut outcomes = [0usize; 2];
        for round in 0..10_000 {
            if round % 50 == 0 {
                d.reset();
                d.decode(&events_relation()).unwrap();
                d.decode(&other_relation()).unwrap();
                d.begin(Lsn(LSN), 1, TS);
            }
            let mut message = stream[rng.below(stream.len())].clone();
            corrupt(&mut rng, &mut message);
            outcomes[usize::from(d.decode(&message).is_ok())] += 1;
        }
        // Both outcomes happen: the corruption is neither always fatal nor always harmless.
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }

    #[test]
    fn an_undecodable_message_is_a_gap_in_cursor_order() {
        let mut d = Decoder::new();
        d.decode(&begin()).unwrap();
        d.decode(&events_relation()).unwrap();
        let Decoded::Change(first) = d.decode(&insert("1")).unwrap() else {
            panic!("change expected")
        };
        // An Insert for a relation never announced cannot be decoded.
        let unknown = bytes(PgOutputMessage::Insert(InsertMessage {
            relation_oid: 4242,
            new: events_tuple("2"),
        }));
        let e = d.decode(&unknown).unwrap_err();
        let gap = d.gap(&e, Lsn(LSN - 8), DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(gap.op, Operation::Gap);
        assert_eq!(gap.cursor.commit_lsn, Lsn(LSN));
        assert_eq!(gap.cursor.index, first.cursor.index + 1);
        assert_eq!(
            gap.commit_ts, first.commit_ts,
            "inside a transaction: its commit time"
        );
        let record = gap.record.as_ref().unwrap();
        assert_eq!(record.values["code"], json!(e.code()));
        assert_eq!(record.values["lsn"], json!(Lsn(LSN - 8).to_string()));
        let Decoded::Change(next) = d.decode(&insert("3")).unwrap() else {
            panic!("change expected")
        };
        assert_eq!(next.cursor.index, gap.cursor.index + 1);
        d.decode(&commit()).unwrap();
        // Outside a transaction it sits at the message's own position.
        let gap = d.gap(&e, Lsn(LSN + 0x100), DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(
            (gap.cursor.commit_lsn, gap.cursor.index),
            (Lsn(LSN + 0x100), 0)
        );
    }
}
