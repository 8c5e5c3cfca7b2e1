//! `walcast-bench dbcast`: Broadcast from Database (`realtime.send`) to many subscribers of one
//! topic, next to client-to-client broadcast to the same subscribers in the same run.
//!
//! A private Postgres cluster and an in-process walcast with a JWT secret (the channel and
//! socket message budgets raised out of the way). N clients connect to
//! `/realtime/v1/websocket` (serializer 2.0.0) with a `service_role` token and join the public
//! channel `realtime:bench`. For each rate in `--rates` (messages sent per second; deliveries
//! are N times that) two steps of `--step-secs` run one after the other:
//!
//! - `realtime.send`: one SQL connection commits, every [`TICK`], one transaction that calls
//!   `realtime.send` as many times as the rate asks; each payload carries
//!   `clock_timestamp()` in ms, taken before the commit, so the latency is send (in the
//!   transaction) to receipt, commit included.
//! - client broadcast (the baseline): one more socket joined to the channel pushes as many text
//!   broadcasts per tick, each carrying the sender's clock in ms.
//!
//! Every client counts the frames it receives and reads the timestamp of every
//! [`SAMPLE_EVERY`]th one (by a substring search, without parsing the frame). A step holds when
//! every client got every message within [`DRAIN_TIMEOUT`] after the last send; the run stops at
//! the first step that does not (walcast disconnects clients that fall too far behind).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast::config::ServerConfig;

use crate::support::{
    SETUP_TIMEOUT, Ws, bench_db, bench_server_args, connect, connect_pg, emit, percentile, round3,
    server_version, start_server, stop_server, wait_slot_active,
};

/// The secret the in-process server verifies tokens with (bench only).
const SECRET: &str = "walcast-bench-dbcast-secret-0123456789abcdef";
/// The channel every client joins.
const TOPIC: &str = "realtime:bench";
/// Every how many frames a client reads the timestamp.
const SAMPLE_EVERY: u64 = 10;
/// One send (a transaction, or a batch of pushes) per tick.
const TICK: Duration = Duration::from_millis(10);
/// How long clients may take, after a step's last send, to hold every message of it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Client heartbeat period (the server closes clients silent for 60 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// The two ways a message reaches the channel.
const PATHS: [Path; 2] = [Path::Database, Path::Client];

/// `realtime.send` of `$1` messages in one transaction, each stamped with its send time (ms).
const SEND_SQL: &str = "select realtime.send(jsonb_build_object('t', \
     extract(epoch from clock_timestamp()) * 1000), 'tick', 'bench', false) \
     from generate_series(1, $1::int)";

/// Options of `walcast-bench dbcast`.
#[derive(Debug, clap::Args)]
pub struct DbcastArgs {
    /// Clients joined to the one channel.
    #[arg(long, default_value_t = 500)]
    pub subscribers: usize,
    /// Messages sent per second to try, in order (deliveries/s = rate × subscribers).
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000")]
    pub rates: Vec<u64>,
    /// Seconds of steady sending per rate and path.
    #[arg(long, default_value_t = 5)]
    pub step_secs: u64,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How a message reaches the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `realtime.send` in a transaction, through the WAL.
    Database,
    /// A client's broadcast push.
    Client,
}

impl Path {
    /// Its name in the report.
    fn name(self) -> &'static str {
        match self {
            Path::Database => "realtime.send",
            Path::Client => "client broadcast",
        }
    }
}

/// What the clients saw, shared with their tasks.
#[derive(Debug, Default)]
struct Seen {
    /// Frames with a timestamp, per client.
    counts: Vec<AtomicU64>,
    /// Latency samples in ms.
    samples: Mutex<Vec<f64>>,
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The number after the first `"t":` of a frame, if any.
fn stamp(frame: &[u8]) -> Option<f64> {
    let at = frame.windows(4).position(|w| w == b"\"t\":")? + 4;
    let rest = &frame[at..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let len = rest[start..]
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.' || *b == b'-' || *b == b'e'))
        .unwrap_or(rest.len() - start);
    std::str::from_utf8(&rest[start..start + len])
        .ok()?
        .parse()
        .ok()
}

/// Runs the scenario.
pub async fn run(args: DbcastArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    anyhow::ensure!(
        !args.rates.is_empty() && args.rates.iter().all(|&r| r > 0) && args.step_secs > 0,
        "--rates needs at least one rate above 0, and --step-secs at least 1"
    );
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;
    let mut server_args = bench_server_args();
    server_args.jwt_secret = Some(SECRET.to_owned());
    server_args.insecure_no_auth = false;
    // Both paths are measured, not the budgets: a busy room would be cut at 100 messages/s.
    server_args.max_channel_messages_per_second = u32::MAX;
    server_args.max_messages_per_second = u32::MAX;
    let config = ServerConfig::from_args(&db.url, &server_args)?;
    let (addr, token, handle) = start_server(&db.url, &server_args).await?;
    let result = async {
        wait_slot_active(&pg, &config.slot).await?;
        measure(addr, &pg, &args).await
    }
    .await;
    stop_server(token, handle).await?;
    crate::support::remove_spool(&config);
    let mut report = result?;
    report["subscribers"] = json!(args.subscribers);
    report["sample_every"] = json!(SAMPLE_EVERY);
    report["postgres"] = json!(version);
    report["date"] = json!(chrono::Utc::now().to_rfc3339());
    emit(&report, args.json)
}

/// Connects a client and joins the public channel; returns the socket.
async fn join(addr: SocketAddr, jwt: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={jwt}&vsn=2.0.0");
    let mut ws = connect(&url).await?;
    let payload = json!({"config": {"broadcast": {"self": false}, "private": false}});
    ws.send(Message::text(
        json!(["1", "1", TOPIC, "phx_join", payload]).to_string(),
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no join reply in time")?;
        let Some(Ok(Message::Text(t))) = msg else {
            anyhow::ensure!(
                matches!(msg, Some(Ok(_))),
                "connection lost during the join"
            );
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str())?;
        if v[3] == "phx_reply" && v[1] == "1" {
            anyhow::ensure!(v[4]["status"] == "ok", "join refused: {t}");
            return Ok(ws);
        }
    }
}

/// Starts one receiving client's task: counts stamped frames, samples latencies, heartbeats.
fn spawn_receiver(ws: Ws, i: usize, seen: Arc<Seen>, stop: CancellationToken) {
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.tick().await;
        let mut n = 0u64;
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                _ = beat.tick() => {
                    let hb = json!([null, "hb", "phoenix", "heartbeat", {}]).to_string();
                    if sink.send(Message::text(hb)).await.is_err() {
                        return;
                    }
                    continue;
                }
                m = stream.next() => m,
            };
            let bytes = match frame {
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(_)) => continue,
                _ => return,
            };
            let Some(sent) = stamp(&bytes) else {
                continue;
            };
            seen.counts[i].fetch_add(1, Ordering::Relaxed);
            n += 1;
            if n.is_multiple_of(SAMPLE_EVERY) {
                let ms = now_ms() - sent;
                seen.samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(ms);
            }
        }
    });
}

/// Every rate, both paths; the report.
async fn measure(
    addr: SocketAddr,
    pg: &tokio_postgres::Client,
    args: &DbcastArgs,
) -> anyhow::Result<Value> {
    let jwt = walcast::auth::mint(SECRET, "service_role", Duration::from_secs(3600))?;
    let seen = Arc::new(Seen {
        counts: (0..args.subscribers).map(|_| AtomicU64::new(0)).collect(),
        samples: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    eprintln!("dbcast: joining {} subscribers", args.subscribers);
    for i in 0..args.subscribers {
        let ws = join(addr, &jwt).await?;
        spawn_receiver(ws, i, Arc::clone(&seen), stop.clone());
    }
    // The sender is a member of the channel too: it receives the database's messages, so its
    // socket is read all along (a member that does not read is disconnected).
    let (mut sender, mut sender_in) = join(addr, &jwt).await?.split();
    let drain = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = drain.cancelled() => return,
                m = sender_in.next() => if !matches!(m, Some(Ok(_))) { return },
            }
        }
    });
    let send = pg.prepare(SEND_SQL).await?;
    let n = args.subscribers as u64;
    let step = Duration::from_secs(args.step_secs);
    println!(
        "| path | sent msgs/s | delivered msgs/s | p50 / p99 / max latency (ms) | complete clients |"
    );
    println!("|---|---|---|---|---|");
    let mut steps = Vec::new();
    let mut push_ref = 0u64;
    'rates: for &rate in &args.rates {
        for path in PATHS {
            for c in &seen.counts {
                c.store(0, Ordering::Relaxed);
            }
            seen.samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            let started = Instant::now();
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while started.elapsed() < step {
                tick.tick().await;
                let due = (rate as f64 * started.elapsed().as_secs_f64()) as u64;
                let k = due.saturating_sub(sent);
                if k == 0 {
                    continue;
                }
                match path {
                    Path::Database => {
                        pg.execute(&send, &[&(k as i32)]).await?;
                    }
                    Path::Client => {
                        for _ in 0..k {
                            push_ref += 1;
                            let push = json!(["1", push_ref.to_string(), TOPIC, "broadcast",
                                {"type": "broadcast", "event": "tick", "payload": {"t": now_ms()}}]);
                            sender.feed(Message::text(push.to_string())).await?;
                        }
                        sender.flush().await?;
                    }
                }
                sent += k;
            }
            let sending = started.elapsed().as_secs_f64();
            let drain_until = Instant::now() + DRAIN_TIMEOUT;
            let complete = |seen: &Seen| {
                seen.counts
                    .iter()
                    .filter(|c| c.load(Ordering::Relaxed) >= sent)
                    .count()
            };
            while complete(&seen) < args.subscribers && Instant::now() < drain_until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let delivered: u64 = seen.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let mut samples =
                std::mem::take(&mut *seen.samples.lock().unwrap_or_else(|p| p.into_inner()));
            samples.sort_by(f64::total_cmp);
            let (p50, p99, max) = (
                round3(percentile(&samples, 0.50)),
                round3(percentile(&samples, 0.99)),
                round3(samples.last().copied().unwrap_or(0.0)),
            );
            let done = complete(&seen);
            let rate_sent = round3(sent as f64 / sending);
            let rate_delivered = round3(delivered as f64 / elapsed);
            println!(
                "| {} | {rate_sent} | {rate_delivered} | {p50} / {p99} / {max} | {done}/{} |",
                path.name(),
                args.subscribers
            );
            steps.push(json!({
                "path": path.name(),
                "offered_msgs_per_s": rate,
                "sent": sent,
                "sent_msgs_per_s": rate_sent,
                "expected_deliveries": sent * n,
                "delivered": delivered,
                "delivered_msgs_per_s": rate_delivered,
                "latency_ms": {"p50": p50, "p99": p99, "max": max, "samples": samples.len()},
                "complete_clients": done,
            }));
            // Clients that fell behind were disconnected (walcast's rule for slow clients):
            // the search ends at the first step that did not hold.
            if done < args.subscribers {
                eprintln!(
                    "dbcast: {} at {rate} msgs/s did not hold; stopping",
                    path.name()
                );
                break 'rates;
            }
        }
    }
    stop.cancel();
    Ok(
        json!({"scenario": "dbcast", "topic": TOPIC, "step_secs": args.step_secs,
              "tick_ms": TICK.as_millis() as u64, "steps": steps}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_text_and_binary_frames() {
        assert_eq!(
            stamp(br#"[null,null,"realtime:bench","broadcast",{"payload":{"t":1.5}}]"#),
            Some(1.5)
        );
        assert_eq!(stamp(br#"{"id": "x", "t": 1733.25}"#), Some(1733.25));
        assert_eq!(stamp(b"no stamp"), None);
    }
}
