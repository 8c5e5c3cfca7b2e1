//! `walcast-bench ingest`: events/s committed through `POST /v1/events` by concurrent
//! producers, vs one INSERT per event on one connection (the baseline, same database, same run).
//!
//! Uses its own private Postgres cluster (or the migrated database given with
//! `--database-url`) and an in-process walcast server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use walcast::cmd::http_client::HttpClient;

use crate::support::{bench_db, bench_server_args, percentile, start_server};

/// `walcast-bench ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Use this (migrated) database instead of a private cluster.
    #[arg(long, env = "WALCAST_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Events to send through HTTP.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Events for the one-INSERT-per-event baseline.
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let db = bench_db(args.database_url.clone()).await?;
    let server_args = bench_server_args();
    let (addr, token, handle) = start_server(&db.url, &server_args).await?;
    let url = format!("http://{addr}/v1/events");

    // Warm-up: one small request.
    let client = HttpClient::new();
    let warm = body(0, 10);
    client.post(&url, "application/json", None, warm).await?;

    eprintln!(
        "walcast: {} events, {} per request, {} producers",
        args.events, args.batch, args.producers
    );
    let requests = args.events.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.producers {
        let client = client.clone();
        let url = url.clone();
        let next = Arc::clone(&next);
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .post(&url, "application/json", None, body(i, batch))
                    .await?;
                anyhow::ensure!(
                    r.status == 201,
                    "status {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = requests * args.batch;
    let http_rate = sent as f64 / elapsed;
    lat.sort_by(f64::total_cmp);
    token.cancel();
    let _ = handle.await;

    // Baseline: one INSERT per event, one connection.
    eprintln!(
        "baseline: {} single-row INSERTs on one connection",
        args.baseline_events
    );
    let (pg, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let stmt = pg
        .prepare("insert into public.monitoring_events (id, event_type, \"timestamp\", source, data, metadata) values ($1, $2, now(), $3, $4, '{}')")
        .await?;
    let started = Instant::now();
    for i in 0..args.baseline_events {
        let data = json!({"seq": i, "value": 0.5, "host": "bench"});
        pg.execute(
            &stmt,
            &[&uuid::Uuid::now_v7(), &"metrics.cpu", &"bench", &data],
        )
        .await?;
    }
    let base_rate = args.baseline_events as f64 / started.elapsed().as_secs_f64();

    let (count,): (i64,) = {
        let r = pg
            .query_one("select count(*) from public.monitoring_events", &[])
            .await?;
        (r.get(0),)
    };
    let report = json!({
        "scenario": "ingest",
        "events": sent,
        "batch": args.batch,
        "producers": args.producers,
        "http_events_per_s": http_rate.round(),
        "request_ms_p50": percentile(&lat, 0.5),
        "request_ms_p99": percentile(&lat, 0.99),
        "baseline_events": args.baseline_events,
        "baseline_events_per_s": base_rate.round(),
        "speedup": (http_rate / base_rate * 10.0).round() / 10.0,
        "rows_in_table": count,
    });
    println!(
        "| scenario | walcast events/s | request p50 / p99 ms | baseline (1 INSERT/event, 1 conn) events/s | speedup |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| ingest {} x {} events, {} producers | {:.0} | {:.1} / {:.1} | {:.0} | {:.1}x |",
        requests,
        args.batch,
        args.producers,
        http_rate,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        base_rate,
        http_rate / base_rate
    );
    println!("{report}");
    if let Some(p) = args.json {
        std::fs::write(p, report.to_string())?;
    }
    Ok(())
}

/// A JSON array of `n` events.
fn body(req: usize, n: usize) -> Bytes {
    let mut s = String::with_capacity(n * 120);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"event_type":"metrics.cpu","source":"bench-{}","data":{{"seq":{},"value":0.5,"host":"bench"}}}}"#,
            req % 16,
            req * n + i
        ));
    }
    s.push(']');
    Bytes::from(s)
}
