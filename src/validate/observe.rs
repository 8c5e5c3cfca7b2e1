//! The two clients of `walcast validate`: one on `/ws`, one on the Realtime endpoint, each
//! subscribed to the same changes and recording every change it receives with its receive time.
//!
//! Connecting is separate from observing ([`WsObserver::connect`] then [`WsObserver::run`]), so
//! the window starts only once both subscriptions are confirmed.

use std::time::Duration;

use chrono::Utc;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::compare::{Observation, parse_instant};
use super::error::ValidateError;
use crate::decode::Operation;
use crate::filter::Filter;
use crate::ws::protocol::{self as json, ServerFrame};

/// How long to wait for a connection, a welcome, a subscription confirmation.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Realtime heartbeats, well inside its 60 s idle timeout.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// The Realtime channel the validator joins.
const TOPIC: &str = "realtime:walcast-validate";
/// The subscription id on `/ws`.
const SUBSCRIPTION_ID: &str = "walcast-validate";

/// A WebSocket client connection.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What both paths subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeSpec {
    /// Only these event types (empty: any).
    pub event_types: Vec<String>,
    /// Only these sources (empty: any).
    pub sources: Vec<String>,
    /// Column filters `column=op.value`, all of which must hold.
    pub filters: Vec<String>,
}

impl SubscribeSpec {
    /// The `/ws` subscribe frame (INSERT, UPDATE and DELETE: the Realtime path has no TRUNCATE;
    /// the events table only, like the Realtime binding).
    pub fn ws_frame(&self) -> Value {
        let mut frame = json!({
            "type": "subscribe",
            "id": SUBSCRIPTION_ID,
            "ops": ["INSERT", "UPDATE", "DELETE"],
            "table": "public.monitoring_events",
        });
        if !self.event_types.is_empty() {
            frame["event_type"] = json!(self.event_types);
        }
        if !self.sources.is_empty() {
            frame["source"] = json!(self.sources);
        }
        if !self.filters.is_empty() {
            frame["filters"] = json!(self.filters);
        }
        frame
    }

    /// The filter as walcast applies it (also to the table's rows); checks the options.
    pub fn hub_filter(&self) -> Result<Filter, ValidateError> {
        Filter::from_parts(
            self.event_types.clone(),
            self.sources.clone(),
            vec![Operation::Insert, Operation::Update, Operation::Delete],
            &self.filters,
        )
        .map_err(|e| ValidateError::Filter(e.to_string()))
    }

    /// The Realtime binding's `filter`: the same conditions joined with `,`.
    pub fn realtime_filter(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (column, values) in [("event_type", &self.event_types), ("source", &self.sources)] {
            match values.as_slice() {
                [] => {}
                [one] => parts.push(format!("{column}=eq.{one}")),
                many => {
                    let quoted: Vec<String> = many
                        .iter()
                        .map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                        .collect();
                    parts.push(format!("{column}=in.({})", quoted.join(",")));
                }
            }
        }
        parts.extend(self.filters.iter().cloned());
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// The `id` of a change's row (from `record`, else `old_record`).
fn row_id(record: Option<&Map<String, Value>>, old: Option<&Map<String, Value>>) -> Option<String> {
    record
        .and_then(|r| r.get("id"))
        .or_else(|| old.and_then(|r| r.get("id")))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

/// Connects a WebSocket, bounded by [`ANSWER_TIMEOUT`].
async fn connect(path: &'static str, url: &str, shown: &str) -> Result<Socket, ValidateError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(e)) => Err(ValidateError::Connect {
            path,
            url: shown.to_owned(),
            source: Box::new(e),
        }),
        Err(_) => Err(ValidateError::Timeout {
            path,
            what: "the connection",
            seconds: ANSWER_TIMEOUT.as_secs(),
        }),
    }
}

/// The next text frame, bounded by [`ANSWER_TIMEOUT`].
async fn next_text(
    socket: &mut Socket,
    path: &'static str,
    what: &'static str,
) -> Result<String, ValidateError> {
    loop {
        let msg = tokio::time::timeout(ANSWER_TIMEOUT, socket.next())
            .await
            .map_err(|_| ValidateError::Timeout {
                path,
                what,
                seconds: ANSWER_TIMEOUT.as_secs(),
            })?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => {
                return Err(ValidateError::Protocol {
                    path,
                    message: format!(
                        "the server closed the connection ({})",
                        c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                            .unwrap_or_default()
                    ),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(ValidateError::Socket {
                    path,
                    source: Box::new(e),
                });
            }
            None => {
                return Err(ValidateError::Protocol {
                    path,
                    message: "the server closed the connection".into(),
                });
            }
        }
    }
}

/// The `/ws` client, subscribed.
pub struct WsObserver {
    /// The socket.
    socket: Socket,
    /// Drop every n-th event frame before it is recorded (tests: a client losing frames).
    drop_every: Option<u64>,
}

impl WsObserver {
    /// Connects to `ws_base` + `/ws` and subscribes.
    pub async fn connect(
        ws_base: &str,
        apikey: &str,
        spec: &SubscribeSpec,
        drop_every: Option<u64>,
    ) -> Result<WsObserver, ValidateError> {
        const PATH: &str = "ws";
        let shown = format!("{ws_base}/ws");
        let url = format!(
            "{shown}?apikey={}",
            url::form_urlencoded::byte_serialize(apikey.as_bytes()).collect::<String>()
        );
        let mut socket = connect(PATH, &url, &shown).await?;
        let welcome = next_text(&mut socket, PATH, "the welcome frame").await?;
        if !matches!(
            json::parse_server_frame(&welcome),
            Ok(ServerFrame::Welcome { .. })
        ) {
            return Err(ValidateError::Protocol {
                path: PATH,
                message: format!("expected a welcome frame, got {welcome}"),
            });
        }
        socket
            .send(Message::text(spec.ws_frame().to_string()))
            .await
            .map_err(|e| ValidateError::Socket {
                path: PATH,
                source: Box::new(e),
            })?;
        loop {
            let text = next_text(&mut socket, PATH, "the subscribe frame").await?;
            match json::parse_server_frame(&text) {
                Ok(ServerFrame::Subscribed { .. }) => break,
                Ok(ServerFrame::Error(e)) => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: format!("subscribe refused: {}: {}", e.code, e.message),
                    });
                }
                _ => {}
            }
        }
        Ok(WsObserver { socket, drop_every })
    }

    /// Records every change until `stop`.
    pub async fn run(mut self, stop: CancellationToken) -> Result<Vec<Observation>, ValidateError> {
        const PATH: &str = "ws";
        let mut out = Vec::new();
        let mut events = 0u64;
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                m = self.socket.next() => m,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: "the server closed the connection during the window".into(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(ValidateError::Socket {
                        path: PATH,
                        source: Box::new(e),
                    });
                }
            };
            let received_at = Utc::now();
            match json::parse_server_frame(&text) {
                Ok(ServerFrame::Event(ev)) => {
                    events += 1;
                    if self
                        .drop_every
                        .is_some_and(|n| n > 0 && events.is_multiple_of(n))
                    {
                        continue;
                    }
                    let Some(commit_ts) = parse_instant(&ev.commit_ts) else {
                        return Err(ValidateError::Protocol {
                            path: PATH,
                            message: format!("unreadable commit_ts {:?}", ev.commit_ts),
                        });
                    };
                    out.push(Observation {
                        id: row_id(ev.record.as_ref(), ev.old_record.as_ref()),
                        op: ev.op,
                        commit_ts,
                        received_at,
                        cursor: Some(ev.cursor),
                        record: ev.record,
                        old_record: ev.old_record,
                        truncated: false,
                    });
                }
                Ok(ServerFrame::Lagged { message, .. }) => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: format!("the validator itself fell behind: {message}"),
                    });
                }
                Ok(ServerFrame::Error(e)) => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: format!("{}: {}", e.code, e.message),
                    });
                }
                _ => {}
            }
        }
        let _ = self.socket.close(None).await;
        Ok(out)
    }
}

/// The Realtime client, joined.
pub struct RealtimeObserver {
    /// The socket.
    socket: Socket,
    /// The next message ref.
    next_ref: u64,
}

impl RealtimeObserver {
    /// Connects to `ws_base` + `/realtime/v1/websocket` with `apikey` and joins a channel with
    /// one `postgres_changes` binding on `public.monitoring_events`.
    pub async fn connect(
        ws_base: &str,
        apikey: &str,
        spec: &SubscribeSpec,
    ) -> Result<RealtimeObserver, ValidateError> {
        const PATH: &str = "realtime";
        let shown = format!("{ws_base}/realtime/v1/websocket");
        let url = format!(
            "{shown}?vsn=1.0.0&apikey={}",
            url::form_urlencoded::byte_serialize(apikey.as_bytes()).collect::<String>()
        );
        let socket = connect(PATH, &url, &shown).await?;
        let mut me = RealtimeObserver {
            socket,
            next_ref: 1,
        };
        let mut binding = json!({"event": "*", "schema": "public", "table": "monitoring_events"});
        if let Some(f) = spec.realtime_filter() {
            binding["filter"] = json!(f);
        }
        let join_ref = me
            .send(
                "phx_join",
                TOPIC,
                json!({
                    "config": {
                        "broadcast": {"ack": false, "self": false},
                        "presence": {"key": "", "enabled": false},
                        "postgres_changes": [binding],
                        "private": false,
                    },
                    "access_token": apikey,
                }),
            )
            .await?;
        let mut joined = false;
        loop {
            let text = next_text(&mut me.socket, PATH, "phx_join").await?;
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let event = frame["event"].as_str().unwrap_or("");
            let payload = &frame["payload"];
            match event {
                "phx_reply" if frame["ref"].as_str() == Some(join_ref.as_str()) => {
                    if payload["status"] != "ok" {
                        return Err(ValidateError::Protocol {
                            path: PATH,
                            message: format!("join refused: {}", payload["response"]),
                        });
                    }
                    joined = true;
                }
                "system" if joined && payload["extension"] == "postgres_changes" => {
                    if payload["status"] == "ok" {
                        return Ok(me);
                    }
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: format!(
                            "subscription refused: {}",
                            payload["message"].as_str().unwrap_or("")
                        ),
                    });
                }
                "phx_close" | "phx_error" => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: format!("the channel closed: {text}"),
                    });
                }
                _ => {}
            }
        }
    }

    /// Sends one message; returns its ref.
    async fn send(
        &mut self,
        event: &str,
        topic: &str,
        payload: Value,
    ) -> Result<String, ValidateError> {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let frame =
            json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": r});
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| ValidateError::Socket {
                path: "realtime",
                source: Box::new(e),
            })?;
        Ok(r)
    }

    /// Records every change until `stop`, with heartbeats.
    pub async fn run(mut self, stop: CancellationToken) -> Result<Vec<Observation>, ValidateError> {
        const PATH: &str = "realtime";
        let mut out = Vec::new();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = heartbeat.tick() => {
                    self.send("heartbeat", "phoenix", json!({})).await?;
                    continue;
                }
                m = self.socket.next() => m,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: "the server closed the connection during the window".into(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(ValidateError::Socket {
                        path: PATH,
                        source: Box::new(e),
                    });
                }
            };
            let received_at = Utc::now();
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match frame["event"].as_str().unwrap_or("") {
                "postgres_changes" => {
                    let data = &frame["payload"]["data"];
                    let record = data["record"].as_object().cloned();
                    let old_record = data["old_record"].as_object().cloned();
                    let stamp = data["commit_timestamp"].as_str().unwrap_or("");
                    let Some(commit_ts) = parse_instant(stamp) else {
                        return Err(ValidateError::Protocol {
                            path: PATH,
                            message: format!("unreadable commit_timestamp {stamp:?}"),
                        });
                    };
                    out.push(Observation {
                        op: data["type"].as_str().unwrap_or("").to_owned(),
                        id: row_id(record.as_ref(), old_record.as_ref()),
                        commit_ts,
                        received_at,
                        cursor: None,
                        record,
                        old_record,
                        truncated: !data["errors"].is_null(),
                    });
                }
                "system" if frame["payload"]["status"] == "error" => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: frame["payload"]["message"]
                            .as_str()
                            .unwrap_or("system error")
                            .to_owned(),
                    });
                }
                "phx_close" | "phx_error" if frame["topic"] == TOPIC => {
                    return Err(ValidateError::Protocol {
                        path: PATH,
                        message: "the channel closed during the window".into(),
                    });
                }
                _ => {}
            }
        }
        let _ = self.socket.close(None).await;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_get_the_same_conditions() {
        let spec = SubscribeSpec {
            event_types: vec!["cpu".into()],
            sources: vec!["a".into(), "b,c".into()],
            filters: vec!["data=neq.{}".into()],
        };
        assert_eq!(
            spec.realtime_filter().as_deref(),
            Some("event_type=eq.cpu,source=in.(\"a\",\"b,c\"),data=neq.{}")
        );
        let f = spec.hub_filter().unwrap();
        assert_eq!(f.event_types, ["cpu"]);
        assert_eq!(f.sources, ["a", "b,c"]);
        assert_eq!(f.conditions.len(), 1);
        assert_eq!(SubscribeSpec::default().realtime_filter(), None);
        let bad = SubscribeSpec {
            filters: vec!["nope".into()],
            ..Default::default()
        };
        assert!(bad.hub_filter().is_err());
    }
}
