//! The content of the WAL messages that carry broadcasts between walcast nodes
//! (`--cluster-broadcast`): a batch of broadcasts accepted on one node, written with
//! `pg_logical_emit_message` and read back by every node's replication reader.
//!
//! Layout (all integers big-endian; lengths count bytes):
//!
//! ```text
//! batch  = version:u8 (= 1) origin:u64 count:u16 entry{count}
//! entry  = flags:u8 topic:str16 body
//!          flags bit 0: private channel; bit 1: user body (else a JSON body);
//!          bit 2: presence entry (bit 1 then 0); bit 3: hello (no body, empty topic,
//!          no other bit); other bits 0
//! body   = json:str32                                     (a text push's payload object)
//!        | encoding:u8 event:str16 meta:u8 [metadata:str32] payload:bytes32
//!          encoding: the binary frame's payload encoding byte (0 raw bytes, 1 JSON);
//!          meta: 0 no metadata, 1 metadata follows
//!        | op:u8 member:u64 key:str16 [phx_ref:str16 payload:str32]   (presence entry)
//!          op: 1 track (phx_ref and the payload object as JSON follow), 2 untrack
//! str16  = len:u16 UTF-8 bytes;  str32 = len:u32 UTF-8 bytes;  bytes32 = len:u32 bytes
//! ```
//!
//! `origin` is a random number each walcast process draws at start, so a node recognises (and
//! skips) its own messages. Any batch, even one without entries (the periodic `alive`), tells
//! the other nodes that its origin is alive. A presence entry tracks or untracks the presence of
//! one membership (`member`, unique in the origin process) under its presence `key`; a hello
//! asks every other node to announce its presences again. A decoder rejects unknown versions and flags, truncated input,
//! trailing bytes and invalid UTF-8 with a typed error; it never panics.

use super::frame::PayloadEncoding;

/// The version byte this module writes and reads.
pub const VERSION: u8 = 1;

/// Flag bit: the broadcast is for private channels.
const FLAG_PRIVATE: u8 = 1;
/// Flag bit: the body is a user broadcast (binary frame fields), not a JSON payload object.
const FLAG_USER: u8 = 2;
/// Flag bit: a presence entry.
const FLAG_PRESENCE: u8 = 4;
/// Flag bit: a hello (asks the other nodes to announce their presences again).
const FLAG_HELLO: u8 = 8;

/// Presence op: track (or update).
const OP_TRACK: u8 = 1;
/// Presence op: untrack.
const OP_UNTRACK: u8 = 2;

/// A presence tracked on another node: what its members see in `metas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedMeta {
    /// The presence reference the origin node gave it.
    pub phx_ref: String,
    /// The tracked payload object, as JSON.
    pub payload: String,
}

/// A presence change on the origin node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedPresence {
    /// For private channels of the topic (else public ones).
    pub private: bool,
    /// The full topic, `realtime:<name>`.
    pub topic: String,
    /// The membership on the origin node.
    pub member: u64,
    /// The presence key.
    pub key: String,
    /// `Some`: tracked (or updated) with this meta; `None`: untracked.
    pub meta: Option<RelayedMeta>,
}

/// One entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A broadcast.
    Broadcast(RelayedBroadcast),
    /// A presence track or untrack.
    Presence(RelayedPresence),
    /// A request to the other nodes to announce their presences again.
    Hello,
}

impl Entry {
    /// About how many bytes the entry holds (what it costs while queued).
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Entry::Broadcast(b) => {
                    b.topic.len()
                        + match &b.body {
                            RelayedBody::Json(json) => json.len(),
                            RelayedBody::User {
                                event,
                                metadata,
                                payload,
                                ..
                            } => {
                                event.len()
                                    + metadata.as_ref().map_or(0, String::len)
                                    + payload.len()
                            }
                        }
                }
                Entry::Presence(p) => {
                    p.topic.len()
                        + p.key.len()
                        + p.meta
                            .as_ref()
                            .map_or(0, |m| m.phx_ref.len() + m.payload.len())
                }
                Entry::Hello => 0,
            }
    }
}

/// What a relayed broadcast carries, as members will receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayedBody {
    /// A text push's whole payload object (`{"type":"broadcast","event",...}`) as JSON.
    Json(String),
    /// A user broadcast (a binary push, or a REST broadcast with raw bytes).
    User {
        /// The user's event.
        event: String,
        /// Metadata JSON, if any.
        metadata: Option<String>,
        /// Payload encoding.
        encoding: PayloadEncoding,
        /// Payload bytes.
        payload: Vec<u8>,
    },
}

/// One broadcast relayed to other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedBroadcast {
    /// For private channels of the topic (else public ones).
    pub private: bool,
    /// The full topic, `realtime:<name>`.
    pub topic: String,
    /// The content.
    pub body: RelayedBody,
}

/// A batch of entries from one node, in the order they were accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayBatch {
    /// The sending process's random id.
    pub origin: u64,
    /// The entries, oldest first.
    pub entries: Vec<Entry>,
}

/// Why a batch cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The input ends before a field does.
    #[error("relayed broadcast batch truncated: {needed} more bytes needed at offset {at}")]
    Truncated {
        /// Where the field starts.
        at: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// A version this walcast does not read (a newer node wrote it).
    #[error("relayed broadcast batch of version {0}; this walcast reads version {VERSION}")]
    Version(u8),
    /// Flag bits this walcast does not know.
    #[error("relayed broadcast with unknown flags {0:#04x}")]
    Flags(u8),
    /// An unknown payload encoding byte.
    #[error("relayed broadcast with unknown payload encoding {0}")]
    Encoding(u8),
    /// An unknown metadata marker.
    #[error("relayed broadcast with unknown metadata marker {0}")]
    Meta(u8),
    /// An unknown presence op.
    #[error("relayed presence with unknown op {0}")]
    Op(u8),
    /// A text field is not UTF-8.
    #[error("relayed broadcast field `{0}` is not UTF-8")]
    Utf8(&'static str),
    /// Bytes after the last entry.
    #[error("relayed broadcast batch has {0} bytes after its last entry")]
    Trailing(usize),
    /// A field too long for its length prefix, or too many entries (encoding only).
    #[error("relayed broadcast field `{0}` is too long for the batch format")]
    TooLong(&'static str),
}

impl RelayError {
    /// A low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Truncated { .. } => "truncated",
            RelayError::Version(_) => "version",
            RelayError::Flags(_)
            | RelayError::Encoding(_)
            | RelayError::Meta(_)
            | RelayError::Op(_) => "malformed",
            RelayError::Utf8(_) => "utf8",
            RelayError::Trailing(_) => "trailing",
            RelayError::TooLong(_) => "too_long",
        }
    }
}

/// Appends a field with a `u16` length.
fn put16(out: &mut Vec<u8>, field: &'static str, bytes: &[u8]) -> Result<(), RelayError> {
    let len = u16::try_from(bytes.len()).map_err(|_| RelayError::TooLong(field))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Appends a field with a `u32` length.
fn put32(out: &mut Vec<u8>, field: &'static str, bytes: &[u8]) -> Result<(), RelayError> {
    let len = u32::try_from(bytes.len()).map_err(|_| RelayError::TooLong(field))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Encodes one entry (appended to `out`).
pub fn encode_entry(e: &Entry, out: &mut Vec<u8>) -> Result<(), RelayError> {
    match e {
        Entry::Broadcast(b) => encode_broadcast(b, out),
        Entry::Presence(p) => encode_presence(p, out),
        Entry::Hello => {
            out.extend_from_slice(&[FLAG_HELLO, 0, 0]);
            Ok(())
        }
    }
}

/// Encodes a presence entry (appended to `out`).
fn encode_presence(p: &RelayedPresence, out: &mut Vec<u8>) -> Result<(), RelayError> {
    out.push(if p.private { FLAG_PRIVATE } else { 0 } | FLAG_PRESENCE);
    put16(out, "topic", p.topic.as_bytes())?;
    out.push(if p.meta.is_some() {
        OP_TRACK
    } else {
        OP_UNTRACK
    });
    out.extend_from_slice(&p.member.to_be_bytes());
    put16(out, "key", p.key.as_bytes())?;
    if let Some(m) = &p.meta {
        put16(out, "phx_ref", m.phx_ref.as_bytes())?;
        put32(out, "payload", m.payload.as_bytes())?;
    }
    Ok(())
}

/// Encodes a broadcast entry (appended to `out`).
fn encode_broadcast(b: &RelayedBroadcast, out: &mut Vec<u8>) -> Result<(), RelayError> {
    let mut flags = 0;
    if b.private {
        flags |= FLAG_PRIVATE;
    }
    if matches!(b.body, RelayedBody::User { .. }) {
        flags |= FLAG_USER;
    }
    out.push(flags);
    put16(out, "topic", b.topic.as_bytes())?;
    match &b.body {
        RelayedBody::Json(json) => put32(out, "payload", json.as_bytes()),
        RelayedBody::User {
            event,
            metadata,
            encoding,
            payload,
        } => {
            out.push(encoding.byte());
            put16(out, "event", event.as_bytes())?;
            match metadata {
                None => out.push(0),
                Some(m) => {
                    out.push(1);
                    put32(out, "metadata", m.as_bytes())?;
                }
            }
            put32(out, "payload", payload)
        }
    }
}

/// The header of a batch of `count` entries from `origin`; entries ([`encode_entry`]) follow.
pub fn encode_header(origin: u64, count: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.push(VERSION);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out
}

/// Encodes a whole batch.
pub fn encode(batch: &RelayBatch) -> Result<Vec<u8>, RelayError> {
    let count = u16::try_from(batch.entries.len()).map_err(|_| RelayError::TooLong("entries"))?;
    let mut out = encode_header(batch.origin, count);
    for b in &batch.entries {
        encode_entry(b, &mut out)?;
    }
    Ok(out)
}

/// A cursor over the input with checked reads.
struct Input<'a> {
    /// The whole input.
    bytes: &'a [u8],
    /// The next byte to read.
    at: usize,
}

impl<'a> Input<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], RelayError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(RelayError::Truncated {
                at: self.at,
                needed: n - left,
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// A byte.
    fn u8(&mut self) -> Result<u8, RelayError> {
        Ok(self.take(1)?[0])
    }

    /// A `u16`.
    fn u16(&mut self) -> Result<u16, RelayError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A `u32` length.
    fn len32(&mut self) -> Result<usize, RelayError> {
        let b = self.take(4)?;
        Ok(usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(usize::MAX))
    }

    /// A `u64`.
    fn u64(&mut self) -> Result<u64, RelayError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A UTF-8 string of `len` bytes.
    fn text(&mut self, len: usize, field: &'static str) -> Result<String, RelayError> {
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| RelayError::Utf8(field))
    }
}

/// Reads the origin of a batch without decoding its entries (a node skips its own batches).
pub fn origin(bytes: &[u8]) -> Result<u64, RelayError> {
    let mut input = Input { bytes, at: 0 };
    match input.u8()? {
        VERSION => input.u64(),
        other => Err(RelayError::Version(other)),
    }
}

/// Decodes a batch.
pub fn decode(bytes: &[u8]) -> Result<RelayBatch, RelayError> {
    let mut input = Input { bytes, at: 0 };
    let version = input.u8()?;
    if version != VERSION {
        return Err(RelayError::Version(version));
    }
    let origin = input.u64()?;
    let count = input.u16()?;
    // Each entry takes at least 3 bytes: never reserve more than the input can hold.
    let mut entries = Vec::with_capacity(usize::from(count).min(bytes.len() / 3));
    for _ in 0..count {
        let flags = input.u8()?;
        let known = match flags & !FLAG_PRIVATE {
            0 | FLAG_USER | FLAG_PRESENCE => true,
            FLAG_HELLO => flags == FLAG_HELLO,
            _ => false,
        };
        if !known {
            return Err(RelayError::Flags(flags));
        }
        let topic_len = usize::from(input.u16()?);
        let topic = input.text(topic_len, "topic")?;
        if flags == FLAG_HELLO {
            entries.push(Entry::Hello);
            continue;
        }
        if flags & FLAG_PRESENCE != 0 {
            let op = input.u8()?;
            if op != OP_TRACK && op != OP_UNTRACK {
                return Err(RelayError::Op(op));
            }
            let member = input.u64()?;
            let key_len = usize::from(input.u16()?);
            let key = input.text(key_len, "key")?;
            let meta = if op == OP_TRACK {
                let ref_len = usize::from(input.u16()?);
                let phx_ref = input.text(ref_len, "phx_ref")?;
                let len = input.len32()?;
                let payload = input.text(len, "payload")?;
                Some(RelayedMeta { phx_ref, payload })
            } else {
                None
            };
            entries.push(Entry::Presence(RelayedPresence {
                private: flags & FLAG_PRIVATE != 0,
                topic,
                member,
                key,
                meta,
            }));
            continue;
        }
        let body = if flags & FLAG_USER == 0 {
            let len = input.len32()?;
            RelayedBody::Json(input.text(len, "payload")?)
        } else {
            let enc = input.u8()?;
            let encoding =
                PayloadEncoding::from_byte(enc).map_err(|_| RelayError::Encoding(enc))?;
            let event_len = usize::from(input.u16()?);
            let event = input.text(event_len, "event")?;
            let metadata = match input.u8()? {
                0 => None,
                1 => {
                    let len = input.len32()?;
                    Some(input.text(len, "metadata")?)
                }
                other => return Err(RelayError::Meta(other)),
            };
            let len = input.len32()?;
            let payload = input.take(len)?.to_vec();
            RelayedBody::User {
                event,
                metadata,
                encoding,
                payload,
            }
        };
        entries.push(Entry::Broadcast(RelayedBroadcast {
            private: flags & FLAG_PRIVATE != 0,
            topic,
            body,
        }));
    }
    let trailing = bytes.len() - input.at;
    if trailing != 0 {
        return Err(RelayError::Trailing(trailing));
    }
    Ok(RelayBatch { origin, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RelayBatch {
        RelayBatch {
            origin: 0x0102_0304_0506_0708,
            entries: vec![
                Entry::Broadcast(RelayedBroadcast {
                    private: false,
                    topic: "realtime:room".into(),
                    body: RelayedBody::Json(
                        r#"{"type":"broadcast","event":"e","payload":{"a":"é"}}"#.into(),
                    ),
                }),
                Entry::Broadcast(RelayedBroadcast {
                    private: true,
                    topic: "realtime:room".into(),
                    body: RelayedBody::User {
                        event: "bin".into(),
                        metadata: Some(r#"{"k":1}"#.into()),
                        encoding: PayloadEncoding::Binary,
                        payload: vec![0, 1, 254, 255],
                    },
                }),
                Entry::Presence(RelayedPresence {
                    private: true,
                    topic: "realtime:room".into(),
                    member: 7,
                    key: "user-é".into(),
                    meta: Some(RelayedMeta {
                        phx_ref: "F0000000000000001".into(),
                        payload: r#"{"name":"a"}"#.into(),
                    }),
                }),
                Entry::Hello,
                Entry::Broadcast(RelayedBroadcast {
                    private: false,
                    topic: "realtime:".into(),
                    body: RelayedBody::User {
                        event: String::new(),
                        metadata: None,
                        encoding: PayloadEncoding::Json,
                        payload: br#"{"n":1}"#.to_vec(),
                    },
                }),
                Entry::Presence(RelayedPresence {
                    private: false,
                    topic: "realtime:room".into(),
                    member: u64::MAX,
                    key: String::new(),
                    meta: None,
                }),
            ],
        }
    }

    #[test]
    fn batches_round_trip() {
        let batch = sample();
        let bytes = encode(&batch).unwrap();
        assert_eq!(decode(&bytes).unwrap(), batch);
        assert_eq!(origin(&bytes).unwrap(), batch.origin);
        let empty = RelayBatch {
            origin: 9,
            entries: vec![],
        };
        assert_eq!(decode(&encode(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let batch = RelayBatch {
            origin: 7,
            entries: vec![
                Entry::Broadcast(RelayedBroadcast {
                    private: true,
                    topic: "t".into(),
                    body: RelayedBody::Json("{}".into()),
                }),
                Entry::Presence(RelayedPresence {
                    private: false,
                    topic: "t".into(),
                    member: 3,
                    key: "k".into(),
                    meta: Some(RelayedMeta {
                        phx_ref: "r".into(),
                        payload: "{}".into(),
                    }),
                }),
                Entry::Presence(RelayedPresence {
                    private: true,
                    topic: "t".into(),
                    member: 3,
                    key: "k".into(),
                    meta: None,
                }),
                Entry::Hello,
            ],
        };
        let want = [
            1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 4, // version, origin, count
            1, 0, 1, b't', // flags (private), topic
            0, 0, 0, 2, b'{', b'}', // JSON body
            4, 0, 1, b't', 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 1,
            b'k', // presence: track member 3 key k
            0, 1, b'r', 0, 0, 0, 2, b'{', b'}', // phx_ref, payload
            5, 0, 1, b't', 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 1, b'k', // private untrack
            8, 0, 0, // hello
        ];
        assert_eq!(encode(&batch).unwrap(), want);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            let err = decode(&bytes[..n]).unwrap_err();
            assert!(
                matches!(err, RelayError::Truncated { .. }),
                "prefix of {n} bytes: {err:?}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected_without_panics() {
        let good = encode(&sample()).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(RelayError::Trailing(1)));
        let mut version = good.clone();
        version[0] = 2;
        assert_eq!(decode(&version), Err(RelayError::Version(2)));
        assert_eq!(origin(&version), Err(RelayError::Version(2)));
        let mut flags = good.clone();
        flags[11] = 0x80;
        assert_eq!(decode(&flags), Err(RelayError::Flags(0x80)));
        for bad in [FLAG_USER | FLAG_PRESENCE, FLAG_HELLO | FLAG_PRIVATE, 16] {
            let mut b = encode_header(1, 1);
            b.extend_from_slice(&[bad, 0, 0]);
            assert_eq!(decode(&b), Err(RelayError::Flags(bad)));
        }
        let mut op = encode_header(1, 1);
        op.extend_from_slice(&[FLAG_PRESENCE, 0, 0, 3]);
        assert_eq!(decode(&op), Err(RelayError::Op(3)));
        // A count far larger than the input holds.
        let huge = encode_header(1, u16::MAX);
        assert!(matches!(decode(&huge), Err(RelayError::Truncated { .. })));
        // Invalid UTF-8 in the topic.
        let mut utf8 = encode_header(1, 1);
        utf8.extend_from_slice(&[0, 0, 1, 0xff, 0, 0, 0, 0]);
        assert_eq!(decode(&utf8), Err(RelayError::Utf8("topic")));
        // Every single-byte corruption decodes or fails cleanly.
        for i in 0..good.len() {
            for v in [0u8, 1, 2, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = decode(&b);
            }
        }
        // Pseudo-random input.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..512 {
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            let _ = decode(&input);
        }
    }

    #[test]
    fn fields_too_long_for_their_prefix_are_refused() {
        let b = Entry::Broadcast(RelayedBroadcast {
            private: false,
            topic: "x".repeat(usize::from(u16::MAX) + 1),
            body: RelayedBody::Json("{}".into()),
        });
        let mut out = Vec::new();
        assert_eq!(
            encode_entry(&b, &mut out),
            Err(RelayError::TooLong("topic"))
        );
        let p = Entry::Presence(RelayedPresence {
            private: false,
            topic: "t".into(),
            member: 1,
            key: "k".repeat(usize::from(u16::MAX) + 1),
            meta: None,
        });
        assert_eq!(encode_entry(&p, &mut out), Err(RelayError::TooLong("key")));
    }
}
