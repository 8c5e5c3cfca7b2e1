//! A checked big-endian byte reader over one pgoutput message.
//!
//! Every read checks the remaining length first and reports a [`DecodeError`] instead of
//! panicking; strings and byte runs are borrowed from the input, never copied. The reader only
//! reads: it knows nothing about message layouts.

use super::DecodeError;

/// Reads fields from the front of a byte slice, consuming them.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// Bytes not read yet.
    rest: &'a [u8],
    /// Name of the message being read, used in errors (e.g. `Insert`).
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`; `message` names the message in errors.
    pub fn new(bytes: &'a [u8], message: &'static str) -> Self {
        Reader {
            rest: bytes,
            message,
        }
    }

    /// Name of the message being read.
    pub fn message(&self) -> &'static str {
        self.message
    }

    /// Number of bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The error for a field of `needed` bytes that does not fit.
    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            needed,
            remaining: self.rest.len(),
        }
    }

    /// Reads exactly `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(N))?;
        self.rest = tail;
        Ok(*head)
    }

    /// Reads `n` bytes, borrowed from the input.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| self.truncated(n))?;
        self.rest = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, tail) = self.rest.split_first().ok_or_else(|| self.truncated(1))?;
        self.rest = tail;
        Ok(first)
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Reads a big-endian `i32`.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Reads a big-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    /// Reads a NUL-terminated UTF-8 string (without the NUL), borrowed from the input.
    pub fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let mut parts = self.rest.splitn(2, |&b| b == 0);
        let text = parts.next().unwrap_or_default();
        let tail = parts.next().ok_or(DecodeError::UnterminatedString {
            message: self.message,
        })?;
        self.rest = tail;
        std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
        })
    }

    /// Checks that the whole message was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                message: self.message,
                extra: self.rest.len(),
            })
        }
    }
}

/// Appends `s` and a terminating NUL (the pgoutput `String` type).
///
/// Only for building messages in tests and tools: a string containing NUL would not read back.
#[cfg_attr(not(test), allow(dead_code))] // Used to build test input.
pub fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_order() {
        let mut bytes = vec![7u8, 0, 2, 0, 0, 0, 3];
        bytes.extend_from_slice(&(-5i64).to_be_bytes());
        put_cstr(&mut bytes, "héllo");
        bytes.push(9);
        let mut r = Reader::new(&bytes, "Test");
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.cstr(), Ok("héllo"));
        assert!(r.finish().is_err());
        assert_eq!(r.bytes(1), Ok(&[9u8][..]));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            r.u32(),
            Err(DecodeError::Truncated {
                message: "Test",
                needed: 4,
                remaining: 0
            })
        );
    }

    #[test]
    fn rejects_bad_strings() {
        let mut r = Reader::new(b"abc", "Test");
        assert_eq!(
            r.cstr(),
            Err(DecodeError::UnterminatedString { message: "Test" })
        );
        let mut r = Reader::new(&[0xff, 0xfe, 0], "Test");
        assert_eq!(r.cstr(), Err(DecodeError::InvalidUtf8 { message: "Test" }));
    }
}
