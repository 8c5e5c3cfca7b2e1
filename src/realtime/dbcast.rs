//! Broadcast from Database: rows inserted into `realtime.messages` (by `realtime.send`,
//! `realtime.send_binary`, `realtime.broadcast_changes` or a client's `persist`) reach the
//! Realtime channels of their topic on this node, through the [`Bus`].
//!
//! The replication reader streams the table from its own publication
//! ([`MESSAGES_PUBLICATION`]) and hands its rows to this module's task over a bounded queue
//! ([`DB_BROADCAST_QUEUE`]); they never reach the hub, so no `postgres_changes` binding and no
//! `/ws` subscription sees them. The task turns each `broadcast` row into a user broadcast with
//! metadata `{"id": <row id>}`: a row with `private = true` goes to the private channels of the
//! topic only (whose members the policies let in when they joined), any other to the public
//! ones. Bus sends never wait, so a slow client never slows the task or the reader.
//!
//! A second task keeps the daily partitions of a `realtime.messages` walcast created
//! ([`spawn_retention_task`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::bus::{Broadcast, BroadcastBody, Bus, TopicKey};
use super::messages::{MessageStore, StoredBroadcast};
use super::protocol::frame::PayloadEncoding;
use super::protocol::join::JoinConfig;
use super::protocol::text::JoinError;
use crate::decode::{Change, Cursor, Operation};

/// The publication of `realtime.messages` (created by the migrations).
pub const MESSAGES_PUBLICATION: &str = "walcast_messages";
/// Schema of the message table.
pub const MESSAGES_SCHEMA: &str = "realtime";
/// The message table.
pub const MESSAGES_TABLE: &str = "messages";

/// Rows of `realtime.messages` the reader may queue for the task. The task only parses rows
/// and queues frames on the bus without waiting, so it keeps up with any stream the reader
/// can decode; 4096 absorbs a burst of a large transaction. When it is full the reader drops
/// the row (and logs it) rather than wait.
pub const DB_BROADCAST_QUEUE: usize = 4096;

/// How often the partitions of walcast's `realtime.messages` are looked after.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// How many days ahead daily partitions are created.
pub const PARTITION_DAYS_AHEAD: u32 = 3;

/// One broadcast read from a `realtime.messages` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbMessage {
    /// The row id.
    pub id: Arc<str>,
    /// Where it goes on the bus.
    pub key: TopicKey,
    /// What members receive.
    pub body: BroadcastBody,
}

/// The metadata of a live message from the database: `{"id": ...}`.
pub fn live_meta(id: &str) -> String {
    serde_json::json!({ "id": id }).to_string()
}

/// The metadata of a replayed message: `{"replayed": true, "id": ...}`.
pub fn replayed_meta(id: &str) -> String {
    serde_json::json!({ "replayed": true, "id": id }).to_string()
}

/// The body of a stored broadcast: a JSON payload (`null` when there is none), or bytes.
pub fn stored_body(
    event: String,
    payload: Option<String>,
    binary: Option<Vec<u8>>,
    meta: String,
) -> BroadcastBody {
    let (encoding, payload) = match (binary, payload) {
        (Some(bytes), None) => (PayloadEncoding::Binary, bytes),
        (_, Some(json)) => (PayloadEncoding::Json, json.into_bytes()),
        (None, None) => (PayloadEncoding::Json, b"null".to_vec()),
    };
    BroadcastBody::Binary {
        event,
        metadata: Some(meta),
        encoding,
        payload,
    }
}

/// The body of a replayed message.
pub fn replayed_body(m: StoredBroadcast) -> BroadcastBody {
    let meta = replayed_meta(&m.id);
    stored_body(m.event, m.payload, m.binary, meta)
}

/// The stored broadcasts a private channel receives when it joins (`broadcast.replay`), and
/// their ids, so that the same messages arriving live are not delivered twice.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The messages, oldest first, with `meta: {"replayed": true, "id": ...}`.
    pub messages: Vec<Broadcast>,
    /// Their row ids.
    pub ids: HashSet<Arc<str>>,
}

impl Replayed {
    /// Whether `b` is a live copy of a replayed message.
    pub fn suppresses(&self, b: &Broadcast) -> bool {
        b.stored_id().is_some_and(|id| self.ids.contains(id))
    }
}

/// The replay a join asks for with `broadcast.replay` on channel `topic` (`realtime:<sub_topic>`):
/// `None` without one; the join error Supabase gives on a public channel, for values that are
/// not integers, or when the stored messages cannot be read. The channel must already be
/// authorized: the messages are read as walcast's own user.
pub async fn replay_for_join(
    store: &MessageStore,
    config: &JoinConfig,
    topic: &str,
    sub_topic: &str,
) -> Result<Option<Replayed>, JoinError> {
    if !config.replay {
        return Ok(None);
    }
    if !config.private {
        return Err(JoinError::ReplayOnPublicChannel);
    }
    let Some(window) = config.replay_window else {
        return Err(JoinError::ReplayParamsInvalid);
    };
    let stored = store
        .replay(sub_topic, window.since_ms, window.limit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "realtime: could not read the broadcasts to replay");
            JoinError::ReplayFailed
        })?;
    let mut replayed = Replayed::default();
    for m in stored {
        let id: Arc<str> = Arc::from(m.id.as_str());
        replayed.ids.insert(Arc::clone(&id));
        replayed
            .messages
            .push(Broadcast::stored(topic.to_owned(), replayed_body(m), id));
    }
    Ok(Some(replayed))
}

/// Decodes a `bytea` value in Postgres' hex text form (`\x0a1b`).
fn bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `change` is a row of the message table.
pub fn is_message_row(change: &Change) -> bool {
    &*change.relation.schema == MESSAGES_SCHEMA && &*change.relation.table == MESSAGES_TABLE
}

/// The broadcast a `realtime.messages` change carries: inserts of `broadcast` rows with a
/// topic and an event; anything else (presence rows, updates) is `None`.
pub fn message_of(change: &Change) -> Option<DbMessage> {
    if change.op != Operation::Insert || !is_message_row(change) {
        return None;
    }
    let row = &change.record.as_ref()?.values;
    let text = |k: &str| row.get(k).and_then(Value::as_str);
    if text("extension") != Some("broadcast") {
        return None;
    }
    let id: Arc<str> = Arc::from(text("id")?);
    let topic = text("topic")?;
    let event = text("event")?.to_owned();
    let private = row.get("private").and_then(Value::as_bool).unwrap_or(false);
    let payload = match row.get("payload") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.to_string()),
    };
    let binary = text("binary_payload").and_then(bytea);
    let body = stored_body(event, payload, binary, live_meta(&id));
    Some(DbMessage {
        id,
        key: TopicKey {
            private,
            topic: format!("realtime:{topic}"),
        },
        body,
    })
}

/// Starts the task that delivers `realtime.messages` rows from `rx` to the bus; it ends when
/// the reader (the only sender) is gone. Rows the reader streams again after a reconnect
/// (at or before the last cursor) and rows this node relayed itself (`store`'s echoes) are
/// skipped.
pub fn spawn_db_broadcast_task(
    mut rx: mpsc::Receiver<Change>,
    bus: Arc<Bus>,
    store: Arc<MessageStore>,
    metrics: Arc<crate::metrics::Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Cursor> = None;
        while let Some(change) = rx.recv().await {
            if last.is_some_and(|l| change.cursor <= l) {
                continue;
            }
            last = Some(change.cursor);
            let Some(m) = message_of(&change) else {
                continue;
            };
            if let Ok(id) = Uuid::parse_str(&m.id)
                && store.echoes().take(&id)
            {
                continue;
            }
            metrics.db_broadcasts.inc();
            let n = bus.publish_stored(&m.key, m.body, m.id);
            tracing::trace!(topic = %m.key.topic, private = m.key.private, members = n, "broadcast from database");
        }
    })
}

/// Starts the task that keeps the daily partitions of walcast's `realtime.messages`: at once
/// and every [`RETENTION_INTERVAL`], it creates those up to [`PARTITION_DAYS_AHEAD`] days
/// ahead and drops those older than `keep_days`. A `realtime.messages` walcast did not create
/// (a Supabase project's) is left alone. Failures are logged and tried again next time.
pub fn spawn_retention_task(
    store: Arc<MessageStore>,
    keep_days: u32,
    token: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = token.cancelled() => return,
                // PRIORITY 2: the next round.
                _ = tick.tick() => {}
            }
            match store.maintain(keep_days, PARTITION_DAYS_AHEAD).await {
                Ok(done) => {
                    for (action, partition) in done {
                        tracing::info!(action = %action, partition = %partition, "realtime.messages partition");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "could not maintain the partitions of realtime.messages; trying again later");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Column, Lsn, Relation, Row};
    use crate::realtime::bus::Broadcast;
    use crate::realtime::protocol::frame::Vsn;
    use axum::extract::ws::Message;
    use serde_json::{Map, json};

    fn change(schema: &str, values: Value, op: Operation) -> Change {
        let relation = Arc::new(Relation {
            oid: 7,
            schema: schema.into(),
            table: "messages".into(),
            replica_identity: b'd',
            columns: Arc::from(Vec::<Column>::new()),
        });
        let values: Map<String, Value> = values.as_object().unwrap().clone();
        Change {
            cursor: Cursor {
                commit_lsn: Lsn(1),
                index: 0,
            },
            xid: 1,
            commit_ts: chrono::Utc::now(),
            relation,
            op,
            record: Some(Row {
                values,
                unchanged_toast: Vec::new(),
            }),
            old_record: None,
        }
    }

    #[test]
    fn a_send_row_is_a_private_broadcast_with_its_id() {
        let row = json!({"id": "2b0c3c8e-0000-4000-8000-000000000001", "topic": "room",
            "extension": "broadcast", "event": "new", "private": true,
            "payload": {"n": 1, "id": "2b0c3c8e-0000-4000-8000-000000000001"}, "binary_payload": null});
        let m = message_of(&change("realtime", row, Operation::Insert)).unwrap();
        assert_eq!(
            m.key,
            TopicKey {
                private: true,
                topic: "realtime:room".into()
            }
        );
        let b = Broadcast::new(m.key.topic.clone(), m.body);
        let Some(Message::Text(v1)) = b.frame(Vsn::V1) else {
            panic!("v1 gets text")
        };
        let v: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(v["payload"]["event"], "new");
        assert_eq!(v["payload"]["payload"]["n"], 1);
        assert_eq!(
            v["payload"]["meta"]["id"],
            "2b0c3c8e-0000-4000-8000-000000000001"
        );
        assert!(matches!(b.frame(Vsn::V2), Some(Message::Binary(_))));
    }

    #[test]
    fn send_binary_rows_carry_bytes_and_other_rows_are_ignored() {
        let row = json!({"id": "x", "topic": "t", "extension": "broadcast", "event": "b",
            "private": null, "payload": null, "binary_payload": "\\xdead00"});
        let m = message_of(&change("realtime", row.clone(), Operation::Insert)).unwrap();
        assert!(!m.key.private, "NULL private is public");
        let BroadcastBody::Binary {
            encoding, payload, ..
        } = m.body
        else {
            panic!("binary body")
        };
        assert_eq!(encoding, PayloadEncoding::Binary);
        assert_eq!(payload, vec![0xde, 0xad, 0x00]);
        assert!(message_of(&change("public", row.clone(), Operation::Insert)).is_none());
        assert!(message_of(&change("realtime", row, Operation::Update)).is_none());
        let presence = json!({"id": "x", "topic": "t", "extension": "presence", "event": "e"});
        assert!(message_of(&change("realtime", presence, Operation::Insert)).is_none());
    }

    #[test]
    fn bytea_hex_text() {
        assert_eq!(bytea("\\x"), Some(vec![]));
        assert_eq!(bytea("\\x0aff"), Some(vec![10, 255]));
        assert_eq!(bytea("\\x0"), None);
        assert_eq!(bytea("0a"), None);
        assert_eq!(bytea("\\xzz"), None);
    }

    #[test]
    fn replayed_messages_say_so() {
        let body = replayed_body(StoredBroadcast {
            id: "i".into(),
            event: "e".into(),
            payload: Some("{\"a\":1}".into()),
            binary: None,
        });
        let BroadcastBody::Binary { metadata, .. } = body else {
            panic!("binary body")
        };
        let meta: Value = serde_json::from_str(&metadata.unwrap()).unwrap();
        assert_eq!(meta, json!({"replayed": true, "id": "i"}));
    }

    #[test]
    fn a_replayed_message_is_not_delivered_again_live() {
        let mut r = Replayed::default();
        r.ids.insert(Arc::from("a"));
        let body = || BroadcastBody::Json("{}".into());
        let live = |id: &str| Broadcast::stored("realtime:t".into(), body(), Arc::from(id));
        assert!(r.suppresses(&live("a")));
        assert!(!r.suppresses(&live("b")));
        assert!(!r.suppresses(&Broadcast::new("realtime:t".into(), body())));
    }
}
