//! Tests: stream.
use crate::support;
#[tokio::test]
async fn stream_smoke() {
    let db = support::fresh_db().await;
    assert_eq!(db.count().await, 0);
}
