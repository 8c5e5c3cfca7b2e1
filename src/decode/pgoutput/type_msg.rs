//! Type (`'Y'`): names a non-built-in data type before a Relation message uses it.
//!
//! Only the wire layout lives here; remembering type names is `relation_cache.rs`'s job.

use super::DecodeError;
use super::reader::{Reader, put_cstr};

/// A Type message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeMessage<'a> {
    /// Type OID.
    pub oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: &'a str,
    /// Type name.
    pub name: &'a str,
}

impl<'a> TypeMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'Y';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(TypeMessage {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        })
    }

    /// Appends the whole message, tag included.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.oid.to_be_bytes());
        put_cstr(out, self.namespace);
        put_cstr(out, self.name);
    }
}
