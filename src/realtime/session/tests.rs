//! The Realtime session's timers and lag, over a channel socket with paused time: no database,
//! no network.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::access::RlsGate;
use crate::auth::{Auth, Claims, Verifier, mint_claims};
use crate::decode::Change;
use crate::flags::{EnvTier, FlagSet, Flags};
use crate::hub::Hub;
use crate::realtime::RealtimeState;
use crate::realtime::private::PrivateChannels;
use crate::realtime::protocol::frame::Vsn;
use crate::realtime::protocol::{TOKEN_REFRESH_WINDOW, text};
use crate::ws::socket::testing::{Peer, socket};
use crate::ws::socket::{CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_LAGGED};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// Shared state on a database that is never reached, with a hub of `capacity` changes.
fn state(capacity: usize) -> RealtimeState {
    let pool = crate::db::pool("postgres://nobody@127.0.0.1:1/none", 1, "test").unwrap();
    RealtimeState {
        gate: Arc::new(RlsGate::new(pool.clone(), "walcast_events")),
        private: Arc::new(PrivateChannels::new(pool.clone())),
        bus: Arc::default(),
        relay: crate::realtime::cluster::Relay::off(),
        messages: Arc::new(crate::realtime::messages::MessageStore::new(pool.clone())),
        hub: Hub::new(capacity, u64::MAX, Arc::default()),
        metrics: Arc::default(),
        flags: Flags::new("test", EnvTier::default(), FlagSet::default()),
        clients: Arc::default(),
        auth: Auth::new(Some(SECRET)),
        role_recheck: Duration::from_secs(60),
        max_payload: 256 << 10,
        limits: crate::config::RealtimeLimits {
            joins_per_second: 50,
            messages_per_second: 500,
            channel_messages_per_second: 100,
        },
        joins: crate::config::RealtimeJoins::default(),
        shutdown: CancellationToken::new(),
        resumes: Arc::new(crate::realtime::resume::Resumes::new(pool, Arc::default())),
        replays: crate::replication::Replays::new(
            crate::replication::ReplicationSettings::from_url(
                "postgres://nobody@127.0.0.1:1/none",
                "walcast_events",
                "test",
            )
            .unwrap(),
            "walcast_test".into(),
            1,
        ),
        reader: Arc::default(),
    }
}

/// A token for `role` that expires `secs` seconds from now.
fn token(role: &str, secs: i64) -> String {
    let claims = Claims {
        role: role.into(),
        exp: chrono::Utc::now().timestamp() + secs,
        iat: None,
        iss: None,
        sub: None,
        extra: Default::default(),
    };
    mint_claims(SECRET, &claims).unwrap()
}

/// A session (not yet running) and the client's end.
fn session(
    state: &RealtimeState,
) -> (
    Session<impl super::ClientSink + use<>, impl super::ClientStream + use<>>,
    Peer,
) {
    let (sink, stream, peer) = socket();
    let client = state
        .clients
        .register(crate::endpoint::Endpoint::Realtime, None);
    let session = Session::new(
        sink,
        stream,
        state.clone(),
        Vsn::V1,
        Arc::new(Verifier::new(SECRET)),
        token("service_role", 3600),
        client,
    );
    (session, peer)
}

/// Joins `realtime:room` for broadcast only (no database needed) with `access_token`.
async fn join(peer: &mut Peer, access_token: &str) -> Value {
    let frame = json!({
        "topic": "realtime:room", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"broadcast": {"self": false}, "presence": {"enabled": false}},
                    "access_token": access_token},
    });
    peer.send(&frame.to_string()).await;
    peer.next_json().await
}

#[tokio::test(start_paused = true)]
async fn an_idle_socket_is_closed_after_the_idle_timeout() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    let started = Instant::now();
    let run = tokio::spawn(async move { s.run().await });
    assert_eq!(peer.next_close().await, CLOSE_IDLE);
    assert!(started.elapsed() >= crate::realtime::protocol::IDLE_TIMEOUT);
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_socket_open() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    for r in 0..5 {
        tokio::time::sleep(Duration::from_secs(25)).await;
        let hb =
            json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": r.to_string()});
        peer.send(&hb.to_string()).await;
        let reply = peer.next_json().await;
        assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_its_channel_but_not_the_socket() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    let reply = join(&mut peer, &token("service_role", 30)).await;
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    let joined = Instant::now();
    let system = peer.next_json().await;
    assert_eq!(system["event"], "system", "{system}");
    assert_eq!(system["payload"]["status"], "error", "{system}");
    let message = system["payload"]["message"].as_str().unwrap();
    assert!(message.starts_with("Token has expired"), "{message}");
    let waited = joined.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
        "expired after {waited:?}"
    );
    let close = peer.next_json().await;
    assert_eq!(close["event"], "phx_close", "{close}");
    // The socket stays open: a heartbeat is answered.
    peer.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"9"}"#)
        .await;
    assert_eq!(peer.next_json().await["payload"]["status"], "ok");
}

#[tokio::test(start_paused = true)]
async fn a_client_behind_the_ring_is_told_and_closed_with_4008() {
    let state = state(4);
    let (mut s, mut peer) = session(&state);
    let hub = state.hub.clone();
    let lagged_before = state.metrics.clients_lagged.get();
    tokio::spawn(async move { s.run().await });
    let reply = join(&mut peer, &token("service_role", 3600)).await;
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    // More changes than the ring holds, before the session reads any.
    for lsn in 1..=10 {
        hub.publish(Change::sample(lsn));
    }
    let system = peer.next_json().await;
    assert_eq!(system["event"], "system", "{system}");
    assert_eq!(system["payload"]["message"], text::CLIENT_LAGGED);
    assert_eq!(peer.next_close().await, CLOSE_LAGGED);
    assert_eq!(state.metrics.clients_lagged.get(), lagged_before + 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_says_so_on_every_channel_then_goes_away() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    join(&mut peer, &token("service_role", 3600)).await;
    state.shutdown.cancel();
    let system = peer.next_json().await;
    assert_eq!(system["payload"]["message"], text::SERVER_DISCONNECT);
    // No phx_close: realtime-js joins the channel again when it reconnects.
    assert_eq!(peer.next_close().await, CLOSE_GOING_AWAY);
}

/// Sends an `access_token` message on `realtime:room`.
async fn refresh(peer: &mut Peer, token: &str) {
    let frame = json!({"topic": "realtime:room", "event": "access_token", "ref": "2",
                       "join_ref": "1", "payload": {"access_token": token}});
    peer.send(&frame.to_string()).await;
}

#[tokio::test(start_paused = true)]
async fn token_refreshes_are_applied_at_most_once_per_window() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    let reply = join(&mut peer, &token("service_role", 3600)).await;
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    // The first refresh is applied at once; the next, inside the window, is held.
    refresh(&mut peer, &token("service_role", 3500)).await;
    let sent = Instant::now();
    refresh(&mut peer, &token("service_role", -120)).await;
    let early = tokio::time::timeout(Duration::from_secs(9), peer.next_json()).await;
    assert!(
        early.is_err(),
        "the held token was applied early: {early:?}"
    );
    // At the window's end it is applied: an expired token closes the channel.
    let system = peer.next_json().await;
    assert_eq!(system["event"], "system", "{system}");
    let message = system["payload"]["message"].as_str().unwrap();
    assert!(message.starts_with("Token has expired"), "{message}");
    let waited = sent.elapsed();
    assert!(
        waited >= TOKEN_REFRESH_WINDOW - Duration::from_secs(1)
            && waited <= TOKEN_REFRESH_WINDOW + Duration::from_secs(1),
        "applied after {waited:?}"
    );
    assert_eq!(peer.next_json().await["event"], "phx_close");
}

#[tokio::test(start_paused = true)]
async fn a_held_refresh_saves_a_channel_whose_token_expires() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    join(&mut peer, &token("service_role", 3600)).await;
    // Applied at once: a token that expires in 5 s. Held: a token good for an hour.
    refresh(&mut peer, &token("service_role", 5)).await;
    refresh(&mut peer, &token("service_role", 3600)).await;
    let quiet = tokio::time::timeout(Duration::from_secs(30), peer.next_json()).await;
    assert!(quiet.is_err(), "the channel was closed: {quiet:?}");
    peer.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"9"}"#)
        .await;
    assert_eq!(peer.next_json().await["payload"]["status"], "ok");
}

#[tokio::test(start_paused = true)]
async fn a_track_turns_presence_on_and_sends_the_state() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    join(&mut peer, &token("service_role", 3600)).await;
    let track = json!({"topic": "realtime:room", "event": "presence", "ref": "3", "join_ref": "1",
                       "payload": {"type": "presence", "event": "track", "payload": {"u": 1}}});
    peer.send(&track.to_string()).await;
    let reply = peer.next_json().await;
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    let state_push = peer.next_json().await;
    assert_eq!(state_push["event"], "presence_state", "{state_push}");
    let metas = state_push["payload"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["metas"]
        .clone();
    assert_eq!(metas[0]["u"], 1, "{state_push}");
    // From now on diffs arrive, its own included; a second track sends no second state.
    let track2 = json!({"topic": "realtime:room", "event": "presence", "ref": "4", "join_ref": "1",
                        "payload": {"type": "presence", "event": "track", "payload": {"u": 2}}});
    peer.send(&track2.to_string()).await;
    assert_eq!(peer.next_json().await["payload"]["status"], "ok");
    assert_eq!(peer.next_json().await["event"], "presence_diff");
}

#[test]
fn a_sockets_future_stays_small() {
    // Every connection holds its session's future: most of the per-connection cost. A
    // blocking step wrapped for the byte budget must not copy the step into the future.
    let state = state(16);
    let (mut s, _peer) = session(&state);
    let size = std::mem::size_of_val(&s.run());
    assert!(
        size < 6 << 10,
        "a Realtime session's future is {size} bytes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waited_join_the_database_cannot_serve_times_out_with_supabases_reason() {
    let state = state(16);
    let (mut s, mut peer) = session(&state);
    tokio::spawn(async move { s.run().await });
    // The database behind `state` is never reached: the bindings cannot be checked.
    let frame = json!({
        "topic": "realtime:room", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {
            "postgres_changes": [{"event": "*", "schema": "public", "table": "monitoring_events"}],
            "postgres_changes_options": {"wait": true, "timeout": 1500}},
            "access_token": token("service_role", 3600)},
    });
    peer.send(&frame.to_string()).await;
    let reply = peer.next_json().await;
    assert_eq!(reply["payload"]["status"], "error", "{reply}");
    assert_eq!(
        reply["payload"]["response"]["reason"],
        "PostgresChangesSubscribeTimeout: Timed out after 1500ms waiting for the \
         postgres_changes subscription"
    );
}
