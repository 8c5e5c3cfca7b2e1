//! The Realtime row level security gate (`RlsGate`) on its own, against a real database: the
//! batched call survives an asker that goes away mid-call.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use walcast::access::{ClaimsGroup, RlsGate, RowKey};
use walcast::auth::Verifier;
use walcast::decode::Lsn;
use walcast::realtime::verify_token;

use crate::support;

/// The claims group of an `authenticated` user `sub` (fixed expiry: equal claims, equal group).
fn group(sub: &str, exp: i64) -> Arc<ClaimsGroup> {
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"role": "authenticated", "exp": exp, "sub": sub}),
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .expect("sign");
    verify_token(
        &Verifier::new(support::SECRET),
        &token,
        chrono::Utc::now().timestamp(),
    )
    .expect("valid token")
    .group
}

/// The session leading a call goes away while the call waits for its transaction to become
/// visible: its checks go back to the queue, the next asker's call answers them and its own,
/// and nobody is left waiting or answered wrongly.
#[tokio::test]
async fn a_call_whose_asker_goes_away_is_taken_over() {
    let db = support::fresh_db().await;
    let pool = walcast::db::pool(&db.url, 4, "test").unwrap();
    let gate = Arc::new(RlsGate::new(pool, "walcast_events"));
    // A transaction the gate sees streamed but not yet committed: the call waits for it.
    let mut writer = db.client().await;
    let tx = writer.transaction().await.unwrap();
    let row = tx
        .query_one(
            "insert into public.monitoring_events (event_type, source) values ('cpu', 'h') \
             returning id, xmin::text::int8",
            &[],
        )
        .await
        .unwrap();
    let (id, xid): (uuid::Uuid, i64) = (row.get(0), row.get(1));
    let xid = u32::try_from(xid).unwrap();
    let table = gate.tables().await.unwrap();
    let table = table.named("public", "monitoring_events").unwrap().oid;
    let id = RowKey {
        table,
        key: json!({ "id": id }).to_string().into(),
    };
    let exp = chrono::Utc::now().timestamp() + 600;
    let (leader_group, waiter_group) = (group("leader", exp), group("waiter", exp));
    let lsn = Lsn(0x77);

    let leader = {
        let (gate, g, id) = (Arc::clone(&gate), Arc::clone(&leader_group), id.clone());
        tokio::spawn(async move { gate.visible(&g, lsn, xid, &[id]).await })
    };
    let started = support::wait_until(Duration::from_secs(10), || async { gate.queries() == 1 });
    assert!(started.await, "the leader's call did not start");
    let waiter = {
        let (gate, g, id) = (Arc::clone(&gate), Arc::clone(&waiter_group), id.clone());
        tokio::spawn(async move { gate.visible(&g, lsn, xid, &[id]).await })
    };
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    tx.commit().await.unwrap();

    let seen = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered")
        .unwrap()
        .unwrap();
    assert!(seen.contains(&id), "the committed row is visible");
    assert_eq!(gate.queries(), 2, "the waiter ran one call for both checks");
    // The leader's check was answered by that call: asking again needs no call.
    let again = gate
        .visible(&leader_group, lsn, xid, std::slice::from_ref(&id))
        .await
        .unwrap();
    assert!(again.contains(&id));
    assert_eq!(gate.queries(), 2);
}
