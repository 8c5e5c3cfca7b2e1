//! `walcast tail`: one JSON line per change; reconnects and resumes by itself.

use std::io::Write;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::TailArgs;
use crate::decode::Cursor;

/// Exit code when the server says the cursor is older than its window.
pub const EXIT_CURSOR_EXPIRED: u8 = 3;

/// Why tail stopped.
#[derive(Debug)]
pub enum TailEnd {
    /// --limit reached.
    Done,
    /// The cursor expired.
    CursorExpired(String),
}

/// Prints changes until --limit or an unrecoverable error.
pub async fn run(args: TailArgs) -> anyhow::Result<TailEnd> {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("ws://{}/ws", args.listen));
    // The key goes in the address, as browsers send it.
    let apikey = match (&args.apikey, &args.jwt_secret) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(secret)) => Some(
            crate::auth::mint(secret, "service_role", Duration::from_secs(86_400))
                .map_err(|e| anyhow::anyhow!("minting a service_role key: {e}"))?,
        ),
        (None, None) => None,
    };
    let url = match apikey {
        Some(k) => format!(
            "{url}{}apikey={}",
            if url.contains('?') { '&' } else { '?' },
            url::form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>()
        ),
        None => url,
    };
    let mut last: Option<String> = match &args.since {
        Some(s) => Some(Cursor::decode(s)?.encode()),
        None => None,
    };
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&url, &args, &mut last, &mut printed).await {
            Ok(end) => return Ok(end),
            Err(e) => {
                eprintln!(
                    "walcast tail: {e}; reconnecting in {} ms",
                    backoff.as_millis()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection: subscribe, resume, print.
async fn session(
    url: &str,
    args: &TailArgs,
    last: &mut Option<String>,
    printed: &mut u64,
) -> anyhow::Result<TailEnd> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut sub = json!({"type": "subscribe", "id": "tail"});
    for (key, list) in [
        ("event_type", &args.event_type),
        ("source", &args.source),
        ("filters", &args.filter),
    ] {
        if !list.is_empty() {
            sub[key] = json!(list);
        }
    }
    // Resuming in the subscribe frame itself keeps the output in cursor order.
    if let Some(c) = last.as_ref() {
        sub["since"] = json!(c);
    }
    ws.send(Message::text(sub.to_string())).await?;
    let stdout = std::io::stdout();
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(f) => anyhow::bail!("server closed the connection ({f:?})"),
            _ => continue,
        };
        let mut v: Value = serde_json::from_str(&text)?;
        match v["type"].as_str().unwrap_or("") {
            "event" => {
                if let Some(c) = v["cursor"].as_str() {
                    *last = Some(c.to_owned());
                }
                if let Some(o) = v.as_object_mut() {
                    o.remove("type");
                }
                let mut out = stdout.lock();
                writeln!(out, "{v}")?;
                out.flush()?;
                *printed += 1;
                if args.limit.is_some_and(|l| *printed >= l) {
                    return Ok(TailEnd::Done);
                }
            }
            "heartbeat" | "lagged" => {
                if let Some(c) = v["cursor"].as_str() {
                    *last = Some(c.to_owned());
                }
            }
            "cursor_expired" => {
                return Ok(TailEnd::CursorExpired(
                    v["message"].as_str().unwrap_or("cursor expired").to_owned(),
                ));
            }
            "error" => {
                eprintln!(
                    "walcast tail: server error {}: {}",
                    v["code"].as_str().unwrap_or("?"),
                    v["message"].as_str().unwrap_or("")
                );
                if v["code"] == "invalid_filter" || v["code"] == "bad_request" {
                    anyhow::bail!("the server refused the subscription");
                }
            }
            _ => {}
        }
    }
    anyhow::bail!("connection closed")
}
