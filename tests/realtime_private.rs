//! Private channels authorized by `realtime.messages` policies, the way Supabase Realtime does:
//! read checks on join and token refresh, write checks on broadcast, and the `service_role`-only
//! behaviour of a database without the table.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, TestDb, Walcast};

/// The socket type.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long to wait for a frame that should come.
const WAIT: Duration = Duration::from_secs(10);

/// How long to listen for a frame that should not come.
const QUIET: Duration = Duration::from_millis(1500);

/// A Supabase-shaped `realtime.messages` with a `realtime.topic()` helper. `authenticated` may
/// read the topic named by its `sub` claim and `lobby`, and write broadcasts only to its own
/// topic; `anon` has no privileges at all.
const MESSAGES_SQL: &str = "
create schema realtime;
create table realtime.messages (
    id uuid not null default gen_random_uuid(),
    topic text not null,
    extension text not null,
    payload jsonb,
    event text,
    private boolean default true,
    updated_at timestamp not null default now(),
    inserted_at timestamp not null default now(),
    primary key (id, inserted_at)
);
alter table realtime.messages enable row level security;
create function realtime.topic() returns text language sql stable
    as $$ select current_setting('realtime.topic', true) $$;
grant usage on schema realtime to authenticated;
grant select, insert on realtime.messages to authenticated;
grant execute on function realtime.topic() to authenticated;
create policy read_own on realtime.messages for select to authenticated
    using (realtime.topic() in (current_setting('request.jwt.claims', true)::jsonb ->> 'sub', 'lobby'));
create policy write_own on realtime.messages for insert to authenticated
    with check (realtime.topic() = current_setting('request.jwt.claims', true)::jsonb ->> 'sub'
                and extension = 'broadcast');
";

/// A text frame from the server (serializer 2.0.0).
#[derive(Debug, Clone)]
struct Frame {
    /// Ref.
    r#ref: Option<String>,
    /// Topic.
    topic: String,
    /// Event.
    event: String,
    /// Payload.
    payload: Value,
}

/// A raw Realtime client speaking 2.0.0.
struct Rt {
    /// The socket.
    socket: Socket,
    /// Ref counter.
    next: u64,
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token for `role` with subject `sub`, valid for ten minutes.
fn token(role: &str, sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"role": role, "sub": sub, "exp": now() + 600, "iat": now()}),
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .expect("sign")
}

/// walcast with the test JWT secret.
async fn walcast(db: &TestDb) -> Walcast {
    Walcast::start_with_env(db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// A private join payload (broadcast with ack, presence as asked).
fn private_join(presence: bool) -> Value {
    json!({"config": {
        "broadcast": {"ack": true, "self": false},
        "presence": {"key": "", "enabled": presence},
        "postgres_changes": [],
        "private": true
    }})
}

/// The reason of an error reply for `sub_topic`.
fn unauthorized(sub_topic: &str) -> Value {
    json!({"status": "error", "response": {"reason": format!(
        "Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}"
    )}})
}

impl Rt {
    /// Connects with `token`.
    async fn connect(w: &Walcast, token: &str) -> Rt {
        let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={token}&vsn=2.0.0"));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("realtime connect");
        Rt { socket, next: 0 }
    }

    /// Sends a message; returns its ref.
    async fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        self.next += 1;
        let r = self.next.to_string();
        let frame = json!([join_ref, r, topic, event, payload]);
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
        r
    }

    /// The next text frame, or `None` on timeout or close.
    async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("json frame");
                    let s = |v: &Value| v.as_str().map(str::to_owned);
                    return Some(Frame {
                        r#ref: s(&v[1]),
                        topic: s(&v[2]).expect("topic"),
                        event: s(&v[3]).expect("event"),
                        payload: v[4].clone(),
                    });
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame matching `pred`, skipping others; panics on timeout.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) if pred(&f) => return f,
                Some(other) => skipped.push(other),
                None => panic!("no {what} within {WAIT:?}; skipped {skipped:?}"),
            }
        }
    }

    /// Asserts that no frame matching `pred` arrives within [`QUIET`].
    async fn expect_none(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) if pred(&f) => panic!("unexpected {what}: {f:?}"),
                Some(_) => continue,
                None => return,
            }
        }
    }

    /// Joins `topic`; returns the join ref and the reply payload.
    async fn join(&mut self, topic: &str, payload: Value) -> (String, Value) {
        let join_ref = (self.next + 1).to_string();
        let r = self.push(Some(&join_ref), topic, "phx_join", payload).await;
        let reply = self
            .wait_for("join reply", |f| {
                f.event == "phx_reply" && f.r#ref.as_deref() == Some(&r)
            })
            .await;
        (join_ref, reply.payload)
    }

    /// Broadcasts `n` on `topic` with an ack asked; returns the push's ref.
    async fn broadcast(&mut self, join_ref: &str, topic: &str, n: i64) -> String {
        self.push(
            Some(join_ref),
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": "note", "payload": {"n": n}}),
        )
        .await
    }
}

/// Whether `f` is the broadcast carrying `n` on `topic`.
fn is_note(f: &Frame, topic: &str, n: i64) -> bool {
    f.event == "broadcast" && f.topic == topic && f.payload["payload"]["n"] == n
}

/// Read policies decide joins (own topic yes, another user's no, anon no, service_role always);
/// write policies decide broadcasts (refused ones are dropped without a reply); a refreshed
/// token that may no longer read closes the channel.
#[tokio::test]
async fn policies_decide_private_channels() {
    let db = support::fresh_db().await;
    db.client()
        .await
        .batch_execute(MESSAGES_SQL)
        .await
        .expect("realtime.messages");
    let w = walcast(&db).await;

    let mut service = Rt::connect(&w, &token("service_role", "svc")).await;
    for topic in ["realtime:user-1", "realtime:user-2", "realtime:lobby"] {
        let (_, reply) = service.join(topic, private_join(false)).await;
        assert_eq!(reply["status"], "ok", "service_role joins {topic}: {reply}");
    }

    let mut user = Rt::connect(&w, &token("authenticated", "user-1")).await;
    let (own, reply) = user.join("realtime:user-1", private_join(true)).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let (_, reply) = user.join("realtime:user-2", private_join(false)).await;
    assert_eq!(reply, unauthorized("user-2"));
    let (lobby, reply) = user.join("realtime:lobby", private_join(false)).await;
    assert_eq!(reply["status"], "ok", "{reply}");

    let mut anon = Rt::connect(&w, &token("anon", "user-1")).await;
    let (_, reply) = anon.join("realtime:user-1", private_join(false)).await;
    assert_eq!(reply, unauthorized("user-1"));

    // Writing to its own topic is allowed: acked and delivered.
    let r = user.broadcast(&own, "realtime:user-1", 1).await;
    let ack = user
        .wait_for("ack", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(ack.payload, json!({"status": "ok", "response": {}}));
    service
        .wait_for("own-topic broadcast", |f| is_note(f, "realtime:user-1", 1))
        .await;

    // Readable but not writable: dropped, no reply.
    let r = user.broadcast(&lobby, "realtime:lobby", 2).await;
    service
        .expect_none("refused broadcast", |f| is_note(f, "realtime:lobby", 2))
        .await;
    user.expect_none("reply to a refused broadcast", |f| {
        f.r#ref.as_deref() == Some(&r)
    })
    .await;

    // Presence is readable on its own topic but the policies allow writing broadcasts only:
    // the track is dropped, no reply and no presence_diff.
    let r = user
        .push(
            Some(&own),
            "realtime:user-1",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"online": true}}),
        )
        .await;
    user.expect_none("reply or diff of a refused track", |f| {
        f.r#ref.as_deref() == Some(&r) || f.event == "presence_diff"
    })
    .await;

    // A public channel of the same name is another channel, open to everyone.
    let (_, reply) = anon
        .join("realtime:user-1", json!({"config": {"private": false}}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");

    // A refreshed token for another user may no longer read user-1's topic.
    user.push(
        Some(&own),
        "realtime:user-1",
        "access_token",
        json!({"access_token": token("authenticated", "user-2")}),
    )
    .await;
    let f = user
        .wait_for("revocation", |f| {
            f.topic == "realtime:user-1" && f.event == "system"
        })
        .await;
    assert_eq!(f.payload["status"], "error");
    assert_eq!(
        f.payload["message"],
        "You no longer have permission to read from this Channel topic: user-1"
    );
    user.wait_for("phx_close", |f| {
        f.topic == "realtime:user-1" && f.event == "phx_close"
    })
    .await;
    // Every probe was rolled back.
    let left: i64 = db
        .client()
        .await
        .query_one("select count(*) from realtime.messages", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
}

/// Without `realtime.messages` private channels stay `service_role` only.
#[tokio::test]
async fn without_messages_table_private_is_service_role_only() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut user = Rt::connect(&w, &token("authenticated", "user-1")).await;
    let (_, reply) = user.join("realtime:user-1", private_join(false)).await;
    assert_eq!(reply, unauthorized("user-1"));
    let mut service = Rt::connect(&w, &token("service_role", "svc")).await;
    let (_, reply) = service.join("realtime:user-1", private_join(false)).await;
    assert_eq!(reply["status"], "ok", "{reply}");
}
