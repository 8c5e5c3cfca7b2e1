//! The pgoutput wire format (protocol version 1, text tuples): one plain struct per message and
//! [`parse`], which turns the bytes of one message into a [`PgOutputMessage`].
//!
//! Parsing is stateless and borrows strings and values from the input. It never touches the
//! network, never keeps state between messages and never panics: any malformed input is a
//! [`DecodeError`]. Every struct also has an `encode` that writes the exact wire form, used to
//! build messages in tests.

mod begin;
mod commit;
mod delete;
mod insert;
mod message;
mod origin;
pub(crate) mod reader;
mod relation;
mod truncate;
mod tuple;
mod type_msg;
mod update;

use super::error::DecodeError;

pub use begin::BeginMessage;
pub use commit::CommitMessage;
pub use delete::DeleteMessage;
pub use insert::InsertMessage;
pub use message::LogicalMessage;
pub use origin::OriginMessage;
pub use reader::Reader;
#[cfg_attr(not(test), allow(unused_imports))] // Named only when building messages.
pub use relation::{RelationColumn, RelationMessage};
pub use truncate::TruncateMessage;
pub use tuple::{OldTuple, TupleData, TupleValue};
pub use type_msg::TypeMessage;
pub use update::UpdateMessage;

/// Any pgoutput protocol version 1 message, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage<'a> {
    /// `'B'`: a transaction starts.
    Begin(BeginMessage),
    /// `'C'`: the transaction commits.
    Commit(CommitMessage),
    /// `'O'`: replication origin of the transaction.
    Origin(OriginMessage<'a>),
    /// `'R'`: a table description.
    Relation(RelationMessage<'a>),
    /// `'Y'`: a data type name.
    Type(TypeMessage<'a>),
    /// `'I'`: a new row.
    Insert(InsertMessage<'a>),
    /// `'U'`: a changed row.
    Update(UpdateMessage<'a>),
    /// `'D'`: a removed row.
    Delete(DeleteMessage<'a>),
    /// `'T'`: truncated tables.
    Truncate(TruncateMessage),
    /// `'M'`: a logical decoding message.
    Message(LogicalMessage<'a>),
}

impl PgOutputMessage<'_> {
    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PgOutputMessage::Begin(m) => m.encode(out),
            PgOutputMessage::Commit(m) => m.encode(out),
            PgOutputMessage::Origin(m) => m.encode(out),
            PgOutputMessage::Relation(m) => m.encode(out),
            PgOutputMessage::Type(m) => m.encode(out),
            PgOutputMessage::Insert(m) => m.encode(out),
            PgOutputMessage::Update(m) => m.encode(out),
            PgOutputMessage::Delete(m) => m.encode(out),
            PgOutputMessage::Truncate(m) => m.encode(out),
            PgOutputMessage::Message(m) => m.encode(out),
        }
    }

    /// The message as a fresh byte vector.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Parses one complete pgoutput message (tag byte first); trailing bytes are an error.
pub fn parse(bytes: &[u8]) -> Result<PgOutputMessage<'_>, DecodeError> {
    let (&tag, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let name = match tag {
        BeginMessage::TAG => "Begin",
        CommitMessage::TAG => "Commit",
        OriginMessage::TAG => "Origin",
        RelationMessage::TAG => "Relation",
        TypeMessage::TAG => "Type",
        InsertMessage::TAG => "Insert",
        UpdateMessage::TAG => "Update",
        DeleteMessage::TAG => "Delete",
        TruncateMessage::TAG => "Truncate",
        LogicalMessage::TAG => "Message",
        other => return Err(unsupported_or_unknown(other)),
    };
    let mut r = Reader::new(body, name);
    let message = match tag {
        BeginMessage::TAG => PgOutputMessage::Begin(BeginMessage::decode(&mut r)?),
        CommitMessage::TAG => PgOutputMessage::Commit(CommitMessage::decode(&mut r)?),
        OriginMessage::TAG => PgOutputMessage::Origin(OriginMessage::decode(&mut r)?),
        RelationMessage::TAG => PgOutputMessage::Relation(RelationMessage::decode(&mut r)?),
        TypeMessage::TAG => PgOutputMessage::Type(TypeMessage::decode(&mut r)?),
        InsertMessage::TAG => PgOutputMessage::Insert(InsertMessage::decode(&mut r)?),
        UpdateMessage::TAG => PgOutputMessage::Update(UpdateMessage::decode(&mut r)?),
        DeleteMessage::TAG => PgOutputMessage::Delete(DeleteMessage::decode(&mut r)?),
        TruncateMessage::TAG => PgOutputMessage::Truncate(TruncateMessage::decode(&mut r)?),
        _ => PgOutputMessage::Message(LogicalMessage::decode(&mut r)?),
    };
    r.finish()?;
    Ok(message)
}

/// The error for a tag walcast does not parse: a known streaming or two-phase tag (never sent
/// with protocol version 1 and no `streaming`/`two_phase` options) or an unknown byte.
fn unsupported_or_unknown(tag: u8) -> DecodeError {
    match tag {
        b'S' => DecodeError::Unsupported("Stream Start ('S') needs streaming, not used by walcast"),
        b'E' => DecodeError::Unsupported("Stream Stop ('E') needs streaming, not used by walcast"),
        b'c' => {
            DecodeError::Unsupported("Stream Commit ('c') needs streaming, not used by walcast")
        }
        b'A' => DecodeError::Unsupported("Stream Abort ('A') needs streaming, not used by walcast"),
        b'b' => DecodeError::Unsupported(
            "Begin Prepare ('b') needs two-phase decoding, not used by walcast",
        ),
        b'P' => {
            DecodeError::Unsupported("Prepare ('P') needs two-phase decoding, not used by walcast")
        }
        b'K' => DecodeError::Unsupported(
            "Commit Prepared ('K') needs two-phase decoding, not used by walcast",
        ),
        b'r' => DecodeError::Unsupported(
            "Rollback Prepared ('r') needs two-phase decoding, not used by walcast",
        ),
        b'p' => DecodeError::Unsupported(
            "Stream Prepare ('p') needs two-phase decoding, not used by walcast",
        ),
        other => DecodeError::UnknownMessage(other),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small xorshift64 generator: deterministic "random" input for robustness tests.
    pub(crate) struct XorShift(pub u64);

    impl XorShift {
        /// Next pseudo-random number.
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A pseudo-random number below `n` (`n` > 0).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// One message of every kind and variant, as parsed structs.
    pub(crate) fn sample_messages() -> Vec<PgOutputMessage<'static>> {
        let row = TupleData {
            columns: vec![
                TupleValue::Text(b"1"),
                TupleValue::Text("héllo".as_bytes()),
                TupleValue::Null,
                TupleValue::UnchangedToast,
            ],
        };
        vec![
            PgOutputMessage::Begin(BeginMessage {
                final_lsn: 0x16_B374_D848,
                commit_ts: 817_000_000_123_456,
                xid: 771,
            }),
            PgOutputMessage::Commit(CommitMessage {
                flags: 0,
                commit_lsn: 0x16_B374_D848,
                end_lsn: 0x16_B374_D878,
                commit_ts: 817_000_000_123_456,
            }),
            PgOutputMessage::Origin(OriginMessage {
                origin_lsn: 99,
                name: "pg_origin_1",
            }),
            PgOutputMessage::Relation(RelationMessage {
                oid: 16_384,
                namespace: "public",
                name: "monitoring_events",
                replica_identity: b'd',
                columns: vec![
                    RelationColumn {
                        flags: 1,
                        name: "id",
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        flags: 0,
                        name: "payload",
                        type_oid: 3802,
                        type_modifier: -1,
                    },
                ],
            }),
            PgOutputMessage::Relation(RelationMessage {
                oid: 1,
                namespace: "",
                name: "empty",
                replica_identity: b'n',
                columns: vec![],
            }),
            PgOutputMessage::Type(TypeMessage {
                oid: 70_000,
                namespace: "public",
                name: "severity",
            }),
            PgOutputMessage::Insert(InsertMessage {
                relation_oid: 16_384,
                new: row.clone(),
            }),
            PgOutputMessage::Insert(InsertMessage {
                relation_oid: 16_384,
                new: TupleData::default(),
            }),
            PgOutputMessage::Update(UpdateMessage {
                relation_oid: 16_384,
                old: None,
                new: row.clone(),
            }),
            PgOutputMessage::Update(UpdateMessage {
                relation_oid: 16_384,
                old: Some(OldTuple::Key(TupleData {
                    columns: vec![TupleValue::Text(b"7"), TupleValue::Null],
                })),
                new: row.clone(),
            }),
            PgOutputMessage::Update(UpdateMessage {
                relation_oid: 16_384,
                old: Some(OldTuple::Full(row.clone())),
                new: row.clone(),
            }),
            PgOutputMessage::Delete(DeleteMessage {
                relation_oid: 16_384,
                old: OldTuple::Key(row.clone()),
            }),
            PgOutputMessage::Delete(DeleteMessage {
                relation_oid: 16_384,
                old: OldTuple::Full(row),
            }),
            PgOutputMessage::Truncate(TruncateMessage {
                options: 1 | 2, // CASCADE, RESTART IDENTITY
                relation_oids: vec![16_384, 16_385],
            }),
            PgOutputMessage::Truncate(TruncateMessage {
                options: 0,
                relation_oids: vec![],
            }),
            PgOutputMessage::Message(LogicalMessage {
                flags: LogicalMessage::TRANSACTIONAL,
                lsn: 0x10,
                prefix: "walcast.test",
                content: b"\x00\x01binary",
            }),
            PgOutputMessage::Message(LogicalMessage {
                flags: 0,
                lsn: 0x20,
                prefix: "",
                content: b"",
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in sample_messages() {
            let bytes = message.to_bytes();
            assert_eq!(parse(&bytes).as_ref(), Ok(&message), "{bytes:?}");
        }
    }

    #[test]
    fn known_layouts_match_the_protocol() {
        let begin = PgOutputMessage::Begin(BeginMessage {
            final_lsn: 0x0102_0304_0506_0708,
            commit_ts: 1,
            xid: 0x0A0B_0C0D,
        });
        assert_eq!(
            begin.to_bytes(),
            [
                b'B', 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0x0A, 0x0B, 0x0C, 0x0D
            ]
        );
        let insert = PgOutputMessage::Insert(InsertMessage {
            relation_oid: 5,
            new: TupleData {
                columns: vec![TupleValue::Text(b"ab"), TupleValue::Null],
            },
        });
        assert_eq!(
            insert.to_bytes(),
            [
                b'I', 0, 0, 0, 5, b'N', 0, 2, b't', 0, 0, 0, 2, b'a', b'b', b'n'
            ]
        );
    }

    #[test]
    fn every_prefix_is_an_error() {
        for message in sample_messages() {
            let bytes = message.to_bytes();
            for len in 0..bytes.len() {
                let prefix = bytes.get(..len).unwrap_or_default();
                assert!(parse(prefix).is_err(), "prefix {len} of {bytes:?} parsed");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for message in sample_messages() {
            let mut bytes = message.to_bytes();
            bytes.push(0);
            assert_eq!(
                parse(&bytes).map_err(|e| e.code()),
                Err("trailing_bytes"),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn streaming_and_unknown_tags_are_rejected() {
        for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p'] {
            assert!(matches!(
                parse(&[tag, 0, 0, 0, 0]),
                Err(DecodeError::Unsupported(_))
            ));
        }
        assert_eq!(parse(b"z"), Err(DecodeError::UnknownMessage(b'z')));
        assert_eq!(parse(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn bad_markers_are_rejected() {
        // Update whose first marker is neither 'K', 'O' nor 'N'.
        let bytes = [b'U', 0, 0, 0, 1, b'X', 0, 0];
        assert!(matches!(
            parse(&bytes),
            Err(DecodeError::UnexpectedByte { found: b'X', .. })
        ));
        // Delete must carry an old tuple.
        let bytes = [b'D', 0, 0, 0, 1, b'N', 0, 0];
        assert!(matches!(
            parse(&bytes),
            Err(DecodeError::UnexpectedByte { found: b'N', .. })
        ));
    }

    #[test]
    fn randomly_corrupted_messages_never_panic() {
        let samples: Vec<Vec<u8>> = sample_messages().iter().map(|m| m.to_bytes()).collect();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..10_000 {
            let mut bytes = samples[rng.below(samples.len())].clone();
            corrupt(&mut rng, &mut bytes);
            let _ = parse(&bytes);
        }
    }

    /// Applies one to four random edits (overwrite, bit flip, truncate, insert) to `bytes`.
    pub(crate) fn corrupt(rng: &mut XorShift, bytes: &mut Vec<u8>) {
        for _ in 0..=rng.below(4) {
            let len = bytes.len();
            match rng.below(5) {
                0 if len > 0 => {
                    let at = rng.below(len);
                    bytes[at] = rng.next() as u8;
                }
                1 if len > 0 => {
                    let at = rng.below(len);
                    bytes[at] ^= 1 << rng.below(8);
                }
                2 => bytes.truncate(rng.below(len + 1)),
                3 => {
                    let at = rng.below(len + 1);
                    bytes.insert(at, rng.next() as u8);
                }
                _ if len > 4 => {
                    // Large lengths and counts are the interesting case: set a run to 0xFF.
                    let at = rng.below(len - 3);
                    bytes[at..at + 4].fill(0xFF);
                }
                _ => bytes.push(rng.next() as u8),
            }
        }
    }
}
