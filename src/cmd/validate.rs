//! `walcast validate`: watch both WebSocket paths (and the table) over a window and compare.
//!
//! Exit codes: 0 when everything matched (or nothing happened), 1 when anything was missing,
//! duplicated, out of order or mismatched, or when the run could not complete.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::ValidateArgs;
use crate::cmd::http_client::HttpClient;
use crate::validate::observe::{RealtimeObserver, SubscribeSpec, WsObserver};
use crate::validate::reference::Reference;
use crate::validate::report::{RunSummary, render};
use crate::validate::{CompareInput, Window, compare};

/// Event type of generated events when `--type` is not given.
const GENERATED_TYPE: &str = "walcast.validate";
/// Source of generated events when `--source` is not given.
const GENERATED_SOURCE: &str = "walcast-validate";

/// Runs a validation and prints the report; the exit code says whether it passed.
pub async fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen))
        .trim_end_matches('/')
        .to_owned();
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        anyhow::bail!("--url must start with http:// or https://, got {base:?}");
    };
    let duration = crate::units::parse_duration(&args.duration)
        .map_err(|r| anyhow::anyhow!("invalid --duration: {r}"))?;
    let drain = crate::units::parse_duration(&args.drain)
        .map_err(|r| anyhow::anyhow!("invalid --drain: {r}"))?;
    let apikey = match (&args.apikey, &args.jwt_secret) {
        (Some(k), _) => k.clone(),
        (None, Some(secret)) => {
            crate::auth::mint(secret, "service_role", Duration::from_secs(3600) + duration)
                .context("minting a service_role key from WALCAST_JWT_SECRET")?
        }
        (None, None) => anyhow::bail!(
            "the Realtime path needs a key: pass --apikey <service_role JWT> or set \
             WALCAST_JWT_SECRET (the server's secret) so validate can mint one"
        ),
    };
    let spec = SubscribeSpec {
        event_types: args.event_type.clone(),
        sources: args.source.clone(),
        filters: args.filter.clone(),
    };
    let filter = spec.hub_filter()?;
    let reference = match &args.database_url {
        Some(url) => Some(
            Reference::connect(url)
                .await
                .context("connecting to --database-url")?,
        ),
        None => None,
    };

    let (ws, rt) = tokio::try_join!(
        WsObserver::connect(&ws_base, &apikey, &spec, args.debug_drop_every),
        RealtimeObserver::connect(&ws_base, &apikey, &spec),
    )?;
    let start: DateTime<Utc> = clock(reference.as_ref()).await?;
    let stop = CancellationToken::new();
    let ws_task = tokio::spawn(ws.run(stop.clone()));
    let rt_task = tokio::spawn(rt.run(stop.clone()));
    let generate_stop = CancellationToken::new();
    let generator = (args.generate > 0).then(|| {
        tokio::spawn(generate(
            base.clone(),
            apikey.clone(),
            args.generate,
            duration,
            spec.clone(),
            generate_stop.clone(),
        ))
    });
    tokio::time::sleep(duration).await;
    generate_stop.cancel();
    let generated = match generator {
        Some(g) => g.await.unwrap_or(0),
        None => 0,
    };
    let end = clock(reference.as_ref()).await?;
    // Changes committed inside the window may still be on their way.
    tokio::time::sleep(drain).await;
    stop.cancel();
    let ws_obs = ws_task.await.context("the /ws observer panicked")??;
    let rt_obs = rt_task.await.context("the Realtime observer panicked")??;
    let window = Window { start, end };
    let rows = match &reference {
        Some(r) => Some(r.rows(window, &filter).await?),
        None => None,
    };
    let report = compare(&CompareInput {
        ws: ws_obs,
        realtime: rt_obs,
        reference: rows,
        window: Some(window),
    });
    let summary = RunSummary {
        url: base,
        window,
        clock: if reference.is_some() {
            "database"
        } else {
            "local"
        },
        reference: if reference.is_some() { "table" } else { "none" },
        generated,
        ok: report.ok(),
        report,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The window's clock: the database's when there is a reference (it stamps commits too).
async fn clock(r: Option<&Reference>) -> Result<DateTime<Utc>, crate::validate::ValidateError> {
    match r {
        Some(r) => r.now().await,
        None => Ok(Utc::now()),
    }
}

/// Posts `count` events, spread over the first 80 % of `duration`; returns how many were
/// accepted.
async fn generate(
    base: String,
    key: String,
    count: u64,
    duration: Duration,
    spec: SubscribeSpec,
    stop: CancellationToken,
) -> u64 {
    let client = HttpClient::new();
    let url = format!("{base}/v1/events");
    let gap = duration.mul_f64(0.8) / u32::try_from(count).unwrap_or(u32::MAX).max(1);
    let event_type = spec
        .event_types
        .first()
        .map_or(GENERATED_TYPE, String::as_str);
    let source = spec
        .sources
        .first()
        .map_or(GENERATED_SOURCE, String::as_str);
    let run = uuid::Uuid::new_v4().to_string();
    let mut accepted = 0;
    let started = tokio::time::Instant::now();
    for i in 0..count {
        let due = started + gap * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let body = json!({
            "event_type": event_type,
            "source": source,
            "data": {"validate_run": run, "seq": i},
        });
        match client
            .post(
                &url,
                "application/json",
                Some(&key),
                Bytes::from(body.to_string()),
            )
            .await
        {
            Ok(r) if r.status == 201 => accepted += 1,
            Ok(r) => eprintln!(
                "walcast validate: POST /v1/events answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(e) => eprintln!("walcast validate: POST /v1/events failed: {e:#}"),
        }
    }
    accepted
}
