//! Truncate (`'T'`): one `TRUNCATE` statement, covering one or more relations.
//!
//! Only the wire layout lives here; turning it into changes is the decoder's job.

use super::DecodeError;
use super::reader::Reader;

/// A Truncate message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateMessage {
    /// Option bits: 1 for `CASCADE`, 2 for `RESTART IDENTITY`.
    pub options: u8,
    /// OIDs of the truncated relations.
    pub relation_oids: Vec<u32>,
}

impl TruncateMessage {
    /// Tag byte.
    pub const TAG: u8 = b'T';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = r.u32()?;
        let options = r.u8()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        // An OID takes 4 bytes: never reserve more than the input could hold.
        let mut relation_oids = Vec::with_capacity(count.min(r.remaining() / 4));
        for _ in 0..count {
            relation_oids.push(r.u32()?);
        }
        Ok(TruncateMessage {
            options,
            relation_oids,
        })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        let count = u32::try_from(self.relation_oids.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        out.push(self.options);
        for oid in &self.relation_oids {
            out.extend_from_slice(&oid.to_be_bytes());
        }
    }
}
