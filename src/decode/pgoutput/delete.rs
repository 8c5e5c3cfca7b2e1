//! Delete (`'D'`): a removed row, identified by its old key or whole old row.
//!
//! Only the wire layout lives here; building the JSON row is the decoder's job.

use super::DecodeError;
use super::reader::Reader;
use super::tuple::OldTuple;

/// A Delete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteMessage<'a> {
    /// OID of the relation (announced earlier by a Relation message).
    pub relation_oid: u32,
    /// The old key (`'K'`) or old row (`'O'`, `REPLICA IDENTITY FULL`).
    pub old: OldTuple<'a>,
}

impl<'a> DeleteMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'D';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let relation_oid = r.u32()?;
        let marker = r.u8()?;
        let old = OldTuple::decode_after(marker, r)?;
        Ok(DeleteMessage { relation_oid, old })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.relation_oid.to_be_bytes());
        self.old.encode(out);
    }
}
