//! Update (`'U'`): a changed row, with the old key or old row when the replica identity sends it.
//!
//! Only the wire layout lives here; building the JSON rows is the decoder's job.

use super::DecodeError;
use super::reader::Reader;
use super::tuple::{NEW_TUPLE, OldTuple, TupleData};

/// An Update message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateMessage<'a> {
    /// OID of the relation (announced earlier by a Relation message).
    pub relation_oid: u32,
    /// The old key (`'K'`, sent when the key changed) or old row (`'O'`, `REPLICA IDENTITY FULL`).
    pub old: Option<OldTuple<'a>>,
    /// The new row.
    pub new: TupleData<'a>,
}

impl<'a> UpdateMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'U';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let relation_oid = r.u32()?;
        let mut marker = r.u8()?;
        let old = if marker == OldTuple::KEY || marker == OldTuple::FULL {
            let old = OldTuple::decode_after(marker, r)?;
            marker = r.u8()?;
            Some(old)
        } else {
            None
        };
        if marker != NEW_TUPLE {
            return Err(DecodeError::UnexpectedByte {
                message: r.message(),
                expected: if old.is_some() {
                    "'N'"
                } else {
                    "'K', 'O' or 'N'"
                },
                found: marker,
            });
        }
        let new = TupleData::decode(r)?;
        Ok(UpdateMessage {
            relation_oid,
            old,
            new,
        })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.relation_oid.to_be_bytes());
        if let Some(old) = &self.old {
            old.encode(out);
        }
        out.push(NEW_TUPLE);
        self.new.encode(out);
    }
}
