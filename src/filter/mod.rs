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
//! `column=op.value`, with `op` one of `eq`, `neq`, `lt`, `lte`, `gt`, `gte`, `in`:
//!
//! - `source=eq.host-1`, `severity=gte.3`, `timestamp=lt.2026-11-23T18:00:00Z`
//! - `event_type=in.(cpu,mem)`; items may be double-quoted to hold `,`, `(`, `)` or spaces:
//!   `source=in.("rack 1,a",host-2)`, with `\"` and `\\` escaping inside quotes. Unquoted items
//!   have surrounding spaces trimmed. At most [`MAX_IN_ITEMS`] items.
//!
//! The column is `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_COLUMN_LEN`] bytes (a Postgres
//! identifier). Everything after the operator's `.` is the value, taken literally.
//!
//! # Matching
//!
//! A missing column or an SQL `NULL` never matches (not even `neq`). Otherwise the row value is
//! compared with the filter value by the first rule that applies:
//!
//! 1. row value is a JSON number and the filter value is a number: numeric comparison;
//! 2. row value is a boolean and the filter value is `true` or `false`: `false < true`;
//! 3. row value is a string, and both it and the filter value are RFC 3339 timestamps:
//!    chronological comparison (time zones are taken into account);
//! 4. otherwise the row value's text (a string as is; anything else as compact JSON, the way
//!    walcast sends it) is compared with the filter text byte by byte.
//!
//! `in` matches when the row value equals any item under these rules.
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
         lt, lte, gt, gte or in"
    )]
    MissingOperator {
        /// The filter as given.
        filter: String,
    },
    /// The operator is not one walcast knows.
    #[error("unknown operator `{op}` in filter `{filter}`: use eq, neq, lt, lte, gt, gte or in")]
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
            _ => return None,
        })
    }

    /// Whether an ordering of row value against filter value satisfies this operator
    /// (`in` is treated as `eq` for each item).
    fn accepts(self, ord: Ordering) -> bool {
        match self {
            FilterOp::Eq | FilterOp::In => ord == Ordering::Equal,
            FilterOp::Neq => ord != Ordering::Equal,
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
    /// The value read as an RFC 3339 timestamp, when it is one.
    timestamp: Option<DateTime<FixedOffset>>,
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
        let timestamp = DateTime::parse_from_rfc3339(&text).ok();
        FilterScalar {
            text,
            number,
            boolean,
            timestamp,
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
                    && let Ok(have) = DateTime::parse_from_rfc3339(s)
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

/// The right-hand side of a condition: one value, or the list of an `in` filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// The value of `eq`, `neq`, `lt`, `lte`, `gt`, `gte`.
    Scalar(FilterScalar),
    /// The items of `in.(...)`, 1 to [`MAX_IN_ITEMS`] of them.
    List(Vec<FilterScalar>),
}

/// One column condition, `column=op.value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The column the condition looks at.
    pub column: String,
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
        let (op_name, value) = match rest.split_once('.') {
            Some((op, value)) if !op.is_empty() => (op, value),
            _ => return Err(FilterError::MissingOperator { filter: owned() }),
        };
        let op = FilterOp::from_name(op_name).ok_or_else(|| FilterError::UnknownOperator {
            filter: owned(),
            op: op_name.to_owned(),
        })?;
        let value = if op == FilterOp::In {
            FilterValue::List(parse_in_list(filter, value)?)
        } else {
            FilterValue::Scalar(FilterScalar::new(value))
        };
        Ok(Condition {
            column: column.to_owned(),
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
        match &self.value {
            FilterValue::Scalar(want) => want
                .compare(have, &compact)
                .is_some_and(|o| self.op.accepts(o)),
            FilterValue::List(items) => items
                .iter()
                .any(|want| want.compare(have, &compact) == Some(Ordering::Equal)),
        }
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
        write!(f, "{}={}.", self.column, self.op)?;
        match &self.value {
            FilterValue::Scalar(v) => f.write_str(&v.text),
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
        if !self.ops.is_empty() && !self.ops.contains(&change.op) {
            return false;
        }
        if self.ignores_rows() {
            return true;
        }
        let row = match change.op {
            Operation::Truncate => return true,
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
