//! What walcast knows about the tables it serves: columns, types, primary key, row level
//! security, publication membership ([`TableFacts`]).
//!
//! A leaf of plain data: [`crate::access`] reads the facts from the catalog, and the wire
//! protocols use them to type values and to check bindings.

/// Schema of the one table the Realtime endpoint serves.
pub const REALTIME_SCHEMA: &str = "public";

/// The one table the Realtime endpoint serves.
pub const REALTIME_TABLE: &str = "monitoring_events";

/// What walcast knows about one table it publishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableFacts {
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
    /// Primary key column names.
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
}
