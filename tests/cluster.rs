//! Broadcast across nodes (`--cluster-broadcast`): two walcast processes on one database, each
//! with its own slot, and raw Realtime clients on both.
//!
//! "Nothing more arrives" is proven with fences rather than sleeps: broadcasts reach every node
//! in commit order, so once a node has delivered a later broadcast (the fence), any copy of an
//! earlier one would already have been delivered.

use std::time::Duration;

use serde_json::{Value, json};
use walcast::realtime::protocol::frame::{
    PayloadEncoding, UserBroadcast, encode_user_broadcast_push, parse_server_binary,
};

use crate::realtime::{Frame, In, Rt};
use crate::support::{self, TestDb, Walcast};

/// How long to wait for the broadcasts that should come.
const WAIT: Duration = Duration::from_secs(15);

/// A token for `role`.
fn token(role: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    support::sign(json!({"role": role, "sub": "user-1", "iat": now, "exp": now + 600}))
}

/// Starts node `name` of `db` (with `--cluster-broadcast` when `cluster`).
async fn node(db: &TestDb, name: &str, cluster: bool) -> Walcast {
    let mut extra = vec!["--node", name, "--max-channel-messages-per-second", "1000"];
    if cluster {
        extra.push("--cluster-broadcast");
    }
    Walcast::start_with_env(db, &extra, &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// Two node names unique to `db` (slots are per Postgres cluster).
fn names(db: &TestDb) -> (String, String) {
    (format!("{}a", db.node()), format!("{}b", db.node()))
}

/// Stops the nodes and drops their slots.
async fn stop(db: &TestDb, nodes: Vec<(Walcast, String)>) {
    let c = db.client().await;
    for (mut w, name) in nodes {
        w.kill9();
        let slot = format!("walcast_{name}");
        let (c, slot) = (&c, &slot);
        support::wait_until(Duration::from_secs(10), || async move {
            c.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                 where slot_name = $1 and not active",
                &[slot],
            )
            .await
            .is_ok_and(|n| n == 1)
        })
        .await;
    }
}

/// A join payload for a broadcast channel.
fn cfg(me: bool, private: bool) -> Value {
    json!({"config": {"broadcast": {"ack": true, "self": me},
        "presence": {"key": "", "enabled": false}, "postgres_changes": [], "private": private}})
}

/// A broadcast a client received, from a text or a binary frame.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    /// The channel topic.
    topic: String,
    /// The user's event.
    event: String,
    /// The user's payload.
    payload: Value,
    /// Arrived as a binary (kind 4) frame.
    binary: bool,
}

/// The broadcast in `frame`, if it is one.
fn seen(frame: In) -> Option<Seen> {
    match frame {
        In::Text(f) if f.event == "broadcast" => Some(Seen {
            event: f.payload["event"].as_str()?.to_owned(),
            payload: f.payload["payload"].clone(),
            topic: f.topic,
            binary: false,
        }),
        In::Binary(b) => {
            let ub = parse_server_binary(&b).ok()?;
            Some(Seen {
                payload: serde_json::from_slice(&ub.payload).unwrap_or(Value::Null),
                topic: ub.topic,
                event: ub.event,
                binary: true,
            })
        }
        _ => None,
    }
}

/// Every broadcast `rt` receives until it has seen each `(topic, event)` of `fences`.
async fn until(rt: &mut Rt, fences: &[(&str, &str)]) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got: Vec<Seen> = Vec::new();
    loop {
        let done = fences
            .iter()
            .all(|(t, e)| got.iter().any(|s| s.topic == *t && s.event == *e));
        if done {
            return got;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match rt.next(left).await {
            Some(frame) => got.extend(seen(frame)),
            None => panic!("fences {fences:?} not seen within {WAIT:?}; got {got:?}"),
        }
    }
}

/// How many of `got` are `event` on `topic`.
fn count(got: &[Seen], topic: &str, event: &str) -> usize {
    got.iter()
        .filter(|s| s.topic == topic && s.event == event)
        .count()
}

/// Pushes a text broadcast.
async fn text(rt: &mut Rt, join_ref: &str, topic: &str, event: &str, payload: Value) {
    rt.push(
        Some(join_ref),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": event, "payload": payload}),
    )
    .await;
}

/// Pushes a binary (kind 3) broadcast with a JSON payload.
async fn binary(rt: &mut Rt, join_ref: &str, topic: &str, event: &str, payload: Value) {
    let push = UserBroadcast {
        join_ref: Some(join_ref.to_owned()),
        r#ref: Some(format!("bin-{event}")),
        topic: topic.into(),
        event: event.into(),
        metadata: None,
        encoding: PayloadEncoding::Json,
        payload: payload.to_string().into_bytes(),
    };
    rt.push_binary(encode_user_broadcast_push(&push).unwrap())
        .await;
}

/// A broadcast on node A (text and binary, `self` off and on) reaches B's clients of both
/// serializers exactly once; A's sender gets its own broadcasts only with `self`, once (no
/// echo from the WAL); a REST broadcast to A reaches B; 50 broadcasts from one sender arrive at
/// B in order.
#[tokio::test]
async fn broadcasts_reach_the_other_node_once_and_in_order() {
    let db = support::fresh_db().await;
    let (na, nb) = names(&db);
    let a = node(&db, &na, true).await;
    let b = node(&db, &nb, true).await;
    let anon = token("anon");
    let (room, me) = ("realtime:room", "realtime:me");

    let mut a_plain = Rt::connect(&a, &anon, true).await;
    let mut a_self = Rt::connect(&a, &anon, true).await;
    let mut b_v2 = Rt::connect(&b, &anon, true).await;
    let mut b_v1 = Rt::connect(&b, &anon, false).await;
    let (plain_ref, _) = a_plain.join(room, cfg(false, false)).await;
    let (self_ref, _) = a_self.join(me, cfg(true, false)).await;
    let (b_room_ref, _) = b_v2.join(room, cfg(false, false)).await;
    let (b_me_ref, _) = b_v2.join(me, cfg(false, false)).await;
    b_v1.join(room, cfg(false, false)).await;

    // self: false (room) and self: true (me), text and binary, then a fence on each topic.
    text(&mut a_plain, &plain_ref, room, "t1", json!({"n": 1})).await;
    binary(&mut a_plain, &plain_ref, room, "b1", json!({"n": 2})).await;
    text(&mut a_plain, &plain_ref, room, "fence", json!({})).await;
    text(&mut a_self, &self_ref, me, "s1", json!({"n": 3})).await;
    binary(&mut a_self, &self_ref, me, "s2", json!({"n": 4})).await;
    text(&mut a_self, &self_ref, me, "fence", json!({})).await;

    let got = until(&mut b_v2, &[(room, "fence"), (me, "fence")]).await;
    for (topic, event) in [(room, "t1"), (room, "b1"), (me, "s1"), (me, "s2")] {
        assert_eq!(count(&got, topic, event), 1, "{topic} {event}: {got:?}");
    }
    let b1 = got.iter().find(|s| s.event == "b1").unwrap();
    assert!(
        b1.binary,
        "a binary push reaches a 2.0.0 client as a binary frame"
    );
    assert_eq!(b1.payload, json!({"n": 2}));
    let t1 = got.iter().find(|s| s.event == "t1").unwrap();
    assert_eq!((t1.binary, &t1.payload), (false, &json!({"n": 1})));
    let got = until(&mut b_v1, &[(room, "fence")]).await;
    assert_eq!(count(&got, room, "t1"), 1, "{got:?}");
    assert_eq!(count(&got, room, "b1"), 1, "{got:?}");
    assert_eq!(
        got.iter().find(|s| s.event == "b1").unwrap().payload,
        json!({"n": 2})
    );

    // B answers on both topics: its broadcasts were committed after A's, so A has read its
    // own batches from the WAL before it delivers B's.
    text(&mut b_v2, &b_room_ref, room, "back", json!({})).await;
    text(&mut b_v2, &b_me_ref, me, "back", json!({})).await;
    let got = until(&mut a_plain, &[(room, "back")]).await;
    assert_eq!(
        got.iter().filter(|s| s.event != "back").count(),
        0,
        "self: false gets none of its own, and no echo: {got:?}"
    );
    let got = until(&mut a_self, &[(me, "back")]).await;
    for event in ["s1", "s2", "fence"] {
        assert_eq!(
            count(&got, me, event),
            1,
            "self: true gets its own once: {got:?}"
        );
    }

    // REST broadcast to A reaches B.
    let batch = json!({"messages": [{"topic": "room", "event": "rest1", "payload": {"n": 5}}]});
    let (status, reply) = support::post(
        &a.url("/realtime/v1/api/broadcast"),
        "application/json",
        Some(&anon),
        batch.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let got = until(&mut b_v1, &[(room, "rest1")]).await;
    assert_eq!(got.last().unwrap().payload, json!({"n": 5}));

    // Order: 50 broadcasts from one sender.
    for n in 0..50 {
        text(&mut a_plain, &plain_ref, room, "seq", json!({"n": n})).await;
    }
    text(&mut a_plain, &plain_ref, room, "seq-end", json!({})).await;
    let got = until(&mut b_v1, &[(room, "seq-end")]).await;
    let ns: Vec<i64> = got
        .iter()
        .filter(|s| s.event == "seq")
        .map(|s| s.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..50).collect::<Vec<i64>>());

    let metrics = support::get(&a.url("/metrics")).await.1;
    assert!(
        support::metric(&metrics, "walcast_cluster_broadcasts_sent_total").unwrap_or(0.0) >= 58.0,
        "{metrics}"
    );
    stop(&db, vec![(a, na), (b, nb)]).await;
}

/// A broadcast on a private channel reaches the private channel of the same name on the other
/// node, not its public one. One sent with `persist` reaches it once, as its stored row
/// (Broadcast from Database), not a second time as a relayed copy.
#[tokio::test]
async fn private_broadcasts_stay_on_private_channels_across_nodes() {
    let db = support::fresh_db().await;
    let (na, nb) = names(&db);
    let a = node(&db, &na, true).await;
    let b = node(&db, &nb, true).await;
    let service = token("service_role");
    let topic = "realtime:vault";

    let mut a_private = Rt::connect(&a, &service, true).await;
    let mut a_public = Rt::connect(&a, &service, true).await;
    let mut b_private = Rt::connect(&b, &service, true).await;
    let mut b_public = Rt::connect(&b, &service, true).await;
    let (private_ref, reply) = a_private.join(topic, cfg(false, true)).await;
    assert_eq!(reply.payload["status"], "ok", "{:?}", reply.payload);
    let (public_ref, _) = a_public.join(topic, cfg(false, false)).await;
    b_private.join(topic, cfg(false, true)).await;
    b_public.join(topic, cfg(false, false)).await;

    text(
        &mut a_private,
        &private_ref,
        topic,
        "secret",
        json!({"n": 1}),
    )
    .await;
    let got = until(&mut b_private, &[(topic, "secret")]).await;
    assert_eq!(got.last().unwrap().payload, json!({"n": 1}));
    // Committed after the private one: B's public channel has had its chance to see it.
    text(&mut a_public, &public_ref, topic, "open", json!({})).await;
    let got = until(&mut b_public, &[(topic, "open")]).await;
    assert_eq!(count(&got, topic, "secret"), 0, "{got:?}");

    let kept = json!({"type": "broadcast", "event": "kept", "payload": {"n": 2}, "persist": true});
    a_private
        .push(Some(&private_ref), topic, "broadcast", kept)
        .await;
    text(&mut a_private, &private_ref, topic, "after", json!({})).await;
    let got = until(&mut b_private, &[(topic, "kept"), (topic, "after")]).await;
    assert_eq!(count(&got, topic, "kept"), 1, "{got:?}");
    stop(&db, vec![(a, na), (b, nb)]).await;
}

/// Without `--cluster-broadcast` (the default) broadcasts stay on the node that accepted them
/// and nothing is written to the WAL.
#[tokio::test]
async fn without_the_option_broadcasts_stay_on_their_node() {
    let db = support::fresh_db().await;
    let (na, nb) = names(&db);
    let a = node(&db, &na, false).await;
    let b = node(&db, &nb, false).await;
    let anon = token("anon");
    let topic = "realtime:room";
    let mut a_one = Rt::connect(&a, &anon, true).await;
    let mut a_two = Rt::connect(&a, &anon, true).await;
    let mut b_one = Rt::connect(&b, &anon, true).await;
    let (join_ref, _) = a_one.join(topic, cfg(false, false)).await;
    a_two.join(topic, cfg(false, false)).await;
    b_one.join(topic, cfg(false, false)).await;

    text(&mut a_one, &join_ref, topic, "local", json!({})).await;
    until(&mut a_two, &[(topic, "local")]).await;
    b_one
        .expect_none("a broadcast from the other node", |f| {
            f.event == "broadcast"
        })
        .await;
    let metrics = support::get(&a.url("/metrics")).await.1;
    assert_eq!(
        support::metric(&metrics, "walcast_cluster_broadcasts_sent_total"),
        Some(0.0)
    );
    stop(&db, vec![(a, na), (b, nb)]).await;
}

/// When a node's replication stream is cut, its reader reconnects and Postgres streams the
/// slot again from its confirmed position: broadcasts the node already delivered are not
/// delivered again.
#[tokio::test]
async fn a_reconnected_reader_does_not_deliver_broadcasts_again() {
    let db = support::fresh_db().await;
    let (na, nb) = names(&db);
    let a = node(&db, &na, true).await;
    let b = node(&db, &nb, true).await;
    let anon = token("anon");
    let topic = "realtime:room";
    let mut sender = Rt::connect(&a, &anon, true).await;
    let mut receiver = Rt::connect(&b, &anon, true).await;
    let (join_ref, _) = sender.join(topic, cfg(false, false)).await;
    receiver.join(topic, cfg(false, false)).await;
    text(&mut sender, &join_ref, topic, "one", json!({})).await;
    until(&mut receiver, &[(topic, "one")]).await;

    let c = db.client().await;
    let slot = format!("walcast_{nb}");
    let pid: i32 = c
        .query_one(
            "select active_pid from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    c.execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (c, slot) = (&c, &slot);
    let back = support::wait_until(WAIT, || async move {
        c.query_opt(
            "select 1 from pg_replication_slots where slot_name = $1 and active \
             and active_pid <> $2",
            &[slot, &pid],
        )
        .await
        .is_ok_and(|r| r.is_some())
    })
    .await;
    assert!(back, "node B's reader did not reconnect");

    text(&mut sender, &join_ref, topic, "two", json!({})).await;
    let got = until(&mut receiver, &[(topic, "two")]).await;
    assert_eq!(count(&got, topic, "one"), 0, "{got:?}");
    stop(&db, vec![(a, na), (b, nb)]).await;
}

/// A service_role token valid for ten minutes.
fn service_token() -> String {
    let now = chrono::Utc::now().timestamp();
    support::sign(json!({"role": "service_role", "exp": now + 600, "iat": now}))
}

/// Inserts one row of `monitoring_events`; returns its id.
async fn insert_row(db: &TestDb, source: &str) -> String {
    db.client()
        .await
        .query_one(
            "insert into public.monitoring_events (event_type, source) values ('cpu', $1) \
             returning id::text",
            &[&source],
        )
        .await
        .expect("insert")
        .get(0)
}

/// Node death loses nothing for a `/ws` client that reconnects elsewhere: its cursor is a WAL
/// position, so node B replays from its own slot what came after the last event node A sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_cursor_from_a_killed_node_resumes_on_another() {
    let db = support::fresh_db().await;
    let (a_name, b_name) = names(&db);
    let mut a = node(&db, &a_name, false).await;
    let b = node(&db, &b_name, false).await;
    let path = format!("/ws?apikey={}", service_token());
    let mut on_a = support::ws::WsClient::connect(&a.ws_url(&path)).await;
    on_a.subscribe("all", json!({})).await;
    let first = insert_row(&db, "before").await;
    let got = on_a.events(1, WAIT).await;
    assert_eq!(got[0]["record"]["id"], first);
    let cursor = got[0]["cursor"].as_str().expect("cursor").to_owned();
    a.kill9();
    let mut missed = Vec::new();
    for n in 0..3 {
        missed.push(insert_row(&db, &format!("missed-{n}")).await);
    }
    let mut on_b = support::ws::WsClient::connect(&b.ws_url(&path)).await;
    on_b.subscribe("all", json!({})).await;
    let (replayed, resumed) = on_b.resume(&cursor, WAIT).await;
    let mut ids: Vec<String> = replayed
        .iter()
        .filter_map(|f| f["record"]["id"].as_str().map(str::to_owned))
        .collect();
    // What node B had not read from its slot yet when the client resumed arrives live, next.
    while ids.len() < missed.len() {
        let more = on_b.events(1, WAIT).await;
        ids.extend(more[0]["record"]["id"].as_str().map(str::to_owned));
    }
    assert_eq!(ids, missed, "{resumed}");
    let live = insert_row(&db, "live").await;
    assert_eq!(on_b.events(1, WAIT).await[0]["record"]["id"], live);
    stop(&db, vec![(a, a_name), (b, b_name)]).await;
}

/// Node death loses nothing for a Realtime client with a `resume_id` that reconnects elsewhere:
/// its position is kept in Postgres, and node B replays from its own slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_resume_id_moves_from_a_killed_node_to_another() {
    let db = support::fresh_db().await;
    let (a_name, b_name) = names(&db);
    let mut a = node(&db, &a_name, false).await;
    let b = node(&db, &b_name, false).await;
    let token = service_token();
    let rid = "resume_id=moving-client-1";
    let topic = "realtime:moving";
    let bindings = json!([{"event": "*", "schema": "public", "table": "monitoring_events"}]);
    let join = json!({"config": {"broadcast": {"ack": false, "self": false},
        "presence": {"key": "", "enabled": false}, "postgres_changes": bindings,
        "private": false}});
    let is_change = |f: &Frame| f.event == "postgres_changes";
    let id_of = |f: &Frame| {
        f.payload["data"]["record"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let c = db.client().await;
    let saved = || async {
        c.query_opt(
            "select commit_lsn::text from walcast.realtime_resume_positions \
             where resume_id = 'moving-client-1'",
            &[],
        )
        .await
        .expect("resume positions")
        .map(|r| r.get::<_, String>(0))
    };
    let mut on_a = Rt::connect_with(&a, &token, true, rid).await;
    on_a.join(topic, join.clone()).await;
    on_a.wait_for("subscribed", |f| f.event == "system").await;
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            saved().await.is_some()
        })
        .await,
        "the join's position was never saved"
    );
    let at_join = saved().await;
    for n in 0..3 {
        let id = insert_row(&db, &format!("seen-{n}")).await;
        assert_eq!(id_of(&on_a.wait_for("a change", is_change).await), id);
    }
    // Two heartbeats: what came before the first is known received at the second.
    on_a.heartbeat().await;
    on_a.heartbeat().await;
    let moved = support::wait_until(Duration::from_secs(10), || async {
        saved().await != at_join
    })
    .await;
    assert!(moved, "the heartbeats' position was never written");
    a.kill9();
    let mut missed = Vec::new();
    for n in 0..3 {
        missed.push(insert_row(&db, &format!("missed-{n}")).await);
    }
    let mut on_b = Rt::connect_with(&b, &token, false, rid).await;
    on_b.join(topic, join).await;
    let mut got = Vec::new();
    while got.len() < missed.len() {
        got.push(id_of(&on_b.wait_for("a replayed change", is_change).await));
    }
    assert_eq!(
        got, missed,
        "node B replays what node A's client missed, in order"
    );
    let live = insert_row(&db, "live").await;
    assert_eq!(
        id_of(&on_b.wait_for("a live change", is_change).await),
        live
    );
    stop(&db, vec![(a, a_name), (b, b_name)]).await;
}

/// Starts node `name` of `db` with `--cluster-broadcast` and `--cluster-presence-ttl ttl`.
async fn presence_node(db: &TestDb, name: &str, ttl: &str) -> Walcast {
    let extra = [
        "--node",
        name,
        "--cluster-broadcast",
        "--cluster-presence-ttl",
        ttl,
    ];
    Walcast::start_with_env(db, &extra, &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// A join payload with presence under `key`.
fn presence_cfg(key: &str) -> Value {
    json!({"config": {"broadcast": {"self": false}, "presence": {"key": key, "enabled": true},
        "postgres_changes": [], "private": false}})
}

/// Tracks `payload` on the channel.
async fn track(rt: &mut Rt, join_ref: &str, topic: &str, payload: Value) {
    let r = rt
        .push(
            Some(join_ref),
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": payload}),
        )
        .await;
    let reply = rt
        .wait_for("track reply", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
}

/// A presence tracked on node A reaches B's members as a join, is in the `presence_state` of
/// a later joiner on B, and leaves B's members on untrack and on A's channel leave.
#[tokio::test]
async fn presence_crosses_nodes() {
    let db = support::fresh_db().await;
    let (na, nb) = names(&db);
    let a = presence_node(&db, &na, "15s").await;
    let b = presence_node(&db, &nb, "15s").await;
    let anon = token("anon");
    let room = "realtime:lobby";

    let mut on_a = Rt::connect(&a, &anon, true).await;
    let mut on_b = Rt::connect(&b, &anon, false).await;
    let (a_ref, _) = on_a.join(room, presence_cfg("alice")).await;
    on_b.join(room, presence_cfg("bob")).await;
    on_b.wait_for("presence_state", |f| f.event == "presence_state")
        .await;

    track(&mut on_a, &a_ref, room, json!({"n": "A"})).await;
    let diff = on_b
        .wait_for("join of alice", |f| {
            f.event == "presence_diff" && f.payload["joins"].get("alice").is_some()
        })
        .await;
    let metas = diff.payload["joins"]["alice"]["metas"].as_array().unwrap();
    assert_eq!(metas.len(), 1, "{diff:?}");
    assert_eq!(metas[0]["n"], "A");
    assert!(metas[0]["phx_ref"].is_string());
    assert_eq!(diff.payload["leaves"], json!({}));

    // A later joiner on B sees A's member in presence_state.
    let mut late = Rt::connect(&b, &anon, true).await;
    late.join(room, presence_cfg("carol")).await;
    let st = late
        .wait_for("presence_state", |f| f.event == "presence_state")
        .await;
    assert_eq!(st.payload["alice"]["metas"][0]["n"], "A", "{st:?}");

    // Untrack: the leave reaches both of B's members.
    let r = on_a
        .push(
            Some(&a_ref),
            room,
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    on_a.wait_for("untrack reply", |f| f.r#ref.as_deref() == Some(&r))
        .await;
    for rt in [&mut on_b, &mut late] {
        let diff = rt
            .wait_for("leave of alice", |f| {
                f.event == "presence_diff" && f.payload["leaves"].get("alice").is_some()
            })
            .await;
        assert_eq!(diff.payload["leaves"]["alice"]["metas"][0]["n"], "A");
    }

    // Track again, then leave the channel: the leave reaches B.
    track(&mut on_a, &a_ref, room, json!({"n": "A2"})).await;
    on_b.wait_for("join of alice again", |f| {
        f.event == "presence_diff" && f.payload["joins"]["alice"]["metas"][0]["n"] == "A2"
    })
    .await;
    on_a.push(Some(&a_ref), room, "phx_leave", json!({})).await;
    on_b.wait_for("leave of alice on phx_leave", |f| {
        f.event == "presence_diff" && f.payload["leaves"]["alice"]["metas"][0]["n"] == "A2"
    })
    .await;
    stop(&db, vec![(a, na), (b, nb)]).await;
}

/// A node started after a presence was tracked learns it (the other node announces its
/// presences to a new node); when the tracking node is killed, the member leaves B's
/// `presence_state` within the TTL.
#[tokio::test]
async fn a_killed_nodes_presences_leave_within_the_ttl() {
    let db = support::fresh_db().await;
    let (na, nb) = names(&db);
    let ttl = Duration::from_secs(3);
    let mut a = presence_node(&db, &na, "3s").await;
    let anon = token("anon");
    let room = "realtime:lobby";
    let mut on_a = Rt::connect(&a, &anon, true).await;
    let (a_ref, _) = on_a.join(room, presence_cfg("alice")).await;
    track(&mut on_a, &a_ref, room, json!({"n": "A"})).await;

    // B starts afterwards: A's presence arrives by announce, in the state or as a join.
    let b = presence_node(&db, &nb, "3s").await;
    let mut on_b = Rt::connect(&b, &anon, true).await;
    on_b.join(room, presence_cfg("bob")).await;
    let st = on_b
        .wait_for("presence_state", |f| f.event == "presence_state")
        .await;
    if st.payload.get("alice").is_none() {
        on_b.wait_for("announced join of alice", |f| {
            f.event == "presence_diff" && f.payload["joins"]["alice"]["metas"][0]["n"] == "A"
        })
        .await;
    }

    a.kill9();
    let killed = tokio::time::Instant::now();
    let diff = on_b
        .wait_for("leave of alice after kill -9", |f| {
            f.event == "presence_diff" && f.payload["leaves"].get("alice").is_some()
        })
        .await;
    let took = killed.elapsed();
    assert_eq!(diff.payload["leaves"]["alice"]["metas"][0]["n"], "A");
    // The last alive was at most ttl/3 before the kill; the sweep runs every second.
    assert!(took <= ttl + Duration::from_secs(2), "leave after {took:?}");
    let mut late = Rt::connect(&b, &anon, true).await;
    late.join(room, presence_cfg("carol")).await;
    let st = late
        .wait_for("presence_state", |f| f.event == "presence_state")
        .await;
    assert!(st.payload.get("alice").is_none(), "{st:?}");
    stop(&db, vec![(a, na), (b, nb)]).await;
}
