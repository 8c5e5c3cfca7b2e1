//! `walcast-bench drain`: a burst written while walcast is stopped, drained after a restart by
//! a `/ws` client that resumes from a marker cursor, vs `pg_recvlogical` draining the same burst
//! from its own slot (the baseline, same run).
//!
//! Its own private Postgres cluster (fsync on); walcast runs in-process. Rows are written
//! server-side ([`crate::support::BURST_SQL`]), about 330 bytes per `/ws` frame.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;
use walcast::cli::ServerArgs;
use walcast::config::ServerConfig;

use crate::support::{
    EVENT_PREFIX, PUBLICATION, RUN_TIMEOUT, SETUP_TIMEOUT, SINGLE_SQL, bench_db, bench_server_args,
    burst, connect_pg, drop_slot, emit, median, met, next_frame, remove_spool, round3,
    server_version, start_server, stop_server, wait_slot_active, ws_subscribed,
};

/// `walcast-bench drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Transactions in the burst.
    #[arg(long, default_value_t = 200)]
    pub txns: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
pub async fn run(args: DrainArgs) -> anyhow::Result<()> {
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
    walcast::cluster::Cluster::find_bin_dir()
        .map(|d| d.join("pg_recvlogical"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pg_recvlogical"))
}
