//! The Supabase Realtime endpoint against a real walcast and a real Postgres, spoken to by a raw
//! WebSocket client in both serializer versions.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use walcast::realtime::protocol::frame::{
    PayloadEncoding, UserBroadcast, encode_user_broadcast_push, parse_server_binary,
};

use crate::support::{self, TestDb, Walcast};

/// The socket type.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long to wait for a frame that should come.
const WAIT: Duration = Duration::from_secs(10);

/// How long to listen for a frame that should not come.
const QUIET: Duration = Duration::from_millis(1500);

/// A frame from the server, either serializer.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// Join ref (never present in 1.0.0).
    join_ref: Option<String>,
    /// Ref.
    pub(crate) r#ref: Option<String>,
    /// Topic.
    pub(crate) topic: String,
    /// Event.
    pub(crate) event: String,
    /// Payload.
    pub(crate) payload: Value,
}

/// What the server sent.
#[derive(Debug, Clone)]
pub(crate) enum In {
    /// A text frame.
    Text(Frame),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// A raw Realtime client.
pub(crate) struct Rt {
    /// The socket.
    socket: Socket,
    /// Speaks 2.0.0 (arrays) rather than 1.0.0 (objects).
    v2: bool,
    /// Ref counter.
    next: u64,
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token with `claims`, signed with the test secret.
fn sign(claims: Value) -> String {
    support::sign(claims)
}

/// A token for `role` valid for `ttl` seconds.
fn token(role: &str, ttl: i64) -> String {
    sign(json!({"role": role, "exp": now() + ttl, "iat": now(), "sub": "user-1"}))
}

/// walcast with the test JWT secret.
/// A verifier that lets tokens name the roles the gate tests use besides the API roles (the gate
/// itself is what those tests exercise).
fn any_role_verifier() -> walcast::auth::Verifier {
    let mut policy = walcast::auth::Policy::default();
    policy.roles.push("no_such_role".into());
    walcast::auth::Verifier::with_policy(support::SECRET, policy)
}

async fn walcast(db: &TestDb) -> Walcast {
    Walcast::start_with_env(db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// The endpoint URL.
fn url(w: &Walcast, apikey: Option<&str>, vsn: Option<&str>) -> String {
    let mut q = Vec::new();
    if let Some(k) = apikey {
        q.push(format!("apikey={k}"));
    }
    if let Some(v) = vsn {
        q.push(format!("vsn={v}"));
    }
    w.ws_url(&format!("/realtime/v1/websocket?{}", q.join("&")))
}

/// Parses a text frame.
fn parse(v2: bool, text: &str) -> Frame {
    let v: Value = serde_json::from_str(text).expect("json frame");
    let s = |v: &Value| v.as_str().map(str::to_owned);
    if v2 {
        let a = v.as_array().expect("v2 frames are arrays");
        assert_eq!(a.len(), 5, "{text}");
        Frame {
            join_ref: s(&a[0]),
            r#ref: s(&a[1]),
            topic: s(&a[2]).expect("topic"),
            event: s(&a[3]).expect("event"),
            payload: a[4].clone(),
        }
    } else {
        let o = v.as_object().expect("v1 frames are objects");
        assert!(
            !o.contains_key("join_ref"),
            "v1 never sends join_ref: {text}"
        );
        assert_eq!(o.len(), 4, "{text}");
        Frame {
            join_ref: None,
            r#ref: s(&o["ref"]),
            topic: s(&o["topic"]).expect("topic"),
            event: s(&o["event"]).expect("event"),
            payload: o["payload"].clone(),
        }
    }
}

impl Rt {
    /// Connects with `token`, serializer 2.0.0 when `v2`.
    pub(crate) async fn connect(w: &Walcast, token: &str, v2: bool) -> Rt {
        Rt::connect_with(w, token, v2, "").await
    }

    /// Connects with `token` and more query parameters (`extra`, already encoded).
    pub(crate) async fn connect_with(w: &Walcast, token: &str, v2: bool, extra: &str) -> Rt {
        let vsn = if v2 { "2.0.0" } else { "1.0.0" };
        let url = format!("{}&{extra}", url(w, Some(token), Some(vsn)));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("realtime connect");
        Rt {
            socket,
            v2,
            next: 0,
        }
    }

    /// Sends a message; returns its ref.
    pub(crate) async fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        self.next += 1;
        let r = self.next.to_string();
        let frame = if self.v2 {
            json!([join_ref, r, topic, event, payload])
        } else {
            json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": join_ref})
        };
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
        r
    }

    /// Sends a binary frame.
    pub(crate) async fn push_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::binary(bytes))
            .await
            .expect("send binary");
    }

    /// The next frame, or `None` on timeout or close.
    pub(crate) async fn next(&mut self, timeout: Duration) -> Option<In> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => return Some(In::Text(parse(self.v2, &t))),
                Ok(Message::Binary(b)) => return Some(In::Binary(b.to_vec())),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next text frame matching `pred`, skipping others; panics on timeout.
    pub(crate) async fn wait_for(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(In::Text(f)) if pred(&f) => return f,
                Some(other) => skipped.push(other),
                None => panic!("no {what} within {WAIT:?}; skipped {skipped:?}"),
            }
        }
    }

    /// The next binary frame; panics on timeout.
    async fn wait_binary(&mut self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(In::Binary(b)) => return b,
                Some(_) => continue,
                None => panic!("no binary frame within {WAIT:?}"),
            }
        }
    }

    /// Asserts that no text frame matching `pred` arrives within [`QUIET`].
    pub(crate) async fn expect_none(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(In::Text(f)) if pred(&f) => panic!("unexpected {what}: {f:?}"),
                Some(_) => continue,
                None => return,
            }
        }
    }

    /// Joins `topic`; returns the join ref and the reply.
    pub(crate) async fn join(&mut self, topic: &str, payload: Value) -> (String, Frame) {
        self.next += 1;
        let join_ref = self.next.to_string();
        self.next -= 1;
        let r = self.push(Some(&join_ref), topic, "phx_join", payload).await;
        assert_eq!(r, join_ref);
        let reply = self
            .wait_for("join reply", |f| {
                f.event == "phx_reply" && f.r#ref.as_deref() == Some(&join_ref)
            })
            .await;
        (join_ref, reply)
    }

    /// A heartbeat round trip.
    pub(crate) async fn heartbeat(&mut self) {
        let r = self.push(None, "phoenix", "heartbeat", json!({})).await;
        let f = self
            .wait_for("heartbeat reply", |f| {
                f.topic == "phoenix" && f.r#ref.as_deref() == Some(&r)
            })
            .await;
        assert_eq!(f.event, "phx_reply");
        assert_eq!(f.payload, json!({"status":"ok","response":{}}));
        assert_eq!(f.join_ref, None);
    }
}

/// A join payload with `postgres_changes` bindings.
pub(crate) fn pg_join(bindings: Value) -> Value {
    json!({"config": {
        "broadcast": {"ack": false, "self": false},
        "presence": {"key": "", "enabled": false},
        "postgres_changes": bindings,
        "private": false
    }})
}

/// The all-changes binding on the served table.
pub(crate) fn all_changes() -> Value {
    json!([{"event": "*", "schema": "public", "table": "monitoring_events"}])
}

/// Inserts one row; returns its id.
pub(crate) async fn insert(db: &TestDb, source: &str) -> String {
    let c = db.client().await;
    let row = c
        .query_one(
            "insert into public.monitoring_events (event_type, source, data) values ('cpu', $1, '{\"v\":1}') returning id::text",
            &[&source],
        )
        .await
        .expect("insert");
    row.get(0)
}

/// Waits for the `system` message of a postgres_changes subscription.
pub(crate) async fn subscribed(rt: &mut Rt, topic: &str) -> Frame {
    rt.wait_for("system message", |f| {
        f.topic == topic && f.event == "system"
    })
    .await
}

/// Waits for a postgres_changes frame whose record or old_record has `id`.
pub(crate) async fn change_for(rt: &mut Rt, id: &str) -> Frame {
    rt.wait_for("postgres_changes", |f| {
        f.event == "postgres_changes"
            && (f.payload["data"]["record"]["id"] == id
                || f.payload["data"]["old_record"]["id"] == id)
    })
    .await
}

/// The token is checked before the upgrade: 401/400/503 with Realtime's error bodies.
#[tokio::test]
async fn upgrade_refused_with_bad_tokens() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let refused = |u: String| async move {
        match tokio_tungstenite::connect_async(u).await {
            Ok(_) => panic!("upgrade accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null")).unwrap();
                (resp.status().as_u16(), body)
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert_eq!(
        refused(url(&w, None, Some("2.0.0"))).await,
        (401, json!({"error": "API key is missing"}))
    );
    let expired = sign(json!({"role": "anon", "exp": now() - 10}));
    assert_eq!(
        refused(url(&w, Some(&expired), Some("2.0.0"))).await,
        (401, json!({"error": "Token has expired"}))
    );
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"role": "anon", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .unwrap();
    assert_eq!(
        refused(url(&w, Some(&forged), None)).await,
        (401, json!({"error": "Failed to validate JWT signature"}))
    );
    assert_eq!(
        refused(url(&w, Some("not-a-jwt"), None)).await,
        (
            401,
            json!({"error": "The token provided is not a valid JWT"})
        )
    );
    let no_role = sign(json!({"exp": now() + 60}));
    assert_eq!(
        refused(url(&w, Some(&no_role), None)).await,
        (
            401,
            json!({"error": "Fields `role` and `exp` are required in JWT"})
        )
    );
    let (status, body) = refused(url(&w, Some(&token("anon", 60)), Some("9.9.9"))).await;
    assert_eq!(status, 400, "{body}");
    // The legacy path serves the same endpoint.
    let u = w.ws_url(&format!(
        "/socket/websocket?apikey={}&vsn=2.0.0",
        token("anon", 60)
    ));
    assert!(tokio_tungstenite::connect_async(u).await.is_ok());

    // Without a JWT secret the endpoint says what is missing.
    let db2 = support::fresh_db().await;
    let plain = Walcast::start(&db2, &[]).await;
    let (status, body) = refused(url(&plain, Some(&token("anon", 60)), None)).await;
    assert_eq!(status, 503);
    assert!(
        body["error"].as_str().unwrap().contains("--jwt-secret"),
        "{body}"
    );
}

/// vsn 2.0.0: join reply with binding ids, the system message, INSERT/UPDATE/DELETE payloads, leave.
#[tokio::test]
async fn v2_join_and_change_payloads() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut rt = Rt::connect(&w, &token("service_role", 600), true).await;
    let topic = "realtime:room1";
    let (join_ref, reply) = rt.join(topic, pg_join(all_changes())).await;
    assert_eq!(reply.join_ref.as_deref(), Some(join_ref.as_str()));
    assert_eq!(reply.payload["status"], "ok");
    let bindings = reply.payload["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(bindings.len(), 1);
    let id = bindings[0]["id"].as_u64().unwrap();
    assert_eq!(
        bindings[0],
        json!({"id": id, "event": "*", "schema": "public", "table": "monitoring_events"})
    );
    let sys = subscribed(&mut rt, topic).await;
    assert_eq!(sys.join_ref.as_deref(), Some(join_ref.as_str()));
    assert_eq!(sys.r#ref, None);
    assert_eq!(
        sys.payload,
        json!({"extension":"postgres_changes","status":"ok","message":"Subscribed to PostgreSQL","channel":"room1"})
    );

    let row = insert(&db, "host-1").await;
    let f = change_for(&mut rt, &row).await;
    assert_eq!((f.join_ref.as_deref(), f.r#ref.as_deref()), (None, None));
    assert_eq!(f.topic, topic);
    assert_eq!(f.payload["ids"], json!([id]));
    let data = &f.payload["data"];
    assert_eq!(data["schema"], "public");
    assert_eq!(data["table"], "monitoring_events");
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["errors"], Value::Null);
    assert!(data.get("old_record").is_none());
    let ts = data["commit_timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "commit_timestamp {ts}"
    );
    assert_eq!(data["record"]["source"], "host-1");
    assert_eq!(data["record"]["data"], json!({"v": 1}));
    assert!(
        data["record"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );
    let columns: Vec<(String, String)> = data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(columns[0], ("id".into(), "uuid".into()));
    assert!(columns.contains(&("data".into(), "jsonb".into())));
    assert!(columns.contains(&("timestamp".into(), "timestamptz".into())));

    let c = db.client().await;
    c.execute(
        "update public.monitoring_events set source = 'host-9' where id = $1::text::uuid",
        &[&row],
    )
    .await
    .unwrap();
    let f = change_for(&mut rt, &row).await;
    assert_eq!(f.payload["data"]["type"], "UPDATE");
    assert_eq!(f.payload["data"]["record"]["source"], "host-9");
    assert_eq!(f.payload["data"]["old_record"], json!({"id": row}));

    c.execute(
        "delete from public.monitoring_events where id = $1::text::uuid",
        &[&row],
    )
    .await
    .unwrap();
    let f = change_for(&mut rt, &row).await;
    assert_eq!(f.payload["data"]["type"], "DELETE");
    assert_eq!(f.payload["data"]["old_record"], json!({"id": row}));
    assert!(f.payload["data"].get("record").is_none());

    // Leave: reply, then phx_close with ref = join_ref.
    let r = rt
        .push(Some(&join_ref), topic, "phx_leave", json!({}))
        .await;
    let f = rt
        .wait_for("leave reply", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(f.payload, json!({"status":"ok","response":{}}));
    let f = rt.wait_for("phx_close", |f| f.event == "phx_close").await;
    assert_eq!(
        (f.join_ref.as_deref(), f.r#ref.as_deref()),
        (Some(join_ref.as_str()), Some(join_ref.as_str()))
    );
    assert_eq!(f.payload, json!({}));
}

/// vsn 1.0.0: filters, event types, one frame per channel with every matching id, legacy topics.
#[tokio::test]
async fn v1_filters_event_types_and_shared_frames() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut rt = Rt::connect(&w, &token("service_role", 600), false).await;
    // Broadcast-only join in v1: no join_ref key, empty bindings.
    let (_, reply) = rt.join("realtime:plain", json!({"config": {}})).await;
    assert_eq!(
        reply.payload,
        json!({"status":"ok","response":{"postgres_changes":[]}})
    );
    // Legacy form: the topic names the subscription; events are the operations.
    let legacy = "realtime:public:monitoring_events:source=eq.host-3";
    let (_, reply) = rt.join(legacy, json!({})).await;
    assert_eq!(reply.payload, json!({"status":"ok","response":{}}));
    let sys = subscribed(&mut rt, legacy).await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    let topic = "realtime:filtered";
    let (_, reply) = rt
        .join(
            topic,
            pg_join(json!([
                {"event": "INSERT", "schema": "public", "table": "monitoring_events", "filter": "source=eq.host-2"},
                {"event": "*", "schema": "public", "filter": "source=in.(host-2,host-3)"},
                {"event": "UPDATE", "schema": "public", "table": "monitoring_events"}
            ])),
        )
        .await;
    let ids: Vec<u64> = reply.payload["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    subscribed(&mut rt, topic).await;

    let one = insert(&db, "host-1").await;
    let two = insert(&db, "host-2").await;
    let three = insert(&db, "host-3").await;
    // host-2: both of the first two bindings match → one frame with both ids.
    let f = change_for(&mut rt, &two).await;
    assert_eq!(f.payload["ids"], json!([ids[0], ids[1]]));
    assert_eq!(f.r#ref, None);
    // Channels are served in join order: the legacy channel's frame comes first.
    let f = rt
        .wait_for("legacy INSERT", |f| {
            f.topic == legacy && f.event == "INSERT"
        })
        .await;
    assert_eq!(f.payload["record"]["id"], three);
    assert_eq!(f.payload["type"], "INSERT");
    let f = change_for(&mut rt, &three).await;
    assert_eq!(f.payload["ids"], json!([ids[1]]));
    rt.expect_none("host-1 insert", |f| {
        f.event == "postgres_changes" && f.payload["data"]["record"]["id"] == one
    })
    .await;
    // UPDATE of host-1 matches only the UPDATE binding.
    db.client()
        .await
        .execute(
            "update public.monitoring_events set event_type = 'mem' where id = $1::text::uuid",
            &[&one],
        )
        .await
        .unwrap();
    let f = change_for(&mut rt, &one).await;
    assert_eq!(f.payload["ids"], json!([ids[2]]));
    assert_eq!(f.payload["data"]["type"], "UPDATE");
}

/// Invalid filters, unpublished tables and unknown columns: a system error, the channel stays.
#[tokio::test]
async fn binding_errors_keep_the_channel_open() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut rt = Rt::connect(&w, &token("service_role", 600), true).await;
    let topic = "realtime:room1";
    let (join_ref, reply) = rt
        .join(
            topic,
            pg_join(json!([{"event": "*", "schema": "public", "table": "monitoring_events", "filter": "id=foo.1"}])),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok");
    assert!(reply.payload["response"]["postgres_changes"][0]["id"].is_u64());
    let sys = subscribed(&mut rt, topic).await;
    assert_eq!(
        sys.payload,
        json!({"extension":"postgres_changes","status":"error",
               "message":"Error parsing `filter` params: [\"foo\", \"1\"]","channel":"room1"})
    );
    // Still joined: heartbeats and broadcasts work, no phx_close came.
    rt.heartbeat().await;
    let r = rt
        .push(
            Some(&join_ref),
            topic,
            "access_token",
            json!({"access_token": token("service_role", 600)}),
        )
        .await;
    rt.expect_none("reply to access_token", |f| {
        f.r#ref.as_deref() == Some(&r) || f.event == "phx_close"
    })
    .await;

    let topic2 = "realtime:nope";
    let (_, reply) = rt
        .join(
            topic2,
            pg_join(json!([{"event": "*", "schema": "public", "table": "nope"}])),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok");
    let sys = subscribed(&mut rt, topic2).await;
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(
        sys.payload["message"],
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled \
         for the given connect parameters: [event: *, schema: public, table: nope, filters: [], select: nil]"
    );
    let topic3 = "realtime:badcol";
    rt.join(
        topic3,
        pg_join(json!([{"schema": "public", "filter": "nope=eq.1"}])),
    )
    .await;
    let sys = subscribed(&mut rt, topic3).await;
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .ends_with("Exception: invalid column for filter nope"),
        "{sys:?}"
    );
    rt.heartbeat().await;
    // Changes do not reach channels whose subscription failed.
    let id = insert(&db, "host-1").await;
    rt.expect_none("change on a failed subscription", |f| {
        f.event == "postgres_changes" && f.payload["data"]["record"]["id"] == id
    })
    .await;
}

/// Filter conditions are capped per socket (256 over all channels): a join beyond gets a
/// `postgres_changes` system error and no subscription; the socket and its other channels stay.
#[tokio::test]
async fn filter_conditions_are_capped_per_socket() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut rt = Rt::connect(&w, &token("service_role", 600), true).await;
    let bindings = |n: usize, tag: &str| -> Value {
        Value::Array(
            (0..n)
                .map(|i| {
                    json!({"event": "INSERT", "schema": "public", "table": "monitoring_events",
                           "filter": format!("source=eq.{tag}-{i}")})
                })
                .collect(),
        )
    };
    rt.join("realtime:a", pg_join(bindings(200, "a"))).await;
    let sys = subscribed(&mut rt, "realtime:a").await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    rt.join("realtime:b", pg_join(bindings(57, "b"))).await;
    let sys = subscribed(&mut rt, "realtime:b").await;
    assert_eq!(sys.payload["status"], "error", "{sys:?}");
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .starts_with("Too many filter conditions: this socket would have 257, at most 256"),
        "{sys:?}"
    );
    // Up to the cap is fine, and channel `a` still receives its rows.
    rt.join("realtime:c", pg_join(bindings(56, "c"))).await;
    let sys = subscribed(&mut rt, "realtime:c").await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    let id = insert(&db, "a-7").await;
    let f = change_for(&mut rt, &id).await;
    assert_eq!(f.topic, "realtime:a");
}

/// Heartbeats, bad topics, bad join tokens, private channels, duplicate joins.
#[tokio::test]
async fn topics_heartbeat_and_join_errors() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut rt = Rt::connect(&w, &token("anon", 600), true).await;
    rt.heartbeat().await;
    let (_, reply) = rt.join("realtime:", json!({"config": {}})).await;
    assert_eq!(
        reply.payload,
        json!({"status":"error","response":{"reason":"TopicNameRequired: You must provide a topic name"}})
    );
    let (_, reply) = rt.join("foo", json!({"config": {}})).await;
    assert_eq!(
        reply.payload,
        json!({"status":"error","response":{"reason":"unmatched topic"}})
    );
    let expired = sign(json!({"role": "anon", "exp": now() - 5}));
    let (_, reply) = rt
        .join(
            "realtime:room1",
            json!({"config": {}, "access_token": expired}),
        )
        .await;
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired ")
            && reason.ends_with(" seconds ago"),
        "{reason}"
    );
    let (_, reply) = rt
        .join(
            "realtime:room1",
            json!({"config": {}, "access_token": "garbage"}),
        )
        .await;
    assert_eq!(
        reply.payload["response"]["reason"],
        "MalformedJWT: The token provided is not a valid JWT"
    );
    let (_, reply) = rt
        .join("realtime:secret", json!({"config": {"private": true}}))
        .await;
    assert_eq!(
        reply.payload["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: secret"
    );
    // A push to a topic that was never joined.
    let r = rt
        .push(
            Some("99"),
            "realtime:other",
            "broadcast",
            json!({"type":"broadcast","event":"e","payload":{}}),
        )
        .await;
    let f = rt
        .wait_for("unmatched reply", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(
        f.payload,
        json!({"status":"error","response":{"reason":"unmatched topic"}})
    );
    // Joining the same topic twice closes the first channel.
    let (first, _) = rt.join("realtime:dup", json!({"config": {}})).await;
    let (second, reply) = rt.join("realtime:dup", json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok");
    assert_ne!(first, second);
}

/// Row level security as the subscriber's role: service_role, authenticated, anon, column grants.
#[tokio::test]
async fn row_level_security_per_role() {
    let db = support::fresh_db().await;
    // Two roles beyond the API roles: one created below with column privileges only, one that
    // does not exist.
    let extra = format!("--extra-roles=limited_{},no_such_role", db.name);
    let w =
        Walcast::start_with_env(&db, &[&extra], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    let mut service = Rt::connect(&w, &token("service_role", 600), true).await;
    let mut authenticated = Rt::connect(&w, &token("authenticated", 600), true).await;
    let mut anon = Rt::connect(&w, &token("anon", 600), false).await;
    for rt in [&mut service, &mut authenticated, &mut anon] {
        rt.join("realtime:rls", pg_join(all_changes())).await;
        let sys = subscribed(rt, "realtime:rls").await;
        assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    }
    // Several rows in one transaction: one gate query per (commit, claims group).
    let c = db.client().await;
    let rows = c
        .query(
            "insert into public.monitoring_events (event_type, source) select 'cpu', 'h' || g from generate_series(1, 3) g returning id::text",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for id in &ids {
        change_for(&mut service, id).await;
        change_for(&mut authenticated, id).await;
    }
    anon.expect_none("a row anon may not read", |f| f.event == "postgres_changes")
        .await;
    // Those checks were answered by calls of walcast.realtime_visible_rows, counted on /metrics.
    let metrics_url = w.url("/metrics");
    let gate_counted = |text: &str| {
        ["calls_total", "checks_total", "call_seconds_count"]
            .iter()
            .all(|s| {
                support::metric(text, &format!("walcast_realtime_rls_{s}")).is_some_and(|v| v > 0.0)
            })
    };
    let counted = support::wait_until(Duration::from_secs(10), || async {
        let (status, text) = support::get(&metrics_url).await;
        status == 200 && gate_counted(&text)
    })
    .await;
    let (_, text) = support::get(&metrics_url).await;
    assert!(counted, "gate calls not counted on /metrics:\n{text}");
    assert!(
        support::metric(&text, "walcast_realtime_rls_errors_total").is_some(),
        "{text}"
    );

    // DELETE is not checked (the row is gone): every subscriber gets the key only.
    c.execute(
        "delete from public.monitoring_events where id = $1::text::uuid",
        &[&ids[0]],
    )
    .await
    .unwrap();
    for rt in [&mut service, &mut authenticated, &mut anon] {
        let f = change_for(rt, &ids[0]).await;
        assert_eq!(f.payload["data"]["type"], "DELETE");
        assert_eq!(f.payload["data"]["old_record"], json!({"id": ids[0]}));
    }

    // A role with column privileges only sees those columns.
    let limited = format!("limited_{}", db.name);
    c.batch_execute(&format!(
        "create role {limited} nologin; \
         grant select (id, source, event_type) on public.monitoring_events to {limited}; \
         create policy limited_read on public.monitoring_events for select to {limited} using (true);"
    ))
    .await
    .unwrap();
    let mut narrow = Rt::connect(&w, &token(&limited, 600), true).await;
    narrow.join("realtime:rls", pg_join(all_changes())).await;
    let sys = subscribed(&mut narrow, "realtime:rls").await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    let id = insert(&db, "host-narrow").await;
    let f = change_for(&mut narrow, &id).await;
    let data = &f.payload["data"];
    assert_eq!(
        data["record"],
        json!({"id": id, "event_type": "cpu", "source": "host-narrow"})
    );
    let names: Vec<&str> = data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "event_type", "source"]);
    // Others still get the whole row.
    let f = change_for(&mut service, &id).await;
    assert!(f.payload["data"]["record"].get("data").is_some());
    c.batch_execute(&format!(
        "drop policy limited_read on public.monitoring_events; \
         revoke all on public.monitoring_events from {limited}; drop role {limited};"
    ))
    .await
    .unwrap();

    // A role that does not exist cannot subscribe.
    let mut ghost = Rt::connect(&w, &token("no_such_role", 600), true).await;
    ghost.join("realtime:rls", pg_join(all_changes())).await;
    let sys = subscribed(&mut ghost, "realtime:rls").await;
    assert_eq!(sys.payload["status"], "error");
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .contains("may not read public.monitoring_events"),
        "{sys:?}"
    );
}

/// The gate runs one query per (commit, claims group) and waits for commits to become visible.
#[tokio::test]
async fn gate_asks_once_per_commit_and_claims_group() {
    let db = support::fresh_db().await;
    let pool = walcast::db::pool(&db.url, 4, "test").unwrap();
    let gate = std::sync::Arc::new(walcast::access::RlsGate::new(pool, "walcast_events"));
    let tables = gate.tables().await.unwrap();
    let facts = tables.named("public", "monitoring_events").unwrap();
    assert!(facts.published && facts.rls_enabled);
    assert_eq!(facts.primary_key, vec!["id".to_string()]);
    let key = |id: &uuid::Uuid| walcast::access::RowKey {
        table: facts.oid,
        key: json!({ "id": id }).to_string().into(),
    };
    let c = db.client().await;
    let rows = c
        .query(
            "insert into public.monitoring_events (event_type, source) select 'cpu', 'h' || g from generate_series(1, 5) g returning id, xmin::text::int8",
            &[],
        )
        .await
        .unwrap();
    let uuids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let ids: Vec<walcast::access::RowKey> = uuids.iter().map(key).collect();
    let xid = u32::try_from(rows[0].get::<_, i64>(1)).unwrap();
    let claims = |role: &str| {
        walcast::realtime::verify_token(&any_role_verifier(), &token(role, 600), now())
            .unwrap()
            .group
    };
    let authenticated = claims("authenticated");
    let lsn = walcast::decode::Lsn(0xABC);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (gate, group, ids) = (
            std::sync::Arc::clone(&gate),
            std::sync::Arc::clone(&authenticated),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            gate.visible(&group, lsn, xid, &ids).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 5);
    }
    assert_eq!(
        gate.queries(),
        1,
        "eight subscribers of one group, one commit: one query"
    );
    // A subset is answered from the cache.
    assert_eq!(
        gate.visible(&authenticated, lsn, xid, &ids[..2])
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(gate.queries(), 1);
    // Another group or another commit asks again; anon's policy shows nothing.
    let anon = claims("anon");
    let started = std::time::Instant::now();
    assert!(
        gate.visible(&anon, lsn, xid, &ids)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        started.elapsed() < walcast::access::COMMIT_VISIBLE_WAIT,
        "a committed transaction is seen as committed at once"
    );
    assert_eq!(gate.queries(), 2);
    gate.visible(&authenticated, walcast::decode::Lsn(0xABD), xid, &ids)
        .await
        .unwrap();
    assert_eq!(gate.queries(), 3);
    // Deleted rows are not visible (the check reads the current table).
    c.execute(
        "delete from public.monitoring_events where id = $1",
        &[&uuids[0]],
    )
    .await
    .unwrap();
    let v = gate
        .visible(&authenticated, walcast::decode::Lsn(0xABE), xid, &ids)
        .await
        .unwrap();
    assert_eq!(v.len(), 4);
    assert!(!v.contains(&ids[0]));
    // A transaction streamed before it is visible to other sessions: the gate waits for it.
    let mut c2 = db.client().await;
    let tx = c2.transaction().await.unwrap();
    let row = tx
        .query_one(
            "insert into public.monitoring_events (event_type, source) values ('cpu', 'late') returning id, xmin::text::int8",
            &[],
        )
        .await
        .unwrap();
    let (late, late_xid): (uuid::Uuid, i64) = (row.get(0), row.get(1));
    let late = key(&late);
    let ask = {
        let (gate, group) = (
            std::sync::Arc::clone(&gate),
            std::sync::Arc::clone(&authenticated),
        );
        let late = late.clone();
        tokio::spawn(async move {
            gate.visible(
                &group,
                walcast::decode::Lsn(0xABF),
                u32::try_from(late_xid).unwrap(),
                &[late],
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    assert!(ask.await.unwrap().contains(&late));

    let access = gate.check_role("authenticated").await.unwrap();
    assert_eq!(access.get(facts.oid).unwrap().columns, None);
    assert!(gate.check_role("no_such_role").await.is_err());
}

/// Many claims groups asking about one commit at once share one or two calls; each group gets
/// its own policy's answer, and a group whose role cannot be used fails alone.
#[tokio::test]
async fn gate_checks_many_groups_in_few_calls() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let c = db.client().await;
    const USERS: usize = 40;
    let rows = c
        .query(
            "insert into public.monitoring_events (event_type, source) \
             select 'cpu', 'user-' || g from generate_series(0, $1::int - 1) g \
             returning id, source, xmin::text::int8",
            &[&(USERS as i32)],
        )
        .await
        .unwrap();
    let pool = walcast::db::pool(&db.url, 4, "test").unwrap();
    let gate = std::sync::Arc::new(walcast::access::RlsGate::new(pool, "walcast_events"));
    let table = gate.tables().await.unwrap();
    let table = table.named("public", "monitoring_events").unwrap().oid;
    let key = |id: uuid::Uuid| walcast::access::RowKey {
        table,
        key: json!({ "id": id }).to_string().into(),
    };
    let ids: Vec<walcast::access::RowKey> = rows.iter().map(|r| key(r.get(0))).collect();
    let owner: std::collections::HashMap<walcast::access::RowKey, String> =
        rows.iter().map(|r| (key(r.get(0)), r.get(1))).collect();
    let xid = u32::try_from(rows[0].get::<_, i64>(2)).unwrap();
    // One expiry for all tokens: equal claims make equal groups.
    let exp = now() + 600;
    let group = |role: &str, sub: &str| {
        let t = sign(json!({"role": role, "exp": exp, "sub": sub}));
        walcast::realtime::verify_token(&any_role_verifier(), &t, now())
            .unwrap()
            .group
    };
    let lsn = walcast::decode::Lsn(0x1234);
    let mut tasks = Vec::new();
    for u in 0..USERS {
        // Three subscribers per user.
        for _ in 0..3 {
            let (gate, g, ids) = (
                std::sync::Arc::clone(&gate),
                group("authenticated", &format!("user-{u}")),
                ids.clone(),
            );
            tasks.push(tokio::spawn(async move {
                (u, gate.visible(&g, lsn, xid, &ids).await)
            }));
        }
    }
    let bad = {
        let (gate, g, ids) = (
            std::sync::Arc::clone(&gate),
            group("no_such_role", "x"),
            ids.clone(),
        );
        tokio::spawn(async move { gate.visible(&g, lsn, xid, &ids).await })
    };
    for t in tasks {
        let (u, seen) = t.await.unwrap();
        let seen = seen.unwrap();
        assert_eq!(seen.len(), 1, "user-{u} sees exactly its own row: {seen:?}");
        let id = seen.iter().next().unwrap();
        assert_eq!(owner[id], format!("user-{u}"));
    }
    assert!(bad.await.unwrap().is_err(), "an unusable role fails");
    let calls = gate.queries();
    // One call per group would be 41; scheduling decides how many groups each call catches.
    assert!(
        (1..=(USERS as u64) / 4).contains(&calls),
        "{USERS} groups x 3 subscribers + 1 bad group on one commit: {calls} calls"
    );
    // Everything is answered now: asking again costs nothing.
    gate.visible(&group("authenticated", "user-7"), lsn, xid, &ids)
        .await
        .unwrap();
    assert_eq!(gate.queries(), calls);
}

/// Tokens expiring while joined, refreshed before expiry, refreshed with an expired token.
#[tokio::test]
async fn access_token_refresh_and_expiry() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut rt = Rt::connect(&w, &token("anon", 600), true).await;
    // Expires while joined: system error, then phx_close.
    let (join_ref, _) = rt
        .join(
            "realtime:short",
            json!({"config": {}, "access_token": token("anon", 2)}),
        )
        .await;
    let sys = rt
        .wait_for("expiry system message", |f| f.event == "system")
        .await;
    assert_eq!(sys.join_ref.as_deref(), Some(join_ref.as_str()));
    assert_eq!(sys.payload["extension"], "system");
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(sys.payload["channel"], "short");
    let msg = sys.payload["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Token has expired ") && msg.ends_with(" seconds ago"),
        "{msg}"
    );
    let close = rt.wait_for("phx_close", |f| f.event == "phx_close").await;
    assert_eq!(close.r#ref.as_deref(), Some(join_ref.as_str()));

    // A refresh before expiry keeps the channel; an expired refresh closes it.
    let (join_ref, _) = rt
        .join(
            "realtime:long",
            json!({"config": {}, "access_token": token("anon", 2)}),
        )
        .await;
    let r = rt
        .push(
            Some(&join_ref),
            "realtime:long",
            "access_token",
            json!({"access_token": token("anon", 600)}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rt.expect_none("any reply or close", |f| {
        f.r#ref.as_deref() == Some(&r) || f.event == "phx_close" || f.event == "system"
    })
    .await;
    rt.heartbeat().await;
    let expired = sign(json!({"role": "anon", "exp": now() - 3}));
    rt.push(
        Some(&join_ref),
        "realtime:long",
        "access_token",
        json!({"access_token": expired}),
    )
    .await;
    // Inside the 10 s refresh window of the first refresh: held, then applied when it ends.
    let sys = rt
        .wait_for("refresh failure", |f| f.event == "system")
        .await;
    let msg = sys.payload["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Token has expired ") && msg.ends_with(" seconds ago"),
        "{msg}"
    );
    rt.wait_for("phx_close", |f| {
        f.event == "phx_close" && f.topic == "realtime:long"
    })
    .await;
}

/// Broadcast between sockets: binary kind 3 → kind 4 / v1 JSON, text, ack and self.
#[tokio::test]
async fn broadcast_between_sockets() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = token("anon", 600);
    let mut a = Rt::connect(&w, &key, true).await;
    let mut b = Rt::connect(&w, &key, true).await;
    let mut c = Rt::connect(&w, &key, false).await;
    let topic = "realtime:room1";
    let cfg = |ack: bool, me: bool| json!({"config": {"broadcast": {"ack": ack, "self": me}, "presence": {"key": "", "enabled": false}, "postgres_changes": [], "private": false}});
    let (a_join, reply) = a.join(topic, cfg(true, false)).await;
    // Broadcast-only join: reply and nothing else.
    assert_eq!(
        reply.payload,
        json!({"status":"ok","response":{"postgres_changes":[]}})
    );
    b.join(topic, cfg(false, false)).await;
    c.join(topic, cfg(false, false)).await;

    // Binary kind 3 from A → kind 4 to B, JSON to C, an ack to A.
    let push = UserBroadcast {
        join_ref: Some(a_join.clone()),
        r#ref: Some("77".into()),
        topic: topic.into(),
        event: "ping".into(),
        metadata: None,
        encoding: PayloadEncoding::Json,
        payload: br#"{"n":1}"#.to_vec(),
    };
    a.push_binary(encode_user_broadcast_push(&push).unwrap())
        .await;
    let got = b.wait_binary().await;
    let mut want = vec![4u8, 14, 4, 0, 1];
    want.extend_from_slice(b"realtime:room1ping{\"n\":1}");
    assert_eq!(got, want);
    assert_eq!(parse_server_binary(&got).unwrap().event, "ping");
    let f = c.wait_for("v1 broadcast", |f| f.event == "broadcast").await;
    assert_eq!(
        f.payload,
        json!({"event":"ping","payload":{"n":1},"type":"broadcast"})
    );
    assert_eq!(f.r#ref, None);
    let ack = a
        .wait_for("ack", |f| f.r#ref.as_deref() == Some("77"))
        .await;
    assert_eq!(ack.payload, json!({"status":"ok","response":{}}));
    assert_eq!(ack.join_ref.as_deref(), Some(a_join.as_str()));

    // Text broadcast from C (v1) reaches A and B as the same object; C (self:false) gets nothing.
    let msg = json!({"type":"broadcast","event":"e","payload":{"a":1}});
    c.push(None, topic, "broadcast", msg.clone()).await;
    for rt in [&mut a, &mut b] {
        let f = rt
            .wait_for("text broadcast", |f| f.event == "broadcast")
            .await;
        assert_eq!(f.payload, msg);
        assert_eq!((f.join_ref.as_deref(), f.r#ref.as_deref()), (None, None));
    }
    c.expect_none("own broadcast without self", |f| f.event == "broadcast")
        .await;
    a.expect_none("own binary broadcast without self", |f| {
        f.event == "broadcast" && f.payload["event"] == "ping"
    })
    .await;

    // self:true: the sender receives its own broadcast.
    let mut d = Rt::connect(&w, &key, true).await;
    let (d_join, _) = d.join("realtime:solo", cfg(false, true)).await;
    d.push(
        Some(&d_join),
        "realtime:solo",
        "broadcast",
        json!({"type":"broadcast","event":"me","payload":{}}),
    )
    .await;
    let f = d
        .wait_for("self broadcast", |f| f.event == "broadcast")
        .await;
    assert_eq!(f.payload["event"], "me");
}

/// Presence: state on join, diffs on track and leave, bad payloads, the rate limit.
#[tokio::test]
async fn presence_state_and_diff() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = token("anon", 600);
    let mut a = Rt::connect(&w, &key, true).await;
    let mut b = Rt::connect(&w, &key, false).await;
    let topic = "realtime:lobby";
    let cfg = |k: &str| json!({"config": {"presence": {"key": k, "enabled": true}}});
    let (a_join, _) = a.join(topic, cfg("u1")).await;
    let st = a
        .wait_for("presence_state", |f| f.event == "presence_state")
        .await;
    assert_eq!(st.payload, json!({}));
    assert_eq!(
        (st.join_ref.as_deref(), st.r#ref.as_deref()),
        (Some(a_join.as_str()), None)
    );
    b.join(topic, cfg("u2")).await;
    b.wait_for("presence_state", |f| f.event == "presence_state")
        .await;

    let r = a
        .push(
            Some(&a_join),
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"n":"A"}}),
        )
        .await;
    let reply = a
        .wait_for("track reply", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(reply.payload, json!({"status":"ok","response":{}}));
    let diff = b
        .wait_for("presence_diff", |f| f.event == "presence_diff")
        .await;
    assert_eq!(diff.payload["leaves"], json!({}));
    let metas = diff.payload["joins"]["u1"]["metas"].as_array().unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0]["n"], "A");
    assert!(metas[0]["phx_ref"].is_string());
    // The tracker sees its own join too.
    a.wait_for("own presence_diff", |f| f.event == "presence_diff")
        .await;

    // A late joiner gets the current state.
    let mut c = Rt::connect(&w, &key, true).await;
    c.join(topic, cfg("u3")).await;
    let st = c
        .wait_for("presence_state", |f| f.event == "presence_state")
        .await;
    assert_eq!(st.payload["u1"]["metas"][0]["n"], "A");

    // A bad track payload is refused; leaving untracks.
    let r = a
        .push(
            Some(&a_join),
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":[1]}),
        )
        .await;
    let reply = a
        .wait_for("track error", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(
        reply.payload,
        json!({"status":"error","response":{"reason":"Presence track payload must be a map"}})
    );
    a.push(Some(&a_join), topic, "phx_leave", json!({})).await;
    let diff = b
        .wait_for("leave diff", |f| {
            f.event == "presence_diff" && f.payload["leaves"] != json!({})
        })
        .await;
    assert_eq!(diff.payload["leaves"]["u1"]["metas"][0]["n"], "A");

    // More than five presence calls in 30 s close the channel.
    let (c_join, _) = c.join("realtime:busy", cfg("u3")).await;
    for i in 0..6 {
        c.push(
            Some(&c_join),
            "realtime:busy",
            "presence",
            json!({"type":"presence","event":"track","payload":{"i":i}}),
        )
        .await;
    }
    let sys = c
        .wait_for("rate limit", |f| {
            f.event == "system" && f.topic == "realtime:busy"
        })
        .await;
    assert_eq!(
        sys.payload["message"],
        "Client presence rate limit exceeded"
    );
    c.wait_for("phx_close", |f| {
        f.event == "phx_close" && f.topic == "realtime:busy"
    })
    .await;
}

/// /ws and the Realtime endpoint deliver the same change from the same hub.
#[tokio::test]
async fn same_change_on_ws_and_realtime() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = token("service_role", 600);
    let mut plain = support::ws::WsClient::connect(&w.ws_url(&format!("/ws?apikey={key}"))).await;
    plain.subscribe("all", json!({})).await;
    let mut rt = Rt::connect(&w, &key, true).await;
    rt.join("realtime:both", pg_join(all_changes())).await;
    subscribed(&mut rt, "realtime:both").await;
    let id = insert(&db, "host-both").await;
    let f = change_for(&mut rt, &id).await;
    let events = plain.events(1, WAIT).await;
    assert_eq!(events[0]["record"]["id"], id);
    assert_eq!(
        events[0]["record"]["source"],
        f.payload["data"]["record"]["source"]
    );
    assert_eq!(events[0]["op"], f.payload["data"]["type"]);
}

/// A token for `role` with subject `sub`, valid for ten minutes.
fn user_token(role: &str, sub: &str) -> String {
    sign(json!({"role": role, "sub": sub, "exp": now() + 600, "iat": now()}))
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

/// Broadcasts `n` on `topic` (event `note`); returns the push's ref.
async fn note(rt: &mut Rt, join_ref: &str, topic: &str, n: i64) -> String {
    rt.push(
        Some(join_ref),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": "note", "payload": {"n": n}}),
    )
    .await
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
    support::create_realtime_messages(&db).await;
    let w = walcast(&db).await;

    let mut service = Rt::connect(&w, &user_token("service_role", "svc"), true).await;
    for topic in ["realtime:user-1", "realtime:user-2", "realtime:lobby"] {
        let reply = service.join(topic, private_join(false)).await.1.payload;
        assert_eq!(reply["status"], "ok", "service_role joins {topic}: {reply}");
    }

    let mut user = Rt::connect(&w, &user_token("authenticated", "user-1"), true).await;
    let (own, reply) = user.join("realtime:user-1", private_join(true)).await;
    let reply = reply.payload;
    assert_eq!(reply["status"], "ok", "{reply}");
    let reply = user
        .join("realtime:user-2", private_join(false))
        .await
        .1
        .payload;
    assert_eq!(reply, unauthorized("user-2"));
    let (lobby, reply) = user.join("realtime:lobby", private_join(false)).await;
    let reply = reply.payload;
    assert_eq!(reply["status"], "ok", "{reply}");

    let mut anon = Rt::connect(&w, &user_token("anon", "user-1"), true).await;
    let reply = anon
        .join("realtime:user-1", private_join(false))
        .await
        .1
        .payload;
    assert_eq!(reply, unauthorized("user-1"));

    // Writing to its own topic is allowed: acked and delivered.
    let r = note(&mut user, &own, "realtime:user-1", 1).await;
    let ack = user
        .wait_for("ack", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(ack.payload, json!({"status": "ok", "response": {}}));
    service
        .wait_for("own-topic broadcast", |f| is_note(f, "realtime:user-1", 1))
        .await;

    // Readable but not writable: dropped, no reply.
    let r = note(&mut user, &lobby, "realtime:lobby", 2).await;
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
    let reply = anon
        .join("realtime:user-1", json!({"config": {"private": false}}))
        .await
        .1
        .payload;
    assert_eq!(reply["status"], "ok", "{reply}");

    // A refreshed token for another user may no longer read user-1's topic.
    user.push(
        Some(&own),
        "realtime:user-1",
        "access_token",
        json!({"access_token": user_token("authenticated", "user-2")}),
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

/// With the migrations' `realtime.messages` and no policies on it, private channels stay
/// `service_role` only.
#[tokio::test]
async fn without_policies_private_is_service_role_only() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut user = Rt::connect(&w, &user_token("authenticated", "user-1"), true).await;
    let reply = user
        .join("realtime:user-1", private_join(false))
        .await
        .1
        .payload;
    assert_eq!(reply, unauthorized("user-1"));
    let mut service = Rt::connect(&w, &user_token("service_role", "svc"), true).await;
    let reply = service
        .join("realtime:user-1", private_join(false))
        .await
        .1
        .payload;
    assert_eq!(reply["status"], "ok", "{reply}");
}

/// When the row check itself fails (here: the check function is gone), every channel that
/// needed it gets the `system` error and closes, so it never silently misses a change; a
/// `service_role` channel, which needs no check, still receives the row.
#[tokio::test]
async fn a_failing_row_check_closes_the_channels_that_needed_it() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let mut service = Rt::connect(&w, &token("service_role", 600), true).await;
    let mut users = Vec::new();
    for sub in ["user-1", "user-2"] {
        users.push(Rt::connect(&w, &user_token("authenticated", sub), true).await);
    }
    for rt in users.iter_mut().chain([&mut service]) {
        rt.join("realtime:fail", pg_join(all_changes())).await;
        let sys = subscribed(rt, "realtime:fail").await;
        assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    }
    db.client()
        .await
        .batch_execute(
            "alter function walcast.realtime_visible_sets(bigint[], oid[], jsonb[], text[], text[], \
             integer[], oid[], integer) rename to realtime_visible_sets_gone",
        )
        .await
        .unwrap();
    let id = insert(&db, "h").await;
    change_for(&mut service, &id).await;
    for rt in &mut users {
        let f = rt
            .wait_for("system error", |f| {
                f.topic == "realtime:fail" && f.event == "system"
            })
            .await;
        assert_eq!(f.payload["status"], "error", "{f:?}");
        assert_eq!(
            f.payload["message"],
            "Realtime was unable to connect to the project database"
        );
        rt.wait_for("phx_close", |f| {
            f.topic == "realtime:fail" && f.event == "phx_close"
        })
        .await;
    }
}

/// When the private-channel policies cannot be asked (the database fails, not the policy
/// refusing), the join is refused with `UnableToConnectToProject` and nothing is left behind.
#[tokio::test]
async fn a_failing_private_channel_check_refuses_the_join() {
    let db = support::fresh_db().await;
    support::create_realtime_messages(&db).await;
    // A failure of the database's own kind (class 58, system error) on every probe.
    db.client()
        .await
        .batch_execute(
            "create function realtime.broken() returns trigger language plpgsql as $$ \
               begin raise exception 'disk trouble' using errcode = '58030'; end $$; \
             create trigger broken before insert on realtime.messages \
               for each row execute function realtime.broken();",
        )
        .await
        .unwrap();
    let w = walcast(&db).await;
    let mut user = Rt::connect(&w, &user_token("authenticated", "user-1"), true).await;
    let reply = user
        .join("realtime:user-1", private_join(false))
        .await
        .1
        .payload;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason":
            "UnableToConnectToProject: Realtime was unable to connect to the project database"}})
    );
}

/// POSTs `body` to the REST broadcast API at `path` with `token`; (status, JSON body).
async fn rest(
    w: &Walcast,
    path: &str,
    ct: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    support::post(&w.url(path), ct, token, body).await
}

/// REST broadcast: the batch and the per-event endpoints (JSON and bytes) reach joined sockets
/// of both serializers with the same frames a socket broadcast makes; ping; the refusals
/// (no token, bad body, too large).
#[tokio::test]
async fn rest_broadcast_reaches_joined_sockets() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = token("anon", 600);
    let mut v2 = Rt::connect(&w, &key, true).await;
    let mut v1 = Rt::connect(&w, &key, false).await;
    let topic = "realtime:rest-room";
    let cfg = json!({"config": {"broadcast": {"ack": false, "self": false},
                     "presence": {"key": "", "enabled": false},
                     "postgres_changes": [], "private": false}});
    v2.join(topic, cfg.clone()).await;
    v1.join(topic, cfg).await;

    let (status, body) = support::get_as(&w.url("/realtime/v1/api/ping"), Some(&key)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"message":"Success"}"#));
    let (status, _) = support::get_as(&w.url("/realtime/v1/api/ping"), None).await;
    assert_eq!(status, 401);

    // The batch endpoint, what realtime-js send() uses before the channel is joined.
    let batch = json!({"messages": [
        {"topic": "rest-room", "event": "one", "payload": {"n": 1}, "private": false},
        {"topic": "realtime:rest-room", "event": "two", "payload": {"n": 2}}
    ]});
    let (status, reply) = rest(
        &w,
        "/realtime/v1/api/broadcast",
        "application/json",
        Some(&key),
        batch.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    for rt in [&mut v2, &mut v1] {
        for (event, n) in [("one", 1), ("two", 2)] {
            let f = rt
                .wait_for(event, |f| {
                    f.event == "broadcast" && f.payload["event"] == event
                })
                .await;
            assert_eq!(f.topic, topic);
            assert_eq!(
                f.payload,
                json!({"type": "broadcast", "event": event, "payload": {"n": n}})
            );
        }
    }

    // The per-event endpoint, what httpSend() uses: JSON, then raw bytes (2.0.0 sockets only).
    let (status, reply) = rest(
        &w,
        "/realtime/v1/api/broadcast/rest-room/events/three",
        "application/json",
        Some(&key),
        br#"{"n":3}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    for rt in [&mut v2, &mut v1] {
        let f = rt
            .wait_for("three", |f| {
                f.event == "broadcast" && f.payload["event"] == "three"
            })
            .await;
        assert_eq!(
            f.payload,
            json!({"type": "broadcast", "event": "three", "payload": {"n": 3}})
        );
    }
    let (status, _) = rest(
        &w,
        "/api/broadcast/rest-room/events/bytes",
        "application/octet-stream",
        Some(&key),
        vec![0, 1, 254, 255],
    )
    .await;
    assert_eq!(status, 202);
    let got = v2.wait_binary().await;
    let msg = parse_server_binary(&got).unwrap();
    assert_eq!((msg.topic.as_str(), msg.event.as_str()), (topic, "bytes"));
    assert_eq!(msg.payload, [0, 1, 254, 255]);
    v1.expect_none("bytes on 1.0.0", |f| f.payload["event"] == "bytes")
        .await;

    // Refusals: no token, a bad token, a body that is not the batch shape, a payload too large.
    let one = "/realtime/v1/api/broadcast/rest-room/events/x";
    let (status, reply) = rest(&w, one, "application/json", None, b"{}".to_vec()).await;
    assert_eq!(status, 401, "{reply}");
    let (status, _) = rest(
        &w,
        one,
        "application/json",
        Some("not-a-jwt"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, reply) = rest(
        &w,
        "/realtime/v1/api/broadcast",
        "application/json",
        Some(&key),
        br#"{"messages":[{"topic":"t"}]}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, &reply["code"]),
        (422, &json!("invalid_message")),
        "{reply}"
    );
    let (status, reply) = rest(
        &w,
        one,
        "application/json",
        Some(&key),
        b"not json".to_vec(),
    )
    .await;
    assert_eq!(
        (status, &reply["code"]),
        (422, &json!("invalid_message")),
        "{reply}"
    );
    // More messages in one batch than walcast takes: refused whole, nothing sent.
    let many: Vec<Value> = (0..101)
        .map(|n| json!({"topic": "rest-room", "event": "x", "payload": {"n": n}}))
        .collect();
    let (status, reply) = rest(
        &w,
        "/realtime/v1/api/broadcast",
        "application/json",
        Some(&key),
        json!({ "messages": many }).to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, &reply["code"]),
        (422, &json!("batch_too_large")),
        "{reply}"
    );
    let big = json!({"s": "x".repeat(300 * 1024)})
        .to_string()
        .into_bytes();
    let (status, reply) = rest(&w, one, "application/json", Some(&key), big).await;
    assert_eq!(
        (status, &reply["code"]),
        (413, &json!("payload_size_exceeded")),
        "{reply}"
    );
    v2.expect_none("a refused broadcast", |f| f.payload["event"] == "x")
        .await;
}

/// REST broadcast to private topics follows the `realtime.messages` write policies: a user may
/// send to its own topic; to another's, the per-event endpoint answers 403 and the batch
/// endpoint skips the message (202); service_role may send anywhere.
#[tokio::test]
async fn rest_broadcast_to_private_topics_follows_policies() {
    let db = support::fresh_db().await;
    support::create_realtime_messages(&db).await;
    let w = walcast(&db).await;
    let alice = user_token("authenticated", "alice");
    let mut rt = Rt::connect(&w, &alice, true).await;
    let topic = "realtime:alice";
    let (_, reply) = rt.join(topic, private_join(false)).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");

    let bob = user_token("authenticated", "bob");
    let path = "/realtime/v1/api/broadcast/alice/events/note?private=true";
    let (status, reply) = rest(
        &w,
        path,
        "application/json",
        Some(&bob),
        br#"{"n":1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(
        reply["error"],
        "Unauthorized: You do not have permissions to write to this Channel topic: alice"
    );
    let batch = json!({"messages": [{"topic": "alice", "event": "note", "payload": {"n": 2}, "private": true}]});
    let (status, _) = rest(
        &w,
        "/realtime/v1/api/broadcast",
        "application/json",
        Some(&bob),
        batch.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    rt.expect_none("a broadcast the policies refuse", |f| {
        f.event == "broadcast"
    })
    .await;

    let (status, _) = rest(
        &w,
        path,
        "application/json",
        Some(&alice),
        br#"{"n":3}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    let f = rt.wait_for("alice's own", |f| is_note(f, topic, 3)).await;
    assert_eq!(f.payload["payload"], json!({"n": 3}));
    let service = support::service_key();
    let (status, _) = rest(
        &w,
        path,
        "application/json",
        Some(&service),
        br#"{"n":4}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    rt.wait_for("service_role's", |f| is_note(f, topic, 4))
        .await;
    // A public topic of the same name is another topic: the private member gets nothing.
    let (status, _) = rest(
        &w,
        "/realtime/v1/api/broadcast/alice/events/note",
        "application/json",
        Some(&alice),
        br#"{"n":5}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    rt.expect_none("a public broadcast", |f| is_note(f, topic, 5))
        .await;
}

/// Join options of realtime-js 2.119: `postgres_changes_options.wait` answers the join with the
/// bindings' fate (an unservable binding is a join error, not a later system message);
/// `broadcast.replication_ready` gets its system message; `broadcast.replay` is refused on a
/// public channel; `persist` is never relayed to receivers.
#[tokio::test]
async fn join_options_of_realtime_js_2_119() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = token("service_role", 600);
    let mut rt = Rt::connect(&w, &key, true).await;
    let with = |changes: Value, broadcast: Value, wait: bool| {
        let mut config = json!({"broadcast": broadcast, "presence": {"key": "", "enabled": false},
                                "postgres_changes": changes, "private": false});
        if wait {
            config["postgres_changes_options"] = json!({"wait": true, "timeout": 3000});
        }
        json!({"config": config})
    };

    // wait + a valid binding: ok, then "Subscribed to PostgreSQL".
    let (_, reply) = rt
        .join("realtime:w1", with(all_changes(), json!({}), true))
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let sys = subscribed(&mut rt, "realtime:w1").await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");

    // wait + a table that is not published: the join itself fails.
    let bad = json!([{"event": "*", "schema": "public", "table": "nope"}]);
    let (_, reply) = rt
        .join("realtime:w2", with(bad.clone(), json!({}), true))
        .await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("RealtimeDisabledForConfiguration: "),
        "{reason}"
    );
    // Without wait the same binding joins and the system message carries the error.
    let (_, reply) = rt.join("realtime:w3", with(bad, json!({}), false)).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let sys = subscribed(&mut rt, "realtime:w3").await;
    assert_eq!(sys.payload["status"], "error", "{sys:?}");

    // replication_ready: a system message from the `system` extension.
    let (_, reply) = rt
        .join(
            "realtime:w4",
            with(json!([]), json!({"replication_ready": true}), false),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let sys = rt
        .wait_for("replication ready", |f| {
            f.topic == "realtime:w4" && f.event == "system"
        })
        .await;
    assert_eq!(
        sys.payload,
        json!({"extension": "system", "status": "ok",
               "message": "Replication connection established", "channel": "w4"})
    );

    // replay asks for stored broadcasts, which public channels do not have.
    let (_, reply) = rt
        .join(
            "realtime:w5",
            with(json!([]), json!({"replay": {"since": 0}}), false),
        )
        .await;
    assert_eq!(
        reply.payload["response"]["reason"],
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );

    // persist is a request to the server, not part of the message.
    let mut other = Rt::connect(&w, &key, false).await;
    let cfg = with(json!([]), json!({"self": false}), false);
    let (join_ref, _) = rt.join("realtime:w6", cfg.clone()).await;
    other.join("realtime:w6", cfg).await;
    rt.push(
        Some(&join_ref),
        "realtime:w6",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {"n": 1}, "persist": true}),
    )
    .await;
    let f = other
        .wait_for("broadcast", |f| f.event == "broadcast")
        .await;
    assert_eq!(
        f.payload,
        json!({"type": "broadcast", "event": "e", "payload": {"n": 1}})
    );
}

/// `--private-only` refuses public channels with Supabase's text; `--join-error-backoff` holds
/// every join error for the configured pause.
#[tokio::test]
async fn private_only_and_the_join_error_backoff() {
    let db = support::fresh_db().await;
    let w = Walcast::start_with_env(
        &db,
        &["--private-only", "--join-error-backoff", "1s"],
        &[("WALCAST_JWT_SECRET", support::SECRET)],
    )
    .await;
    let key = token("service_role", 600);
    let mut rt = Rt::connect(&w, &key, true).await;
    let public = json!({"config": {"broadcast": {}, "presence": {"enabled": false},
                                   "postgres_changes": [], "private": false}});
    let asked = std::time::Instant::now();
    let (_, reply) = rt.join("realtime:open", public).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(
        reply.payload["response"]["reason"],
        "PrivateOnly: This project only allows private channels"
    );
    let private = json!({"config": {"broadcast": {}, "presence": {"enabled": false},
                                    "postgres_changes": [], "private": true}});
    let (_, reply) = rt.join("realtime:closed", private).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
}

/// REST broadcast counts against the channel's message budget like socket broadcasts: over it,
/// 429 "Too many messages per second" and the message is not relayed.
#[tokio::test]
async fn rest_broadcast_respects_the_channel_budget() {
    let db = support::fresh_db().await;
    let w = Walcast::start_with_env(
        &db,
        &["--max-channel-messages-per-second", "1"],
        &[("WALCAST_JWT_SECRET", support::SECRET)],
    )
    .await;
    let key = token("anon", 600);
    let mut rt = Rt::connect(&w, &key, true).await;
    rt.join(
        "realtime:budget",
        json!({"config": {"broadcast": {}, "presence": {"enabled": false},
                          "postgres_changes": [], "private": false}}),
    )
    .await;
    // Three requests in a row: at most one second boundary falls between them, so at least two
    // share a second and one of those is over a budget of one.
    let mut statuses = Vec::new();
    for n in 0..3 {
        let body = format!("{{\"n\":{n}}}").into_bytes();
        let (status, reply) = rest(
            &w,
            "/realtime/v1/api/broadcast/budget/events/e",
            "application/json",
            Some(&key),
            body,
        )
        .await;
        if status == 429 {
            assert_eq!(reply["error"], "Too many messages per second", "{reply}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    for _ in 0..accepted {
        rt.wait_for("an accepted broadcast", |f| f.event == "broadcast")
            .await;
    }
    rt.expect_none("a refused broadcast", |f| f.event == "broadcast")
        .await;
}

/// `select` limits what a change carries to the listed columns plus the primary key (record,
/// old_record and `columns`); a column the role may not read is a binding error; an unknown
/// column too.
#[tokio::test]
async fn select_limits_the_columns_a_change_carries() {
    let db = support::fresh_db().await;
    let role = format!("selrt_{}", db.name);
    let c = db.client().await;
    c.batch_execute(&format!(
        "create role {role} nologin; \
         grant select (id, event_type, source) on public.monitoring_events to {role}; \
         create policy selrt_read on public.monitoring_events for select to {role} using (true);"
    ))
    .await
    .unwrap();
    let extra = format!("--extra-roles={role}");
    let w =
        Walcast::start_with_env(&db, &[&extra], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    let selecting = |select: Value| {
        pg_join(
            json!([{"event": "*", "schema": "public", "table": "monitoring_events",
                        "select": select}]),
        )
    };
    let mut service = Rt::connect(&w, &token("service_role", 600), true).await;
    let (_, reply) = service
        .join("realtime:sel", selecting(json!(["source"])))
        .await;
    assert_eq!(
        reply.payload["response"]["postgres_changes"][0]["select"],
        json!(["source"]),
        "{reply:?}"
    );
    let sys = subscribed(&mut service, "realtime:sel").await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    let id = insert(&db, "h-sel").await;
    let f = change_for(&mut service, &id).await;
    let data = &f.payload["data"];
    assert_eq!(
        data["record"],
        json!({"id": id, "source": "h-sel"}),
        "{data}"
    );
    let names: Vec<&str> = data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "source"]);

    // A role that may read some columns: selecting one of them works, another is refused.
    let narrow = sign(json!({"role": role, "exp": now() + 600}));
    let mut rt = Rt::connect(&w, &narrow, true).await;
    rt.join("realtime:ok", selecting(json!(["event_type"])))
        .await;
    let sys = subscribed(&mut rt, "realtime:ok").await;
    assert_eq!(sys.payload["status"], "ok", "{sys:?}");
    rt.join("realtime:no", selecting(json!(["data"]))).await;
    let sys = subscribed(&mut rt, "realtime:no").await;
    assert_eq!(sys.payload["status"], "error", "{sys:?}");
    let message = sys.payload["message"].as_str().unwrap();
    assert!(
        message.contains("Exception: permission denied for column data"),
        "{message}"
    );
    let id = insert(&db, "h-narrow").await;
    let f = change_for(&mut rt, &id).await;
    assert_eq!(
        f.payload["data"]["record"],
        json!({"id": id, "event_type": "cpu"}),
        "{f:?}"
    );
    // An unknown column.
    rt.join("realtime:bad", selecting(json!(["nope"]))).await;
    let sys = subscribed(&mut rt, "realtime:bad").await;
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .contains("invalid column for select nope"),
        "{sys:?}"
    );
}

/// Rows of `realtime.messages` are broadcasts only: a `/ws` subscription to every table and a
/// Realtime binding on every schema never see them as table changes, while a channel of the
/// topic receives the broadcast (public, from `realtime.send(..., false)`).
#[tokio::test]
async fn database_broadcasts_are_never_table_changes() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = token("service_role", 600);
    let mut plain = support::ws::WsClient::connect(&w.ws_url(&format!("/ws?apikey={key}"))).await;
    plain.subscribe("all", json!({"table": "*"})).await;
    let mut rt = Rt::connect(&w, &key, false).await;
    rt.join(
        "realtime:everything",
        pg_join(json!([{"event": "*", "schema": "*"}])),
    )
    .await;
    subscribed(&mut rt, "realtime:everything").await;
    rt.join("realtime:db-only", json!({"config": {}})).await;
    support::psql(
        &db,
        "select realtime.send('{\"n\": 1}', 'ping', 'db-only', false)",
    )
    .await;
    let f = rt
        .wait_for("the database broadcast", |f| {
            f.topic == "realtime:db-only" && f.event == "broadcast"
        })
        .await;
    assert_eq!(f.payload["event"], "ping", "{f:?}");
    assert_eq!(f.payload["payload"]["n"], 1, "{f:?}");
    assert_eq!(f.payload["meta"]["id"], f.payload["payload"]["id"], "{f:?}");
    let id = insert(&db, "after-broadcast").await;
    let first = rt
        .wait_for("postgres_changes", |f| f.event == "postgres_changes")
        .await;
    assert_eq!(first.payload["data"]["record"]["id"], id, "{first:?}");
    let events = plain.events(1, WAIT).await;
    assert_eq!(events[0]["record"]["id"], id, "{events:?}");
    let (_, metrics) = support::get(&w.url("/metrics")).await;
    assert_eq!(
        support::metric(&metrics, "walcast_db_broadcasts_total"),
        Some(1.0)
    );
    assert_eq!(
        support::metric(&metrics, "walcast_db_broadcasts_dropped_total"),
        Some(0.0)
    );
}

/// On the Phoenix wire (serializer 1.0.0): a text broadcast with `"persist": true` on a private
/// channel is acknowledged, relayed without `persist` and stored; one without it is not; a
/// later join with `broadcast.replay` gets the stored one (and one from `realtime.send`) with
/// `meta.replayed`, then live broadcasts; replay values that are not integers are refused with
/// Supabase's reason.
#[tokio::test]
async fn text_persist_and_replay_on_the_wire() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let key = user_token("service_role", "svc");
    let join = |replay: Value| json!({"config": {"private": true, "broadcast": {"ack": true, "self": false, "replay": replay}}});
    let plain = json!({"config": {"private": true, "broadcast": {"ack": true, "self": false}}});
    let mut sender = Rt::connect(&w, &key, false).await;
    let mut receiver = Rt::connect(&w, &key, false).await;
    let (join_ref, reply) = sender.join("realtime:vault", plain.clone()).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    receiver.join("realtime:vault", plain).await;
    for (n, persist) in [(1, true), (2, false)] {
        let mut payload = json!({"type": "broadcast", "event": "note", "payload": {"n": n}});
        if persist {
            payload["persist"] = json!(true);
        }
        let r = sender
            .push(Some(&join_ref), "realtime:vault", "broadcast", payload)
            .await;
        let ack = sender
            .wait_for("ack", |f| {
                f.event == "phx_reply" && f.r#ref.as_deref() == Some(&r)
            })
            .await;
        assert_eq!(ack.payload["status"], "ok", "{ack:?}");
        let f = receiver
            .wait_for("the note", |f| is_note(f, "realtime:vault", n))
            .await;
        assert!(f.payload.get("persist").is_none(), "{f:?}");
    }
    support::psql(&db, "select realtime.send('{\"n\": 3}', 'note', 'vault')").await;
    receiver
        .wait_for("the stored note", |f| is_note(f, "realtime:vault", 3))
        .await;
    // A late joiner asks for everything since a minute ago.
    let since = chrono::Utc::now().timestamp_millis() - 60_000;
    let mut late = Rt::connect(&w, &key, false).await;
    let (_, reply) = late
        .join("realtime:vault", join(json!({"since": since, "limit": 10})))
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    for n in [1, 3] {
        let f = late
            .wait_for("a replayed note", |f| f.event == "broadcast")
            .await;
        assert_eq!(f.payload["payload"]["n"], n, "{f:?}");
        assert_eq!(f.payload["meta"]["replayed"], true, "{f:?}");
    }
    note(&mut sender, &join_ref, "realtime:vault", 4).await;
    let f = late
        .wait_for("the next broadcast", |f| f.event == "broadcast")
        .await;
    assert_eq!(
        f.payload["payload"]["n"], 4,
        "only the live note follows: {f:?}"
    );
    for bad in [
        json!({}),
        json!({"since": "x"}),
        json!({"since": 1, "limit": "5"}),
    ] {
        let (_, reply) = late.join("realtime:vault2", join(bad)).await;
        assert_eq!(
            reply.payload["response"]["reason"],
            "UnableToReplayMessages: Replay params are not valid"
        );
    }
}
