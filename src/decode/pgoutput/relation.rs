//! Relation (`'R'`): describes a table's columns before the first change to it in a stream
//! (and again whenever its definition changes).
//!
//! Only the wire layout lives here; caching the description is `relation_cache.rs`'s job.

use super::DecodeError;
use super::reader::{Reader, put_cstr};

/// A Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage<'a> {
    /// Relation OID.
    pub oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: &'a str,
    /// Table name.
    pub name: &'a str,
    /// Replica identity setting (`relreplident`): `d`, `n`, `f` or `i`.
    pub replica_identity: u8,
    /// Columns in table order.
    pub columns: Vec<RelationColumn<'a>>,
}

/// One column of a Relation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Flags; bit 0 ([`RelationColumn::FLAG_KEY`]) marks a replica identity key column.
    pub flags: u8,
    /// Column name.
    pub name: &'a str,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

impl RelationColumn<'_> {
    /// Flag bit of a key column.
    pub const FLAG_KEY: u8 = 1;

    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & Self::FLAG_KEY != 0
    }
}

impl<'a> RelationMessage<'a> {
    /// Tag byte.
    pub const TAG: u8 = b'R';

    /// Reads the fields after the tag.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let oid = r.u32()?;
        let namespace = r.cstr()?;
        let name = r.cstr()?;
        let replica_identity = r.u8()?;
        let count = usize::from(r.u16()?);
        // A column takes at least 10 bytes: never reserve more than the input could hold.
        let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
        for _ in 0..count {
            columns.push(RelationColumn {
                flags: r.u8()?,
                name: r.cstr()?,
                type_oid: r.u32()?,
                type_modifier: r.i32()?,
            });
        }
        Ok(RelationMessage {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// Appends the whole message, tag included (at most 65,535 columns are written).
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(Self::TAG);
        out.extend_from_slice(&self.oid.to_be_bytes());
        put_cstr(out, self.namespace);
        put_cstr(out, self.name);
        out.push(self.replica_identity);
        let count = u16::try_from(self.columns.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for column in self.columns.iter().take(usize::from(count)) {
            out.push(column.flags);
            put_cstr(out, column.name);
            out.extend_from_slice(&column.type_oid.to_be_bytes());
            out.extend_from_slice(&column.type_modifier.to_be_bytes());
        }
    }
}
