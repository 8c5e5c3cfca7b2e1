//! `postgres_changes` bindings: the request, its id, its error texts, and matching.
//!
//! A binding is one entry of `config.postgres_changes`: `{event, schema, table, filter}`.
//! [`bind`] checks it against the tables walcast publishes ([`TableFacts`]) and turns it into a
//! [`Binding`] that matches changes, or a [`BindingError`] whose text is what the client receives
//! in a `system` message. Filters use the column filter syntax of [`crate::filter`]
//! (`column=op.value`, ops `eq, neq, lt, lte, gt, gte, in`); several conditions may be joined
//! with `,` (all must hold).

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::catalog::TableFacts;
use crate::decode::{Change, Operation};
use crate::filter::{ColumnTexts, Condition, FilterError};
use crate::json::push_str as push_json_str;

/// One entry of `config.postgres_changes`, as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRequest {
    /// `event`: `*`, `INSERT`, `UPDATE`, `DELETE` (anything else means `*`).
    pub event: Option<String>,
    /// `schema`.
    pub schema: Option<String>,
    /// `table`.
    pub table: Option<String>,
    /// `filter`.
    pub filter: Option<String>,
    /// `select`: the columns a change carries (the primary key is always added).
    pub select: Option<Value>,
    /// The object exactly as sent; the join reply echoes it with an `id` added.
    pub echo: Map<String, Value>,
}

impl BindingRequest {
    /// Reads a binding object; `None` when it is not an object. Fields of the wrong type are
    /// treated as absent.
    pub fn from_value(v: &Value) -> Option<BindingRequest> {
        let map = v.as_object()?;
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(BindingRequest {
            event: text("event"),
            schema: text("schema"),
            table: text("table"),
            filter: text("filter"),
            select: map.get("select").filter(|v| !v.is_null()).cloned(),
            echo: map.clone(),
        })
    }

    /// The binding id: a non-negative 27-bit number derived from the parameters, so identical
    /// bindings get the same id.
    pub fn id(&self) -> u32 {
        // FNV-1a over the fields, each preceded by a presence marker.
        let mut hash: u32 = 0x811c_9dc5;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash ^= u32::from(b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        };
        for field in [&self.event, &self.schema, &self.table, &self.filter] {
            match field {
                Some(s) => {
                    feed(&[1]);
                    feed(s.as_bytes());
                    feed(&[0]);
                }
                None => feed(&[2]),
            }
        }
        hash & 0x07ff_ffff
    }

    /// The event filter this binding asks for.
    pub fn event_filter(&self) -> EventFilter {
        EventFilter::parse(self.event.as_deref())
    }

    /// Schema and table patterns (`*` for any): a table alone means schema `public`, a schema
    /// alone means every table. `None` when neither is given.
    pub fn scope(&self) -> Option<(&str, &str)> {
        match (self.schema.as_deref(), self.table.as_deref()) {
            (None | Some(""), None | Some("")) => None,
            (None | Some(""), Some(t)) => Some(("public", t)),
            (Some(s), None | Some("")) => Some((s, "*")),
            (Some(s), Some(t)) => Some((s, t)),
        }
    }

    /// The parameters as error texts show them:
    /// `[event: *, schema: public, table: t, filters: [{"id", "eq", "1"}], select: nil]`.
    pub fn describe(&self) -> String {
        let (schema, table) = self.scope().unwrap_or(("", ""));
        render_params(
            self.event_filter(),
            schema,
            table,
            self.filter.as_deref().unwrap_or(""),
            self.select.as_ref(),
        )
    }
}

/// Which operations a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventFilter {
    /// `*`: inserts, updates and deletes.
    All,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl EventFilter {
    /// Reads `event` (any case); anything unknown means [`EventFilter::All`].
    pub fn parse(event: Option<&str>) -> EventFilter {
        match event {
            Some(e) if e.eq_ignore_ascii_case("insert") => EventFilter::Insert,
            Some(e) if e.eq_ignore_ascii_case("update") => EventFilter::Update,
            Some(e) if e.eq_ignore_ascii_case("delete") => EventFilter::Delete,
            _ => EventFilter::All,
        }
    }

    /// The event as written in error texts.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFilter::All => "*",
            EventFilter::Insert => "INSERT",
            EventFilter::Update => "UPDATE",
            EventFilter::Delete => "DELETE",
        }
    }

    /// Whether a change operation passes. TRUNCATE never does.
    pub fn accepts(self, op: Operation) -> bool {
        match (self, op) {
            (_, Operation::Truncate | Operation::Gap) => false,
            (EventFilter::All, _) => true,
            (EventFilter::Insert, Operation::Insert)
            | (EventFilter::Update, Operation::Update)
            | (EventFilter::Delete, Operation::Delete) => true,
            _ => false,
        }
    }
}

/// Why a binding cannot be subscribed; the text is sent as a `postgres_changes` `system` error
/// and the channel stays joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Neither `schema` nor `table` was given.
    #[error(
        "No subscription params provided. Please provide at least a `schema` or `table` to \
         subscribe to: {params}"
    )]
    NoParams {
        /// The binding as sent, as JSON.
        params: String,
    },
    /// The filter does not split into column, operator and value.
    #[error("Error parsing `filter` params: {}", inspect_list(parts))]
    FilterParse {
        /// The pieces that were found.
        parts: Vec<String>,
    },
    /// An `in` value without parentheses.
    #[error("Error parsing `filter` params: `in` filter value must be wrapped by parentheses")]
    InNeedsParentheses,
    /// No published table matches the schema and table.
    #[error(
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled \
         for the given connect parameters: {params}"
    )]
    NotPublished {
        /// The parameters, as `[event: *, schema: public, table: t, filters: [], select: nil]`.
        params: String,
    },
    /// The parameters parse but cannot be subscribed (unknown column, bad `in` list, `select`,
    /// a role that may not read the table).
    #[error(
        "Unable to subscribe to changes with given parameters. An exception happened so please \
         check your connect parameters: {params}. Exception: {cause}"
    )]
    Exception {
        /// The parameters, as in [`BindingError::NotPublished`].
        params: String,
        /// What is wrong.
        cause: String,
    },
}

/// Writes a list of strings the way the error texts show them: `["foo", "1"]`.
fn inspect_list(parts: &[String]) -> String {
    let mut out = String::from("[");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_json_str(&mut out, p);
    }
    out.push(']');
    out
}

/// A subscribed binding: matches changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The id sent in the join reply and in each change's `ids`.
    pub id: u32,
    /// Which operations.
    pub event: EventFilter,
    /// Schema pattern, or `None` for any (`*`). Matched like Supabase Realtime matches it
    /// against its publication: SQL `LIKE` without an escape character (`%` any run of
    /// characters, `_` any one), see [`like`].
    pub schema: Option<String>,
    /// Table pattern, or `None` for any (`*`); matched like `schema`.
    pub table: Option<String>,
    /// Conditions that must all hold (on `record`, or on `old_record` for DELETE).
    pub conditions: Vec<Condition>,
    /// `select`: the columns its changes carry, primary key included; `None`: all.
    pub select: Option<std::sync::Arc<[String]>>,
}

impl Binding {
    /// Whether the binding's schema and table patterns cover the table `schema.table`.
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        self.schema.as_deref().is_none_or(|p| like(p, schema))
            && self.table.as_deref().is_none_or(|p| like(p, table))
    }

    /// Whether the change matches this binding. TRUNCATE never does.
    pub fn matches(&self, change: &Change) -> bool {
        self.matches_in(change, None)
    }

    /// Like [`Binding::matches`], with the change's shared cache of compact texts (the hub's,
    /// shared by every binding of every socket).
    pub fn matches_with(&self, change: &Change, texts: &ColumnTexts) -> bool {
        self.matches_in(change, Some(texts))
    }

    /// The match, with or without a cache.
    fn matches_in(&self, change: &Change, texts: Option<&ColumnTexts>) -> bool {
        if !self.event.accepts(change.op) {
            return false;
        }
        if !self.covers(&change.relation.schema, &change.relation.table) {
            return false;
        }
        if self.conditions.is_empty() {
            return true;
        }
        let row = match change.op {
            Operation::Insert | Operation::Update => change.record.as_ref(),
            Operation::Delete => change.old_record.as_ref(),
            Operation::Truncate | Operation::Gap => None,
        };
        let texts = texts.map(|t| t.for_change(change));
        row.is_some_and(|row| {
            self.conditions
                .iter()
                .all(|c| c.matches_in(row, texts.as_ref()))
        })
    }
}

/// Checks a binding against the published tables and builds it.
pub fn bind(req: &BindingRequest, tables: &[TableFacts]) -> Result<Binding, BindingError> {
    let event = req.event_filter();
    let Some((schema, table)) = req.scope() else {
        return Err(BindingError::NoParams {
            params: Value::Object(req.echo.clone()).to_string(),
        });
    };
    let filter = req.filter.as_deref().unwrap_or("");
    let params = req.describe();
    let conditions = parse_filter(filter).map_err(|e| match e {
        BindingError::Exception { cause, .. } => BindingError::Exception {
            params: params.clone(),
            cause,
        },
        other => other,
    })?;
    let wild = |p: &str| (p != "*").then(|| p.to_owned());
    let mut binding = Binding {
        id: req.id(),
        event,
        schema: wild(schema),
        table: wild(table),
        conditions,
        select: None,
    };
    let select = match &req.select {
        None => None,
        Some(v) => Some(parse_select(v).map_err(|cause| BindingError::Exception {
            params: params.clone(),
            cause,
        })?),
    };
    if select.is_some() && (binding.schema.is_none() || binding.table.is_none()) {
        return Err(BindingError::Exception {
            params,
            cause: "`select` needs one table: name a schema and a table, not `*`".into(),
        });
    }
    let matched: Vec<&TableFacts> = tables
        .iter()
        .filter(|t| t.published && binding.covers(&t.schema, &t.table))
        .collect();
    if matched.is_empty() {
        return Err(BindingError::NotPublished { params });
    }
    for c in &binding.conditions {
        if !matched.iter().all(|t| t.has_column(&c.column)) {
            return Err(BindingError::Exception {
                params,
                cause: format!("invalid column for filter {}", c.column),
            });
        }
    }
    if let Some(select) = select {
        let facts = matched[0];
        if let Some(bad) = select.iter().find(|c| !facts.has_column(c)) {
            return Err(BindingError::Exception {
                params,
                cause: format!("invalid column for select {bad}"),
            });
        }
        // The primary key always travels with the selected columns, in table order.
        let columns: Vec<String> = facts
            .columns
            .iter()
            .map(|(name, _)| name)
            .filter(|name| select.contains(name) || facts.primary_key.contains(name))
            .cloned()
            .collect();
        binding.select = Some(columns.into());
    }
    Ok(binding)
}

/// Reads `select`: a non-empty list of column names.
fn parse_select(v: &Value) -> Result<Vec<String>, String> {
    let items = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("`select` must be a non-empty list of column names")?;
    items
        .iter()
        .map(|i| {
            i.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("`select` holds {i}, not a column name"))
        })
        .collect()
}

/// SQL `LIKE` without an escape character, as Supabase Realtime matches a binding's schema and
/// table against its publication: `%` matches any run of characters, `_` any one character,
/// everything else itself (case-sensitive). `public`, `order_` and `%_log` are patterns.
pub fn like(pattern: &str, text: &str) -> bool {
    // Names are usually given exactly: one comparison, no scan (matching runs for every change
    // and binding).
    if pattern == text {
        return true;
    }
    if !pattern.contains(['%', '_']) {
        return false;
    }
    // Greedy match, backtracking to the last `%`; no allocation.
    let (mut p, mut t) = (pattern.chars(), text.chars());
    // The pattern after the last `%`, and where in the text that `%` stops matching.
    let mut back: Option<(std::str::Chars<'_>, std::str::Chars<'_>)> = None;
    loop {
        if p.clone().next() == Some('%') {
            p.next();
            back = Some((p.clone(), t.clone()));
            continue;
        }
        match (p.clone().next(), t.clone().next()) {
            (None, None) => return true,
            (Some(c), Some(x)) if c == '_' || c == x => {
                p.next();
                t.next();
            }
            _ => match &mut back {
                // Let the last `%` take one more character and try again.
                Some((bp, bt)) => {
                    if bt.next().is_none() {
                        return false;
                    }
                    p = bp.clone();
                    t = bt.clone();
                }
                None => return false,
            },
        }
    }
}

/// Parses a filter: empty or blank means none; `,` before another `column=` starts another
/// condition.
fn parse_filter(filter: &str) -> Result<Vec<Condition>, BindingError> {
    if filter.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_conditions(filter)
        .into_iter()
        .map(parse_condition)
        .collect()
}

/// Splits at commas outside parentheses and double quotes that are followed by `column=`.
fn split_conditions(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in filter.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 && starts_condition(&filter[i + 1..]) => {
                parts.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&filter[start..]);
    parts
}

/// Whether `s` starts with `identifier=`.
fn starts_condition(s: &str) -> bool {
    let s = s.trim_start_matches(' ');
    let ident = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    ident > 0 && !s.as_bytes()[0].is_ascii_digit() && s.as_bytes().get(ident) == Some(&b'=')
}

/// Parses one `column=op.value`, mapping errors to the client texts.
fn parse_condition(segment: &str) -> Result<Condition, BindingError> {
    let segment = segment.trim_start_matches(' ');
    Condition::parse(segment).map_err(|e| match e {
        FilterError::Empty | FilterError::MissingEquals { .. } => BindingError::FilterParse {
            parts: vec![segment.to_owned()],
        },
        FilterError::MissingOperator { .. } | FilterError::UnknownOperator { .. } => {
            let rest = segment.split_once('=').map_or("", |(_, r)| r);
            BindingError::FilterParse {
                parts: rest.splitn(2, '.').map(str::to_owned).collect(),
            }
        }
        FilterError::InListSyntax { .. } => BindingError::InNeedsParentheses,
        // `bind` fills in the parameters.
        other => BindingError::Exception {
            params: String::new(),
            cause: other.to_string(),
        },
    })
}

/// `[event: *, schema: public, table: t, filters: [{"id", "eq", "1"}], select: nil]`.
fn render_params(
    event: EventFilter,
    schema: &str,
    table: &str,
    filter: &str,
    select: Option<&Value>,
) -> String {
    let mut out = format!(
        "[event: {}, schema: {schema}, table: {table}, filters: [",
        event.as_str()
    );
    let segments = if filter.trim().is_empty() {
        Vec::new()
    } else {
        split_conditions(filter)
    };
    for (i, seg) in segments.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let seg = seg.trim_start_matches(' ');
        let (column, rest) = seg.split_once('=').unwrap_or((seg, ""));
        let (op, value) = rest.split_once('.').unwrap_or((rest, ""));
        out.push('{');
        push_json_str(&mut out, column);
        out.push_str(", ");
        push_json_str(&mut out, op);
        out.push_str(", ");
        push_json_str(&mut out, value);
        out.push('}');
    }
    out.push_str("], select: ");
    match select {
        None => out.push_str("nil"),
        Some(v) => out.push_str(&v.to_string()),
    }
    out.push(']');
    out
}

/// The join reply's response: `{"postgres_changes":[{"id":..,<binding as sent>}, ...]}`.
pub fn encode_join_response(requests: &[BindingRequest]) -> String {
    let mut out = String::from("{\"postgres_changes\":[");
    for (i, req) in requests.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"id\":{}", req.id());
        for (k, v) in &req.echo {
            if k == "id" {
                continue;
            }
            out.push(',');
            push_json_str(&mut out, k);
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn ids_are_stable_27_bit_numbers() {
        let a = req(json!({"event":"*","schema":"public","table":"todos"}));
        let b = req(json!({"table":"todos","schema":"public","event":"*"}));
        let c = req(json!({"event":"*","schema":"public","table":"todos","filter":"id=eq.1"}));
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        for r in [&a, &c] {
            assert!(r.id() < (1 << 27));
        }
        // Absent and empty differ.
        let d = req(json!({"event":"*","schema":"public","table":"todos","filter":""}));
        assert_ne!(a.id(), d.id());
    }

    #[test]
    fn event_filters() {
        assert_eq!(EventFilter::parse(Some("insert")), EventFilter::Insert);
        assert_eq!(EventFilter::parse(Some("UPDATE")), EventFilter::Update);
        assert_eq!(EventFilter::parse(Some("Delete")), EventFilter::Delete);
        assert_eq!(EventFilter::parse(Some("*")), EventFilter::All);
        assert_eq!(EventFilter::parse(Some("bogus")), EventFilter::All);
        assert_eq!(EventFilter::parse(None), EventFilter::All);
        assert!(!EventFilter::All.accepts(Operation::Truncate));
        assert!(EventFilter::Insert.accepts(Operation::Insert));
        assert!(!EventFilter::Insert.accepts(Operation::Update));
    }

    #[test]
    fn join_response_echoes_bindings_with_ids() {
        let reqs = vec![
            req(json!({"event":"*","schema":"public","table":"todos","filter":"id=eq.1"})),
            req(json!({"event":"INSERT","schema":"public"})),
        ];
        let v: Value = serde_json::from_str(&encode_join_response(&reqs)).unwrap();
        assert_eq!(
            v,
            json!({"postgres_changes":[
                {"id": reqs[0].id(), "event":"*","schema":"public","table":"todos","filter":"id=eq.1"},
                {"id": reqs[1].id(), "event":"INSERT","schema":"public"}
            ]})
        );
        assert_eq!(encode_join_response(&[]), r#"{"postgres_changes":[]}"#);
        assert!(encode_join_response(&reqs[..1]).starts_with(r#"{"postgres_changes":[{"id":"#));
    }

    #[test]
    fn binding_error_texts() {
        assert_eq!(
            bind_err(
                json!({"event":"*","schema":"public","table":"monitoring_events","filter":"id=foo.1"})
            ),
            "Error parsing `filter` params: [\"foo\", \"1\"]"
        );
        assert_eq!(
            bind_err(
                json!({"event":"*","schema":"public","table":"monitoring_events","filter":"undefined"})
            ),
            "Error parsing `filter` params: [\"undefined\"]"
        );
        assert_eq!(
            bind_err(json!({"schema":"public","table":"monitoring_events","filter":"id=eq"})),
            "Error parsing `filter` params: [\"eq\"]"
        );
        assert_eq!(
            bind_err(json!({"schema":"public","table":"monitoring_events","filter":"id=in.1,2"})),
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
        );
        assert_eq!(
            bind_err(json!({"event":"*","schema":"public","table":"nope"})),
            "Unable to subscribe to changes with given parameters. Please check Realtime is \
             enabled for the given connect parameters: [event: *, schema: public, table: nope, \
             filters: [], select: nil]"
        );
        assert_eq!(
            bind_err(json!({"event":"INSERT","table":"nope","filter":"id=eq.1"})),
            "Unable to subscribe to changes with given parameters. Please check Realtime is \
             enabled for the given connect parameters: [event: INSERT, schema: public, table: \
             nope, filters: [{\"id\", \"eq\", \"1\"}], select: nil]"
        );
        assert_eq!(
            bind_err(json!({"schema":"public","table":"monitoring_events","filter":"bad=eq.1"})),
            "Unable to subscribe to changes with given parameters. An exception happened so \
             please check your connect parameters: [event: *, schema: public, table: \
             monitoring_events, filters: [{\"bad\", \"eq\", \"1\"}], select: nil]. Exception: \
             invalid column for filter bad"
        );
        let e = bind_err(json!({"event":"*"}));
        assert!(
            e.starts_with(
                "No subscription params provided. Please provide at least a `schema` or `table` \
                 to subscribe to: "
            ),
            "{e}"
        );
        let e = bind_err(json!({"schema":"public","select":["id"]}));
        assert!(
            e.contains("select: [\"id\"]") && e.contains("Exception: `select` needs one table"),
            "{e}"
        );
        let e = bind_err(json!({"schema":"public","table":"monitoring_events","select":["nope"]}));
        assert!(
            e.contains("Exception: invalid column for select nope"),
            "{e}"
        );
        let e = bind_err(json!({"schema":"public","table":"monitoring_events","select":[]}));
        assert!(e.contains("`select` must be a non-empty list"), "{e}");
        let e = bind_err(json!({"schema":"public","table":"monitoring_events","select":[1]}));
        assert!(e.contains("not a column name"), "{e}");
        // The primary key always comes along, in table order.
        let b = bind(
            &req(json!({"schema":"public","table":"monitoring_events","select":["source","event_type"]})),
            &[facts()],
        )
        .unwrap();
        assert_eq!(
            b.select.as_deref(),
            Some(
                &[
                    "id".to_owned(),
                    "event_type".to_owned(),
                    "source".to_owned()
                ][..]
            )
        );
        let e = bind_err(json!({"schema":"public","filter":"id=in.()"}));
        assert!(e.contains("filters: [{\"id\", \"in\", \"()\"}]"), "{e}");
        assert!(e.contains("Exception: the `in` list"), "{e}");
        // Not published at all.
        let mut f = facts();
        f.published = false;
        assert!(matches!(
            bind(&req(json!({"schema":"public"})), &[f]),
            Err(BindingError::NotPublished { .. })
        ));
    }

    #[test]
    fn like_patterns() {
        for (p, t, want) in [
            ("public", "public", true),
            ("public", "Public", false),
            ("pub%", "public", true),
            ("%", "", true),
            ("%lic", "public", true),
            ("order_", "orders", true),
            ("order_", "order", false),
            ("o%_s", "orders", true),
            ("o%x", "orders", false),
            ("a%b%c", "aXbYbZc", true),
            ("", "", true),
            ("", "a", false),
            ("*", "x", false),
            ("monitoring_events", "monitoring_events", true),
            ("monitoring_events", "monitoringXevents", true),
            ("%%", "ab", true),
            ("_%_", "a", false),
            ("_%_", "ab", true),
            ("é_", "éx", true),
            ("%s", "orders", true),
            ("%s", "orderz", false),
        ] {
            assert_eq!(like(p, t), want, "{p:?} like {t:?}");
        }
    }

    #[test]
    fn bindings_cover_tables_like_supabase() {
        let table = |oid: u32, schema: &str, name: &str| TableFacts {
            oid,
            schema: schema.into(),
            table: name.into(),
            published: true,
            columns: vec![("id".into(), "int8".into())],
            primary_key: vec!["id".into()],
            ..TableFacts::default()
        };
        let tables = [
            table(1, "public", "orders"),
            table(2, "public", "order_lines"),
            table(3, "app", "notes"),
        ];
        let covered = |v: Value| {
            let b = bind(&req(v), &tables).unwrap();
            tables
                .iter()
                .filter(|t| b.covers(&t.schema, &t.table))
                .map(|t| t.oid)
                .collect::<Vec<_>>()
        };
        // Schema only: every table of it; table only: schema public; `*` anything.
        assert_eq!(covered(json!({"schema": "public"})), [1, 2]);
        assert_eq!(covered(json!({"table": "orders"})), [1]);
        assert_eq!(covered(json!({"schema": "*"})), [1, 2, 3]);
        assert_eq!(covered(json!({"schema": "*", "table": "notes"})), [3]);
        assert_eq!(covered(json!({"schema": "app", "table": "*"})), [3]);
        // LIKE patterns, as Supabase matches them against its publication.
        assert_eq!(
            covered(json!({"schema": "public", "table": "order%"})),
            [1, 2]
        );
        assert_eq!(covered(json!({"schema": "%", "table": "note_"})), [3]);
        assert!(bind(&req(json!({"table": "notes"})), &tables).is_err());
    }

    #[test]
    fn schema_and_table_rules() {
        let ok = |v: Value| bind(&req(v), &[facts()]).unwrap();
        let b = ok(json!({"schema":"public"}));
        assert_eq!((b.schema.as_deref(), b.table), (Some("public"), None));
        let b = ok(json!({"table":"monitoring_events"}));
        assert_eq!(b.schema.as_deref(), Some("public"));
        let b = ok(json!({"schema":"*","table":"*"}));
        assert_eq!((b.schema, b.table), (None, None));
        let b = ok(json!({"schema":"public","table":"monitoring_events","filter":"  "}));
        assert!(b.conditions.is_empty());
        assert!(bind(&req(json!({"schema":"other"})), &[facts()]).is_err());
    }

    #[test]
    fn filters_and_matching() {
        let b = bind(
            &req(json!({"event":"INSERT","schema":"public","table":"monitoring_events","filter":"severity=gte.3"})),
            &[facts()],
        )
        .unwrap();
        assert!(b.matches(&change(Operation::Insert, Some(row(full_row())), None)));
        let mut low = full_row();
        low["severity"] = json!(1);
        assert!(!b.matches(&change(Operation::Insert, Some(row(low)), None)));
        assert!(!b.matches(&change(Operation::Update, Some(row(full_row())), None)));
        assert!(!b.matches(&change(Operation::Truncate, None, None)));

        let check = |filter: &str, v: Value| {
            bind(&req(json!({"schema":"public","filter":filter})), &[facts()])
                .unwrap()
                .matches(&change(Operation::Insert, Some(row(v)), None))
        };
        for (f, want) in [
            ("source=eq.host-1", true),
            ("source=neq.host-1", false),
            ("severity=lt.4", true),
            ("severity=lte.3", true),
            ("severity=gt.3", false),
            ("event_type=in.(mem,cpu)", true),
            ("event_type=in.(mem)", false),
            ("source=eq.host-1,severity=eq.3", true),
            ("source=eq.host-1,severity=eq.4", false),
            ("event_type=in.(x,cpu),source=eq.host-1", true),
        ] {
            assert_eq!(check(f, full_row()), want, "{f}");
        }
        // A comma not followed by `column=` belongs to the value.
        let mut v = full_row();
        v["source"] = json!("a,b");
        assert!(check("source=eq.a,b", v));

        // DELETE filters look at old_record; a missing column never matches.
        let b = bind(
            &req(json!({"schema":"public","filter":"source=eq.host-1"})),
            &[facts()],
        )
        .unwrap();
        let key_only = row(json!({"id": full_row()["id"]}));
        assert!(!b.matches(&change(Operation::Delete, None, Some(key_only))));
        assert!(b.matches(&change(Operation::Delete, None, Some(row(full_row())))));
    }
}
