//! What one viewer may see of a change, once the gate has said the row is visible: only the
//! columns its role may read, and a DELETE's old row cut down to the primary key when the table
//! has row level security (the deleted row can no longer be checked against the policies).
//! Pure: no I/O.

use std::sync::Arc;

use crate::catalog::TableFacts;
use crate::decode::{Change, Operation, Row};

/// The change as a role sees it: `columns` are the columns it may read (`None`: all);
/// `facts` describe the change's table (unknown facts: row level security is assumed on and
/// the replica identity key stands in for the primary key). A DELETE of a table with row level
/// security and no primary key keeps no old values at all.
pub fn restrict(change: &Change, columns: Option<&[String]>, facts: Option<&TableFacts>) -> Change {
    let mut out = change.clone();
    let readable = |name: &str| columns.is_none_or(|c| c.iter().any(|c| c == name));
    let cut = |row: &mut Row| {
        row.values.retain(|name, _| readable(name));
        row.unchanged_toast.retain(|name| readable(name));
    };
    if change.op == Operation::Delete && facts.is_none_or(|f| f.rls_enabled) {
        let key: Vec<Arc<str>> = match facts {
            Some(f) => f
                .primary_key
                .iter()
                .map(|k| Arc::from(k.as_str()))
                .collect(),
            None => change
                .relation
                .columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| Arc::clone(&c.name))
                .collect(),
        };
        if let Some(old) = out.old_record.as_mut() {
            old.values
                .retain(|name, _| key.iter().any(|k| &**k == name));
            old.unchanged_toast.clear();
        }
    }
    if let Some(r) = out.record.as_mut() {
        cut(r);
    }
    if let Some(r) = out.old_record.as_mut() {
        cut(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn facts(rls: bool) -> TableFacts {
        TableFacts {
            oid: 1,
            schema: "public".into(),
            table: "monitoring_events".into(),
            published: true,
            rls_enabled: rls,
            columns: vec![
                ("id".into(), "uuid".into()),
                ("event_type".into(), "text".into()),
                ("source".into(), "text".into()),
            ],
            primary_key: vec!["id".into()],
        }
    }

    #[test]
    fn columns_and_deletes() {
        let insert = Change::sample(1);
        let cols = vec!["id".to_string(), "source".to_string()];
        let seen = restrict(&insert, Some(&cols), Some(&facts(true)));
        let names: Vec<&str> = seen
            .record
            .as_ref()
            .unwrap()
            .values
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names, ["id", "source"]);
        assert_eq!(restrict(&insert, None, Some(&facts(true))), insert);

        let mut delete = Change::sample(2);
        delete.op = Operation::Delete;
        delete.old_record = delete.record.take();
        let seen = restrict(&delete, None, Some(&facts(true)));
        assert_eq!(
            serde_json::Value::Object(seen.old_record.unwrap().values),
            json!({"id": uuid::Uuid::from_u128(2).to_string()})
        );
        // Without row level security a DELETE keeps what it carries.
        let seen = restrict(&delete, None, Some(&facts(false)));
        assert_eq!(seen.old_record, delete.old_record);
        // Unknown facts: the stricter choice, key columns only.
        let seen = restrict(&delete, None, None);
        assert_eq!(seen.old_record.unwrap().values.len(), 1);
        // No primary key under row level security: nothing of the old row.
        let mut keyless = facts(true);
        keyless.primary_key.clear();
        let seen = restrict(&delete, None, Some(&keyless));
        assert!(seen.old_record.unwrap().values.is_empty());
    }
}
