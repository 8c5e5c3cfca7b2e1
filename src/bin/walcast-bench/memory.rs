//! `walcast-bench memory`: RSS of a walcast server idle, with N idle `/ws` clients, and with one
//! stalled client while rows are written.
//!
//! walcast runs as a child process, so that its RSS is not mixed with the clients': the
//! `walcast` binary that sits beside `walcast-bench` (`cargo build --release` builds both into
//! `target/release/`). Its own private Postgres cluster (fsync on).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast::config::ServerConfig;

use crate::support::{
    BURST_SQL, EVENT_PREFIX, LAGGED_PREFIX, Outcome, RUN_TIMEOUT, SETUP_TIMEOUT, Ws, bench_db,
    bench_server_args, connect_pg, count_ws_events, drop_slot, emit, remove_spool, round3,
    server_version, wait_slot_active, ws_subscribed,
};

/// Large rows the writer may be in front of the reading client.
const READER_AHEAD: u64 = 3;

/// Like [`count_ws_events`], publishing the count in `progress`.
async fn count_paced(
    mut ws: Ws,
    expect: u64,
    deadline: tokio::time::Instant,
    progress: Arc<AtomicU64>,
) -> Outcome {
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
                    progress.store(out.rows, Ordering::Relaxed);
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
    out
}

/// One row of `$2` bytes of `data` text, autocommit.
const BIG_ROW_SQL: &str = "insert into public.monitoring_events (id, event_type, source, data) \
     values (gen_random_uuid(), 'big', 'bench', \
             jsonb_build_object('seq', $1::bigint, 'pad', repeat('x', $2::int)))";

/// How long the memory scenario keeps its stalled client stalled after the load (longer than
/// walcast's 10 s write timeout, so walcast has decided what to do with it).
const STALL_HOLD: Duration = Duration::from_secs(15);

/// `walcast-bench memory`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Idle clients to connect.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Rows written while one client is stalled.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Bytes of text in each row's `data` (0: the small bench rows, written in 100
    /// transactions; otherwise one row per transaction, e.g. `--rows 100 --row-bytes 1000000`).
    #[arg(long, default_value_t = 0)]
    pub row_bytes: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
///
/// Two fresh walcast child processes, so that neither phase inherits the other's heap (the
/// allocator keeps freed memory: RSS does not drop back when clients leave).
pub async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.rows >= 100 && args.row_bytes <= 1_000_000,
        "--clients must be at least 1, --rows at least 100 and --row-bytes at most 1000000"
    );
    let exe = walcast_exe()?;
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;

    // Phase 1: idle, then N idle subscribed clients.
    let (config, mut child) = memory_child(&exe, &db.url).await?;
    let result = idle_clients_phase(args.clients, &pg, &config, &child).await;
    child.stop().await;
    remove_spool(&config);
    drop_slot(&pg, &config.slot).await?;
    let idle = result?;

    // Phase 2 (fresh process): one stalled and one reading client while rows are written.
    let (config, mut child) = memory_child(&exe, &db.url).await?;
    let result = stalled_phase(args.rows as u64, args.row_bytes, &pg, &config, &child).await;
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
        "row_bytes": args.row_bytes,
        "client_queue": config.client_queue,
        "client_queue_bytes": config.client_queue_bytes,
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
            "rss_after_stalled_left_kib": load.rss_left_kib,
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
        "| scenario | RSS idle | per idle client | RSS with {} idle clients | peak RSS, {} rows{}, 1 stalled + 1 reading client | RSS 2 s after the stalled client left | stalled client cut with `lagged` |",
        args.clients,
        args.rows,
        if args.row_bytes > 0 {
            format!(" of {} B", args.row_bytes)
        } else {
            String::new()
        }
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| memory | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.1} MiB (idle {:.1} MiB) | {:.1} MiB | {} |",
        idle.rss_idle_kib as f64 / 1024.0,
        per_client_kib,
        idle.rss_clients_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        load.rss_idle_kib as f64 / 1024.0,
        load.rss_left_kib as f64 / 1024.0,
        if load.stalled.lagged {
            "yes".to_owned()
        } else {
            format!("no: {}", load.stalled.outcome)
        }
    );
    emit(&report, args.json)
}

/// The `walcast` server binary that sits beside this `walcast-bench` (same directory), so both
/// come from the same build; an error naming the path when it is not there.
fn walcast_exe() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("cannot find the path of walcast-bench")?;
    let dir = bench
        .parent()
        .with_context(|| format!("{} has no parent directory", bench.display()))?;
    let exe = dir.join(format!("walcast{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        exe.is_file(),
        "the memory scenario runs the walcast server as a child process, but {} does not exist: \
         build both binaries with `cargo build --release` (then run target/release/walcast-bench)",
        exe.display()
    );
    Ok(exe)
}

/// A fresh walcast child on its own node (and slot).
async fn memory_child(
    exe: &std::path::Path,
    url: &str,
) -> anyhow::Result<(ServerConfig, WalcastChild)> {
    let mut server_args = bench_server_args();
    server_args.node = format!("benchmem{:x}", rand::random::<u32>());
    let config = ServerConfig::from_args(url, &server_args)?;
    let child = WalcastChild::spawn(exe, url, &server_args.node, &config.spool_dir).await?;
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
    /// 2 s after the stalled client read its socket and left.
    rss_left_kib: u64,
    /// Writing the rows.
    load: Duration,
    /// Rows the reading client got.
    reader_rows: u64,
    /// What happened to the stalled client.
    stalled: Stalled,
}

/// One stalled client (never reads after `subscribed`) and one reading client while `rows`
/// rows are written in 100 transactions (or, with `row_bytes`, one row of that size per
/// transaction).
async fn stalled_phase(
    rows: u64,
    row_bytes: usize,
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
    // Large rows are paced by the reading client (at most READER_AHEAD rows in front), so
    // that what is measured is the stalled client, not a reader that cannot keep up.
    let progress = Arc::new(AtomicU64::new(0));
    let reader = if row_bytes > 0 {
        tokio::spawn(count_paced(
            reader_ws,
            rows,
            deadline,
            Arc::clone(&progress),
        ))
    } else {
        tokio::spawn(count_ws_events(reader_ws, rows, deadline))
    };
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
    if row_bytes > 0 {
        let stmt = pg.prepare(BIG_ROW_SQL).await?;
        for i in 0..rows {
            while progress.load(Ordering::Relaxed) + READER_AHEAD < i {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline && !reader.is_finished(),
                    "the reading client stopped at {} rows",
                    progress.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            pg.execute(&stmt, &[&seq, &(row_bytes as i32)]).await?;
            seq += 1;
        }
    } else {
        let stmt = pg.prepare(BURST_SQL).await?;
        for i in 0..100u64 {
            let n = rows / 100 + u64::from(i < rows % 100);
            let last = seq + n as i64 - 1;
            pg.execute(&stmt, &[&seq, &last]).await?;
            seq = last + 1;
        }
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
    // The stalled client has read its socket and left: what walcast keeps.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_left_kib = proc_status_kib(pid, "VmRSS")?;
    Ok(LoadResult {
        rss_left_kib,
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
    /// Starts `<exe> serve` ([`walcast_exe`]) and waits for its listen line.
    async fn spawn(
        exe: &std::path::Path,
        url: &str,
        node: &str,
        spool_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
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
                // The scenario measures memory, not authentication.
                "--insecure-no-auth",
            ])
            .env_remove("WALCAST_JWT_SECRET")
            .arg("--spool-dir")
            .arg(spool_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
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
