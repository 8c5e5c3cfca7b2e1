//! Today's Supabase keys: user tokens signed with asymmetric keys (ES256, RS256) from a JWKS file
//! or URL — rotation, revocation, refusals by name, the unknown-`kid` refresh budget — and
//! publishable/secret API keys on the HTTP APIs, `/ws` and the Realtime endpoint. Every key is
//! made in the test (`support::keys`).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::keys::{self, JwksServer, PUBLISHABLE, SECRET_KEY, SigningKey};
use crate::support::{self, TestDb, Walcast, wait_until};

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A `service_role` token signed with `key`.
fn service(key: &SigningKey) -> String {
    key.sign(&json!({"role": "service_role", "exp": now() + 600}))
}

/// GETs `url` with extra headers; returns the status and the JSON body.
async fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = hyper::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(http_body_util::Empty::new()).expect("request"))
        .await
        .expect("get");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `GET /v1/status` with a bearer token: the status and the error message, if any.
async fn status_as(w: &Walcast, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let (status, body) = get_with(&w.url("/v1/status"), &[("authorization", &auth)]).await;
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    (status, message)
}

/// Writes `doc` to `path` at once (a rename), as a deployment would replace a key file.
fn replace_file(path: &std::path::Path, doc: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc).expect("write jwks");
    std::fs::rename(&tmp, path).expect("rename jwks");
}

/// ES256 and RS256 tokens verify against a JWKS file (without any JWT secret); every other
/// token is refused with a message that names the problem; replacing the file rotates keys.
#[tokio::test]
async fn a_jwks_file_verifies_es256_and_rs256_and_refuses_by_name() {
    let db = support::fresh_db().await;
    let (es, rs) = (SigningKey::es256("es-1"), SigningKey::rs256("rs-1"));
    let dir = support::temp_dir("jwks");
    let file = dir.join("jwks.json");
    replace_file(&file, &keys::jwks(&[&es, &rs]));
    let path = file.display().to_string();
    let w = Walcast::start(&db, &["--jwks-file", &path, "--jwks-min-refresh", "1s"]).await;

    assert_eq!(status_as(&w, &service(&es)).await.0, 200);
    assert_eq!(status_as(&w, &service(&rs)).await.0, 200);
    assert_eq!(status_as(&w, &es.user("authenticated", "u1")).await.0, 403);
    assert_eq!(status_as(&w, &rs.user("anon", "u1")).await.0, 403);

    let claims = json!({"role": "service_role", "exp": now() + 600});
    let refused = [
        (
            "expired",
            es.sign(&json!({"role": "service_role", "exp": now() - 5})),
            "token has expired",
        ),
        (
            "unknown kid",
            es.sign_as(Some("nope"), &claims),
            "no signing key with kid \"nope\"",
        ),
        (
            "alg none",
            keys::forged(&json!({"alg": "none", "kid": "es-1"}), &claims, b""),
            "algorithm \"none\" is not accepted",
        ),
        (
            // The classic confusion: HS256 with the public key's bytes as the HMAC secret.
            "HS256 signed with the public key",
            jsonwebtoken::encode(
                &jsonwebtoken::Header {
                    kid: Some("rs-1".into()),
                    ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
                },
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(rs.jwk.to_string().as_bytes()),
            )
            .unwrap(),
            "algorithm \"HS256\" is not accepted",
        ),
        (
            "RS256 naming the EC key",
            rs.sign_as(Some("es-1"), &claims),
            "signing key \"es-1\" does not sign RS256 tokens",
        ),
        (
            "signed by another key",
            SigningKey::es256("es-1").sign(&claims),
            "signature does not verify",
        ),
        (
            "HS256 without a configured secret",
            support::service_key(),
            "algorithm \"HS256\" is not accepted",
        ),
    ];
    for (what, token, says) in refused {
        let (status, message) = status_as(&w, &token).await;
        assert_eq!(status, 401, "{what}: {message}");
        assert!(message.contains(says), "{what}: {message:?} lacks {says:?}");
    }

    // Rotation: a new key signs before walcast has read it; once the file has it, the first
    // token naming it makes walcast read the file again.
    let es2 = SigningKey::es256("es-2");
    replace_file(&file, &keys::jwks(&[&es, &rs, &es2]));
    let rotated = wait_until(Duration::from_secs(10), || async {
        status_as(&w, &service(&es2)).await.0 == 200
    })
    .await;
    assert!(
        rotated,
        "the new key never verified; log:\n{}",
        w.log_text()
    );
    assert_eq!(status_as(&w, &service(&es)).await.0, 200);
    // A file with no usable key is refused at startup.
    let empty = dir.join("empty.json");
    std::fs::write(
        &empty,
        r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#,
    )
    .unwrap();
    let (code, _, err) = support::run_cli(
        &[
            "serve",
            "--database-url",
            &db.url,
            "--jwks-file",
            &empty.display().to_string(),
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("no usable signing key"), "{err}");
    w.stop(&db).await;
}

/// A JWKS URL: a new key is picked up on its first token, a removed key stops verifying after
/// the periodic refresh, the keys are kept while the URL is down, and tokens with made-up kids
/// cannot make walcast read the URL more than once per --jwks-min-refresh.
#[tokio::test]
async fn a_jwks_url_rotates_revokes_and_is_not_hammered() {
    let db = support::fresh_db().await;
    let (k1, k2) = (SigningKey::es256("k1"), SigningKey::rs256("k2"));
    let server = JwksServer::start(keys::jwks(&[&k1])).await;
    let w = Walcast::start(
        &db,
        &[
            "--jwks-url",
            &server.url,
            "--jwks-min-refresh",
            "1s",
            "--jwks-refresh",
            "3s",
        ],
    )
    .await;
    assert_eq!(status_as(&w, &service(&k1)).await.0, 200);
    assert!(server.hits() >= 1);

    // Rotation: k2 appears at the URL; its first token makes walcast fetch again.
    assert_eq!(status_as(&w, &service(&k2)).await.0, 401);
    server.set(keys::jwks(&[&k1, &k2]));
    let rotated = wait_until(Duration::from_secs(10), || async {
        status_as(&w, &service(&k2)).await.0 == 200
    })
    .await;
    assert!(rotated, "k2 never verified; log:\n{}", w.log_text());

    // Made-up kids: each is refused, and the URL is read at most once per second (plus the
    // periodic refresh every 3 s), not once per token.
    let before = server.hits();
    let started = Instant::now();
    for i in 0..200 {
        let token = k1.sign_as(
            Some(&format!("forged-{i}")),
            &json!({"role": "service_role", "exp": now() + 600}),
        );
        let (status, message) = status_as(&w, &token).await;
        assert_eq!(status, 401, "{message}");
        assert!(message.contains("no signing key"), "{message}");
    }
    let secs = started.elapsed().as_secs() + 1;
    let reads = server.hits() - before;
    eprintln!(
        "{reads} JWKS reads for 200 unknown kids in {:?}",
        started.elapsed()
    );
    assert!(
        reads as u64 <= 1 + secs + secs / 3 + 1,
        "{reads} reads of the JWKS for 200 unknown kids in {secs} s"
    );

    // Revocation: k1 leaves the set; after a periodic refresh its tokens are refused.
    server.set(keys::jwks(&[&k2]));
    let revoked = wait_until(Duration::from_secs(15), || async {
        status_as(&w, &service(&k1)).await.0 == 401
    })
    .await;
    assert!(revoked, "k1 kept verifying; log:\n{}", w.log_text());
    assert_eq!(status_as(&w, &service(&k2)).await.0, 200);

    // The URL goes away: the refresh fails, walcast keeps the keys it has.
    drop(server);
    let failed = wait_until(Duration::from_secs(15), || async {
        w.log_text().contains("jwks refresh failed")
    })
    .await;
    assert!(failed, "no failed refresh logged:\n{}", w.log_text());
    assert_eq!(status_as(&w, &service(&k2)).await.0, 200);
    assert!(
        !w.log_text().contains(&service(&k2)[..40]),
        "a token reached the log"
    );
    w.stop(&db).await;
}

/// walcast with the test API keys and ES256 user tokens from a JWKS file (no JWT secret).
async fn keyed_walcast(db: &TestDb, user_key: &SigningKey) -> Walcast {
    let file = support::temp_dir("jwks").join("jwks.json");
    replace_file(&file, &keys::jwks(&[user_key]));
    let path = file.display().to_string();
    Walcast::start_with_env(
        db,
        &["--jwks-file", &path],
        &[
            ("WALCAST_PUBLISHABLE_KEYS", PUBLISHABLE),
            ("WALCAST_SECRET_KEYS", SECRET_KEY),
        ],
    )
    .await
}

/// One request of a table test: what, the URL, its headers, the status and error code wanted.
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, u16, &'a str);

/// API keys on the HTTP APIs, the way Supabase's gateway treats them: a secret key is
/// service_role, a publishable key anon; a user JWT beside the key decides; an unknown `sb_`
/// key is refused with `invalid_api_key` wherever it is.
#[tokio::test]
async fn api_keys_act_as_anon_and_service_role_on_the_http_apis() {
    let db = support::fresh_db().await;
    let user_key = SigningKey::es256("user-key");
    let w = keyed_walcast(&db, &user_key).await;
    let status = w.url("/v1/status");
    let bearer = |t: &str| format!("Bearer {t}");
    let unknown = "sb_secret_walcastTestKey_0123456789abcX";
    let cases: Vec<Case> = vec![
        (
            "apikey header",
            status.clone(),
            vec![("apikey", SECRET_KEY.into())],
            200,
            "",
        ),
        (
            "?apikey=",
            format!("{status}?apikey={SECRET_KEY}"),
            vec![],
            200,
            "",
        ),
        (
            "Bearer sb_secret",
            status.clone(),
            vec![("authorization", bearer(SECRET_KEY))],
            200,
            "",
        ),
        (
            "publishable",
            status.clone(),
            vec![
                ("apikey", PUBLISHABLE.into()),
                ("authorization", bearer(PUBLISHABLE)),
            ],
            403,
            "forbidden",
        ),
        (
            "publishable key + service_role JWT",
            status.clone(),
            vec![
                ("apikey", PUBLISHABLE.into()),
                ("authorization", bearer(&service(&user_key))),
            ],
            200,
            "",
        ),
        (
            "secret key + a user's JWT: the JWT decides",
            status.clone(),
            vec![
                ("apikey", SECRET_KEY.into()),
                (
                    "authorization",
                    bearer(&user_key.user("authenticated", "alice")),
                ),
            ],
            403,
            "forbidden",
        ),
        (
            "unknown key",
            status.clone(),
            vec![("apikey", unknown.into())],
            401,
            "invalid_api_key",
        ),
        (
            "unknown key beside a valid JWT",
            status.clone(),
            vec![
                ("apikey", unknown.into()),
                ("authorization", bearer(&service(&user_key))),
            ],
            401,
            "invalid_api_key",
        ),
        (
            "unknown bearer key",
            format!("{status}?apikey={SECRET_KEY}"),
            vec![("authorization", bearer("sb_publishable_nope"))],
            401,
            "invalid_api_key",
        ),
    ];
    for (what, url, headers, want, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, body) = get_with(&url, &headers).await;
        assert_eq!(got, want, "{what}: {body}");
        if !code.is_empty() {
            assert_eq!(body["error"]["code"], code, "{what}: {body}");
        }
    }
    // Ingest: the secret key writes; an unknown key gets ingest's own invalid_api_key.
    let event = r#"{"event_type":"cpu","source":"keys"}"#;
    let url = w.url("/v1/events");
    let (got, body) = support::post(&url, "application/json", Some(SECRET_KEY), event).await;
    assert_eq!(got, 201, "{body}");
    let (got, body) = support::post(&url, "application/json", Some(PUBLISHABLE), event).await;
    assert_eq!((got, &body["error"]["code"]), (403, &json!("forbidden")));
    let (got, body) = support::post(&url, "application/json", Some(unknown), event).await;
    assert_eq!(
        (got, &body["error"]["code"]),
        (401, &json!("invalid_api_key"))
    );
    // No key material in the log.
    let log = w.log_text();
    assert!(
        !log.contains("walcastTestKey"),
        "a key reached the log:\n{log}"
    );
    w.stop(&db).await;
}

/// Row policies for these tests: `anon` reads rows whose source is `public`; an authenticated
/// user reads the rows whose source is their `sub`.
async fn anon_and_own_rows_policies(db: &TestDb) {
    support::use_own_rows_policy(db).await;
    support::use_anon_public_policy(db).await;
}

/// The sources of the event frames a `/ws` client gets within `wait`.
async fn ws_sources(c: &mut support::ws::WsClient, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(f) = c.next_frame(wait).await {
        if f["type"] == "event" {
            out.push(f["record"]["source"].as_str().unwrap_or("-").to_owned());
        }
    }
    out.sort();
    out
}

/// Inserts one row per source.
async fn insert_sources(db: &TestDb, sources: &[&str]) {
    let c = db.client().await;
    for s in sources {
        c.execute(
            "insert into public.monitoring_events (event_type, source) values ('cpu', $1)",
            &[s],
        )
        .await
        .expect("insert");
    }
}

/// `/ws` with API keys: a publishable key is anon and sees what anon's policy allows; with a
/// user's ES256 token as `access_token` it is that user; a secret key sees every row; an
/// unknown key is refused before the upgrade.
#[tokio::test]
async fn ws_takes_api_keys_and_asymmetric_user_tokens() {
    let db = support::fresh_db().await;
    anon_and_own_rows_policies(&db).await;
    let user_key = SigningKey::es256("user-key");
    let w = keyed_walcast(&db, &user_key).await;
    let alice_token = user_key.user("authenticated", "alice");

    let mut anon =
        support::ws::WsClient::connect(&w.ws_url(&format!("/ws?apikey={PUBLISHABLE}"))).await;
    let mut alice = support::ws::WsClient::connect(&w.ws_url(&format!(
        "/ws?apikey={PUBLISHABLE}&access_token={alice_token}"
    )))
    .await;
    let mut service = {
        let mut req = w.ws_url("/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("apikey", SECRET_KEY.parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("service");
        let mut c = support::ws::WsClient {
            socket,
            closed: None,
        };
        let welcome = c
            .next_frame(Duration::from_secs(10))
            .await
            .expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        c
    };
    for c in [&mut anon, &mut alice, &mut service] {
        c.subscribe("all", json!({})).await;
    }
    insert_sources(&db, &["public", "alice", "bob"]).await;
    let quiet = Duration::from_millis(1500);
    assert_eq!(
        ws_sources(&mut service, quiet).await,
        ["alice", "bob", "public"]
    );
    assert_eq!(ws_sources(&mut alice, quiet).await, ["alice"]);
    assert_eq!(ws_sources(&mut anon, quiet).await, ["public"]);

    let url = w.ws_url("/ws?apikey=sb_publishable_walcastTestKey_unknown00");
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("an unknown key was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null")).unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{body}");
            assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    w.stop(&db).await;
}

/// Joins `realtime:<topic>` for every change of `monitoring_events`, with `access_token` when
/// given; waits for the subscription.
async fn realtime_subscribe(
    w: &Walcast,
    apikey: &str,
    access_token: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={apikey}&vsn=1.0.0"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let mut payload = json!({"config": {"postgres_changes": [
        {"event": "*", "schema": "public", "table": "monitoring_events"}]}});
    if let Some(t) = access_token {
        payload["access_token"] = json!(t);
    }
    let join = json!({"topic": "realtime:rows", "event": "phx_join", "ref": "1",
                      "join_ref": "1", "payload": payload});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply within 10 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "phx_reply" {
                assert_eq!(v["payload"]["status"], "ok", "join refused: {v}");
            }
            if v["event"] == "system" && v["payload"]["extension"] == "postgres_changes" {
                return ws;
            }
        }
    }
}

/// The sources of the changes a Realtime socket gets within `wait`.
async fn realtime_sources(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    wait: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, ws.next()).await {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "postgres_changes" {
                let s = &v["payload"]["data"]["record"]["source"];
                out.push(s.as_str().unwrap_or("-").to_owned());
            }
        }
    }
    out.sort();
    out
}

/// The Realtime endpoint with API keys, as realtime-js uses them: the publishable key on the
/// socket URL (an unknown one gets 401 "Invalid API key"), the user's ES256 token in the join
/// payload; a join without a user token (or with the key itself as `access_token`, which
/// supabase-js sends when nobody is signed in) is anon.
#[tokio::test]
async fn realtime_takes_api_keys_and_asymmetric_user_tokens() {
    let db = support::fresh_db().await;
    anon_and_own_rows_policies(&db).await;
    let user_key = SigningKey::es256("user-key");
    let w = keyed_walcast(&db, &user_key).await;

    let url =
        w.ws_url("/realtime/v1/websocket?apikey=sb_publishable_walcastTestKey_unknown00&vsn=1.0.0");
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("an unknown key was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null")).unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{body}");
            assert_eq!(body["error"], "Invalid API key", "{body}");
        }
        Err(e) => panic!("unexpected error {e}"),
    }

    let alice_token = user_key.user("authenticated", "alice");
    let mut alice = realtime_subscribe(&w, PUBLISHABLE, Some(&alice_token)).await;
    let mut anon = realtime_subscribe(&w, PUBLISHABLE, None).await;
    let mut anon_js = realtime_subscribe(&w, PUBLISHABLE, Some(PUBLISHABLE)).await;
    let mut service = realtime_subscribe(&w, SECRET_KEY, None).await;
    insert_sources(&db, &["public", "alice", "bob"]).await;
    let quiet = Duration::from_millis(1500);
    assert_eq!(realtime_sources(&mut alice, quiet).await, ["alice"]);
    assert_eq!(realtime_sources(&mut anon, quiet).await, ["public"]);
    assert_eq!(realtime_sources(&mut anon_js, quiet).await, ["public"]);
    assert_eq!(
        realtime_sources(&mut service, quiet).await,
        ["alice", "bob", "public"]
    );
    w.stop(&db).await;
}
