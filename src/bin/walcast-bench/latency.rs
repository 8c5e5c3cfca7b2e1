//! `walcast-bench latency`: receive wall clock − `commit_ts` on a `/ws` client at a paced commit
//! rate, vs a bare `pgwire-replication` client on its own slot (Commit arrival − commit time)
//! under the same load in a second phase (the baseline, same run).
//!
//! Its own private Postgres cluster (fsync on); walcast runs in-process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast::config::ServerConfig;

use crate::support::{
    EVENT_PREFIX, LAGGED_PREFIX, PUBLICATION, RUN_TIMEOUT, SETUP_TIMEOUT, SINGLE_SQL, Ws, bench_db,
    bench_server_args, connect_pg, drop_slot, emit, met, percentile, remove_spool, round3,
    server_version, start_server, stop_server, wait_slot_active, ws_subscribed,
};

/// Writer connections of the latency load.
const LATENCY_WRITERS: usize = 4;

/// `walcast-bench latency`.
#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// Single-row commits per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of load (the first second is discarded as warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
pub async fn run(args: LatencyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.seconds >= 2,
        "--rate must be at least 1 and --seconds at least 2 (the first second is discarded)"
    );
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;
    let mut seq = 0i64;

    // Phase 1: walcast, one /ws client.
    eprintln!(
        "latency phase 1: walcast, {} commits/s for {} s",
        args.rate, args.seconds
    );
    let server_args = bench_server_args();
    let config = ServerConfig::from_args(&db.url, &server_args)?;
    let slot = config.slot.clone();
    let (addr, token, handle) = start_server(&db.url, &server_args).await?;
    let phase = async {
        wait_slot_active(&pg, &slot).await?;
        let ws = ws_subscribed(addr).await?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let client = tokio::spawn(ws_latency_client(ws, Arc::clone(&received), stop.clone()));
        let load = paced_load(&db.url, args.rate, args.seconds, &mut seq).await?;
        let all = wait_count(&received, load.written, Duration::from_secs(30)).await;
        stop.cancel();
        let samples = client.await??;
        anyhow::ensure!(
            all,
            "the /ws client received {} of {} rows",
            received.load(Ordering::Relaxed),
            load.written
        );
        Ok::<_, anyhow::Error>((load, samples))
    }
    .await;
    stop_server(token, handle).await?;
    remove_spool(&config);
    let (wload, wsamples) = phase?;
    let walcast = Summary::of(&wsamples, wload.start + Duration::from_secs(1));

    // Phase 2: a bare replication client on its own slot, same load.
    eprintln!("latency phase 2: bare pgwire-replication client, same load");
    let bare_slot = format!("bench_bare_{:x}", rand::random::<u32>());
    pg.execute(
        "select pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&bare_slot],
    )
    .await?;
    let phase = async {
        let settings =
            walcast::replication::ReplicationSettings::from_url(&db.url, PUBLICATION, "bench")?;
        let mut repl =
            pgwire_replication::ReplicationClient::connect(settings.session(&bare_slot, 0, None))
                .await?;
        tokio::time::timeout(SETUP_TIMEOUT, repl.wait_started())
            .await
            .context("the bare replication client did not start")??;
        let received = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let client = tokio::spawn(bare_latency_client(
            repl,
            Arc::clone(&received),
            stop.clone(),
        ));
        let load = paced_load(&db.url, args.rate, args.seconds, &mut seq).await?;
        let all = wait_count(&received, load.written, Duration::from_secs(30)).await;
        stop.cancel();
        let samples = client.await??;
        anyhow::ensure!(
            all,
            "the bare client received {} of {} commits",
            received.load(Ordering::Relaxed),
            load.written
        );
        Ok::<_, anyhow::Error>((load, samples))
    }
    .await;
    drop_slot(&pg, &bare_slot).await?;
    let (bload, bsamples) = phase?;
    let bare = Summary::of(&bsamples, bload.start + Duration::from_secs(1));

    let met_p50 = walcast.p50 <= 1.0;
    let met_p99 = walcast.p99 <= 5.0;
    let report = json!({
        "scenario": "latency",
        "rate": args.rate,
        "seconds": args.seconds,
        "writers": LATENCY_WRITERS,
        "walcast": walcast.json(&wload),
        "bare_replication_client": bare.json(&bload),
        "target_p50_ms": 1.0,
        "target_p99_ms": 5.0,
        "met": met_p50 && met_p99,
        "postgres": version,
        "date": chrono::Utc::now().to_rfc3339(),
    });
    println!("| scenario | client | p50 ms | p95 ms | p99 ms | max ms | samples | target |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| latency {}/s, {} s | walcast /ws | {:.2} | {:.2} | {:.2} | {:.2} | {} | p50 <= 1 ({}), p99 <= 5 ({}) |",
        args.rate,
        args.seconds,
        walcast.p50,
        walcast.p95,
        walcast.p99,
        walcast.max,
        walcast.n,
        met(met_p50),
        met(met_p99)
    );
    println!(
        "| latency {}/s, {} s | bare replication client | {:.2} | {:.2} | {:.2} | {:.2} | {} | (baseline) |",
        args.rate, args.seconds, bare.p50, bare.p95, bare.p99, bare.max, bare.n
    );
    emit(&report, args.json)
}

/// What a paced load did.
struct Load {
    /// When the first commit was due.
    start: Instant,
    /// Rows committed.
    written: u64,
    /// Wall time of the load.
    elapsed: Duration,
    /// Sorted INSERT round trips (ms), as the writers saw them.
    insert_ms: Vec<f64>,
}

/// Single-row autocommit INSERTs from [`LATENCY_WRITERS`] connections, paced to `rate`/s.
async fn paced_load(url: &str, rate: u32, seconds: u32, seq: &mut i64) -> anyhow::Result<Load> {
    let total = u64::from(rate) * u64::from(seconds);
    let mut writers = Vec::new();
    for _ in 0..LATENCY_WRITERS {
        let c = connect_pg(url).await?;
        let stmt = c.prepare(SINGLE_SQL).await?;
        writers.push((c, stmt));
    }
    let base = *seq;
    *seq += total as i64;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (k, (c, stmt)) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = k as u64;
            while i < total {
                tokio::time::sleep_until(
                    start + Duration::from_secs_f64(i as f64 / f64::from(rate)),
                )
                .await;
                let t = Instant::now();
                c.execute(&stmt, &[&(base + i as i64)]).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                i += LATENCY_WRITERS as u64;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut insert_ms = Vec::new();
    let budget = Duration::from_secs(u64::from(seconds)) + RUN_TIMEOUT;
    for t in tasks {
        insert_ms.extend(
            tokio::time::timeout(budget, t)
                .await
                .context("the latency load timed out")???,
        );
    }
    let elapsed = start.elapsed();
    insert_ms.sort_by(f64::total_cmp);
    Ok(Load {
        start: start.into_std(),
        written: total,
        elapsed,
        insert_ms,
    })
}

/// One latency sample: when it arrived and commit-to-receipt in ms.
type Sample = (Instant, f64);

/// Reads `/ws` event frames: receive wall clock − `commit_ts` for each, until `stop`.
async fn ws_latency_client(
    mut ws: Ws,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::with_capacity(1 << 16);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => anyhow::bail!("walcast closed the client: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("walcast closed the client"),
        };
        let now = chrono::Utc::now();
        let at = Instant::now();
        let s = text.as_str();
        if s.starts_with(EVENT_PREFIX) {
            let ts = commit_ts(s).context("an event frame without a readable commit_ts")?;
            let us = (now - ts).num_microseconds().unwrap_or(i64::MAX);
            samples.push((at, us as f64 / 1000.0));
            received.fetch_add(1, Ordering::Relaxed);
        } else if s.starts_with(LAGGED_PREFIX) {
            anyhow::bail!("the latency client lagged: {s}");
        }
    }
    let _ = ws.close(None).await;
    Ok(samples)
}

/// The `commit_ts` of an event frame, found without parsing the whole frame.
fn commit_ts(frame: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    const KEY: &str = r#""commit_ts":""#;
    let from = frame.find(KEY)? + KEY.len();
    let len = frame[from..].find('"')?;
    chrono::DateTime::parse_from_rfc3339(&frame[from..from + len])
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A bare pgwire-replication client: Commit arrival − its commit time, for every transaction
/// that inserted a row, until `stop`.
async fn bare_latency_client(
    mut repl: pgwire_replication::ReplicationClient,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sample>> {
    use pgwire_replication::ReplicationEvent;
    let mut samples = Vec::with_capacity(1 << 16);
    let mut inserted = false;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = repl.recv() => ev?,
        };
        let Some(ev) = ev else {
            anyhow::bail!("the replication stream ended");
        };
        match ev {
            ReplicationEvent::Begin { .. } => inserted = false,
            ReplicationEvent::XLogData { data, .. } => {
                inserted |= data.first() == Some(&b'I');
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                let now = chrono::Utc::now();
                let at = Instant::now();
                if inserted {
                    let ts = walcast::decode::pg_micros_to_utc(commit_time_micros);
                    let us = (now - ts).num_microseconds().unwrap_or(i64::MAX);
                    samples.push((at, us as f64 / 1000.0));
                    received.fetch_add(1, Ordering::Relaxed);
                }
                repl.update_applied_lsn(end_lsn);
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), repl.shutdown()).await;
    repl.abort();
    Ok(samples)
}

/// Latency percentiles in ms.
struct Summary {
    /// Samples kept.
    n: usize,
    /// Median.
    p50: f64,
    /// 95th percentile.
    p95: f64,
    /// 99th percentile.
    p99: f64,
    /// Largest.
    max: f64,
}

impl Summary {
    /// Percentiles of the samples that arrived at or after `from`.
    fn of(samples: &[Sample], from: Instant) -> Self {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        Summary {
            n: v.len(),
            p50: percentile(&v, 0.5),
            p95: percentile(&v, 0.95),
            p99: percentile(&v, 0.99),
            max: v.last().copied().unwrap_or(0.0),
        }
    }

    /// As JSON, with the load that produced it.
    fn json(&self, load: &Load) -> Value {
        json!({
            "samples": self.n,
            "p50_ms": round3(self.p50),
            "p95_ms": round3(self.p95),
            "p99_ms": round3(self.p99),
            "max_ms": round3(self.max),
            "rows_written": load.written,
            "achieved_rate": (load.written as f64 / load.elapsed.as_secs_f64()).round(),
            "insert_roundtrip_ms_p50": round3(percentile(&load.insert_ms, 0.5)),
            "insert_roundtrip_ms_p99": round3(percentile(&load.insert_ms, 0.99)),
        })
    }
}

/// Waits until `counter` reaches `want`; false on timeout.
async fn wait_count(counter: &AtomicU64, want: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < want {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}
