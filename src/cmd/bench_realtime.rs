//! `walcast bench realtime`: one burst fanned out to N Supabase-Realtime clients, twice.
//!
//! A private Postgres cluster and an in-process walcast with a JWT secret. N clients connect to
//! `/realtime/v1/websocket` (serializer 2.0.0), join `realtime:bench` with one `postgres_changes`
//! binding (INSERT on `public.monitoring_events`) and wait for the join reply and the
//! "Subscribed to PostgreSQL" system message. Then a burst of `--rows` rows in `--txns`
//! transactions is written server-side (`insert ... select from generate_series`).
//!
//! - phase 1, RLS off: every client holds a `service_role` token (no row check).
//! - phase 2, RLS on: every client holds an `authenticated` token, so each commit goes through
//!   the batched RLS check (the default policy lets `authenticated` read every row).
//!
//! Each client is a small task that counts text frames containing `"postgres_changes"` without
//! parsing them, and for every [`SAMPLE_EVERY`]th frame reads `commit_timestamp` (millisecond
//! precision) to get commit-to-receipt latency. Delivered messages/s = N × rows ÷ (time from the
//! burst's start to the last client holding every row).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::Message;

use super::bench::{bench_db, bench_server_args, percentile, start_server};
use crate::cli::BenchRealtimeArgs;
use crate::config::ServerConfig;

/// A client WebSocket.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The secret the in-process server verifies tokens with (bench only).
const SECRET: &str = "walcast-bench-realtime-secret-0123456789abcdef";
/// The channel every client joins.
const TOPIC: &str = "realtime:bench";
/// Every how many change frames a client reads the commit timestamp.
const SAMPLE_EVERY: u64 = 100;
/// Connecting, joining, starting and stopping.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one phase's delivery may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);
/// Client heartbeat period (the server closes clients silent for 60 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// Targets.
const TARGET_RLS_OFF: f64 = 300_000.0;
const TARGET_RLS_OFF_P99_MS: f64 = 100.0;
const TARGET_RLS_ON: f64 = 50_000.0;

/// A burst transaction: rows `$1..=$2`.
const BURST_SQL: &str = "insert into public.monitoring_events (id, event_type, source, data) \
     select gen_random_uuid(), 'metrics.cpu', 'bench', \
            jsonb_build_object('seq', g, 'host', 'bench', 'value', 0.5) \
     from generate_series($1::bigint, $2::bigint) g";

/// `walcast bench realtime`.
pub async fn realtime(args: BenchRealtimeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.subscribers > 0 && args.txns > 0 && args.rows >= args.txns,
        "--subscribers and --txns must be at least 1, and --rows at least --txns"
    );
    let db = bench_db(None).await?;
    let (pg, conn) = tokio::time::timeout(SETUP_TIMEOUT, tokio_postgres::connect(&db.url, NoTls))
        .await
        .context("connecting to Postgres timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let version: String = pg.query_one("select version()", &[]).await?.get(0);
    let total = args.rows as u64;

    let mut server_args = bench_server_args();
    server_args.jwt_secret = Some(SECRET.to_owned());
    server_args.client_queue = 262_144;
    let config = ServerConfig::from_args(&db.url, &server_args)?;
    let (addr, token, handle) = start_server(&db.url, &server_args).await?;
    let result = async {
        wait_slot_active(&pg, &config.slot).await?;
        let mut seq = 0i64;
        let mut phases = Vec::new();
        for (name, role) in [("RLS off", "service_role"), ("RLS on", "authenticated")] {
            eprintln!(
                "realtime {name}: {} subscribers ({role}), {} rows in {} txns",
                args.subscribers, args.rows, args.txns
            );
            let jwt = crate::auth::mint(SECRET, role, Duration::from_secs(3600))?;
            let p = phase(addr, &jwt, &pg, &args, &mut seq).await?;
            eprintln!(
                "realtime {name}: {:.0} msgs/s, {}/{} clients complete, p50 {:.0} ms, p99 {:.0} ms",
                p.rate(args.subscribers as u64, total),
                p.complete,
                args.subscribers,
                p.p(0.5),
                p.p(0.99)
            );
            phases.push((name, role, p));
        }
        Ok::<_, anyhow::Error>(phases)
    }
    .await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .context("walcast did not stop within 60 s")??;
    if config.spool_dir.starts_with(std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(&config.spool_dir);
    }
    let phases = result?;

    let n = args.subscribers as u64;
    println!(
        "| phase | subscribers | rows (txns) | delivered msgs/s | time | p50 / p95 / p99 latency | complete clients | target |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json_phases = Vec::new();
    let mut all_met = true;
    for (name, role, p) in &phases {
        let rate = p.rate(n, total);
        let (target, ok, target_text) = if *role == "service_role" {
            let ok = p.complete == args.subscribers
                && rate >= TARGET_RLS_OFF
                && p.p(0.99) < TARGET_RLS_OFF_P99_MS;
            (TARGET_RLS_OFF, ok, ">= 300,000, p99 < 100 ms")
        } else {
            let ok = p.complete == args.subscribers && rate >= TARGET_RLS_ON;
            (TARGET_RLS_ON, ok, ">= 50,000")
        };
        all_met &= ok;
        println!(
            "| {name} ({role}) | {} | {} ({}) | {:.0} | {:.2} s | {:.0} / {:.0} / {:.0} ms | {}/{} | {target_text} ({}) |",
            args.subscribers,
            args.rows,
            args.txns,
            rate,
            p.elapsed.as_secs_f64(),
            p.p(0.5),
            p.p(0.95),
            p.p(0.99),
            p.complete,
            args.subscribers,
            if ok { "met" } else { "not met" }
        );
        json_phases.push(json!({
            "phase": name,
            "role": role,
            "msgs_per_s": rate.round(),
            "elapsed_s": round3(p.elapsed.as_secs_f64()),
            "burst_write_s": round3(p.write.as_secs_f64()),
            "delivered": p.delivered,
            "expected": n * total,
            "complete_clients": p.complete,
            "closed_clients": p.closed,
            "latency_samples": p.samples.len(),
            "p50_ms": p.p(0.5),
            "p95_ms": p.p(0.95),
            "p99_ms": p.p(0.99),
            "max_ms": p.samples.last().copied().unwrap_or(0.0),
            "target_msgs_per_s": target,
            "met": ok,
        }));
    }
    let report = json!({
        "scenario": "realtime",
        "subscribers": args.subscribers,
        "rows": args.rows,
        "txns": args.txns,
        "client_queue": server_args.client_queue,
        "sample_every": SAMPLE_EVERY,
        "phases": json_phases,
        "met": all_met,
        "postgres": version,
        "date": chrono::Utc::now().to_rfc3339(),
    });
    println!("{report}");
    if let Some(p) = args.json {
        std::fs::write(&p, format!("{report}\n"))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// What one phase measured.
struct Phase {
    /// Burst start to the last complete client (or to the timeout).
    elapsed: Duration,
    /// Writing the burst.
    write: Duration,
    /// Change frames received, all clients.
    delivered: u64,
    /// Clients that got every row.
    complete: usize,
    /// Clients the server closed (or whose connection failed) before the end.
    closed: usize,
    /// Sorted latency samples, ms.
    samples: Vec<f64>,
}

impl Phase {
    /// Delivered messages per second.
    fn rate(&self, n: u64, total: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        if self.complete as u64 == n {
            (n * total) as f64 / secs
        } else {
            self.delivered as f64 / secs
        }
    }

    /// Latency percentile, ms.
    fn p(&self, q: f64) -> f64 {
        percentile(&self.samples, q)
    }
}

/// Connects N clients with `jwt`, writes the burst, waits for every client, closes them.
async fn phase(
    addr: SocketAddr,
    jwt: &str,
    pg: &Client,
    args: &BenchRealtimeArgs,
    seq: &mut i64,
) -> anyhow::Result<Phase> {
    let total = args.rows as u64;
    let clients = futures::stream::iter(0..args.subscribers)
        .map(|_| joined(addr, jwt))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(count(ws, total, deadline)))
        .collect();

    let stmt = pg.prepare(BURST_SQL).await?;
    let t0 = Instant::now();
    for i in 0..args.txns {
        let n = (args.rows / args.txns + usize::from(i < args.rows % args.txns)) as i64;
        let last = *seq + n - 1;
        pg.execute(&stmt, &[&*seq, &last]).await?;
        *seq = last + 1;
    }
    let write = t0.elapsed();

    let mut p = Phase {
        elapsed: Duration::ZERO,
        write,
        delivered: 0,
        complete: 0,
        closed: 0,
        samples: Vec::new(),
    };
    let mut last_done = None::<Instant>;
    for t in tasks {
        let o = t.await?;
        p.delivered += o.rows;
        p.closed += usize::from(o.closed);
        p.samples.extend(o.samples);
        match o.done {
            Some(d) => {
                p.complete += 1;
                last_done = Some(last_done.map_or(d, |l| l.max(d)));
            }
            None => last_done = Some(Instant::now()),
        }
    }
    p.elapsed = last_done.unwrap_or_else(Instant::now).duration_since(t0);
    p.samples.sort_by(f64::total_cmp);
    Ok(p)
}

/// What one client saw.
struct Outcome {
    /// Change frames.
    rows: u64,
    /// When it had all of them.
    done: Option<Instant>,
    /// The server closed it (or the connection failed) first.
    closed: bool,
    /// Latency samples, ms.
    samples: Vec<f64>,
}

/// Counts change frames until `total`, the deadline or a close; then closes the socket.
async fn count(mut ws: Ws, total: u64, deadline: tokio::time::Instant) -> Outcome {
    let mut o = Outcome {
        rows: 0,
        done: None,
        closed: false,
        samples: Vec::with_capacity((total / SAMPLE_EVERY + 1) as usize),
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.tick().await;
    let mut hb_ref = 100u64;
    while o.rows < total {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, ws.next()) => m,
            _ = heartbeat.tick() => {
                hb_ref += 1;
                let f = format!(r#"[null,"{hb_ref}","phoenix","heartbeat",{{}}]"#);
                if ws.send(Message::text(f)).await.is_err() {
                    o.closed = true;
                    break;
                }
                continue;
            }
        };
        match msg {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(t)))) => {
                let s = t.as_str();
                if s.contains("\"postgres_changes\"") {
                    o.rows += 1;
                    if o.rows.is_multiple_of(SAMPLE_EVERY)
                        && let Some(ms) = latency_ms(s)
                    {
                        o.samples.push(ms);
                    }
                    if o.rows == total {
                        o.done = Some(Instant::now());
                    }
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                o.closed = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    o
}

/// Receipt time minus the frame's `commit_timestamp`, in ms.
fn latency_ms(frame: &str) -> Option<f64> {
    const KEY: &str = "\"commit_timestamp\":\"";
    let start = frame.find(KEY)? + KEY.len();
    let end = start + frame[start..].find('"')?;
    let ts = chrono::DateTime::parse_from_rfc3339(&frame[start..end]).ok()?;
    let d = chrono::Utc::now().signed_duration_since(ts);
    Some(d.num_microseconds()? as f64 / 1000.0)
}

/// Connects with `jwt` (vsn 2.0.0), joins [`TOPIC`] with an INSERT binding, waits for the ok
/// reply and the "Subscribed to PostgreSQL" system message.
async fn joined(addr: SocketAddr, jwt: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={jwt}&vsn=2.0.0");
    let (mut ws, _) = tokio::time::timeout(SETUP_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .context("connecting to the Realtime endpoint timed out")??;
    let payload = json!({"config": {
        "broadcast": {"ack": false, "self": false},
        "presence": {"key": "", "enabled": false},
        "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "monitoring_events"}],
        "private": false
    }});
    ws.send(Message::text(
        json!(["1", "1", TOPIC, "phx_join", payload]).to_string(),
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    let (mut replied, mut subscribed) = (false, false);
    while !(replied && subscribed) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no join reply / system message in time")?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => anyhow::bail!("walcast closed the join: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed during the join"),
        };
        let v: Value = serde_json::from_str(text.as_str())?;
        let (event, payload) = (&v[3], &v[4]);
        if event == "phx_reply" && v[1] == "1" {
            anyhow::ensure!(payload["status"] == "ok", "join refused: {text}");
            replied = true;
        } else if event == "system" {
            anyhow::ensure!(
                payload["status"] == "ok" && payload["message"] == "Subscribed to PostgreSQL",
                "subscription failed: {text}"
            );
            subscribed = true;
        }
    }
    Ok(ws)
}

/// Waits until walcast's slot is held by a streaming session.
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

/// Three decimals.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
