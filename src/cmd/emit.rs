//! `walcast emit`: posts events to a running server and prints their ids.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;

use super::http_client::HttpClient;
use crate::cli::EmitArgs;

/// NDJSON lines per request when reading stdin.
const LINES_PER_REQUEST: usize = 1000;

/// Where `walcast dev` leaves its service key, so `emit` works with no setup.
pub const DEV_KEY_FILE: &str = ".walcast/service_role.key";

/// Posts the events.
pub async fn run(args: EmitArgs) -> anyhow::Result<()> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let url = format!("{}/v1/events", base.trim_end_matches('/'));
    let token = resolve_token(args.key.clone());
    let client = HttpClient::new();
    let bodies: Vec<String> = if args.stdin {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input)?;
        let lines: Vec<&str> = input.lines().filter(|l| !l.trim().is_empty()).collect();
        lines
            .chunks(LINES_PER_REQUEST)
            .map(|c| c.join("\n"))
            .collect()
    } else {
        let (Some(t), Some(s)) = (&args.event_type, &args.source) else {
            anyhow::bail!("give --type and --source for one event, or --stdin for NDJSON input");
        };
        let data: serde_json::Value = serde_json::from_str(&args.data)
            .map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
        let metadata: serde_json::Value = serde_json::from_str(&args.metadata)
            .map_err(|e| anyhow::anyhow!("--metadata is not JSON: {e}"))?;
        vec![
            serde_json::json!({"event_type": t, "source": s, "data": data, "metadata": metadata})
                .to_string(),
        ]
    };
    for body in bodies {
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            client.post(
                &url,
                "application/x-ndjson",
                token.as_deref(),
                Bytes::from(body),
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {url} within 60s"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach {url}: {e} (is `walcast serve` or `walcast dev` running?)"
            )
        })?;
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        if resp.status != 201 {
            let code = v["error"]["code"].as_str().unwrap_or("unknown");
            let msg = v["error"]["message"].as_str().unwrap_or("");
            anyhow::bail!("server answered {} {code}: {msg}", resp.status);
        }
        if let Some(ids) = v["ids"].as_array() {
            for id in ids {
                println!("{}", id.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// The bearer token: --key, else one minted from WALCAST_JWT_SECRET, else the dev key file.
fn resolve_token(key: Option<String>) -> Option<String> {
    if key.is_some() {
        return key;
    }
    if let Ok(secret) = std::env::var("WALCAST_JWT_SECRET")
        && let Ok(t) = crate::auth::mint(&secret, "service_role", Duration::from_secs(3600))
    {
        return Some(t);
    }
    std::fs::read_to_string(DEV_KEY_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
}
