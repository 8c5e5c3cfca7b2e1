//! What the stream has told walcast about tables and types: relation OID → [`Relation`] from
//! Relation messages, type OID → name from Type messages.
//!
//! A new Relation message for a known OID replaces the entry (changes already decoded keep the
//! old `Arc`). The cache only remembers; it never queries Postgres for missing entries.

use std::collections::HashMap;
use std::sync::Arc;

use super::change::{Column, Relation};
use super::pgoutput::{RelationMessage, TypeMessage};

/// Schema Postgres means when a Relation or Type message sends an empty namespace.
const PG_CATALOG: &str = "pg_catalog";

/// A data type named by a Type message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeName {
    /// Schema name, e.g. `public`.
    pub schema: Arc<str>,
    /// Type name, e.g. `severity`.
    pub name: Arc<str>,
}

/// Relations and type names announced on the current replication stream.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    /// Relations by OID.
    relations: HashMap<u32, Arc<Relation>>,
    /// Type names by OID (only non-built-in types are announced).
    types: HashMap<u32, TypeName>,
}

impl RelationCache {
    /// Stores (or replaces) the relation described by a Relation message and returns it.
    pub fn insert_relation(&mut self, message: &RelationMessage<'_>) -> Arc<Relation> {
        let columns: Arc<[Column]> = message
            .columns
            .iter()
            .map(|c| Column {
                name: Arc::from(c.name),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                is_key: c.is_key(),
            })
            .collect();
        let relation = Arc::new(Relation {
            oid: message.oid,
            schema: Arc::from(namespace_or_catalog(message.namespace)),
            table: Arc::from(message.name),
            replica_identity: message.replica_identity,
            columns,
        });
        self.relations.insert(message.oid, Arc::clone(&relation));
        relation
    }

    /// Stores (or replaces) the type name from a Type message.
    pub fn insert_type(&mut self, message: &TypeMessage<'_>) {
        self.types.insert(
            message.oid,
            TypeName {
                schema: Arc::from(namespace_or_catalog(message.namespace)),
                name: Arc::from(message.name),
            },
        );
    }

    /// The relation with this OID, if announced.
    pub fn relation(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// The name of a type announced by a Type message.
    pub fn type_name(&self, oid: u32) -> Option<&TypeName> {
        self.types.get(&oid)
    }

    /// Forgets all relations and types (a new stream announces them again).
    pub fn clear(&mut self) {
        self.relations.clear();
        self.types.clear();
    }
}

/// The schema name a message means: its namespace, or `pg_catalog` when empty.
fn namespace_or_catalog(namespace: &str) -> &str {
    if namespace.is_empty() {
        PG_CATALOG
    } else {
        namespace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::RelationColumn;

    /// A Relation message for table `name` with one key column `id`.
    fn message(name: &str) -> RelationMessage<'_> {
        RelationMessage {
            oid: 7,
            namespace: "",
            name,
            replica_identity: b'd',
            columns: vec![RelationColumn {
                flags: 1,
                name: "id",
                type_oid: 23,
                type_modifier: -1,
            }],
        }
    }

    #[test]
    fn new_relation_message_replaces_entry() {
        let mut cache = RelationCache::default();
        let first = cache.insert_relation(&message("a"));
        assert_eq!(&*first.schema, "pg_catalog");
        assert!(first.columns.first().is_some_and(|c| c.is_key));
        let second = cache.insert_relation(&message("b"));
        assert_eq!(cache.relations.len(), 1);
        assert_eq!(&*first.table, "a");
        assert_eq!(cache.relation(7).map(|r| &*r.table), Some("b"));
        assert!(Arc::ptr_eq(&second, cache.relation(7).unwrap()));
    }

    #[test]
    fn remembers_type_names() {
        let mut cache = RelationCache::default();
        cache.insert_type(&TypeMessage {
            oid: 70_000,
            namespace: "public",
            name: "severity",
        });
        let t = cache.type_name(70_000).unwrap();
        assert_eq!((&*t.schema, &*t.name), ("public", "severity"));
        cache.clear();
        assert!(cache.type_name(70_000).is_none());
        assert!(cache.relations.is_empty());
    }
}
