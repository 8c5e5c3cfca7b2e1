//! Commit (`'C'`): closes the transaction opened by the last Begin.
//!
//! Only the wire layout lives here; closing the transaction is the decoder's job.

use super::DecodeError;
use super::reader::Reader;

/// A Commit message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMessage {
    /// Flags; currently always 0.
    pub flags: u8,
    /// LSN of the commit record (equals the Begin's `final_lsn`).
    pub commit_lsn: u64,
    /// LSN just past the transaction: the position to confirm once it is processed.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_ts: i64,
}

impl CommitMessage {
    /// Tag byte.
    pub const TAG: u8 = b'C';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(CommitMessage {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_ts: r.i64()?,
        })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.push(self.flags);
        out.extend_from_slice(&self.commit_lsn.to_be_bytes());
        out.extend_from_slice(&self.end_lsn.to_be_bytes());
        out.extend_from_slice(&self.commit_ts.to_be_bytes());
    }
}
