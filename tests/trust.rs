//! Trust at the edge: each attack on an endpoint, and the refusal it gets.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, TestDb, Walcast};

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs `claims` with the test secret.
fn sign(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .expect("sign")
}

/// walcast with the test secret and `extra` options.
async fn walcast(db: &TestDb, extra: &[&str]) -> Walcast {
    Walcast::start_with_env(db, extra, &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// The status and body of a refused Realtime upgrade (panics if it is accepted).
async fn realtime_refusal(w: &Walcast, token: &str) -> (u16, Value) {
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={token}&vsn=1.0.0"));
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("upgrade accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Connects to the Realtime endpoint with `token` and joins a broadcast channel; the reply.
async fn realtime_join(w: &Walcast, token: &str) -> Value {
    let url = w.ws_url(&format!("/realtime/v1/websocket?apikey={token}&vsn=1.0.0"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let join = json!({"topic": "realtime:room", "event": "phx_join", "ref": "1",
                      "join_ref": "1", "payload": {"config": {"broadcast": {"self": false}}}});
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
                return v["payload"].clone();
            }
        }
    }
}

/// A validly signed token naming a role that is not an API role is refused at the door
/// (finding: a token with `role: "postgres"` saw rows its policies hide).
#[tokio::test]
async fn tokens_naming_other_roles_are_refused() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    for role in ["postgres", "authenticator", "supabase_admin"] {
        let t = sign(json!({"role": role, "exp": now() + 600}));
        assert_eq!(
            realtime_refusal(&w, &t).await,
            (401, json!({"error": "Token role is not an API role"})),
            "{role}"
        );
        let (status, body) = support::post(
            &w.url("/v1/events"),
            "application/json",
            Some(&t),
            r#"{"event_type":"x","source":"y"}"#,
        )
        .await;
        assert_eq!(status, 401, "{role}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is not an API role"),
            "{body}"
        );
    }
}

/// A role configured as an extra API role is still refused when it is a superuser or bypasses
/// row level security: what the database says wins over what the token says.
#[tokio::test]
async fn privileged_roles_are_refused_even_when_configured() {
    let db = support::fresh_db().await;
    let (su, bypass, plain) = (
        format!("su_{}", db.name),
        format!("bypass_{}", db.name),
        format!("plain_{}", db.name),
    );
    let c = db.client().await;
    c.batch_execute(&format!(
        "create role {su} superuser nologin; create role {bypass} bypassrls nologin; \
         create role {plain} nologin;"
    ))
    .await
    .unwrap();
    let extra = format!("--extra-roles={su},{bypass},{plain}");
    let w = walcast(&db, &[&extra]).await;
    for role in [&su, &bypass] {
        let reply = realtime_join(&w, &sign(json!({"role": role, "exp": now() + 600}))).await;
        assert_eq!(reply["status"], "error", "{role}: {reply}");
        assert_eq!(
            reply["response"]["reason"], "InvalidJWTToken: Token role is not an API role",
            "{role}: {reply}"
        );
    }
    let reply = realtime_join(&w, &sign(json!({"role": plain, "exp": now() + 600}))).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    c.batch_execute(&format!(
        "drop role {su}; drop role {bypass}; drop role {plain};"
    ))
    .await
    .unwrap();
}

/// `nbf` in the future is refused everywhere; `iss` and `aud` are checked when configured.
#[tokio::test]
async fn nbf_iss_and_aud_are_checked() {
    let db = support::fresh_db().await;
    let w = walcast(
        &db,
        &[
            "--jwt-issuer=https://project.supabase.co/auth/v1",
            "--jwt-audience=authenticated",
        ],
    )
    .await;
    let good = json!({"role": "service_role", "exp": now() + 600,
                      "iss": "https://project.supabase.co/auth/v1", "aud": "authenticated"});
    let post = |t: String| {
        let url = w.url("/v1/events");
        async move {
            support::post(
                &url,
                "application/json",
                Some(&t),
                r#"{"event_type":"x","source":"y"}"#,
            )
            .await
        }
    };
    let (status, body) = post(sign(good.clone())).await;
    assert_eq!(status, 201, "{body}");
    let cases = [
        (
            "nbf",
            json!(now() + 86_400),
            "not valid yet",
            "Token is not valid yet",
        ),
        (
            "iss",
            json!("https://elsewhere/auth/v1"),
            "wrong issuer",
            "Token issuer is not accepted",
        ),
        (
            "aud",
            json!("anon"),
            "wrong audience",
            "Token audience is not accepted",
        ),
    ];
    for (claim, value, http, realtime) in cases {
        let mut claims = good.clone();
        claims[claim] = value;
        let t = sign(claims);
        let (status, body) = post(t.clone()).await;
        assert_eq!(status, 401, "{claim}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(http),
            "{claim}: {body}"
        );
        assert_eq!(
            realtime_refusal(&w, &t).await,
            (401, json!({"error": realtime})),
            "{claim}"
        );
    }
}
