//! Subscription filters: which changes a subscriber wants to see.
//!
//! This module owns the filter model and its matching rules: the Supabase Realtime column filter
//! syntax `column=op.value` ([`Condition`]), and the per-subscription [`Filter`] that combines
//! event types, sources, operations and column conditions. It is pure: no I/O, no async, no
//! clock. Matching runs for every change and every subscriber, so it allocates nothing but the
//! compact texts of rule 4, once per change and column (see "Cost per change"); everything that can be worked out once (numbers,
//! booleans, timestamps in filter values) is parsed when the filter is built.
//!
//! # Filter syntax
//!
//! `column=op.value`, with `op` one of `eq`, `neq`, `lt`, `lte`, `gt`, `gte`, `in`, `like`,
//! `ilike`, `is`, `match`, `imatch`, `isdistinct` (PostgREST's names), optionally prefixed with
//! `not.` to negate it (`status=not.in.(draft,archived)`):
//!
//! - `source=eq.host-1`, `severity=gte.3`, `timestamp=lt.2026-11-23T18:00:00Z`
//! - `event_type=in.(cpu,mem)`; items may be double-quoted to hold `,`, `(`, `)` or spaces:
//!   `source=in.("rack 1,a",host-2)`, with `\"` and `\\` escaping inside quotes. Unquoted items
//!   have surrounding spaces trimmed. At most [`MAX_IN_ITEMS`] items.
//! - `source=like.host-%`, `source=ilike.HOST-_` (SQL `LIKE`: `%` any run, `_` one character,
//!   `\` escapes; `ilike` ignores case).
//! - `source=match.^host-[0-9]+$`, `source=imatch.^HOST` (POSIX-style regular expressions, `~`
//!   and `~*`; at most [`MAX_PATTERN_LEN`] bytes, compiled with a size bound, matched in time
//!   linear in the value).
//! - `data=is.null`, `flag=is.true`, `flag=is.false`, `flag=is.unknown`.
//! - `source=isdistinct.host-1` (`IS DISTINCT FROM`: like `neq`, but a `NULL` row value is
//!   distinct, so it matches).
//!
//! A value may be double-quoted the PostgREST way (`source=eq."a,b"`), with `\"` and `\\`
//! escaping inside the quotes.
//!
//! The column is `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_COLUMN_LEN`] bytes (a Postgres
//! identifier). Everything after the operator's `.` is the value, taken literally.
//!
//! # Matching
//!
//! A missing column never matches. An SQL `NULL` matches only `is.null`, `is.unknown` and
//! `isdistinct` (as in SQL, where a comparison with `NULL` is unknown, and `not.` of unknown is
//! still unknown). Otherwise the row value is compared with the filter value by the first rule
//! that applies:
//!
//! 1. row value is a JSON number and the filter value is a number: numeric comparison;
//! 2. row value is a boolean and the filter value is `true` or `false`: `false < true`;
//! 3. row value is a string, and both it and the filter value are timestamps (RFC 3339, or
//!    Postgres' `2026-11-23 18:00:00+00`): chronological comparison (time zones are taken into
//!    account);
//! 4. row value is a string, and both it and the filter value are UUIDs: compared as UUIDs
//!    (case does not matter);
//! 5. otherwise the row value's text (a string as is; anything else as compact JSON, the way
//!    walcast sends it) is compared with the filter text byte by byte.
//!
//! `in` matches when the row value equals any item under these rules. Patterns (`like`,
//! `ilike`, `match`, `imatch`) look at the value's text as rule 5 defines it. Text comparison is
//! byte order (Postgres' `C` collation); a column with another collation may order differently.
//!
//! # Cost per change
//!
//! Rule 4 needs a value's compact JSON text. The hub keeps one [`ColumnTexts`] per change:
//! the text of a column is made on first use and shared by every condition of every subscriber
//! that looks at that change ([`Filter::matches_with`]), so a large `jsonb` value is serialized
//! at most once per change however many filters and clients compare it. Without a cache
//! ([`Filter::matches`]), a comparison writes the text only up to its first difference with
//! the filter value.

use std::cmp::Ordering;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::decode::{Change, Column, Operation, Row};

/// Longest column name accepted, in bytes (Postgres identifiers are at most 63 bytes).
pub const MAX_COLUMN_LEN: usize = 63;

/// Most items an `in.(...)` list may hold.
pub const MAX_IN_ITEMS: usize = 100;

/// Longest `like`/`ilike`/`match`/`imatch` pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 512;

/// Largest compiled pattern, and largest lazy-DFA cache per pattern (the regex engine's size
/// limits, in bytes): bounds the memory a connection's patterns hold (at most
/// `MAX_CONDITIONS` of them) and the per-byte cost of matching.
const PATTERN_SIZE_LIMIT: usize = 64 << 10;

/// Why a filter string was rejected. Every message names the offending filter and says what is
/// expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter string is empty.
    #[error("empty filter: expected `column=op.value`, e.g. `source=eq.host-1`")]
    Empty,
    /// No `=` between column and operator.
    #[error("filter `{filter}` has no `=`: expected `column=op.value`, e.g. `source=eq.host-1`")]
    MissingEquals {
        /// The filter as given.
        filter: String,
    },
    /// Nothing before the `=`.
    #[error("filter `{filter}` has no column name before `=`: expected `column=op.value`")]
    EmptyColumn {
        /// The filter as given.
        filter: String,
    },
    /// The column name is longer than [`MAX_COLUMN_LEN`] bytes.
    #[error("column name in filter `{filter}` is {len} bytes long: at most 63 bytes are allowed")]
    ColumnTooLong {
        /// The filter as given.
        filter: String,
        /// Length of the column name in bytes.
        len: usize,
    },
    /// The column name has characters outside `[A-Za-z0-9_]` or starts with a digit.
    #[error(
        "invalid column name `{column}` in filter `{filter}`: use a letter or `_` followed by \
         letters, digits or `_`"
    )]
    InvalidColumn {
        /// The filter as given.
        filter: String,
        /// The rejected column name.
        column: String,
    },
    /// No `op.` after the `=`.
    #[error(
        "filter `{filter}` has no operator: expected `column=op.value` with op one of eq, neq, \
         lt, lte, gt, gte, in, like, ilike, is, match, imatch or isdistinct"
    )]
    MissingOperator {
        /// The filter as given.
        filter: String,
    },
    /// The operator is not one walcast knows.
    #[error(
        "unknown operator `{op}` in filter `{filter}`: use eq, neq, lt, lte, gt, gte, in, like, \
         ilike, is, match, imatch or isdistinct (each may follow `not.`)"
    )]
    UnknownOperator {
        /// The filter as given.
        filter: String,
        /// The rejected operator.
        op: String,
    },
    /// An `in` value that is not wrapped in parentheses.
    #[error("`in` filter `{filter}` needs a parenthesised list: expected `column=in.(a,b,c)`")]
    InListSyntax {
        /// The filter as given.
        filter: String,
    },
    /// `in.()`.
    #[error("the `in` list of filter `{filter}` is empty: give between 1 and 100 items")]
    EmptyInList {
        /// The filter as given.
        filter: String,
    },
    /// More than [`MAX_IN_ITEMS`] items.
    #[error("the `in` list of filter `{filter}` has more than 100 items: at most 100 are allowed")]
    TooManyInItems {
        /// The filter as given.
        filter: String,
    },
    /// An unquoted item with nothing in it, as in `in.(a,,b)` or `in.(a,)`.
    #[error(
        "item {item} of the `in` list in filter `{filter}` is empty: write `\"\"` for an empty \
         string"
    )]
    EmptyInItem {
        /// The filter as given.
        filter: String,
        /// 1-based position of the item.
        item: usize,
    },
    /// A quoted item whose closing `"` is missing.
    #[error(
        "item {item} of the `in` list in filter `{filter}` opens a `\"` that is never closed: \
         end the item with `\"`"
    )]
    UnterminatedQuote {
        /// The filter as given.
        filter: String,
        /// 1-based position of the item.
        item: usize,
    },
    /// Something other than `,` or the end of the list after a quoted item.
    #[error(
        "unexpected `{found}` after the closing quote of item {item} in filter `{filter}`: \
         expected `,` or `)`"
    )]
    TextAfterQuote {
        /// The filter as given.
        filter: String,
        /// 1-based position of the item.
        item: usize,
        /// The first unexpected character.
        found: char,
    },
    /// A `like`/`match` pattern that cannot be compiled or is too long.
    #[error("invalid pattern in filter `{filter}`: {reason}")]
    InvalidPattern {
        /// The filter as given.
        filter: String,
        /// Why.
        reason: String,
    },
    /// `is.` followed by something other than `null`, `true`, `false`, `unknown`.
    #[error("`is` filter `{filter}` takes null, true, false or unknown")]
    InvalidIsValue {
        /// The filter as given.
        filter: String,
    },
    /// A quoted value whose closing `"` is missing or followed by more text.
    #[error("the quoted value of filter `{filter}` is not closed properly: end it with `\"`")]
    BadQuotedValue {
        /// The filter as given.
        filter: String,
    },
    /// A `"` inside an unquoted item.
    #[error(
        "item {item} of the `in` list in filter `{filter}` has a `\"` inside it: put the whole \
         item in double quotes and write an inner quote as `\\\"`"
    )]
    StrayQuote {
        /// The filter as given.
        filter: String,
        /// 1-based position of the item.
        item: usize,
    },
}

impl FilterError {
    /// The stable error code sent to clients for every filter error: `invalid_filter`.
    pub fn code(&self) -> &'static str {
        "invalid_filter"
    }
}

/// A comparison operator of the filter syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterOp {
    /// `eq`: equal.
    Eq,
    /// `neq`: not equal.
    Neq,
    /// `lt`: less than.
    Lt,
    /// `lte`: less than or equal.
    Lte,
    /// `gt`: greater than.
    Gt,
    /// `gte`: greater than or equal.
    Gte,
    /// `in`: equal to one item of a list.
    In,
    /// `like`: SQL `LIKE` pattern.
    Like,
    /// `ilike`: `LIKE` ignoring case.
    Ilike,
    /// `is`: `IS NULL`, `IS TRUE`, `IS FALSE`, `IS UNKNOWN`.
    Is,
    /// `match`: regular expression (`~`).
    Match,
    /// `imatch`: regular expression ignoring case (`~*`).
    Imatch,
    /// `isdistinct`: `IS DISTINCT FROM`.
    IsDistinct,
}

impl FilterOp {
    /// The operator as written in a filter: `eq`, `neq`, `lt`, `lte`, `gt`, `gte`, `in`.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterOp::Eq => "eq",
            FilterOp::Neq => "neq",
            FilterOp::Lt => "lt",
            FilterOp::Lte => "lte",
            FilterOp::Gt => "gt",
            FilterOp::Gte => "gte",
            FilterOp::In => "in",
            FilterOp::Like => "like",
            FilterOp::Ilike => "ilike",
            FilterOp::Is => "is",
            FilterOp::Match => "match",
            FilterOp::Imatch => "imatch",
            FilterOp::IsDistinct => "isdistinct",
        }
    }

    /// Looks an operator up by its (lower-case) name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => FilterOp::Eq,
            "neq" => FilterOp::Neq,
            "lt" => FilterOp::Lt,
            "lte" => FilterOp::Lte,
            "gt" => FilterOp::Gt,
            "gte" => FilterOp::Gte,
            "in" => FilterOp::In,
            "like" => FilterOp::Like,
            "ilike" => FilterOp::Ilike,
            "is" => FilterOp::Is,
            "match" => FilterOp::Match,
            "imatch" => FilterOp::Imatch,
            "isdistinct" => FilterOp::IsDistinct,
            _ => return None,
        })
    }

    /// Whether an ordering of row value against filter value satisfies this operator
    /// (`in` is treated as `eq` for each item; the pattern and `is` operators never compare).
    fn accepts(self, ord: Ordering) -> bool {
        match self {
            FilterOp::Eq | FilterOp::In => ord == Ordering::Equal,
            FilterOp::Neq | FilterOp::IsDistinct => ord != Ordering::Equal,
            FilterOp::Like
            | FilterOp::Ilike
            | FilterOp::Is
            | FilterOp::Match
            | FilterOp::Imatch => false,
            FilterOp::Lt => ord == Ordering::Less,
            FilterOp::Lte => ord != Ordering::Greater,
            FilterOp::Gt => ord == Ordering::Greater,
            FilterOp::Gte => ord != Ordering::Less,
        }
    }
}

impl fmt::Display for FilterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A number given in a filter value, kept exact when it is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FilterNumber {
    /// An integer literal (exact comparison with integer row values).
    Int(i128),
    /// Any other finite number.
    Float(f64),
}

/// One filter value (or one item of an `in` list): its text plus the typed readings of that
/// text, worked out once when the filter is built.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterScalar {
    /// The value as written, quotes and escapes removed.
    text: String,
    /// The value read as a number, when it is one (finite).
    number: Option<FilterNumber>,
    /// The value read as a boolean, when it is `true` or `false`.
    boolean: Option<bool>,
    /// The value read as a timestamp (RFC 3339 or Postgres' text form), when it is one.
    timestamp: Option<DateTime<FixedOffset>>,
    /// The value read as a UUID, when it is one.
    uuid: Option<uuid::Uuid>,
}

/// Reads a timestamp written the RFC 3339 way (`2026-11-23T18:00:00Z`) or the way Postgres
/// prints `timestamptz` (`2026-11-23 18:00:00.5+00`, offsets with or without minutes).
fn parse_timestamp(text: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t);
    }
    if text.len() < 19 || !text.is_char_boundary(10) || !text.is_char_boundary(11) {
        return None;
    }
    let mut fixed = format!("{}T{}", &text[..10], &text[11..]);
    // `+00` / `-05`: add the minutes RFC 3339 requires.
    let tail = fixed.len().saturating_sub(3);
    if fixed.is_char_boundary(tail)
        && matches!(fixed.as_bytes()[tail], b'+' | b'-')
        && fixed[tail + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        fixed.push_str(":00");
    }
    DateTime::parse_from_rfc3339(&fixed).ok()
}

impl FilterScalar {
    /// Builds a value from its text, noting whether it reads as a number, a boolean
    /// (`true`/`false`) or an RFC 3339 timestamp.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let number = if let Ok(i) = text.parse::<i128>() {
            Some(FilterNumber::Int(i))
        } else {
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(FilterNumber::Float)
        };
        let boolean = match text.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        let timestamp = parse_timestamp(&text);
        let uuid = uuid::Uuid::try_parse(&text).ok();
        FilterScalar {
            text,
            number,
            boolean,
            timestamp,
            uuid,
        }
    }

    /// The value exactly as written in the filter (quotes and escapes removed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Compares a row value with this filter value; `None` for SQL `NULL`, which never matches.
    /// `compact` gives the value's compact JSON text when a cache holds it (rule 4); without
    /// it the text is compared as it is written, stopping at the first difference.
    fn compare<'t>(&self, row: &Value, compact: &dyn Fn() -> Option<&'t str>) -> Option<Ordering> {
        let as_text = || match compact() {
            Some(text) => text.as_bytes().cmp(self.text.as_bytes()),
            None => compare_json_text(row, &self.text),
        };
        match row {
            Value::Null => None,
            Value::Number(n) => match self.number {
                Some(want) => compare_numbers(n, want),
                None => Some(as_text()),
            },
            Value::Bool(b) => match self.boolean {
                Some(want) => Some(b.cmp(&want)),
                None => Some(as_text()),
            },
            Value::String(s) => {
                if let Some(want) = &self.timestamp
                    && let Some(have) = parse_timestamp(s)
                {
                    return Some(have.cmp(want));
                }
                if let Some(want) = &self.uuid
                    && s.len() == 36
                    && let Ok(have) = uuid::Uuid::try_parse(s)
                {
                    return Some(have.cmp(want));
                }
                Some(s.as_bytes().cmp(self.text.as_bytes()))
            }
            Value::Array(_) | Value::Object(_) => Some(as_text()),
        }
    }
}

/// Numeric comparison of a row number with a filter number: exact for two integers, as `f64`
/// otherwise.
fn compare_numbers(have: &serde_json::Number, want: FilterNumber) -> Option<Ordering> {
    let have_int = have
        .as_i64()
        .map(i128::from)
        .or_else(|| have.as_u64().map(i128::from));
    match (have_int, want) {
        (Some(a), FilterNumber::Int(b)) => Some(a.cmp(&b)),
        (_, FilterNumber::Int(b)) => have.as_f64()?.partial_cmp(&(b as f64)),
        (_, FilterNumber::Float(b)) => have.as_f64()?.partial_cmp(&b),
    }
}

/// Compares the compact JSON text of `value` with `text` byte by byte, without building the
/// JSON text: the serializer writes into a sink that compares as it goes and stops it as soon
/// as the order is known, so a large value costs only the length of its common prefix with
/// `text` (a filter cannot make walcast serialize a whole large document per comparison).
fn compare_json_text(value: &Value, text: &str) -> Ordering {
    let mut sink = CompareSink {
        rest: text.as_bytes(),
        ord: Ordering::Equal,
    };
    // The only error is the sink stopping the serializer once the order is decided.
    let _ = serde_json::to_writer(&mut sink, value);
    sink.finish()
}

/// An `io::Write` that lexicographically compares everything written to it with a byte string.
struct CompareSink<'a> {
    /// The part of the expected text not yet compared.
    rest: &'a [u8],
    /// The verdict so far; once not `Equal`, later writes are ignored.
    ord: Ordering,
}

impl CompareSink<'_> {
    /// The final ordering of the written bytes against the expected text.
    fn finish(self) -> Ordering {
        if self.ord == Ordering::Equal && !self.rest.is_empty() {
            Ordering::Less
        } else {
            self.ord
        }
    }
}

impl io::Write for CompareSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ord == Ordering::Equal {
            let n = buf.len().min(self.rest.len());
            self.ord = buf[..n].cmp(&self.rest[..n]);
            if self.ord == Ordering::Equal {
                if buf.len() > n {
                    self.ord = Ordering::Greater;
                }
                self.rest = &self.rest[n..];
            }
        }
        if self.ord == Ordering::Equal {
            Ok(buf.len())
        } else {
            // Decided: stop the serializer instead of writing the rest of the value.
            Err(io::Error::other("order decided"))
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The right-hand side of a condition: one value, the list of an `in` filter, a pattern, or
/// what `is` tests.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// The value of `eq`, `neq`, `lt`, `lte`, `gt`, `gte`, `isdistinct`.
    Scalar(FilterScalar),
    /// The items of `in.(...)`, 1 to [`MAX_IN_ITEMS`] of them.
    List(Vec<FilterScalar>),
    /// The pattern of `like`, `ilike`, `match`, `imatch`.
    Pattern(Pattern),
    /// What `is` tests.
    Is(IsValue),
}

/// What `is.` tests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    /// `is.null`.
    Null,
    /// `is.true`.
    True,
    /// `is.false`.
    False,
    /// `is.unknown` (a `NULL` boolean).
    Unknown,
}

impl IsValue {
    /// The word after `is.`.
    pub fn as_str(self) -> &'static str {
        match self {
            IsValue::Null => "null",
            IsValue::True => "true",
            IsValue::False => "false",
            IsValue::Unknown => "unknown",
        }
    }

    /// Whether a row value passes the test (never unknown).
    fn test(self, have: &Value) -> bool {
        match self {
            IsValue::Null | IsValue::Unknown => have.is_null(),
            IsValue::True => *have == Value::Bool(true),
            IsValue::False => *have == Value::Bool(false),
        }
    }
}

/// A compiled `like`/`ilike`/`match`/`imatch` pattern with its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The pattern as written (quotes and escapes removed).
    source: String,
    /// The compiled matcher.
    regex: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.regex.as_str() == other.regex.as_str()
    }
}

impl Pattern {
    /// Compiles a pattern for `op` (one of the four pattern operators).
    fn new(op: FilterOp, source: &str) -> Result<Pattern, String> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "the pattern is {} bytes long: at most {MAX_PATTERN_LEN} are allowed",
                source.len()
            ));
        }
        let (expr, ignore_case) = match op {
            FilterOp::Like => (like_to_regex(source)?, false),
            FilterOp::Ilike => (like_to_regex(source)?, true),
            FilterOp::Match => (source.to_owned(), false),
            _ => (source.to_owned(), true),
        };
        let regex = regex::RegexBuilder::new(&expr)
            .case_insensitive(ignore_case)
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => {
                    "the pattern compiles to more than 64 KiB: simplify it".to_owned()
                }
                other => other.to_string(),
            })?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches.
    fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// An SQL `LIKE` pattern as an anchored regular expression: `%` any run of characters, `_` one
/// character, `\` makes the next character literal.
fn like_to_regex(pattern: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    out.push_str("(?s)\\A");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => match chars.next() {
                Some(next) => out.push_str(&regex::escape(&next.to_string())),
                None => return Err("the pattern ends with an escape character `\\`".into()),
            },
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push_str("\\z");
    Ok(out)
}

/// One column condition, `column=[not.]op.value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The column the condition looks at.
    pub column: String,
    /// `not.`: the condition holds when the comparison is false (unknown stays unknown).
    pub negate: bool,
    /// How the column is compared.
    pub op: FilterOp,
    /// What it is compared with (a list exactly when `op` is [`FilterOp::In`]).
    pub value: FilterValue,
}

impl Condition {
    /// Parses `column=op.value` (Supabase Realtime filter syntax).
    pub fn parse(filter: &str) -> Result<Condition, FilterError> {
        if filter.is_empty() {
            return Err(FilterError::Empty);
        }
        let owned = || filter.to_owned();
        let (column, rest) = filter
            .split_once('=')
            .ok_or_else(|| FilterError::MissingEquals { filter: owned() })?;
        validate_column(filter, column)?;
        let (negate, rest) = match rest.strip_prefix("not.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (op_name, value) = match rest.split_once('.') {
            Some((op, value)) if !op.is_empty() => (op, value),
            _ => return Err(FilterError::MissingOperator { filter: owned() }),
        };
        let op = FilterOp::from_name(op_name).ok_or_else(|| FilterError::UnknownOperator {
            filter: owned(),
            op: op_name.to_owned(),
        })?;
        let value = match op {
            FilterOp::In => FilterValue::List(parse_in_list(filter, value)?),
            FilterOp::Is => FilterValue::Is(match value.to_ascii_lowercase().as_str() {
                "null" => IsValue::Null,
                "true" => IsValue::True,
                "false" => IsValue::False,
                "unknown" => IsValue::Unknown,
                _ => return Err(FilterError::InvalidIsValue { filter: owned() }),
            }),
            FilterOp::Like | FilterOp::Ilike | FilterOp::Match | FilterOp::Imatch => {
                let text = unquote_value(filter, value)?;
                FilterValue::Pattern(Pattern::new(op, &text).map_err(|reason| {
                    FilterError::InvalidPattern {
                        filter: owned(),
                        reason,
                    }
                })?)
            }
            _ => FilterValue::Scalar(FilterScalar::new(unquote_value(filter, value)?)),
        };
        Ok(Condition {
            column: column.to_owned(),
            negate,
            op,
            value,
        })
    }

    /// Whether the row satisfies this condition. A missing column or SQL `NULL` never does.
    pub fn matches(&self, row: &Row) -> bool {
        self.matches_in(row, None)
    }

    /// Like [`Condition::matches`], taking compact texts from (and adding them to) the
    /// change's shared cache: `row` must be the row `texts` was made for.
    pub fn matches_cached(&self, row: &Row, texts: &RowTexts<'_>) -> bool {
        self.matches_in(row, Some(texts))
    }

    /// The match, with or without a cache.
    pub(crate) fn matches_in(&self, row: &Row, texts: Option<&RowTexts<'_>>) -> bool {
        let Some(have) = row.values.get(self.column.as_str()) else {
            return false;
        };
        let compact = || texts.and_then(|t| t.get(&self.column, have));
        // `None`: SQL unknown (a comparison with NULL), which no condition accepts, negated or not.
        let verdict = match &self.value {
            FilterValue::Is(test) => Some(test.test(have)),
            _ if have.is_null() => (self.op == FilterOp::IsDistinct).then_some(true),
            FilterValue::Scalar(want) => want.compare(have, &compact).map(|o| self.op.accepts(o)),
            FilterValue::List(items) => Some(
                items
                    .iter()
                    .any(|want| want.compare(have, &compact) == Some(Ordering::Equal)),
            ),
            FilterValue::Pattern(p) => Some(match have {
                Value::String(s) => p.is_match(s),
                other => match compact() {
                    Some(text) => p.is_match(text),
                    None => p.is_match(&other.to_string()),
                },
            }),
        };
        verdict.is_some_and(|v| v != self.negate)
    }
}

/// The compact JSON texts of one change's filtered row (`record`, or `old_record` for a
/// DELETE), one per column, each made the first time a condition needs it and then shared by
/// every condition of every subscriber: the hub keeps one per change, so filters cost one
/// serialization per compared column and change, whatever their number.
#[derive(Debug, Default)]
pub struct ColumnTexts {
    /// One slot per column of the change's relation (allocated on first use).
    slots: OnceLock<Box<[OnceLock<Box<str>>]>>,
    /// Texts made so far.
    made: AtomicUsize,
    /// Their total length in bytes.
    bytes: AtomicUsize,
}

impl ColumnTexts {
    /// An empty cache, for one change.
    pub fn new() -> Self {
        ColumnTexts::default()
    }

    /// The cache as seen from `change` (the change it belongs to).
    pub fn for_change<'a>(&'a self, change: &'a Change) -> RowTexts<'a> {
        RowTexts {
            cache: self,
            columns: &change.relation.columns,
        }
    }

    /// How many texts were made (one per compared column, at most).
    pub fn made(&self) -> usize {
        self.made.load(AtomicOrdering::Relaxed)
    }

    /// Bytes the made texts hold.
    pub fn bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }
}

/// A change's [`ColumnTexts`] with the columns of its relation (which name the slots).
#[derive(Debug, Clone, Copy)]
pub struct RowTexts<'a> {
    /// The cache.
    cache: &'a ColumnTexts,
    /// The relation's columns, in slot order.
    columns: &'a [Column],
}

impl<'a> RowTexts<'a> {
    /// The compact text of column `name` whose value is `value`, made now if it is the first
    /// use; `None` for a column the relation does not list.
    fn get(&self, name: &str, value: &Value) -> Option<&'a str> {
        let index = self.columns.iter().position(|c| &*c.name == name)?;
        let slots = self
            .cache
            .slots
            .get_or_init(|| (0..self.columns.len()).map(|_| OnceLock::new()).collect());
        let text = slots.get(index)?.get_or_init(|| {
            let text = value.to_string().into_boxed_str();
            self.cache.made.fetch_add(1, AtomicOrdering::Relaxed);
            self.cache
                .bytes
                .fetch_add(text.len(), AtomicOrdering::Relaxed);
            text
        });
        Some(text)
    }
}

impl FromStr for Condition {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::parse(s)
    }
}

/// Writes the condition back in filter syntax; parsing the output gives the same condition.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = if self.negate { "not." } else { "" };
        write!(f, "{}={not}{}.", self.column, self.op)?;
        match &self.value {
            FilterValue::Scalar(v) => write_value(f, &v.text),
            FilterValue::Pattern(p) => write_value(f, &p.source),
            FilterValue::Is(v) => f.write_str(v.as_str()),
            FilterValue::List(items) => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_list_item(f, &item.text)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Writes one `in` item, quoting it when it would not read back unchanged unquoted.
fn write_list_item(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let needs_quotes = text.is_empty()
        || text.starts_with(' ')
        || text.ends_with(' ')
        || text.contains([',', '(', ')', '"', '\\']);
    if !needs_quotes {
        return f.write_str(text);
    }
    f.write_str("\"")?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Checks a column name: non-empty, at most [`MAX_COLUMN_LEN`] bytes, `[A-Za-z_][A-Za-z0-9_]*`.
fn validate_column(filter: &str, column: &str) -> Result<(), FilterError> {
    if column.is_empty() {
        return Err(FilterError::EmptyColumn {
            filter: filter.to_owned(),
        });
    }
    if column.len() > MAX_COLUMN_LEN {
        return Err(FilterError::ColumnTooLong {
            filter: filter.to_owned(),
            len: column.len(),
        });
    }
    let mut bytes = column.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(FilterError::InvalidColumn {
            filter: filter.to_owned(),
            column: column.to_owned(),
        });
    }
    Ok(())
}

/// Parses the `(a,"b,c",d)` value of an `in` filter into its items.
fn parse_in_list(filter: &str, value: &str) -> Result<Vec<FilterScalar>, FilterError> {
    let owned = || filter.to_owned();
    let inner = value
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| FilterError::InListSyntax { filter: owned() })?;
    if inner.trim_matches(' ').is_empty() {
        return Err(FilterError::EmptyInList { filter: owned() });
    }
    let mut items = Vec::new();
    let mut rest = inner;
    loop {
        let item = items.len() + 1;
        if item > MAX_IN_ITEMS {
            return Err(FilterError::TooManyInItems { filter: owned() });
        }
        let trimmed = rest.trim_start_matches(' ');
        if let Some(quoted) = trimmed.strip_prefix('"') {
            let (unquoted, after) =
                read_quoted(quoted).ok_or_else(|| FilterError::UnterminatedQuote {
                    filter: owned(),
                    item,
                })?;
            let after = after.trim_start_matches(' ');
            rest = match after.chars().next() {
                None => "",
                Some(',') => &after[1..],
                Some(found) => {
                    return Err(FilterError::TextAfterQuote {
                        filter: owned(),
                        item,
                        found,
                    });
                }
            };
            items.push(FilterScalar::new(unquoted));
            if after.is_empty() {
                break;
            }
        } else {
            let (raw, next) = match trimmed.split_once(',') {
                Some((raw, next)) => (raw, Some(next)),
                None => (trimmed, None),
            };
            let raw = raw.trim_end_matches(' ');
            if raw.is_empty() {
                return Err(FilterError::EmptyInItem {
                    filter: owned(),
                    item,
                });
            }
            if raw.contains('"') {
                return Err(FilterError::StrayQuote {
                    filter: owned(),
                    item,
                });
            }
            items.push(FilterScalar::new(raw));
            match next {
                Some(next) => rest = next,
                None => break,
            }
        }
    }
    Ok(items)
}

/// A condition's value: PostgREST-quoted (`"a,b"`, with `\"` and `\\` escapes) or as written.
fn unquote_value(filter: &str, value: &str) -> Result<String, FilterError> {
    let Some(inner) = value.strip_prefix('"') else {
        return Ok(value.to_owned());
    };
    match read_quoted(inner) {
        Some((text, "")) => Ok(text),
        _ => Err(FilterError::BadQuotedValue {
            filter: filter.to_owned(),
        }),
    }
}

/// Writes a condition's value, quoting it when it would not read back (or split) unchanged.
fn write_value(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    if !text.starts_with('"') && !text.contains([',', '(', ')']) {
        return f.write_str(text);
    }
    f.write_str("\"")?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Reads a quoted item after its opening `"`: returns the unescaped text and what follows the
/// closing `"`, or `None` when the quote is never closed.
fn read_quoted(s: &str) -> Option<(String, &str)> {
    let mut text = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((text, &s[i + 1..])),
            '\\' => text.push(chars.next()?.1),
            c => text.push(c),
        }
    }
    None
}

/// What one subscription wants: every set part must match (they are combined with AND).
///
/// The default filter, with nothing set, matches every change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Accepted values of the row's `event_type` column; empty means any.
    pub event_types: Vec<String>,
    /// Accepted values of the row's `source` column; empty means any.
    pub sources: Vec<String>,
    /// Accepted operations; empty means all.
    pub ops: Vec<Operation>,
    /// Column conditions the row must all satisfy.
    pub conditions: Vec<Condition>,
}

impl Filter {
    /// A filter from its parts; `conditions` are `column=op.value` texts, parsed here.
    pub fn from_parts<S: AsRef<str>>(
        event_types: Vec<String>,
        sources: Vec<String>,
        ops: Vec<Operation>,
        conditions: &[S],
    ) -> Result<Filter, FilterError> {
        Ok(Filter {
            event_types,
            sources,
            ops,
            conditions: conditions
                .iter()
                .map(|c| Condition::parse(c.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether this filter puts no requirement on the row (only, possibly, on the operation).
    pub fn ignores_rows(&self) -> bool {
        self.event_types.is_empty() && self.sources.is_empty() && self.conditions.is_empty()
    }

    /// Whether the change passes this filter.
    ///
    /// The row checked is `record` for INSERT and UPDATE and `old_record` for DELETE (which
    /// holds only the key columns unless the table has `REPLICA IDENTITY FULL`). A TRUNCATE
    /// affects every row, so it matches whenever its operation is accepted, whatever the row
    /// requirements. Changes of any table go through the same rules.
    ///
    /// Without a cache, a comparison with a JSON value writes its text only as far as its
    /// first difference with the filter value; [`Filter::matches_with`] shares whole texts.
    pub fn matches(&self, change: &Change) -> bool {
        self.matches_in(change, None)
    }

    /// Like [`Filter::matches`], with the change's shared cache of compact texts (the hub's,
    /// so that all subscribers share it).
    pub fn matches_with(&self, change: &Change, texts: &ColumnTexts) -> bool {
        self.matches_in(change, Some(texts))
    }

    /// The match, with or without a cache.
    fn matches_in(&self, change: &Change, texts: Option<&ColumnTexts>) -> bool {
        // A gap may hide a change this filter wanted: every subscription hears of it.
        if change.op == Operation::Gap {
            return true;
        }
        if !self.ops.is_empty() && !self.ops.contains(&change.op) {
            return false;
        }
        if self.ignores_rows() {
            return true;
        }
        let row = match change.op {
            Operation::Truncate | Operation::Gap => return true,
            Operation::Insert | Operation::Update => change.record.as_ref(),
            Operation::Delete => change.old_record.as_ref(),
        };
        let texts = texts.map(|t| t.for_change(change));
        row.is_some_and(|row| {
            one_of(row, "event_type", &self.event_types)
                && one_of(row, "source", &self.sources)
                && self
                    .conditions
                    .iter()
                    .all(|c| c.matches_in(row, texts.as_ref()))
        })
    }

    /// Whether a row passes the event type, source and column requirements.
    pub fn matches_row(&self, row: &Row) -> bool {
        one_of(row, "event_type", &self.event_types)
            && one_of(row, "source", &self.sources)
            && self.conditions.iter().all(|c| c.matches(row))
    }
}

/// Whether the row's string `column` is one of `accepted` (an empty list accepts anything).
fn one_of(row: &Row, column: &str, accepted: &[String]) -> bool {
    if accepted.is_empty() {
        return true;
    }
    match row.values.get(column) {
        Some(Value::String(have)) => accepted.iter().any(|a| a == have),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
