//! Message (`'M'`): a logical decoding message written with `pg_logical_emit_message`.
//!
//! Only the wire layout lives here; the decoder passes the message on untouched.

use super::DecodeError;
use super::reader::{Reader, put_cstr};

/// A logical decoding message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Flags; bit 0 ([`LogicalMessage::TRANSACTIONAL`]) marks a transactional message.
    pub flags: u8,
    /// LSN of the message.
    pub lsn: u64,
    /// Prefix chosen by the writer.
    pub prefix: &'a str,
    /// Content bytes.
    pub content: &'a [u8],
}

impl<'a> LogicalMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'M';
    /// Flag bit of a transactional message.
    pub const TRANSACTIONAL: u8 = 1;

    /// Whether the message was emitted as part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.flags & Self::TRANSACTIONAL != 0
    }

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        let lsn = r.u64()?;
        let prefix = r.cstr()?;
        let len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        let content = r.bytes(len)?;
        Ok(LogicalMessage {
            flags,
            lsn,
            prefix,
            content,
        })
    }

    /// Appends the whole message, tag included (content over 4 GiB does not read back).
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.push(self.flags);
        out.extend_from_slice(&self.lsn.to_be_bytes());
        put_cstr(out, self.prefix);
        let len = u32::try_from(self.content.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.content);
    }
}
