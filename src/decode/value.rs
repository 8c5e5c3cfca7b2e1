//! Conversion of one column value from Postgres text output format to JSON, chosen by type OID.
//!
//! Numbers, booleans, JSON documents, timestamps and one-dimensional arrays of common element
//! types become native JSON; everything else (and anything that does not parse as its type
//! claims) stays the exact text Postgres sent, as a JSON string. Conversion is total: it never
//! fails and never panics, it only falls back to the string.

use std::fmt::Write as _;

use chrono::{Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::{Number, Value};

/// Built-in type OIDs (`pg_type.oid`) that walcast converts specially.
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `int8` / `bigint`.
    pub const INT8: u32 = 20;
    /// `int2` / `smallint`.
    pub const INT2: u32 = 21;
    /// `int4` / `integer`.
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `oid`.
    pub const OID: u32 = 26;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `float4` / `real`.
    pub const FLOAT4: u32 = 700;
    /// `float8` / `double precision`.
    pub const FLOAT8: u32 = 701;
    /// `bool[]`.
    pub const BOOL_ARRAY: u32 = 1000;
    /// `int2[]`.
    pub const INT2_ARRAY: u32 = 1005;
    /// `int4[]`.
    pub const INT4_ARRAY: u32 = 1007;
    /// `text[]`.
    pub const TEXT_ARRAY: u32 = 1009;
    /// `varchar[]`.
    pub const VARCHAR_ARRAY: u32 = 1015;
    /// `int8[]`.
    pub const INT8_ARRAY: u32 = 1016;
    /// `float8[]`.
    pub const FLOAT8_ARRAY: u32 = 1022;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `timestamp` (without time zone).
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric[]`.
    pub const NUMERIC_ARRAY: u32 = 1231;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
    /// `uuid[]`.
    pub const UUID_ARRAY: u32 = 2951;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
}

/// Converts a column value in Postgres text format to JSON according to its type OID.
///
/// See the module documentation for the rules; unknown types and unparsable values become
/// `Value::String(text)`.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    match type_oid {
        oid::BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => string(text),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => integer(text),
        oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => number(text),
        oid::JSON | oid::JSONB => json_document(text),
        oid::TIMESTAMPTZ => timestamptz(text).map_or_else(|| string(text), Value::String),
        oid::TIMESTAMP => timestamp(text).map_or_else(|| string(text), Value::String),
        _ => match array_element_type(type_oid) {
            Some(element) => array(element, text).unwrap_or_else(|| string(text)),
            None => string(text),
        },
    }
}

/// How deep a JSON document may nest before walcast sends [`too_deep`] in its place (the
/// parser's recursion limit: deeper documents would risk the stack).
pub const MAX_JSON_DEPTH: usize = 128;

/// A `json`/`jsonb` document as JSON; one nested deeper than [`MAX_JSON_DEPTH`] becomes the
/// [`too_deep`] marker, the same on every endpoint.
fn json_document(text: &str) -> Value {
    match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => too_deep(),
        Err(_) => string(text),
    }
}

/// What is sent for a JSON document nested deeper than [`MAX_JSON_DEPTH`] levels: an object
/// that says so, never the document silently turned into a string.
pub fn too_deep() -> Value {
    let mut m = serde_json::Map::new();
    m.insert("walcast_error".into(), Value::from("json_too_deep"));
    m.insert(
        "message".into(),
        Value::from(format!(
            "this JSON value nests deeper than {MAX_JSON_DEPTH} levels and is not streamed; read the row from the table"
        )),
    );
    Value::Object(m)
}

/// The text unchanged, as a JSON string.
fn string(text: &str) -> Value {
    Value::String(text.to_owned())
}

/// An integer type: a JSON integer when the text is one that fits 64 bits, else the string.
fn integer(text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(n) => Value::Number(n.into()),
        Err(_) => string(text),
    }
}

/// A float or numeric: an integer when it is one, else a finite double, else the string
/// (`NaN`, `Infinity`, out-of-range values, anything unparsable).
///
/// Numerics with more significant digits than a double holds are rounded to the nearest double.
fn number(text: &str) -> Value {
    if let Ok(n) = text.parse::<i64>() {
        return Value::Number(n.into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Value::Number(n.into());
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or_else(|| string(text), Value::Number)
}

/// Element type of the one-dimensional array types converted to JSON arrays.
fn array_element_type(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        oid::BOOL_ARRAY => oid::BOOL,
        oid::INT2_ARRAY => oid::INT2,
        oid::INT4_ARRAY => oid::INT4,
        oid::INT8_ARRAY => oid::INT8,
        oid::TEXT_ARRAY => oid::TEXT,
        oid::VARCHAR_ARRAY => oid::VARCHAR,
        oid::FLOAT8_ARRAY => oid::FLOAT8,
        oid::NUMERIC_ARRAY => oid::NUMERIC,
        oid::UUID_ARRAY => oid::UUID,
        _ => return None,
    })
}

/// Parses a one-dimensional array literal (`{a,"b c",NULL}`) into a JSON array, converting each
/// element with `element`. `None` for multi-dimensional, bounded (`[1:2]={...}`) or malformed text.
fn array(element: u32, text: &str) -> Option<Value> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.trim_ascii().is_empty() {
        return Some(Value::Array(Vec::new()));
    }
    let bytes = inner.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        pos = skip_whitespace(bytes, pos);
        match bytes.get(pos)? {
            // A nested array: more than one dimension.
            b'{' => return None,
            b'"' => {
                let (item, next) = quoted_element(inner, pos.checked_add(1)?)?;
                items.push(text_to_json(element, &item));
                pos = next;
            }
            _ => {
                let start = pos;
                while let Some(&b) = bytes.get(pos) {
                    match b {
                        b',' => break,
                        b'"' | b'{' | b'}' | b'\\' => return None,
                        _ => pos += 1,
                    }
                }
                let raw = inner.get(start..pos)?.trim_ascii_end();
                if raw.is_empty() {
                    // `{1,,2}`: an element must be quoted to be empty.
                    return None;
                }
                if raw.eq_ignore_ascii_case("NULL") {
                    items.push(Value::Null);
                } else {
                    items.push(text_to_json(element, raw));
                }
            }
        }
        pos = skip_whitespace(bytes, pos);
        match bytes.get(pos) {
            None => return Some(Value::Array(items)),
            Some(b',') => pos += 1,
            Some(_) => return None,
        }
    }
}

/// Index of the first byte at or after `pos` that is not ASCII whitespace.
fn skip_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
        pos += 1;
    }
    pos
}

/// Reads a double-quoted array element whose content starts at `start` (just past the opening
/// quote), undoing backslash escapes. Returns the content and the index past the closing quote.
fn quoted_element(inner: &str, start: usize) -> Option<(std::borrow::Cow<'_, str>, usize)> {
    let bytes = inner.as_bytes();
    let mut pos = start;
    // Fast path: no escapes, borrow the content.
    loop {
        match bytes.get(pos)? {
            b'"' => return Some((inner.get(start..pos)?.into(), pos + 1)),
            b'\\' => break,
            _ => pos += 1,
        }
    }
    let mut unescaped = bytes.get(start..pos)?.to_vec();
    loop {
        match *bytes.get(pos)? {
            b'"' => {
                let text = String::from_utf8(unescaped).ok()?;
                return Some((text.into(), pos + 1));
            }
            b'\\' => {
                unescaped.push(*bytes.get(pos + 1)?);
                pos += 2;
            }
            b => {
                unescaped.push(b);
                pos += 1;
            }
        }
    }
}

/// Converts `timestamptz` text (`2026-11-23 18:01:59.123456+05:30`) to RFC 3339 in UTC
/// (`2026-11-23T12:31:59.123456Z`), with only the fractional digits needed.
fn timestamptz(text: &str) -> Option<String> {
    let (local, rest) = naive_datetime(text.as_bytes())?;
    let offset = utc_offset(rest)?;
    let utc = local.and_local_timezone(offset).single()?.naive_utc();
    format_datetime(&utc, true)
}

/// Normalises `timestamp` text (`2026-11-23 18:01:59.123456`) to `2026-11-23T18:01:59.123456`.
fn timestamp(text: &str) -> Option<String> {
    let (datetime, rest) = naive_datetime(text.as_bytes())?;
    if !rest.is_empty() {
        return None;
    }
    format_datetime(&datetime, false)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fraction]` (a `T` separator is accepted too) from the front of
/// `s`; returns it and the unparsed rest. Years outside 0000–9999 and `BC` are not handled.
fn naive_datetime(s: &[u8]) -> Option<(NaiveDateTime, &[u8])> {
    let (year, s) = digits(s, 4)?;
    let s = expect(s, b'-')?;
    let (month, s) = digits(s, 2)?;
    let s = expect(s, b'-')?;
    let (day, s) = digits(s, 2)?;
    let s = match s.split_first() {
        Some((b' ' | b'T', rest)) => rest,
        _ => return None,
    };
    let (hour, s) = digits(s, 2)?;
    let s = expect(s, b':')?;
    let (minute, s) = digits(s, 2)?;
    let s = expect(s, b':')?;
    let (second, s) = digits(s, 2)?;
    let (nanos, s) = match expect(s, b'.') {
        Some(after_dot) => {
            let len = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
            if !(1..=9).contains(&len) {
                return None;
            }
            let (fraction, rest) = digits(after_dot, len)?;
            // `len` is 1..=9, so the scale is at most 10^8 and the product below 10^9.
            let scale = 10u32.checked_pow(9 - len as u32)?;
            (fraction.checked_mul(scale)?, rest)
        }
        None => (0, s),
    };
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some((date.and_time(time), s))
}

/// Parses a whole UTC offset `+HH`, `+HH:MM` or `+HH:MM:SS` (or `-`).
fn utc_offset(s: &[u8]) -> Option<FixedOffset> {
    let (sign, s) = match s.split_first()? {
        (b'+', rest) => (1, rest),
        (b'-', rest) => (-1, rest),
        _ => return None,
    };
    let (hours, mut s) = digits(s, 2)?;
    let mut seconds = hours * 3600;
    for unit in [60, 1] {
        if s.is_empty() {
            break;
        }
        let (value, rest) = digits(expect(s, b':')?, 2)?;
        if value >= 60 {
            return None;
        }
        seconds += value * unit;
        s = rest;
    }
    if !s.is_empty() {
        return None;
    }
    FixedOffset::east_opt(sign * i32::try_from(seconds).ok()?)
}

/// Reads exactly `n` (at most 9) ASCII digits from the front of `s` as a number.
fn digits(s: &[u8], n: usize) -> Option<(u32, &[u8])> {
    let (head, rest) = s.split_at_checked(n)?;
    let mut value = 0u32;
    for &b in head {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some((value, rest))
}

/// Strips the byte `expected` from the front of `s`.
fn expect(s: &[u8], expected: u8) -> Option<&[u8]> {
    match s.split_first() {
        Some((&b, rest)) if b == expected => Some(rest),
        _ => None,
    }
}

/// Writes `YYYY-MM-DDTHH:MM:SS[.f]` (plus `Z` when `utc`) with trailing fractional zeros
/// removed. `None` for years outside 0000–9999, which RFC 3339 cannot express.
fn format_datetime(datetime: &NaiveDateTime, utc: bool) -> Option<String> {
    let year = datetime.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = String::with_capacity(32);
    write!(
        out,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        datetime.month(),
        datetime.day(),
        datetime.hour(),
        datetime.minute(),
        datetime.second()
    )
    .ok()?;
    let mut nanos = datetime.nanosecond();
    if nanos >= 1_000_000_000 {
        // A leap second: Postgres never produces one.
        return None;
    }
    if nanos > 0 {
        let mut width = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            width -= 1;
        }
        write!(out, ".{nanos:0width$}").ok()?;
    }
    if utc {
        out.push('Z');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn booleans() {
        assert_eq!(text_to_json(oid::BOOL, "t"), json!(true));
        assert_eq!(text_to_json(oid::BOOL, "f"), json!(false));
        assert_eq!(text_to_json(oid::BOOL, "yes"), json!("yes"));
    }

    #[test]
    fn integers() {
        assert_eq!(text_to_json(oid::INT2, "-32768"), json!(-32768));
        assert_eq!(text_to_json(oid::INT4, "42"), json!(42));
        assert_eq!(
            text_to_json(oid::INT8, "-9223372036854775808"),
            json!(i64::MIN)
        );
        assert_eq!(
            text_to_json(oid::OID, "4294967295"),
            json!(4_294_967_295u32)
        );
        assert_eq!(
            text_to_json(oid::INT8, "9223372036854775808"),
            json!("9223372036854775808")
        );
        assert_eq!(text_to_json(oid::INT4, "12a"), json!("12a"));
        assert_eq!(text_to_json(oid::INT4, ""), json!(""));
    }

    #[test]
    fn floats_and_numerics() {
        assert_eq!(text_to_json(oid::FLOAT8, "1.5"), json!(1.5));
        assert_eq!(text_to_json(oid::FLOAT4, "-0.25"), json!(-0.25));
        assert_eq!(text_to_json(oid::FLOAT8, "1e+100"), json!(1e100));
        assert_eq!(text_to_json(oid::NUMERIC, "100"), json!(100));
        assert_eq!(text_to_json(oid::NUMERIC, "12.50"), json!(12.5));
        assert_eq!(
            text_to_json(oid::NUMERIC, "18446744073709551615"),
            json!(u64::MAX)
        );
        for special in ["NaN", "Infinity", "-Infinity", "1e999", "abc", ""] {
            assert_eq!(
                text_to_json(oid::FLOAT8, special),
                json!(special),
                "{special}"
            );
            assert_eq!(text_to_json(oid::NUMERIC, special), json!(special));
        }
    }

    #[test]
    fn json_documents() {
        assert_eq!(
            text_to_json(oid::JSONB, r#"{"a": [1, null, "x"]}"#),
            json!({"a": [1, null, "x"]})
        );
        assert_eq!(text_to_json(oid::JSON, "3"), json!(3));
        assert_eq!(text_to_json(oid::JSON, "{bad"), json!("{bad"));
        // Deep but within the limit: a document; deeper: the marker, never a string.
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert!(text_to_json(oid::JSONB, &ok).is_array());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(text_to_json(oid::JSONB, &deep), too_deep());
        assert_eq!(
            text_to_json(oid::JSON, &deep)["walcast_error"],
            "json_too_deep"
        );
    }

    #[test]
    fn timestamptz_to_utc_rfc3339() {
        let cases = [
            (
                "2026-11-23 18:01:59.123456+00",
                "2026-11-23T18:01:59.123456Z",
            ),
            ("2026-11-23 18:01:59+00", "2026-11-23T18:01:59Z"),
            ("2026-11-23 18:01:59.5+00", "2026-11-23T18:01:59.5Z"),
            ("2026-11-23 18:01:59.120+00", "2026-11-23T18:01:59.12Z"),
            (
                "2026-11-23 18:01:59.000001+00",
                "2026-11-23T18:01:59.000001Z",
            ),
            ("2026-11-23 18:01:59+05:30", "2026-11-23T12:31:59Z"),
            ("2026-11-23 23:30:00-02", "2026-11-24T01:30:00Z"),
            ("1900-01-01 00:00:00+00:53:28", "1899-12-31T23:06:32Z"),
            ("2024-02-29 00:00:00+01", "2024-02-28T23:00:00Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                text_to_json(oid::TIMESTAMPTZ, input),
                json!(expected),
                "{input}"
            );
        }
        for unparsable in [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "2026-11-23 18:01:59",
            "2026-13-01 00:00:00+00",
            "2026-11-23 18:01:59.+00",
            "2026-11-23 18:01:59.1234567890+00",
            "2026-11-23 18:01:59+5",
            "2026-11-23 18:01:59+05:60",
            "2026-11-23 18:01:59+00 ",
            "12026-11-23 18:01:59+00",
            "9999-12-31 23:00:00-05",
            "2026-11-23 18:01:59+0é",
            "",
        ] {
            assert_eq!(
                text_to_json(oid::TIMESTAMPTZ, unparsable),
                json!(unparsable),
                "{unparsable}"
            );
        }
    }

    #[test]
    fn timestamp_without_zone() {
        assert_eq!(
            text_to_json(oid::TIMESTAMP, "2026-11-23 18:01:59.123456"),
            json!("2026-11-23T18:01:59.123456")
        );
        assert_eq!(
            text_to_json(oid::TIMESTAMP, "2026-11-23 18:01:59"),
            json!("2026-11-23T18:01:59")
        );
        assert_eq!(
            text_to_json(oid::TIMESTAMP, "2026-11-23 18:01:59+00"),
            json!("2026-11-23 18:01:59+00")
        );
        assert_eq!(text_to_json(oid::TIMESTAMP, "infinity"), json!("infinity"));
    }

    #[test]
    fn strings_stay_strings() {
        let uuid = "0190b6f2-3c4d-7e8f-9a0b-1c2d3e4f5a6b";
        assert_eq!(text_to_json(oid::UUID, uuid), json!(uuid));
        for type_oid in [
            oid::TEXT,
            oid::VARCHAR,
            1042,   // bpchar
            19,     // name
            1082,   // date
            1083,   // time
            17,     // bytea
            70_000, // a user-defined type
        ] {
            assert_eq!(text_to_json(type_oid, "a \"b\" ü"), json!("a \"b\" ü"));
        }
    }

    #[test]
    fn one_dimensional_arrays() {
        assert_eq!(text_to_json(oid::INT4_ARRAY, "{}"), json!([]));
        assert_eq!(
            text_to_json(oid::INT4_ARRAY, "{1,-2,NULL}"),
            json!([1, -2, null])
        );
        assert_eq!(
            text_to_json(oid::INT8_ARRAY, "{9223372036854775807}"),
            json!([i64::MAX])
        );
        assert_eq!(text_to_json(oid::INT2_ARRAY, "{1, 2}"), json!([1, 2]));
        assert_eq!(
            text_to_json(oid::BOOL_ARRAY, "{t,f,NULL}"),
            json!([true, false, null])
        );
        assert_eq!(
            text_to_json(oid::FLOAT8_ARRAY, "{1.5,NaN,-Infinity}"),
            json!([1.5, "NaN", "-Infinity"])
        );
        assert_eq!(
            text_to_json(oid::NUMERIC_ARRAY, "{1.10,2}"),
            json!([1.1, 2])
        );
        assert_eq!(
            text_to_json(
                oid::TEXT_ARRAY,
                r#"{plain,"with space","quote \" and \\ backslash","NULL",NULL,"",é,"{x}","a,b"}"#
            ),
            json!([
                "plain",
                "with space",
                "quote \" and \\ backslash",
                "NULL",
                null,
                "",
                "é",
                "{x}",
                "a,b"
            ])
        );
        assert_eq!(text_to_json(oid::VARCHAR_ARRAY, r#"{"\é"}"#), json!(["é"]));
        assert_eq!(
            text_to_json(
                oid::UUID_ARRAY,
                "{0190b6f2-3c4d-7e8f-9a0b-1c2d3e4f5a6b,NULL}"
            ),
            json!(["0190b6f2-3c4d-7e8f-9a0b-1c2d3e4f5a6b", null])
        );
    }

    #[test]
    fn other_arrays_stay_strings() {
        for (type_oid, text) in [
            (oid::INT4_ARRAY, "{{1,2},{3,4}}"),
            (oid::INT4_ARRAY, "[0:1]={1,2}"),
            (oid::INT4_ARRAY, "{1,2"),
            (oid::INT4_ARRAY, "{1,,2}"),
            (oid::INT4_ARRAY, "{1,}"),
            (oid::TEXT_ARRAY, r#"{"unterminated}"#),
            (oid::TEXT_ARRAY, r#"{"a"b}"#),
            (oid::TEXT_ARRAY, r#"{a"b"}"#),
            (oid::TEXT_ARRAY, r#"{"trailing\"}"#),
            (1021, "{1.5}"),
            (1185, "{\"2026-01-01 00:00:00+00\"}"),
            (oid::INT4_ARRAY, ""),
        ] {
            assert_eq!(text_to_json(type_oid, text), json!(text), "{text}");
        }
    }

    #[test]
    fn array_elements_that_do_not_parse_stay_strings() {
        assert_eq!(text_to_json(oid::INT4_ARRAY, "{1,x}"), json!([1, "x"]));
    }
}
