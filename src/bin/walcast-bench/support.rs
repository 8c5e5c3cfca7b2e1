//! What the scenarios share: the benchmark database, an in-process walcast server, `/ws`
//! clients, slots, the SQL that writes benchmark rows, and the statistics and report helpers.
//!
//! Nothing here measures anything: each scenario module owns its procedure and its baseline.
//! This module imports only the `walcast` library, never a scenario.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast::cli::ServerArgs;
use walcast::cluster::{Cluster, ClusterOptions};
use walcast::config::ServerConfig;

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connecting, subscribing, joining, starting and stopping.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a drain, a burst's delivery or a load may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Publication walcast (and the baselines) stream from.
pub const PUBLICATION: &str = "walcast_events";
/// How every `/ws` `event` frame starts (the encoder's field order is fixed).
pub const EVENT_PREFIX: &str = r#"{"type":"event""#;
/// How a `/ws` `lagged` frame starts.
pub const LAGGED_PREFIX: &str = r#"{"type":"lagged""#;

/// A burst transaction: rows `$1..=$2`, each with a `data` object like
/// `{"seq":n,"host":"bench","value":0.5}`.
pub const BURST_SQL: &str = "insert into public.monitoring_events (id, event_type, source, data) \
     select gen_random_uuid(), 'metrics.cpu', 'bench', \
            jsonb_build_object('seq', g, 'host', 'bench', 'value', 0.5) \
     from generate_series($1::bigint, $2::bigint) g";

/// One row, autocommit.
pub const SINGLE_SQL: &str = "insert into public.monitoring_events (id, event_type, source, data) \
     values (gen_random_uuid(), 'metrics.cpu', 'bench', \
             jsonb_build_object('seq', $1::bigint, 'host', 'bench', 'value', 0.5))";

// ---------------------------------------------------------------------------------------------
// database and server
// ---------------------------------------------------------------------------------------------

/// A database for a benchmark: the given URL or a fresh private cluster.
pub struct BenchDb {
    /// Connection URL.
    pub url: String,
    /// The private cluster, if one was started (dropped, so stopped, before its directory).
    _cluster: Option<Cluster>,
    /// Its directory, removed at the end.
    _dir: Option<TempDir>,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

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
    let pool = walcast::db::pool(&db.url, 2, "walcast_bench")?;
    walcast::db::migrate(&pool).await?;
    Ok(db)
}

/// Server options with their defaults (and `WALCAST_*` environment), listening on a free port,
/// without a JWT secret (`--insecure-no-auth`), on a fresh node with a temporary spool directory.
pub fn bench_server_args() -> ServerArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        server: ServerArgs,
    }
    let mut w = Wrapper::parse_from(["bench"]);
    w.server.listen = "127.0.0.1:0".into();
    // The scenarios measure delivery, not authentication (realtime sets its own secret).
    w.server.jwt_secret = None;
    w.server.insecure_no_auth = true;
    // Every simulated client connects from loopback: the per-address caps would stop the
    // fan-out scenarios at --max-connections-per-ip (100) sessions.
    w.server.per_ip_exempt = vec!["127.0.0.0/8".into(), "::1".into()];
    w.server.node = format!("bench{:x}", rand::random::<u16>());
    w.server.spool_dir =
        Some(std::env::temp_dir().join(format!("walcast-bench-spool-{}", w.server.node)));
    w.server
}

/// Starts walcast in-process; returns its address, the token that stops it and its task.
pub async fn start_server(
    url: &str,
    args: &ServerArgs,
) -> anyhow::Result<(SocketAddr, CancellationToken, tokio::task::JoinHandle<()>)> {
    let config = ServerConfig::from_args(url, args)?;
    let token = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = token.clone();
    let handle = tokio::spawn(async move {
        let r = walcast::app::serve(config, t, move |addr| {
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

/// Stops an in-process walcast and waits for it.
pub async fn stop_server(
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .context("walcast did not stop within 60 s")??;
    Ok(())
}

/// Removes the temporary per-node spool directory ([`bench_server_args`]) of a stopped walcast.
pub fn remove_spool(config: &ServerConfig) {
    let dir = &config.spool_dir;
    let temporary = dir.starts_with(std::env::temp_dir())
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("walcast-bench-spool-"));
    if temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------------------------

/// A SQL connection driven on its own task.
pub async fn connect_pg(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio::time::timeout(SETUP_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .context("connecting to Postgres timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `select version()`.
pub async fn server_version(pg: &Client) -> anyhow::Result<String> {
    Ok(pg.query_one("select version()", &[]).await?.get(0))
}

/// Commits `txns` transactions of `rows` rows each on one connection; returns the time taken.
pub async fn burst(
    pg: &Client,
    txns: usize,
    rows: usize,
    seq: &mut i64,
) -> anyhow::Result<Duration> {
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
pub async fn wait_slot_active(pg: &Client, slot: &str) -> anyhow::Result<()> {
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
pub async fn drop_slot(pg: &Client, slot: &str) -> anyhow::Result<()> {
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

// ---------------------------------------------------------------------------------------------
// /ws clients
// ---------------------------------------------------------------------------------------------

/// Name of the threads the bench's clients run on, apart from walcast's, so that their CPU can
/// be read on its own ([`threads_cpu`]).
pub const CLIENT_THREAD: &str = "bench-client";

/// A runtime of its own for the bench's clients (threads named [`CLIENT_THREAD`]); shut down
/// in the background when dropped.
pub struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    /// A runtime with `threads` worker threads.
    pub fn new(threads: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(CLIENT_THREAD)
            .enable_all()
            .build()
            .context("starting the clients' runtime")?;
        Ok(ClientRuntime(Some(rt)))
    }

    /// Where client tasks are spawned.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime lives until drop"),
        }
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// CPU seconds (user + system) used so far by this process's threads named `name`, or by the
/// whole process when `name` is `None` (Linux `/proc`, in clock ticks of 1/100 s).
pub fn cpu_seconds(name: Option<&str>) -> f64 {
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let ticks = |stat: &str| -> u64 {
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        at(11) + at(12)
    };
    let total = match name {
        None => std::fs::read_to_string("/proc/self/stat")
            .map(|s| ticks(&s))
            .unwrap_or(0),
        Some(name) => std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim_end() == name)
                    })
                    .map(|t| {
                        std::fs::read_to_string(t.path().join("stat"))
                            .map(|s| ticks(&s))
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .unwrap_or(0),
    };
    total as f64 / 100.0
}

/// Bytes a bench client reads from its socket at once. The library's default (128 KiB) is
/// zero-filled before every read; with the many small frames of a fan-out that filling costs the
/// clients more CPU than decoding the frames, and the clients share the machine with walcast.
const CLIENT_READ_BUFFER: usize = 16 * 1024;

/// Opens a WebSocket to `url` (within [`SETUP_TIMEOUT`]), reading [`CLIENT_READ_BUFFER`] bytes
/// at a time.
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) = tokio::time::timeout(
        SETUP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), false),
    )
    .await
    .with_context(|| {
        format!(
            "connecting to {} timed out",
            url.split('?').next().unwrap_or(url)
        )
    })??;
    Ok(ws)
}

/// Connects to `/ws`, reads `welcome`, subscribes to everything, reads `subscribed`.
pub async fn ws_subscribed(addr: SocketAddr) -> anyhow::Result<Ws> {
    let mut ws = connect(&format!("ws://{addr}/ws")).await?;
    next_frame(&mut ws, "welcome").await?;
    ws.send(Message::text(r#"{"type":"subscribe","id":"b"}"#))
        .await?;
    next_frame(&mut ws, "subscribed").await?;
    Ok(ws)
}

/// The next frame of type `kind` (heartbeats are skipped; anything else is an error).
pub async fn next_frame(ws: &mut Ws, kind: &str) -> anyhow::Result<String> {
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

/// What one receiver (a `/ws` client or a LISTENing connection) saw.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Rows received.
    pub rows: u64,
    /// When it had all of them.
    pub done: Option<Instant>,
    /// It got a `lagged` frame.
    pub lagged: bool,
}

/// Counts event frames (by prefix, no JSON parsing) until `expect` or the deadline.
pub async fn count_ws_events(mut ws: Ws, expect: u64, deadline: tokio::time::Instant) -> Outcome {
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

// ---------------------------------------------------------------------------------------------
// statistics and reports
// ---------------------------------------------------------------------------------------------

/// Percentile of sorted samples (nearest rank; 0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Median (sorts in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 0.5)
}

/// Three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// "met" / "not met".
pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// Prints the JSON line and writes it to `--json` when given.
pub fn emit(report: &Value, path: Option<PathBuf>) -> anyhow::Result<()> {
    println!("{report}");
    if let Some(p) = path {
        std::fs::write(&p, format!("{report}\n"))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
