//! Tests: migrations.
use crate::support;
#[tokio::test]
async fn migrations_smoke() {
    let db = support::fresh_db().await;
    assert_eq!(db.count().await, 0);
}
