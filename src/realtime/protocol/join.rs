//! Channel topics and the `phx_join` payload.
//!
//! A channel topic is `realtime:<name>`. The join payload's `config` holds `broadcast`
//! (`ack`, `self`), `presence` (`key`, `enabled`), `postgres_changes` (a list of bindings) and
//! `private`; booleans may also be the strings `"true"`/`"false"` in any case. Unknown keys are
//! ignored, and a value of the wrong type falls back to its default and is noted in
//! [`JoinRequest::problems`] rather than refusing the join.
//!
//! realtime-js 2.119 also sends `broadcast.replication_ready`, `broadcast.replay` (`since`,
//! `limit`: [`parse_replay`]) and `postgres_changes_options` (`wait`, `timeout`).
//!
//! A payload without a `config` key is the legacy form: the topic itself names the change
//! subscription, `realtime:<schema>[:<table>[:<filter>]]` (`realtime:*` for everything).

use serde_json::{Map, Value};

use super::TOPIC_PREFIX;
use super::binding::BindingRequest;

/// Why a topic cannot be joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic does not start with `realtime:`.
    #[error("unmatched topic")]
    Unmatched,
    /// The topic is `realtime:` with no name.
    #[error("You must provide a topic name")]
    NameRequired,
}

/// The name part of a channel topic: `realtime:room1` → `room1`.
pub fn sub_topic(topic: &str) -> Result<&str, TopicError> {
    match topic.strip_prefix(TOPIC_PREFIX) {
        None => Err(TopicError::Unmatched),
        Some("") => Err(TopicError::NameRequired),
        Some(name) => Ok(name),
    }
}

/// A channel's configuration from its `phx_join`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JoinConfig {
    /// `broadcast.ack`: reply to every broadcast push.
    pub broadcast_ack: bool,
    /// `broadcast.self`: the sender receives its own broadcasts.
    pub broadcast_self: bool,
    /// `presence.key`; `None` when missing or empty (the server picks one).
    pub presence_key: Option<String>,
    /// `presence.enabled`: send `presence_state` on join and `presence_diff` afterwards.
    pub presence_enabled: bool,
    /// `postgres_changes` bindings, in the client's order.
    pub postgres_changes: Vec<BindingRequest>,
    /// `private`: a private channel (separate from the public one of the same name).
    pub private: bool,
    /// The payload had no `config`: the binding comes from the topic and change events use
    /// the legacy shape.
    pub legacy: bool,
    /// `broadcast.replication_ready`: a `system` message once changes are streaming.
    pub replication_ready: bool,
    /// `broadcast.replay` was given (stored broadcasts to replay on a private channel).
    pub replay: bool,
    /// What `broadcast.replay` asks for; `None` when it is missing or its values are not valid.
    pub replay_window: Option<ReplayWindow>,
    /// `postgres_changes_options.wait`: hold the join reply until the bindings are live, for
    /// at most this many milliseconds ([`WAIT_DEFAULT_MS`], capped at [`WAIT_MAX_MS`]).
    pub wait_ms: Option<u64>,
}

/// Most stored broadcasts one replay sends (Supabase's limit); a larger `limit` sends this many.
pub const REPLAY_MAX: i64 = 25;

/// `broadcast.replay`: the stored broadcasts a private channel receives before live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Messages stored at or after this time, in milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// At most this many (the newest), 1 to [`REPLAY_MAX`].
    pub limit: i64,
}

/// Reads `broadcast.replay`: `since` (an integer, required) and `limit` (an integer, default
/// and most [`REPLAY_MAX`], at least 1). `None` when a value is missing or not an integer.
pub fn parse_replay(v: &Value) -> Option<ReplayWindow> {
    let o = v.as_object()?;
    let integer = |v: &Value| {
        v.as_i64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
    };
    let since_ms = integer(o.get("since")?)?;
    let limit = match o.get("limit") {
        None | Some(Value::Null) => REPLAY_MAX,
        Some(v) => integer(v)?.clamp(1, REPLAY_MAX),
    };
    Some(ReplayWindow { since_ms, limit })
}

/// How long a join with `postgres_changes_options.wait` waits when it names no `timeout`.
pub const WAIT_DEFAULT_MS: u64 = 15_000;

/// The longest wait a join may ask for; longer requests wait this long.
pub const WAIT_MAX_MS: u64 = 20_000;

/// A parsed `phx_join` payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JoinRequest {
    /// The channel configuration.
    pub config: JoinConfig,
    /// `access_token` (or legacy `user_token`), unless absent, null or an `sb_` key.
    pub access_token: Option<String>,
    /// Values that were ignored because of their type, for the server log.
    pub problems: Vec<String>,
}

/// Reads a `phx_join` payload for the channel `sub_topic` (the topic without `realtime:`).
pub fn parse_join(sub_topic: &str, payload: &Value) -> JoinRequest {
    let mut req = JoinRequest::default();
    let empty = Map::new();
    let payload = match payload {
        Value::Object(m) => m,
        _ => {
            req.problems
                .push("the join payload is not an object".into());
            &empty
        }
    };
    req.access_token = access_token(payload.get("access_token"))
        .or_else(|| access_token(payload.get("user_token")));
    match payload.get("config") {
        None => {
            req.config.legacy = true;
            req.config.postgres_changes = vec![legacy_binding(sub_topic)];
        }
        Some(Value::Object(config)) => parse_config(config, &mut req),
        Some(Value::Null) => {}
        Some(_) => req.problems.push("`config` is not an object".into()),
    }
    req
}

/// A usable access token: a string that is not an `sb_` API key.
fn access_token(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() && !s.starts_with("sb_") => {
            Some(s.trim().to_owned())
        }
        _ => None,
    }
}

/// Reads `config`.
fn parse_config(config: &Map<String, Value>, req: &mut JoinRequest) {
    let problems = &mut req.problems;
    let out = &mut req.config;
    if let Some(b) = object(config, "broadcast", problems) {
        out.broadcast_ack = boolean(b, "ack", "broadcast.ack", problems);
        out.broadcast_self = boolean(b, "self", "broadcast.self", problems);
        out.replication_ready = boolean(
            b,
            "replication_ready",
            "broadcast.replication_ready",
            problems,
        );
        out.replay = !matches!(b.get("replay"), None | Some(Value::Null));
        out.replay_window = b.get("replay").and_then(parse_replay);
    }
    if let Some(o) = object(config, "postgres_changes_options", problems)
        && boolean(o, "wait", "postgres_changes_options.wait", problems)
    {
        let asked = match o.get("timeout") {
            None | Some(Value::Null) => WAIT_DEFAULT_MS,
            Some(v) => match v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)) {
                Some(ms) => ms,
                None => {
                    problems.push("`postgres_changes_options.timeout` is not a number".into());
                    WAIT_DEFAULT_MS
                }
            },
        };
        out.wait_ms = Some(asked.min(WAIT_MAX_MS));
    }
    if let Some(p) = object(config, "presence", problems) {
        out.presence_enabled = boolean(p, "enabled", "presence.enabled", problems);
        out.presence_key = match p.get("key") {
            Some(Value::String(k)) if !k.is_empty() => Some(k.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            None | Some(Value::Null) | Some(Value::String(_)) => None,
            Some(_) => {
                problems.push("`presence.key` is not a string".into());
                None
            }
        };
    }
    out.private = boolean(config, "private", "private", problems);
    match config.get("postgres_changes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match BindingRequest::from_value(item) {
                    Some(b) => out.postgres_changes.push(b),
                    None => problems.push(format!("`postgres_changes[{i}]` is not an object")),
                }
            }
        }
        Some(_) => problems.push("`postgres_changes` is not a list".into()),
    }
}

/// An object-valued key of `map`, noting a wrong type.
fn object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<&'a Map<String, Value>> {
    match map.get(key) {
        Some(Value::Object(m)) => Some(m),
        None | Some(Value::Null) => None,
        Some(_) => {
            problems.push(format!("`{key}` is not an object"));
            None
        }
    }
}

/// A boolean that may also be written `"true"`/`"false"` (any case); anything else is `false`.
fn boolean(map: &Map<String, Value>, key: &str, path: &str, problems: &mut Vec<String>) -> bool {
    match map.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            problems.push(format!("`{path}` is not a boolean"));
            false
        }
    }
}

/// The binding a legacy topic names: `<schema>[:<table>[:<filter>]]`.
pub fn legacy_binding(sub_topic: &str) -> BindingRequest {
    let mut parts = sub_topic.splitn(3, ':');
    let schema = parts.next().unwrap_or("*");
    let table = parts.next();
    let filter = parts.next();
    let mut echo = Map::new();
    echo.insert("event".into(), Value::String("*".into()));
    echo.insert("schema".into(), Value::String(schema.into()));
    if let Some(t) = table {
        echo.insert("table".into(), Value::String(t.into()));
    }
    if let Some(f) = filter {
        echo.insert("filter".into(), Value::String(f.into()));
    }
    BindingRequest {
        event: Some("*".into()),
        schema: Some(schema.into()),
        table: table.map(str::to_owned),
        filter: filter.map(str::to_owned),
        select: None,
        echo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics() {
        assert_eq!(sub_topic("realtime:room1"), Ok("room1"));
        assert_eq!(sub_topic("realtime:a:b"), Ok("a:b"));
        assert_eq!(sub_topic("realtime:"), Err(TopicError::NameRequired));
        assert_eq!(sub_topic("foo"), Err(TopicError::Unmatched));
        assert_eq!(sub_topic("phoenix"), Err(TopicError::Unmatched));
    }

    #[test]
    fn realtime_js_defaults() {
        let p = json!({
            "config": {
                "broadcast": {"ack": false, "self": false},
                "presence": {"key": "", "enabled": false},
                "postgres_changes": [{"event":"*","schema":"public","table":"todos","filter":"id=eq.1"}],
                "private": false
            },
            "access_token": "tok",
            "version": "realtime-js/2.112.2",
            "unknown": 1
        });
        let r = parse_join("room1", &p);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.access_token.as_deref(), Some("tok"));
        let c = &r.config;
        assert!(!c.broadcast_ack && !c.broadcast_self && !c.presence_enabled && !c.private);
        assert!(!c.legacy);
        assert_eq!(c.presence_key, None);
        assert_eq!(c.postgres_changes.len(), 1);
        let b = &c.postgres_changes[0];
        assert_eq!(b.event.as_deref(), Some("*"));
        assert_eq!(b.schema.as_deref(), Some("public"));
        assert_eq!(b.table.as_deref(), Some("todos"));
        assert_eq!(b.filter.as_deref(), Some("id=eq.1"));
        assert_eq!(
            Value::Object(b.echo.clone()),
            json!({"event":"*","schema":"public","table":"todos","filter":"id=eq.1"})
        );
    }

    #[test]
    fn string_booleans_and_bad_types() {
        let p = json!({"config": {
            "broadcast": {"ack": "TRUE", "self": "true"},
            "presence": {"key": "u1", "enabled": "True"},
            "private": "false"
        }});
        let c = parse_join("r", &p).config;
        assert!(c.broadcast_ack && c.broadcast_self && c.presence_enabled && !c.private);
        assert_eq!(c.presence_key.as_deref(), Some("u1"));

        let p = json!({"config": {
            "broadcast": {"ack": "yes"},
            "presence": [],
            "postgres_changes": [1, {"event": "INSERT", "schema": "public"}],
            "private": 3
        }});
        let r = parse_join("r", &p);
        assert_eq!(r.problems.len(), 4, "{:?}", r.problems);
        assert!(!r.config.broadcast_ack && !r.config.private);
        assert_eq!(r.config.postgres_changes.len(), 1);

        let r = parse_join("r", &json!({"config": {"postgres_changes": "x"}}));
        assert_eq!(
            r.problems,
            vec!["`postgres_changes` is not a list".to_string()]
        );
        let r = parse_join("r", &json!("x"));
        assert!(!r.problems.is_empty());
    }

    #[test]
    fn options_of_realtime_js_2_119() {
        let p = json!({"config": {
            "broadcast": {"replication_ready": true, "replay": {"since": 1, "limit": 10}},
            "postgres_changes_options": {"wait": true}
        }});
        let c = parse_join("r", &p).config;
        assert!(c.replication_ready && c.replay);
        assert_eq!(c.wait_ms, Some(WAIT_DEFAULT_MS));
        let wait = |o: Value| parse_join("r", &json!({"config": {"postgres_changes_options": o}}));
        assert_eq!(
            wait(json!({"wait": true, "timeout": 500})).config.wait_ms,
            Some(500)
        );
        assert_eq!(
            wait(json!({"wait": true, "timeout": 60000})).config.wait_ms,
            Some(WAIT_MAX_MS)
        );
        assert_eq!(
            wait(json!({"wait": false, "timeout": 500})).config.wait_ms,
            None
        );
        let r = wait(json!({"wait": true, "timeout": "soon"}));
        assert_eq!(r.config.wait_ms, Some(WAIT_DEFAULT_MS));
        assert_eq!(r.problems.len(), 1);
        let c = parse_join("r", &json!({"config": {}})).config;
        assert!(!c.replication_ready && !c.replay && c.wait_ms.is_none());
    }

    #[test]
    fn access_tokens() {
        let t = |p: Value| parse_join("r", &p).access_token;
        assert_eq!(
            t(json!({"config": {}, "access_token": "a"})),
            Some("a".into())
        );
        assert_eq!(
            t(json!({"config": {}, "user_token": "u"})),
            Some("u".into())
        );
        assert_eq!(
            t(json!({"config": {}, "access_token": "sb_publishable_x"})),
            None
        );
        assert_eq!(t(json!({"config": {}, "access_token": null})), None);
        assert_eq!(t(json!({"config": {}, "access_token": 5})), None);
    }

    #[test]
    fn legacy_topics() {
        let r = parse_join("public:todos:id=eq.1", &json!({}));
        assert!(r.config.legacy);
        let b = &r.config.postgres_changes[0];
        assert_eq!(b.schema.as_deref(), Some("public"));
        assert_eq!(b.table.as_deref(), Some("todos"));
        assert_eq!(b.filter.as_deref(), Some("id=eq.1"));
        let b = &parse_join("*", &json!({})).config.postgres_changes[0];
        assert_eq!((b.schema.as_deref(), b.table.as_deref()), (Some("*"), None));
        let b = &parse_join("public", &json!({"user_token": "x"}))
            .config
            .postgres_changes[0];
        assert_eq!(b.schema.as_deref(), Some("public"));
        // `{"config": {}}` is the new form with no bindings.
        let r = parse_join("room1", &json!({"config": {}}));
        assert!(!r.config.legacy && r.config.postgres_changes.is_empty());
    }

    #[test]
    fn replay_params_are_integers_with_the_limit_clamped() {
        let w = |v: Value| parse_replay(&v);
        assert_eq!(
            w(json!({"since": 1000, "limit": 10})),
            Some(ReplayWindow {
                since_ms: 1000,
                limit: 10
            })
        );
        assert_eq!(w(json!({"since": 5})).map(|r| r.limit), Some(REPLAY_MAX));
        assert_eq!(
            w(json!({"since": 5, "limit": 100})).map(|r| r.limit),
            Some(REPLAY_MAX)
        );
        assert_eq!(w(json!({"since": 5, "limit": 0})).map(|r| r.limit), Some(1));
        assert_eq!(
            w(json!({"since": 5.0, "limit": 2.0})).map(|r| r.limit),
            Some(2)
        );
        assert_eq!(w(json!({})), None);
        assert_eq!(w(json!({"since": "1"})), None);
        assert_eq!(w(json!({"since": 1, "limit": "2"})), None);
        assert_eq!(w(json!({"since": 1.5})), None);
        assert_eq!(w(json!(3)), None);
        let c = parse_join(
            "r",
            &json!({"config": {"private": true,
            "broadcast": {"replay": {"since": 7, "limit": 3}}}}),
        )
        .config;
        assert!(c.replay);
        assert_eq!(c.replay_window.map(|r| (r.since_ms, r.limit)), Some((7, 3)));
        let c = parse_join("r", &json!({"config": {"broadcast": {"replay": {}}}})).config;
        assert!(c.replay && c.replay_window.is_none());
    }
}
