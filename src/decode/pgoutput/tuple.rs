//! TupleData: the column values of one row image inside Insert, Update and Delete messages.
//!
//! Values are borrowed from the message bytes. Only the text format is decoded; a binary
//! column (`'b'`, never sent unless the subscription asks for it) is an error. This module does
//! not interpret values: turning text into JSON is `value.rs`'s job.

use super::DecodeError;
use super::reader::Reader;

/// Tag of a NULL column.
const KIND_NULL: u8 = b'n';
/// Tag of an unchanged TOAST column (value not sent).
const KIND_UNCHANGED_TOAST: u8 = b'u';
/// Tag of a text-format column.
const KIND_TEXT: u8 = b't';

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// SQL NULL (also sent for non-key columns of a key-only old tuple).
    Null,
    /// An unchanged TOAST value: Postgres did not send it.
    UnchangedToast,
    /// The value in Postgres text output format (bytes as sent; normally UTF-8).
    Text(&'a [u8]),
}

/// A row image: one value per column of the relation, in column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData<'a> {
    /// Column values.
    pub columns: Vec<TupleValue<'a>>,
}

impl<'a> TupleData<'a> {
    /// Reads a TupleData (column count, then each column).
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let count = usize::from(r.u16()?);
        // Each column takes at least one byte: never reserve more than the input could hold.
        let mut columns = Vec::with_capacity(count.min(r.remaining()));
        for _ in 0..count {
            let value = match r.u8()? {
                KIND_NULL => TupleValue::Null,
                KIND_UNCHANGED_TOAST => TupleValue::UnchangedToast,
                KIND_TEXT => {
                    let len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
                    TupleValue::Text(r.bytes(len)?)
                }
                other => return Err(DecodeError::UnsupportedTupleFormat(other)),
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }

    /// Appends the wire form (column count, then each column).
    ///
    /// More than 65,535 columns or a value over 4 GiB cannot be represented; the count and
    /// lengths are then clamped and the output does not read back (tests never do this).
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let count = u16::try_from(self.columns.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for value in self.columns.iter().take(usize::from(count)) {
            match value {
                TupleValue::Null => out.push(KIND_NULL),
                TupleValue::UnchangedToast => out.push(KIND_UNCHANGED_TOAST),
                TupleValue::Text(bytes) => {
                    out.push(KIND_TEXT);
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
    }
}

/// The old row image of an Update or Delete, as chosen by the table's replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `'K'`: only the replica identity key columns carry values; the others are NULL.
    Key(TupleData<'a>),
    /// `'O'`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    /// Marker byte of a key-only old tuple.
    pub const KEY: u8 = b'K';
    /// Marker byte of a full old tuple.
    pub const FULL: u8 = b'O';

    /// Reads the tuple that follows marker byte `marker` (`'K'` or `'O'`, already consumed).
    pub fn decode_after(marker: u8, r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match marker {
            Self::KEY => Ok(OldTuple::Key(TupleData::decode(r)?)),
            Self::FULL => Ok(OldTuple::Full(TupleData::decode(r)?)),
            found => Err(DecodeError::UnexpectedByte {
                message: r.message(),
                expected: "'K' or 'O'",
                found,
            }),
        }
    }

    /// Appends the marker byte and the tuple.
    #[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (marker, tuple) = match self {
            OldTuple::Key(t) => (Self::KEY, t),
            OldTuple::Full(t) => (Self::FULL, t),
        };
        out.push(marker);
        tuple.encode(out);
    }

    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }

    /// Whether only the key columns are meaningful.
    pub fn is_key_only(&self) -> bool {
        matches!(self, OldTuple::Key(_))
    }
}

/// Marker byte that precedes a new tuple.
pub const NEW_TUPLE: u8 = b'N';

/// Reads the marker byte that must precede a new tuple and the tuple itself.
pub fn decode_new<'a>(r: &mut Reader<'a>) -> Result<TupleData<'a>, DecodeError> {
    match r.u8()? {
        NEW_TUPLE => TupleData::decode(r),
        found => Err(DecodeError::UnexpectedByte {
            message: r.message(),
            expected: "'N'",
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_all_kinds() {
        let tuple = TupleData {
            columns: vec![
                TupleValue::Text(b"42"),
                TupleValue::Null,
                TupleValue::UnchangedToast,
                TupleValue::Text(b""),
            ],
        };
        let mut bytes = Vec::new();
        tuple.encode(&mut bytes);
        let mut r = Reader::new(&bytes, "Tuple");
        assert_eq!(TupleData::decode(&mut r), Ok(tuple));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn binary_columns_are_unsupported() {
        let bytes = [0, 1, b'b', 0, 0, 0, 1, 7];
        let mut r = Reader::new(&bytes, "Tuple");
        assert_eq!(
            TupleData::decode(&mut r),
            Err(DecodeError::UnsupportedTupleFormat(b'b'))
        );
    }

    #[test]
    fn huge_counts_do_not_preallocate() {
        let bytes = [0xff, 0xff, b'n'];
        let mut r = Reader::new(&bytes, "Tuple");
        assert!(matches!(
            TupleData::decode(&mut r),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
