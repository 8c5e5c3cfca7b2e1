//! How much memory a decoded change holds, and how long its compact JSON text is: estimated by
//! one walk over its values, without allocating.
//!
//! The hub charges every change against its byte budgets with [`Change::size`]; encoders size
//! their output buffer once with [`Row::json_len`] (a buffer that grows by doubling can end up
//! holding twice the frame it carries, for as long as the frame is queued).

use serde_json::Value;

use super::change::{Change, Row};

/// Heap bytes of one entry of a JSON object (serde_json's B-tree map): the key `String`, the
/// `Value`, and the entry's share of its node (nodes hold up to 11 entries and are about
/// two-thirds full).
const MAP_ENTRY: usize = 80;
/// Bytes of one `Value` slot in an array.
const VALUE_SLOT: usize = std::mem::size_of::<Value>();
/// Longest compact JSON text of a number (`-1.7976931348623157e308` and the like).
const NUMBER_TEXT: usize = 24;

/// What a value (or a change) costs: heap bytes held, and its compact JSON text length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size {
    /// Bytes the decoded value holds on the heap (estimated: container overhead included).
    pub heap: usize,
    /// Length of its compact JSON text, in bytes (exact for strings, booleans, nulls and
    /// containers; an upper bound for numbers).
    pub text: usize,
}

impl Size {
    /// Both figures added.
    fn plus(self, other: Size) -> Size {
        Size {
            heap: self.heap + other.heap,
            text: self.text + other.text,
        }
    }
}

/// The size of one JSON value.
pub fn value_size(value: &Value) -> Size {
    match value {
        Value::Null => Size { heap: 0, text: 4 },
        Value::Bool(b) => Size {
            heap: 0,
            text: if *b { 4 } else { 5 },
        },
        Value::Number(_) => Size {
            heap: 0,
            text: NUMBER_TEXT,
        },
        Value::String(s) => Size {
            heap: s.capacity(),
            text: string_text_len(s),
        },
        Value::Array(items) => {
            let mut size = Size {
                heap: items.capacity() * VALUE_SLOT,
                text: 2 + items.len().saturating_sub(1),
            };
            for item in items {
                size = size.plus(value_size(item));
            }
            size
        }
        Value::Object(map) => {
            let mut size = Size {
                heap: 0,
                text: 2 + map.len().saturating_sub(1),
            };
            for (key, item) in map {
                size = size.plus(Size {
                    heap: MAP_ENTRY + key.capacity(),
                    text: string_text_len(key) + 1,
                });
                size = size.plus(value_size(item));
            }
            size
        }
    }
}

/// Length of a string as a JSON string literal: quotes, and the escapes serde_json writes
/// (`\"`, `\\`, the short forms of `\n` and friends, `\u00XX` for other control characters).
pub fn string_text_len(s: &str) -> usize {
    let mut len = s.len() + 2;
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => len += 1,
            0..=0x1f => len += 5,
            _ => {}
        }
    }
    len
}

impl Row {
    /// The row's size: its values (with their map entries) and the names of unchanged TOAST
    /// columns; `text` is the length of the row as a compact JSON object.
    pub fn size(&self) -> Size {
        let mut size = Size {
            heap: self.unchanged_toast.capacity() * std::mem::size_of::<usize>() * 2,
            text: 2 + self.values.len().saturating_sub(1),
        };
        for (name, value) in &self.values {
            size = size.plus(Size {
                heap: MAP_ENTRY + name.capacity(),
                text: string_text_len(name) + 1,
            });
            size = size.plus(value_size(value));
        }
        size
    }

    /// Length of the row as a compact JSON object (numbers counted at their longest).
    pub fn json_len(&self) -> usize {
        self.size().text
    }
}

impl Change {
    /// What the change holds beyond its fixed part (its row images; the relation is shared by
    /// every change of its table and not counted), and the compact JSON length of its rows.
    pub fn size(&self) -> Size {
        let rows = [self.record.as_ref(), self.old_record.as_ref()];
        rows.into_iter()
            .flatten()
            .fold(Size::default(), |acc, row| acc.plus(row.size()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_length_matches_serde_json_for_everything_but_numbers() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!("plain"),
            json!("quote \" backslash \\ newline \n tab \t bell \u{7} é"),
            json!([]),
            json!({}),
            json!(["a", null, [true, {"k": "v"}], {"x\"y": {"z": []}}]),
        ];
        for v in values {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(value_size(&v).text, text.len(), "{text}");
        }
        // Numbers: an upper bound.
        for v in [json!(0), json!(-12345), json!(1.5e300), json!(u64::MAX)] {
            let text = serde_json::to_string(&v).unwrap();
            assert!(value_size(&v).text >= text.len(), "{text}");
        }
    }

    #[test]
    fn a_large_string_costs_its_length_once_in_each_figure() {
        let big = "x".repeat(1 << 20);
        let s = value_size(&json!({ "blob": big }));
        assert!(s.text >= 1 << 20 && s.text < (1 << 20) + 32, "{s:?}");
        assert!(s.heap >= 1 << 20 && s.heap < (1 << 20) + 256, "{s:?}");
    }

    #[test]
    fn many_small_values_cost_more_than_their_text() {
        let v = serde_json::Value::Array((0..1000).map(|i| json!(i)).collect());
        let s = value_size(&v);
        assert!(s.heap >= 1000 * VALUE_SLOT, "{s:?}");
    }

    #[test]
    fn a_change_counts_both_row_images() {
        let mut c = Change::sample(1);
        let one = c.size();
        assert!(one.heap > 0 && one.text > 0);
        c.old_record = c.record.clone();
        let two = c.size();
        assert_eq!(two.text, one.text * 2);
        assert_eq!(
            c.record.as_ref().unwrap().json_len(),
            serde_json::to_string(&c.record.as_ref().unwrap().values)
                .unwrap()
                .len()
        );
    }
}
