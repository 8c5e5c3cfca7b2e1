//! Insert (`'I'`): a new row.
//!
//! Only the wire layout lives here; building the JSON row is the decoder's job.

use super::DecodeError;
use super::reader::Reader;
use super::tuple::{NEW_TUPLE, TupleData, decode_new};

/// An Insert message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertMessage<'a> {
    /// OID of the relation (announced earlier by a Relation message).
    pub relation_oid: u32,
    /// The new row.
    pub new: TupleData<'a>,
}

impl<'a> InsertMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'I';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let relation_oid = r.u32()?;
        let new = decode_new(r)?;
        Ok(InsertMessage { relation_oid, new })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.relation_oid.to_be_bytes());
        out.push(NEW_TUPLE);
        self.new.encode(out);
    }
}
