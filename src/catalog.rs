//! What walcast knows about the tables it serves: columns, types, primary key, row level
//! security, publication membership ([`TableFacts`]), for every table of its publication
//! ([`Tables`]).
//!
//! A leaf of plain data: [`crate::access`] reads the facts from the catalog, and the wire
//! protocols use them to type values and to check bindings.

use std::collections::HashMap;
use std::time::Instant;

/// Schema of the events table: the default table of both endpoints and the home of ingest.
pub const REALTIME_SCHEMA: &str = "public";

/// The events table (`public.monitoring_events`): the default table of both endpoints and the
/// home of ingest. Every other table of walcast's publication is served too.
pub const REALTIME_TABLE: &str = "monitoring_events";

/// What walcast knows about one table it publishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableFacts {
    /// The table's OID (`pg_class.oid`), as pgoutput names the relation.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Whether the table is in walcast's publication.
    pub published: bool,
    /// Whether row level security is enabled on the table.
    pub rls_enabled: bool,
    /// Columns in table order: name and type name (`pg_type.typname`).
    pub columns: Vec<(String, String)>,
    /// Primary key column names (empty: the table has no primary key, so its rows cannot be
    /// checked against a role's policies).
    pub primary_key: Vec<String>,
}

impl TableFacts {
    /// Whether the table has a column of that name.
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|(c, _)| c == name)
    }

    /// The type name of a column, if known.
    pub fn type_name(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.as_str())
    }

    /// `schema.table`, as error texts name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Whether the table has a primary key (the row gate identifies rows by it).
    pub fn has_primary_key(&self) -> bool {
        !self.primary_key.is_empty()
    }
}

/// The facts of every table in walcast's publication, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The tables, ordered by schema and name.
    list: Vec<TableFacts>,
    /// Index into `list` by OID.
    by_oid: HashMap<u32, usize>,
    /// When the catalog read started: a table published before then is in `list`.
    read_at: Instant,
}

impl Default for Tables {
    fn default() -> Self {
        Tables::new(Vec::new())
    }
}

impl Tables {
    /// A snapshot of these tables (each marked published), read now.
    pub fn new(list: Vec<TableFacts>) -> Self {
        Tables::read_at(list, Instant::now())
    }

    /// A snapshot of these tables (each marked published) whose catalog read started at
    /// `read_at`.
    pub fn read_at(mut list: Vec<TableFacts>, read_at: Instant) -> Self {
        list.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        for t in &mut list {
            t.published = true;
        }
        let by_oid = list.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
        Tables {
            list,
            by_oid,
            read_at,
        }
    }

    /// When the catalog read of these facts started: every table published before then is
    /// known to them.
    pub fn started(&self) -> Instant {
        self.read_at
    }

    /// Every published table.
    pub fn all(&self) -> &[TableFacts] {
        &self.list
    }

    /// The table a change names: its OID and name must both match (a table dropped and created
    /// again under the same name is another table).
    pub fn of(&self, oid: u32, schema: &str, table: &str) -> Option<&TableFacts> {
        self.by_oid
            .get(&oid)
            .map(|&i| &self.list[i])
            .filter(|t| t.schema == schema && t.table == table)
    }

    /// The table with this OID.
    pub fn by_oid(&self, oid: u32) -> Option<&TableFacts> {
        self.by_oid.get(&oid).map(|&i| &self.list[i])
    }

    /// The table of that schema and name.
    pub fn named(&self, schema: &str, table: &str) -> Option<&TableFacts> {
        self.list
            .iter()
            .find(|t| t.schema == schema && t.table == table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(oid: u32, schema: &str, name: &str) -> TableFacts {
        TableFacts {
            oid,
            schema: schema.into(),
            table: name.into(),
            ..TableFacts::default()
        }
    }

    #[test]
    fn lookups_need_oid_and_name_to_agree() {
        let t = Tables::new(vec![table(7, "public", "orders"), table(3, "app", "notes")]);
        assert_eq!(t.all()[0].qualified(), "app.notes");
        assert!(t.all().iter().all(|f| f.published));
        assert_eq!(t.of(7, "public", "orders").map(|f| f.oid), Some(7));
        assert!(t.of(7, "public", "other").is_none());
        assert!(t.of(8, "public", "orders").is_none());
        assert_eq!(t.named("app", "notes").map(|f| f.oid), Some(3));
        assert_eq!(
            t.by_oid(3).map(TableFacts::qualified).as_deref(),
            Some("app.notes")
        );
    }
}
