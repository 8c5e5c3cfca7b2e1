//! Streaming benchmarks: drain, latency, fan-out, memory (each with a baseline in the same run).
//!
//! Every scenario starts its own private Postgres cluster (fsync on). walcast runs in-process,
//! except for `memory`, which runs it as a child process so that its RSS is not mixed with the
//! clients'. Rows are written server-side (`insert ... select from generate_series`) with a
//! `data` object like `{"seq":n,"host":"bench","value":0.5}`, about 330 bytes per `/ws` frame.
//!
//! - drain: a burst written while walcast is stopped, drained after a restart by a client that
//!   resumes from a marker cursor, vs `pg_recvlogical` draining the same burst from its own slot.
//! - latency: receive wall clock − `commit_ts` at a paced commit rate, vs a bare
//!   `pgwire-replication` client on its own slot (Commit arrival − commit time) under the same
//!   load in a second phase.
//! - fanout: N subscribed clients, one burst; vs LISTEN/NOTIFY to N connections.
//! - memory: RSS of the walcast child idle, with N idle clients, and with one stalled client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::bench::{bench_db, bench_server_args, percentile, start_server};
use crate::cli::{BenchDrainArgs, BenchFanoutArgs, BenchLatencyArgs, BenchMemoryArgs, ServerArgs};
use crate::config::ServerConfig;

/// A client WebSocket.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How every `event` frame starts (the encoder's field order is fixed).
const EVENT_PREFIX: &str = r#"{"type":"event""#;
/// How a `lagged` frame starts.
const LAGGED_PREFIX: &str = r#"{"type":"lagged""#;
/// Connecting, subscribing, starting and stopping.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a drain, a burst's delivery or a load may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Publication walcast (and the baselines) stream from.
const PUBLICATION: &str = "walcast_events";
/// NOTIFY channel of the fan-out baseline.
const NOTIFY_CHANNEL: &str = "walcast_bench";
/// Writer connections of the latency load.
const LATENCY_WRITERS: usize = 4;
/// How long the memory scenario keeps its stalled client stalled after the load (longer than
/// walcast's 10 s write timeout, so walcast has decided what to do with it).
const STALL_HOLD: Duration = Duration::from_secs(15);

/// A burst transaction: rows `$1..=$2`.
const BURST_SQL: &str = "insert into public.monitoring_events (id, event_type, source, data) \
     select gen_random_uuid(), 'metrics.cpu', 'bench', \
            jsonb_build_object('seq', g, 'host', 'bench', 'value', 0.5) \
     from generate_series($1::bigint, $2::bigint) g";

/// One row, autocommit.
const SINGLE_SQL: &str = "insert into public.monitoring_events (id, event_type, source, data) \
     values (gen_random_uuid(), 'metrics.cpu', 'bench', \
             jsonb_build_object('seq', $1::bigint, 'host', 'bench', 'value', 0.5))";

// ---------------------------------------------------------------------------------------------
// drain
// ---------------------------------------------------------------------------------------------

/// `walcast bench drain`.
pub async fn drain(args: BenchDrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.txns > 0 && args.rows > 0 && args.reps > 0,
        "--txns, --rows and --reps must be at least 1"
    );
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;
    let recvlogical = pg_recvlogical_bin();
    let total = args.txns * args.rows;
    // The ring must hold the whole burst: walcast's reader may run ahead of the client.
    let queue = (total + 1024).clamp(65_536, 1_000_000);
    eprintln!(
        "drain: {} reps of {} txns x {} rows; baseline {}",
        args.reps,
        args.txns,
        args.rows,
        recvlogical.display()
    );

    let mut seq = 0i64;
    let mut reps = Vec::new();
    let mut walcast_rates = Vec::new();
    let mut base_rates = Vec::new();
    for rep in 0..args.reps {
        let base_slot = format!("bench_recvlogical_{rep}");
        create_slot_recvlogical(&recvlogical, &db.url, &base_slot).await?;

        // A fresh walcast node (and slot) per rep, so a rep never re-reads an earlier burst.
        let mut server_args = bench_server_args();
        server_args.client_queue = queue;
        let config = ServerConfig::from_args(&db.url, &server_args)?;
        let slot = config.slot.clone();
        let marker = marker_cursor(&db.url, &pg, &server_args, &slot, &mut seq).await?;

        let write = burst(&pg, args.txns, args.rows, &mut seq).await?;
        let end_lsn: String = pg
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        eprintln!(
            "rep {}: burst of {total} rows written in {:.2} s (end {end_lsn})",
            rep + 1,
            write.as_secs_f64()
        );

        // Alternate the order so neither side always reads the WAL second.
        let (w, b) = if rep % 2 == 0 {
            let w = drain_walcast(&db.url, &server_args, &marker, total).await?;
            let b = drain_recvlogical(&recvlogical, &db.url, &base_slot, &end_lsn).await?;
            (w, b)
        } else {
            let b = drain_recvlogical(&recvlogical, &db.url, &base_slot, &end_lsn).await?;
            let w = drain_walcast(&db.url, &server_args, &marker, total).await?;
            (w, b)
        };
        drop_slot(&pg, &slot).await?;
        drop_slot(&pg, &base_slot).await?;
        remove_spool(&config);

        let wr = total as f64 / w.elapsed.as_secs_f64();
        let br = total as f64 / b.as_secs_f64();
        eprintln!(
            "rep {}: walcast {:.2} s ({wr:.0} rows/s, {} replayed), pg_recvlogical {:.2} s ({br:.0} rows/s)",
            rep + 1,
            w.elapsed.as_secs_f64(),
            w.replayed,
            b.as_secs_f64()
        );
        walcast_rates.push(wr);
        base_rates.push(br);
        reps.push(json!({
            "walcast_s": round3(w.elapsed.as_secs_f64()),
            "walcast_rows_per_s": wr.round(),
            "walcast_replayed": w.replayed,
            "walcast_first_row_s": round3(w.first_row.as_secs_f64()),
            "frame_bytes_avg": w.frame_bytes_avg.round(),
            "pg_recvlogical_s": round3(b.as_secs_f64()),
            "pg_recvlogical_rows_per_s": br.round(),
            "burst_write_s": round3(write.as_secs_f64()),
        }));
    }
    let wm = median(&mut walcast_rates);
    let bm = median(&mut base_rates);
    let ratio = wm / bm;
    let report = json!({
        "scenario": "drain",
        "txns": args.txns,
        "rows_per_txn": args.rows,
        "rows": total,
        "reps": args.reps,
        "client_queue": queue,
        "walcast_rows_per_s": wm.round(),
        "pg_recvlogical_rows_per_s": bm.round(),
        "ratio": round3(ratio),
        "target_ratio": 0.9,
        "met": ratio >= 0.9,
        "runs": reps,
        "postgres": version,
        "date": chrono::Utc::now().to_rfc3339(),
    });
    println!(
        "| scenario | walcast rows/s (median) | pg_recvlogical rows/s (median) | walcast / pg_recvlogical | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| drain {} txns x {} rows, {} reps | {:.0} | {:.0} | {:.2} | >= 0.90 ({}) |",
        args.txns,
        args.rows,
        args.reps,
        wm,
        bm,
        ratio,
        met(ratio >= 0.9)
    );
    emit(&report, args.json)
}

/// Starts walcast once (creating its slot), commits a marker row, returns its cursor, stops.
async fn marker_cursor(
    url: &str,
    pg: &Client,
    server_args: &ServerArgs,
    slot: &str,
    seq: &mut i64,
) -> anyhow::Result<String> {
    let (addr, token, handle) = start_server(url, server_args).await?;
    let result = async {
        wait_slot_active(pg, slot).await?;
        let mut ws = ws_subscribed(addr).await?;
        pg.execute(SINGLE_SQL, &[&*seq]).await?;
        *seq += 1;
        let frame = next_frame(&mut ws, "event").await?;
        let v: Value = serde_json::from_str(&frame)?;
        let cursor = v["cursor"]
            .as_str()
            .context("the marker event has no cursor")?
            .to_owned();
        let _ = ws.close(None).await;
        Ok::<_, anyhow::Error>(cursor)
    }
    .await;
    stop_server(token, handle).await?;
    result
}

/// What the walcast side of a drain measured.
struct WalcastDrain {
    /// From starting walcast to the client holding every row.
    elapsed: Duration,
    /// Rows the server replayed (vs streamed live) for the resume.
    replayed: u64,
    /// Mean event frame size.
    frame_bytes_avg: f64,
    /// From starting walcast to the first row (startup, slot checks, first decode).
    first_row: Duration,
}

/// Starts walcast, resumes a client from `marker`, times until it has `total` rows, stops.
async fn drain_walcast(
    url: &str,
    server_args: &ServerArgs,
    marker: &str,
    total: usize,
) -> anyhow::Result<WalcastDrain> {
    let started = Instant::now();
    let (addr, token, handle) = start_server(url, server_args).await?;
    let result = async {
        let mut ws = ws_subscribed(addr).await?;
        ws.send(Message::text(
            json!({"type": "resume", "cursor": marker}).to_string(),
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        let mut events = 0usize;
        let mut bytes = 0usize;
        let mut elapsed = None;
        let mut first_row = None;
        let mut replayed = None;
        while elapsed.is_none() || replayed.is_none() {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .with_context(|| {
                    format!("drain timed out after {RUN_TIMEOUT:?} with {events} of {total} rows")
                })?;
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => anyhow::bail!("walcast closed the drain: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("walcast closed the drain after {events} rows"),
            };
            let s = text.as_str();
            if s.starts_with(EVENT_PREFIX) {
                events += 1;
                bytes += s.len();
                if events == 1 {
                    first_row = Some(started.elapsed());
                }
                if events == total {
                    elapsed = Some(started.elapsed());
                }
            } else if s.starts_with(r#"{"type":"resumed""#) {
                let v: Value = serde_json::from_str(s)?;
                replayed = Some(v["replayed"].as_u64().unwrap_or(0));
            } else if !s.starts_with(r#"{"type":"heartbeat""#) {
                anyhow::bail!("unexpected frame during the drain: {s}");
            }
        }
        anyhow::ensure!(events == total, "got {events} rows, expected {total}");
        let _ = ws.close(None).await;
        Ok::<_, anyhow::Error>(WalcastDrain {
            elapsed: elapsed.unwrap_or_default(),
            replayed: replayed.unwrap_or(0),
            frame_bytes_avg: bytes as f64 / events.max(1) as f64,
            first_row: first_row.unwrap_or_default(),
        })
    }
    .await;
    stop_server(token, handle).await?;
    result
}

/// `pg_recvlogical --create-slot --plugin pgoutput`.
async fn create_slot_recvlogical(
    bin: &std::path::Path,
    url: &str,
    slot: &str,
) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        SETUP_TIMEOUT,
        tokio::process::Command::new(bin)
            .args([
                "-d",
                url,
                "--slot",
                slot,
                "--create-slot",
                "--plugin",
                "pgoutput",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("pg_recvlogical --create-slot timed out")??;
    anyhow::ensure!(
        out.status.success(),
        "pg_recvlogical --create-slot failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Times `pg_recvlogical --start ... -E end -f /dev/null`.
async fn drain_recvlogical(
    bin: &std::path::Path,
    url: &str,
    slot: &str,
    end_lsn: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = tokio::time::timeout(
        RUN_TIMEOUT,
        tokio::process::Command::new(bin)
            .args([
                "-d",
                url,
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "-o",
                "proto_version=1",
                "-o",
                &format!("publication_names={PUBLICATION}"),
                "-E",
                end_lsn,
                "-f",
                "/dev/null",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("pg_recvlogical drain timed out")??;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "pg_recvlogical failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(elapsed)
}

/// pg_recvlogical from the binaries the private cluster uses, else from PATH.
fn pg_recvlogical_bin() -> PathBuf {
    crate::cluster::Cluster::find_bin_dir()
        .map(|d| d.join("pg_recvlogical"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pg_recvlogical"))
}

// ---------------------------------------------------------------------------------------------
// latency
// ---------------------------------------------------------------------------------------------

/// `walcast bench latency`.
pub async fn latency(args: BenchLatencyArgs) -> anyhow::Result<()> {
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
            crate::replication::ReplicationSettings::from_url(&db.url, PUBLICATION, "bench")?;
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
                    let ts = crate::decode::pg_micros_to_utc(commit_time_micros);
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

// ---------------------------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------------------------

/// `walcast bench fanout`.
pub async fn fanout(args: BenchFanoutArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.txns > 0 && args.rows > 0,
        "--clients, --txns and --rows must be at least 1"
    );
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;
    let total = (args.txns * args.rows) as u64;
    let n = args.clients as u64;
    let mut seq = 0i64;

    // Phase 1: walcast.
    let queue = (args.txns * args.rows + 1024).clamp(65_536, 1_000_000);
    eprintln!(
        "fanout phase 1: walcast, {} clients, {} txns x {} rows (client queue {queue})",
        args.clients, args.txns, args.rows
    );
    let mut server_args = bench_server_args();
    server_args.client_queue = queue;
    let config = ServerConfig::from_args(&db.url, &server_args)?;
    let slot = config.slot.clone();
    let (addr, token, handle) = start_server(&db.url, &server_args).await?;
    let phase = async {
        wait_slot_active(&pg, &slot).await?;
        let clients = futures::stream::iter(0..args.clients)
            .map(|_| ws_subscribed(addr))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|ws| tokio::spawn(count_ws_events(ws, total, deadline)))
            .collect();
        let t0 = Instant::now();
        let write = burst(&pg, args.txns, args.rows, &mut seq).await?;
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await?);
        }
        Ok::<_, anyhow::Error>(Fan::of(t0, write, &outcomes, total))
    }
    .await;
    stop_server(token, handle).await?;
    remove_spool(&config);
    let walcast = phase?;

    // Phase 2: LISTEN/NOTIFY, a row-level trigger calling pg_notify with the row as JSON.
    let max_conn: i64 = pg
        .query_one(
            "select current_setting('max_connections')::int8 - count(*) from pg_stat_activity",
            &[],
        )
        .await?
        .get(0);
    let baseline = if args.clients as i64 + 5 > max_conn {
        eprintln!(
            "fanout phase 2 skipped: {} LISTEN connections do not fit in Postgres' free connections ({max_conn})",
            args.clients
        );
        None
    } else {
        eprintln!(
            "fanout phase 2: LISTEN/NOTIFY, {} connections, same burst",
            args.clients
        );
        pg.batch_execute(&format!(
            "create or replace function public.walcast_bench_notify() returns trigger \
             language plpgsql as $$ begin \
               perform pg_notify('{NOTIFY_CHANNEL}', row_to_json(new)::text); return null; \
             end $$; \
             create trigger walcast_bench_notify after insert on public.monitoring_events \
               for each row execute function public.walcast_bench_notify();"
        ))
        .await?;
        let phase = async {
            let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
            let mut listeners = Vec::new();
            for _ in 0..args.clients {
                listeners.push(listener(&db.url, total, deadline).await?);
            }
            let t0 = Instant::now();
            let write = burst(&pg, args.txns, args.rows, &mut seq).await?;
            let mut outcomes = Vec::new();
            let mut keep = Vec::new();
            for (client, task) in listeners {
                outcomes.push(task.await?);
                keep.push(client);
            }
            Ok::<_, anyhow::Error>(Fan::of(t0, write, &outcomes, total))
        }
        .await;
        pg.batch_execute(
            "drop trigger if exists walcast_bench_notify on public.monitoring_events; \
             drop function if exists public.walcast_bench_notify();",
        )
        .await?;
        Some(phase?)
    };

    let met_target = walcast.complete && walcast.rate(n, total) >= 2_000_000.0;
    let report = json!({
        "scenario": "fanout",
        "clients": args.clients,
        "txns": args.txns,
        "rows_per_txn": args.rows,
        "rows": total,
        "client_queue": queue,
        "walcast": walcast.json(n, total),
        "listen_notify": baseline.as_ref().map(|b| b.json(n, total)),
        "ratio": baseline.as_ref().map(|b| round3(walcast.rate(n, total) / b.rate(n, total))),
        "target_deliveries_per_s": 2_000_000,
        "met": met_target,
        "postgres": version,
        "date": chrono::Utc::now().to_rfc3339(),
    });
    println!(
        "| scenario | walcast deliveries/s (time) | LISTEN/NOTIFY notifications/s (time) | walcast / NOTIFY | lagged clients | target |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| fanout {} clients x {} txns x {} rows | {} | {} | {} | {} | >= 2,000,000 ({}) |",
        args.clients,
        args.txns,
        args.rows,
        walcast.cell(n, total),
        baseline
            .as_ref()
            .map_or("skipped".to_owned(), |b| b.cell(n, total)),
        baseline.as_ref().map_or("-".to_owned(), |b| format!(
            "{:.1}x",
            walcast.rate(n, total) / b.rate(n, total)
        )),
        walcast.lagged,
        met(met_target)
    );
    emit(&report, args.json)
}

/// What one fan-out receiver saw.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// Rows received.
    rows: u64,
    /// When it had all of them.
    done: Option<Instant>,
    /// It got a `lagged` frame.
    lagged: bool,
}

/// Counts event frames (by prefix, no JSON parsing) until `expect` or the deadline.
async fn count_ws_events(mut ws: Ws, expect: u64, deadline: tokio::time::Instant) -> Outcome {
    let mut out = Outcome {
        rows: 0,
        done: None,
        lagged: false,
    };
    while out.rows < expect {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str().starts_with(EVENT_PREFIX) {
                    out.rows += 1;
                } else if t.as_str().starts_with(LAGGED_PREFIX) {
                    out.lagged = true;
                    break;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            Ok(Some(Ok(_))) => {}
        }
    }
    if out.rows >= expect {
        out.done = Some(Instant::now());
    }
    drop(ws);
    out
}

/// A LISTENing connection counting notifications in its own task.
async fn listener(
    url: &str,
    expect: u64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(Client, tokio::task::JoinHandle<Outcome>)> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(async move {
        let mut out = Outcome {
            rows: 0,
            done: None,
            lagged: false,
        };
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while out.rows < expect {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(AsyncMessage::Notification(_)))) => {
                    out.rows += 1;
                    if out.rows == expect {
                        out.done = Some(Instant::now());
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            }
        }
        out
    });
    client
        .batch_execute(&format!("listen {NOTIFY_CHANNEL}"))
        .await?;
    Ok((client, task))
}

/// A fan-out phase's result.
struct Fan {
    /// From the first burst statement to the last receiver holding every row.
    elapsed: Duration,
    /// Writing the burst.
    write: Duration,
    /// Every receiver got every row.
    complete: bool,
    /// Receivers that did not.
    incomplete: usize,
    /// Receivers that got `lagged`.
    lagged: usize,
    /// Rows delivered in total.
    delivered: u64,
}

impl Fan {
    /// Summarises the receivers.
    fn of(t0: Instant, write: Duration, outcomes: &[Outcome], total: u64) -> Self {
        let last = outcomes.iter().filter_map(|o| o.done).max();
        let incomplete = outcomes.iter().filter(|o| o.rows < total).count();
        Fan {
            elapsed: last.map_or(RUN_TIMEOUT, |l| l.duration_since(t0)),
            write,
            complete: incomplete == 0,
            incomplete,
            lagged: outcomes.iter().filter(|o| o.lagged).count(),
            delivered: outcomes.iter().map(|o| o.rows).sum(),
        }
    }

    /// Deliveries per second (of the full N × rows; 0 when incomplete).
    fn rate(&self, n: u64, total: u64) -> f64 {
        if !self.complete {
            return 0.0;
        }
        (n * total) as f64 / self.elapsed.as_secs_f64()
    }

    /// A table cell.
    fn cell(&self, n: u64, total: u64) -> String {
        if self.complete {
            format!(
                "{:.0} ({:.2} s)",
                self.rate(n, total),
                self.elapsed.as_secs_f64()
            )
        } else {
            format!(
                "incomplete: {} receivers short, {} of {} delivered",
                self.incomplete,
                self.delivered,
                n * total
            )
        }
    }

    /// As JSON.
    fn json(&self, n: u64, total: u64) -> Value {
        json!({
            "deliveries_per_s": self.rate(n, total).round(),
            "seconds": round3(self.elapsed.as_secs_f64()),
            "burst_write_s": round3(self.write.as_secs_f64()),
            "after_last_commit_s": round3(self.elapsed.saturating_sub(self.write).as_secs_f64()),
            "complete": self.complete,
            "incomplete_receivers": self.incomplete,
            "lagged_receivers": self.lagged,
            "delivered": self.delivered,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------------------------

/// `walcast bench memory`.
///
/// Two fresh walcast child processes, so that neither phase inherits the other's heap (the
/// allocator keeps freed memory: RSS does not drop back when clients leave).
pub async fn memory(args: BenchMemoryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.rows >= 100,
        "--clients must be at least 1 and --rows at least 100"
    );
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;

    // Phase 1: idle, then N idle subscribed clients.
    let (config, mut child) = memory_child(&db.url).await?;
    let result = idle_clients_phase(args.clients, &pg, &config, &child).await;
    child.stop().await;
    remove_spool(&config);
    drop_slot(&pg, &config.slot).await?;
    let idle = result?;

    // Phase 2 (fresh process): one stalled and one reading client while rows are written.
    let (config, mut child) = memory_child(&db.url).await?;
    let result = stalled_phase(args.rows as u64, &pg, &config, &child).await;
    child.stop().await;
    remove_spool(&config);
    drop_slot(&pg, &config.slot).await?;
    let load = result?;

    let per_client_kib =
        (idle.rss_clients_kib as f64 - idle.rss_idle_kib as f64) / args.clients as f64;
    let peak_kib = load.hwm_kib.max(load.sampled_peak_kib);
    let report = json!({
        "scenario": "memory",
        "clients": args.clients,
        "rows": args.rows,
        "client_queue": config.client_queue,
        "idle_clients_phase": {
            "rss_idle_kib": idle.rss_idle_kib,
            "rss_with_clients_kib": idle.rss_clients_kib,
            "per_idle_client_kib": round3(per_client_kib),
            "rss_after_clients_closed_kib": idle.rss_closed_kib,
        },
        "stalled_client_phase": {
            "rss_idle_kib": load.rss_idle_kib,
            "peak_rss_kib": peak_kib,
            "vmhwm_kib": load.hwm_kib,
            "sampled_peak_rss_kib": load.sampled_peak_kib,
            "rss_after_kib": load.rss_after_kib,
            "load_seconds": round3(load.load.as_secs_f64()),
            "reading_client_rows": load.reader_rows,
            "stalled": {
                "lagged": load.stalled.lagged,
                "close_code": load.stalled.close_code,
                "rows_received": load.stalled.rows,
                "outcome": load.stalled.outcome,
            },
        },
        "postgres": version,
        "date": chrono::Utc::now().to_rfc3339(),
    });
    println!(
        "| scenario | RSS idle | per idle client | RSS with {} idle clients | peak RSS, {} rows, 1 stalled + 1 reading client | stalled client cut with `lagged` |",
        args.clients, args.rows
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| memory | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.1} MiB (idle {:.1} MiB) | {} |",
        idle.rss_idle_kib as f64 / 1024.0,
        per_client_kib,
        idle.rss_clients_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        load.rss_idle_kib as f64 / 1024.0,
        if load.stalled.lagged {
            "yes".to_owned()
        } else {
            format!("no: {}", load.stalled.outcome)
        }
    );
    emit(&report, args.json)
}

/// A fresh walcast child on its own node (and slot).
async fn memory_child(url: &str) -> anyhow::Result<(ServerConfig, WalcastChild)> {
    let mut server_args = bench_server_args();
    server_args.node = format!("benchmem{:x}", rand::random::<u32>());
    let config = ServerConfig::from_args(url, &server_args)?;
    let child = WalcastChild::spawn(url, &server_args.node, &config.spool_dir).await?;
    Ok((config, child))
}

/// What the idle-clients phase measured.
struct IdleResult {
    /// Idle, no client.
    rss_idle_kib: u64,
    /// With N idle subscribed clients.
    rss_clients_kib: u64,
    /// After they closed.
    rss_closed_kib: u64,
}

/// Idle RSS, then N idle subscribed clients.
async fn idle_clients_phase(
    clients: usize,
    pg: &Client,
    config: &ServerConfig,
    child: &WalcastChild,
) -> anyhow::Result<IdleResult> {
    let pid = child.pid;
    wait_slot_active(pg, &config.slot).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = proc_status_kib(pid, "VmRSS")?;
    eprintln!("memory: idle RSS {rss_idle_kib} KiB; connecting {clients} clients");
    let conns = futures::stream::iter(0..clients)
        .map(|_| ws_subscribed(child.addr))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let stop = CancellationToken::new();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| tokio::spawn(idle_client(ws, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_clients_kib = proc_status_kib(pid, "VmRSS")?;
    eprintln!("memory: RSS with {clients} clients {rss_clients_kib} KiB");
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(SETUP_TIMEOUT, t).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_closed_kib = proc_status_kib(pid, "VmRSS")?;
    Ok(IdleResult {
        rss_idle_kib,
        rss_clients_kib,
        rss_closed_kib,
    })
}

/// What the stalled-client phase measured.
struct LoadResult {
    /// Idle, before the clients.
    rss_idle_kib: u64,
    /// VmHWM of the process (its whole life: startup, idle, load, stall).
    hwm_kib: u64,
    /// Largest VmRSS sampled every 20 ms during the load and the stall.
    sampled_peak_kib: u64,
    /// After the load and the stall.
    rss_after_kib: u64,
    /// Writing the rows.
    load: Duration,
    /// Rows the reading client got.
    reader_rows: u64,
    /// What happened to the stalled client.
    stalled: Stalled,
}

/// One stalled client (never reads after `subscribed`) and one reading client while `rows`
/// rows are written in 100 transactions.
async fn stalled_phase(
    rows: u64,
    pg: &Client,
    config: &ServerConfig,
    child: &WalcastChild,
) -> anyhow::Result<LoadResult> {
    let pid = child.pid;
    wait_slot_active(pg, &config.slot).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = proc_status_kib(pid, "VmRSS")?;
    let stalled_ws = ws_subscribed(child.addr).await?;
    let reader_ws = ws_subscribed(child.addr).await?;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let reader = tokio::spawn(count_ws_events(reader_ws, rows, deadline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(Ordering::Relaxed) {
                if let Ok(kib) = proc_status_kib(pid, "VmRSS") {
                    peak = peak.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    eprintln!(
        "memory: idle RSS {rss_idle_kib} KiB; writing {rows} rows in 100 transactions, one client stalled"
    );
    let t0 = Instant::now();
    let mut seq = 0i64;
    let stmt = pg.prepare(BURST_SQL).await?;
    for i in 0..100u64 {
        let n = rows / 100 + u64::from(i < rows % 100);
        let last = seq + n as i64 - 1;
        pg.execute(&stmt, &[&seq, &last]).await?;
        seq = last + 1;
    }
    let load = t0.elapsed();
    let reader_out = reader.await?;
    eprintln!(
        "memory: rows written in {:.2} s; reading client got {} rows; holding the stalled client {STALL_HOLD:?}",
        load.as_secs_f64(),
        reader_out.rows
    );
    tokio::time::sleep(STALL_HOLD).await;
    sampling.store(false, Ordering::Relaxed);
    let sampled_peak_kib = sampler.await?;
    let hwm_kib = proc_status_kib(pid, "VmHWM")?;
    let rss_after_kib = proc_status_kib(pid, "VmRSS")?;
    let stalled = read_stalled(stalled_ws).await;
    Ok(LoadResult {
        rss_idle_kib,
        hwm_kib,
        sampled_peak_kib,
        rss_after_kib,
        load,
        reader_rows: reader_out.rows,
        stalled,
    })
}

/// The stalled client's fate.
struct Stalled {
    /// It got a `lagged` frame.
    lagged: bool,
    /// Close code received, if any.
    close_code: Option<u16>,
    /// Event frames it could still read.
    rows: u64,
    /// In words.
    outcome: String,
}

/// An idle client: reads (heartbeats) until `stop`, then closes.
async fn idle_client(mut ws: Ws, stop: CancellationToken) {
    loop {
        let gone = tokio::select! {
            _ = stop.cancelled() => false,
            m = ws.next() => matches!(m, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        };
        if gone {
            return;
        }
        if stop.is_cancelled() {
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
            return;
        }
    }
}

/// Reads whatever the stalled client's socket holds, to see how walcast ended it.
async fn read_stalled(mut ws: Ws) -> Stalled {
    let mut s = Stalled {
        lagged: false,
        close_code: None,
        rows: 0,
        outcome: String::new(),
    };
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str().starts_with(EVENT_PREFIX) {
                    s.rows += 1;
                } else if t.as_str().starts_with(LAGGED_PREFIX) {
                    s.lagged = true;
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                s.close_code = f.as_ref().map(|f| u16::from(f.code));
                s.outcome = format!(
                    "closed with code {} after {} rows{}",
                    s.close_code.map_or("none".to_owned(), |c| c.to_string()),
                    s.rows,
                    if s.lagged {
                        " and a lagged frame"
                    } else {
                        ", no lagged frame"
                    }
                );
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                s.outcome = format!(
                    "connection dropped without a close frame after {} rows{} ({e})",
                    s.rows,
                    if s.lagged {
                        " and a lagged frame"
                    } else {
                        ", no lagged frame"
                    }
                );
                break;
            }
            Ok(None) => {
                s.outcome = format!(
                    "connection ended without a close frame after {} rows{}",
                    s.rows,
                    if s.lagged {
                        " and a lagged frame"
                    } else {
                        ", no lagged frame"
                    }
                );
                break;
            }
            Err(_) => {
                s.outcome = format!(
                    "still open {SETUP_TIMEOUT:?} after it started reading, {} rows read{}",
                    s.rows,
                    if s.lagged { ", lagged frame seen" } else { "" }
                );
                break;
            }
        }
    }
    s
}

/// walcast `serve` as a child process.
struct WalcastChild {
    /// The process.
    child: tokio::process::Child,
    /// Its pid.
    pid: u32,
    /// Where it listens.
    addr: SocketAddr,
}

impl WalcastChild {
    /// Starts `walcast serve` (this executable) and waits for its listen line.
    async fn spawn(url: &str, node: &str, spool_dir: &std::path::Path) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--log",
                "warn",
                "serve",
                "--database-url",
                url,
                "--listen",
                "127.0.0.1:0",
                "--node",
                node,
            ])
            .arg("--spool-dir")
            .arg(spool_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start walcast serve")?;
        let pid = child.id().context("walcast serve exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(SETUP_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.trim().strip_prefix("walcast listening on http://") {
                    return Ok(a.parse::<SocketAddr>()?);
                }
            }
            anyhow::bail!("walcast serve exited before listening")
        })
        .await
        .context("walcast serve did not listen in time")??;
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(WalcastChild { child, pid, addr })
    }

    /// SIGTERM, then SIGKILL if it does not exit in time.
    async fn stop(&mut self) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(SETUP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------------
// shared
// ---------------------------------------------------------------------------------------------

/// A SQL connection driven on its own task.
async fn connect_pg(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio::time::timeout(SETUP_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .context("connecting to Postgres timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `select version()`.
async fn server_version(pg: &Client) -> anyhow::Result<String> {
    Ok(pg.query_one("select version()", &[]).await?.get(0))
}

/// Commits `txns` transactions of `rows` rows each on one connection; returns the time taken.
async fn burst(pg: &Client, txns: usize, rows: usize, seq: &mut i64) -> anyhow::Result<Duration> {
    let stmt = pg.prepare(BURST_SQL).await?;
    let started = Instant::now();
    for _ in 0..txns {
        let last = *seq + rows as i64 - 1;
        let n = pg.execute(&stmt, &[&*seq, &last]).await?;
        anyhow::ensure!(
            n == rows as u64,
            "a burst insert wrote {n} rows, not {rows}"
        );
        *seq = last + 1;
    }
    Ok(started.elapsed())
}

/// Waits until walcast's slot is held by a streaming session (its startup floor is set then).
async fn wait_slot_active(pg: &Client, slot: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let row = pg
            .query_opt(
                "select active from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?;
        if row.is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "walcast did not start streaming from slot {slot} within {SETUP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops a slot once no session holds it.
async fn drop_slot(pg: &Client, slot: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match pg
            .execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("cannot drop slot {slot}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Removes the temporary per-node spool directory ([`bench_server_args`]) of a stopped walcast.
fn remove_spool(config: &ServerConfig) {
    let dir = &config.spool_dir;
    let temporary = dir.starts_with(std::env::temp_dir())
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("walcast-bench-spool-"));
    if temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Stops an in-process walcast and waits for it.
async fn stop_server(
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .context("walcast did not stop within 60 s")??;
    Ok(())
}

/// Connects to `/ws`, reads `welcome`, subscribes to everything, reads `subscribed`.
async fn ws_subscribed(addr: SocketAddr) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(
        SETUP_TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .context("connecting to /ws timed out")??;
    next_frame(&mut ws, "welcome").await?;
    ws.send(Message::text(r#"{"type":"subscribe","id":"b"}"#))
        .await?;
    next_frame(&mut ws, "subscribed").await?;
    Ok(ws)
}

/// The next frame of type `kind` (heartbeats are skipped; anything else is an error).
async fn next_frame(ws: &mut Ws, kind: &str) -> anyhow::Result<String> {
    let prefix = format!(r#"{{"type":"{kind}""#);
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {kind} frame within {SETUP_TIMEOUT:?}"))?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let s = t.as_str();
                if s.starts_with(&prefix) {
                    return Ok(s.to_owned());
                }
                anyhow::ensure!(
                    s.starts_with(r#"{"type":"heartbeat""#),
                    "expected a {kind} frame, got {s}"
                );
            }
            Some(Ok(Message::Close(f))) => anyhow::bail!("walcast closed the connection: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed before a {kind} frame"),
        }
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

/// Median (sorts in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 0.5)
}

/// Three decimals.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// "met" / "not met".
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// Prints the JSON line and writes it to `--json` when given.
fn emit(report: &Value, path: Option<PathBuf>) -> anyhow::Result<()> {
    println!("{report}");
    if let Some(p) = path {
        std::fs::write(&p, format!("{report}\n"))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
