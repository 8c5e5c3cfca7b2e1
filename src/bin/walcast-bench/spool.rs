//! `walcast-bench spool`: ingest while Postgres is down (everything goes to the fsynced spool),
//! then the replay when it comes back; the baseline is the same load with Postgres up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use walcast::cluster::{Cluster, ClusterOptions, StopMode};
use walcast::cmd::http_client::HttpClient;

use crate::support::{TempDir, bench_server_args, start_server};

/// `walcast-bench spool`.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {
    /// Events per phase (database up, database down).
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
pub async fn run(args: SpoolArgs) -> anyhow::Result<()> {
    let dir = TempDir(
        std::env::temp_dir().join(format!("walcast-bench-spool-{:x}", rand::random::<u32>())),
    );
    std::fs::create_dir_all(&dir.0)?;
    eprintln!("starting a private Postgres cluster in {}", dir.0.display());
    let cluster = Cluster::start(ClusterOptions::new(dir.0.join("pg"))).await?;
    cluster.create_database("bench").await?;
    let url = cluster.url("bench");
    walcast::db::migrate(&walcast::db::pool(&url, 2, "walcast_bench")?).await?;
    let mut server_args = bench_server_args();
    server_args.breaker_threshold = 1;
    server_args.breaker_cooldown = "200ms".into();
    server_args.spool_dir = Some(dir.0.join("spool"));
    let (addr, token, handle) = start_server(&url, &server_args).await?;
    let ingest = format!("http://{addr}/v1/events");
    let client = HttpClient::new();

    let (up_rate, up_durable) = load(&client, &ingest, &args, 0).await?;
    eprintln!("database up: {up_rate:.0} events/s ({up_durable})");
    cluster.stop(StopMode::Immediate).await?;
    let (down_rate, down_durable) = load(&client, &ingest, &args, 1).await?;
    eprintln!("database down: {down_rate:.0} events/s ({down_durable})");
    anyhow::ensure!(
        down_durable == "spool",
        "expected every request to be spooled, got {down_durable}"
    );

    let back = Instant::now();
    cluster.restart().await?;
    let metrics_url = format!("http://{addr}/metrics");
    let deadline = back + Duration::from_secs(600);
    loop {
        let body = client.get(&metrics_url).await?.body;
        let text = String::from_utf8_lossy(&body);
        if text.lines().any(|l| l == "walcast_spool_bytes 0") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "spool not drained within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = back.elapsed().as_secs_f64();
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows: i64 = pg
        .query_one(
            "select count(*) from public.monitoring_events where source like 'spool-bench-%'",
            &[],
        )
        .await?
        .get(0);
    token.cancel();
    let _ = handle.await;
    let replay_rate = args.events as f64 / drain;
    let report = json!({
        "scenario": "spool",
        "events_per_phase": args.events,
        "batch": args.batch,
        "producers": args.producers,
        "database_up_events_per_s": up_rate.round(),
        "database_down_spool_events_per_s": down_rate.round(),
        "postgres_back_to_spool_empty_s": (drain * 1000.0).round() / 1000.0,
        "replay_events_per_s": replay_rate.round(),
        "rows_in_table": rows,
    });
    println!("| phase | events/s | note |");
    println!("|---|---|---|");
    println!("| Postgres up (baseline) | {up_rate:.0} | committed to the table |");
    println!(
        "| Postgres down | {down_rate:.0} | fsynced to the spool, acknowledged `durable: spool` |"
    );
    println!(
        "| replay after restart | {replay_rate:.0} | Postgres back → spool empty in {drain:.2} s |"
    );
    println!("{report}");
    if let Some(p) = args.json {
        std::fs::write(p, report.to_string())?;
    }
    drop(cluster);
    Ok(())
}

/// Posts `events` in batches from `producers` tasks; returns (events/s, durable of all answers).
async fn load(
    client: &HttpClient,
    url: &str,
    args: &SpoolArgs,
    phase: usize,
) -> anyhow::Result<(f64, String)> {
    let requests = args.events.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.producers {
        let client = client.clone();
        let url = url.to_owned();
        let next = Arc::clone(&next);
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut durable = std::collections::BTreeSet::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let events: Vec<_> = (0..batch)
                    .map(|j| json!({"event_type": "metrics.cpu", "source": format!("spool-bench-{phase}"), "data": {"seq": i * batch + j, "value": 0.5}}))
                    .collect();
                let r = client
                    .post(&url, "application/json", None, serde_json::to_vec(&events)?.into())
                    .await?;
                anyhow::ensure!(r.status == 201, "status {}: {}", r.status, String::from_utf8_lossy(&r.body));
                let v: serde_json::Value = serde_json::from_slice(&r.body)?;
                durable.insert(v["durable"].as_str().unwrap_or("").to_owned());
            }
            Ok::<_, anyhow::Error>(durable)
        }));
    }
    let mut durable = std::collections::BTreeSet::new();
    for t in tasks {
        durable.extend(t.await??);
    }
    let rate = (requests * args.batch) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, durable.into_iter().collect::<Vec<_>>().join("+")))
}
