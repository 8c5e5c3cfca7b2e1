//! The `table` field of a `/ws` subscription: which tables of walcast's publication it wants.
//!
//! Each item names a table as `schema.table`, a table of schema `public` as `table`, or every
//! table of a schema as `schema.*`; `*` alone means every table (the same as leaving the field
//! out). Names are compared exactly as Postgres stores them (no case folding); a part holding a
//! `.` or starting with `"` is written in double quotes with `""` for a quote inside:
//! `"my.schema"."Odd ""name"""`.

use std::fmt;

use super::client::shorten;

/// One item of a subscription's `table` field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema.
    pub schema: String,
    /// The table; `None`: every table of the schema.
    pub table: Option<String>,
}

impl TableName {
    /// Reads one item: `schema.table`, `table` (schema `public`) or `schema.*`. `Ok(None)` for
    /// `*` (every table). The error says what is wrong, for an `invalid_filter` message.
    pub fn parse(text: &str) -> Result<Option<TableName>, String> {
        if text == "*" {
            return Ok(None);
        }
        let (first, rest) = identifier(text)?;
        let name = match rest.strip_prefix('.') {
            None if rest.is_empty() => TableName {
                schema: "public".to_owned(),
                table: Some(first),
            },
            None => return Err(format!("unexpected `{}` after the name", shorten(rest))),
            Some("*") => TableName {
                schema: first,
                table: None,
            },
            Some(rest) => {
                let (second, left) = identifier(rest)?;
                if !left.is_empty() {
                    return Err(format!(
                        "unexpected `{}` after the table name: use schema.table",
                        shorten(left)
                    ));
                }
                TableName {
                    schema: first,
                    table: Some(second),
                }
            }
        };
        Ok(Some(name))
    }

    /// Whether this item names (or, as `schema.*`, covers) the table `schema.table`.
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        self.schema == schema && self.table.as_deref().is_none_or(|t| t == table)
    }

    /// Whether this item names one table (not `schema.*`).
    pub fn is_one_table(&self) -> bool {
        self.table.is_some()
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            self.schema,
            self.table.as_deref().unwrap_or("*")
        )
    }
}

/// Reads one identifier at the start of `text`, quoted or not; returns it and what follows.
fn identifier(text: &str) -> Result<(String, &str), String> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
                continue;
            }
            // `""` is a quote inside the name; a lone `"` ends it.
            if rest[i + 1..].starts_with('"') {
                name.push('"');
                chars.next();
                continue;
            }
            if name.is_empty() {
                return Err("an empty quoted name".to_owned());
            }
            return Ok((name, &rest[i + 1..]));
        }
        return Err("a `\"` that is never closed".to_owned());
    }
    let end = text.find('.').unwrap_or(text.len());
    let name = &text[..end];
    if name.is_empty() {
        return Err("an empty name".to_owned());
    }
    if name.contains('"') {
        return Err("a `\"` inside a name: quote the whole name".to_owned());
    }
    Ok((name.to_owned(), &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(schema: &str, table: Option<&str>) -> Option<TableName> {
        Some(TableName {
            schema: schema.into(),
            table: table.map(Into::into),
        })
    }

    #[test]
    fn parses_the_forms() {
        assert_eq!(
            TableName::parse("orders"),
            Ok(name("public", Some("orders")))
        );
        assert_eq!(
            TableName::parse("app.notes"),
            Ok(name("app", Some("notes")))
        );
        assert_eq!(TableName::parse("app.*"), Ok(name("app", None)));
        assert_eq!(TableName::parse("*"), Ok(None));
        assert_eq!(
            TableName::parse(r#""my.schema"."Odd ""name""""#),
            Ok(name("my.schema", Some(r#"Odd "name""#)))
        );
        assert_eq!(
            TableName::parse(r#""a.b""#),
            Ok(name("public", Some("a.b")))
        );
        assert_eq!(
            TableName::parse("Orders"),
            Ok(name("public", Some("Orders")))
        );
        for bad in [
            "", ".x", "a.", "a.b.c", "\"open", "\"\".x", "a\"b", "\"a\"x",
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn covers_tables() {
        let t = TableName::parse("app.notes").unwrap().unwrap();
        assert!(t.covers("app", "notes") && !t.covers("app", "other"));
        assert!(!t.covers("public", "notes"));
        let all = TableName::parse("app.*").unwrap().unwrap();
        assert!(all.covers("app", "x") && !all.covers("public", "x"));
        assert!(!all.is_one_table() && t.is_one_table());
        assert_eq!(all.to_string(), "app.*");
        assert_eq!(t.to_string(), "app.notes");
    }
}
