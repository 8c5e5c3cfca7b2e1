//! Begin (`'B'`): opens a transaction and announces its commit LSN, time and xid.
//!
//! Only the wire layout lives here; opening the transaction is the decoder's job.

use super::DecodeError;
use super::reader::Reader;

/// A Begin message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginMessage {
    /// LSN of the transaction's commit record; walcast's cursor LSN for its changes.
    pub final_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_ts: i64,
    /// Transaction id.
    pub xid: u32,
}

impl BeginMessage {
    /// Tag byte.
    pub const TAG: u8 = b'B';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(BeginMessage {
            final_lsn: r.u64()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.final_lsn.to_be_bytes());
        out.extend_from_slice(&self.commit_ts.to_be_bytes());
        out.extend_from_slice(&self.xid.to_be_bytes());
    }
}
