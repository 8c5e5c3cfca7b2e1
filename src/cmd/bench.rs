//! `walcast bench`: measurements for BENCHMARKS.md, each with its baseline in the same run.
//!
//! Every scenario starts its own private Postgres cluster (unless given a database) and, where
//! it needs one, its own walcast server in-process on 127.0.0.1, so the numbers describe this
//! machine with nothing else configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::http_client::HttpClient;
use crate::cli::{BenchCommand, BenchIngestArgs, ServerArgs};
use crate::cluster::{Cluster, ClusterOptions};
use crate::config::ServerConfig;

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(a) => ingest(a).await,
        BenchCommand::Drain(a) => super::bench_stream::drain(a).await,
        BenchCommand::Latency(a) => super::bench_stream::latency(a).await,
        BenchCommand::Fanout(a) => super::bench_stream::fanout(a).await,
        BenchCommand::Memory(a) => super::bench_stream::memory(a).await,
        BenchCommand::Spool(a) => super::bench_spool::spool(a).await,
        BenchCommand::Realtime(a) => super::bench_realtime::realtime(a).await,
    }
}

/// A database for a benchmark: the given URL or a fresh private cluster.
pub struct BenchDb {
    /// Connection URL.
    pub url: String,
    /// The private cluster, if one was started.
    _cluster: Option<Cluster>,
    /// Its directory, removed at the end.
    _dir: Option<TempDir>,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts (or connects to) the benchmark database and migrates it.
pub async fn bench_db(url: Option<String>) -> anyhow::Result<BenchDb> {
    let db = match url {
        Some(url) => BenchDb {
            url,
            _cluster: None,
            _dir: None,
        },
        None => {
            let dir =
                std::env::temp_dir().join(format!("walcast-bench-{:x}", rand::random::<u32>()));
            std::fs::create_dir_all(&dir)?;
            let dir = TempDir(dir);
            eprintln!("starting a private Postgres cluster in {}", dir.0.display());
            let cluster = Cluster::start(ClusterOptions::new(dir.0.join("pg"))).await?;
            cluster.create_database("bench").await?;
            BenchDb {
                url: cluster.url("bench"),
                _cluster: Some(cluster),
                _dir: Some(dir),
            }
        }
    };
    let pool = crate::db::pool(&db.url, 2, "walcast_bench")?;
    crate::db::migrate(&pool).await?;
    Ok(db)
}

/// Server options with defaults, listening on a free port.
pub fn bench_server_args() -> ServerArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        server: ServerArgs,
    }
    let mut w = Wrapper::parse_from(["bench"]);
    w.server.listen = "127.0.0.1:0".into();
    w.server.jwt_secret = None;
    w.server.node = format!("bench{:x}", rand::random::<u16>());
    w.server.spool_dir =
        Some(std::env::temp_dir().join(format!("walcast-bench-spool-{}", w.server.node)));
    w.server
}

/// Starts walcast in-process; returns its address and the token that stops it.
pub async fn start_server(
    url: &str,
    args: &ServerArgs,
) -> anyhow::Result<(
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let config = ServerConfig::from_args(url, args)?;
    let token = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = token.clone();
    let handle = tokio::spawn(async move {
        let r = crate::app::serve(config, t, move |addr| {
            let _ = tx.send(addr);
        })
        .await;
        if let Err(e) = r {
            eprintln!("bench server failed: {e}");
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), rx).await??;
    Ok((addr, token, handle))
}

/// Percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `walcast bench ingest`.
async fn ingest(args: BenchIngestArgs) -> anyhow::Result<()> {
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
