//! Origin (`'O'`): names the replication origin a transaction came from.
//!
//! walcast ignores origins; the message is parsed only so the stream stays in sync.

use super::DecodeError;
use super::reader::{Reader, put_cstr};

/// An Origin message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginMessage<'a> {
    /// LSN of the commit on the origin server.
    pub origin_lsn: u64,
    /// Origin name.
    pub name: &'a str,
}

impl<'a> OriginMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'O';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(OriginMessage {
            origin_lsn: r.u64()?,
            name: r.cstr()?,
        })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.origin_lsn.to_be_bytes());
        put_cstr(out, self.name);
    }
}
