//! `walcast-bench realtime`: N Supabase-Realtime (or `/ws`) clients fed from the WAL, RLS off
//! and on.
//!
//! A private Postgres cluster and an in-process walcast with a JWT secret. N clients connect to
//! `/realtime/v1/websocket` (serializer 2.0.0), join `realtime:bench` with one `postgres_changes`
//! binding (INSERT on `public.monitoring_events`) and wait for the join reply and the
//! "Subscribed to PostgreSQL" system message. With `--endpoint ws` they connect to `/ws` instead
//! and subscribe to INSERTs (same tokens, same row gate). With `--table orders` the rows go to a
//! second table the bench creates and publishes, `public.orders` (bigint key, its own policy that
//! reads the subscriber's claims; see [`ORDERS_SETUP_SQL`]), instead of the events table. Two
//! phases:
//!
//! - phase 1, RLS off: every client holds a `service_role` token (no row check).
//! - phase 2, RLS on: every client holds an `authenticated` token, so each commit goes through
//!   the batched RLS check (the default policy lets `authenticated` read every row).
//!
//! Each client is a small task that counts text frames containing `"postgres_changes"` without
//! parsing them, and for every [`SAMPLE_EVERY`]th frame reads `commit_timestamp` (millisecond
//! precision) to get commit-to-receipt latency.
//!
//! The default is a rate search ([`paced`]): for each rate in `--rates` (delivered messages/s,
//! so rows/s = rate ÷ N) rows are written at a steady pace for `--step-secs`, in one small
//! transaction every [`TICK`]; the step holds if every client gets every row and the p99 stays
//! under `--p99-ms`. The search stops at the first rate that does not hold. `--burst` instead
//! writes `--rows` rows in `--txns` transactions at once and reports N × rows ÷ (time from the
//! burst's start to the last client holding every row).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast::config::ServerConfig;

use crate::support::{
    BURST_SQL, CLIENT_THREAD, ClientRuntime, SETUP_TIMEOUT, Ws, bench_db, bench_server_args,
    connect, connect_pg, cpu_seconds, emit, percentile, remove_spool, round3, server_version,
    start_server, stop_server, wait_slot_active,
};

/// The secret the in-process server verifies tokens with (bench only).
const SECRET: &str = "walcast-bench-realtime-secret-0123456789abcdef";
/// The channel every client joins.
const TOPIC: &str = "realtime:bench";
/// Every how many change frames a client reads the commit timestamp.
const SAMPLE_EVERY: u64 = 100;
/// Longest one phase's delivery may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);
/// Client heartbeat period (the server closes clients silent for 60 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// Targets (delivered messages/s with the p99 under `--p99-ms`).
const TARGET_RLS_OFF: f64 = 300_000.0;
const TARGET_RLS_ON: f64 = 50_000.0;
/// The paced writer commits one transaction per tick.
const TICK: Duration = Duration::from_millis(10);
/// How long clients may take, after a step's last commit, to hold every row of it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the per-subscriber baseline runs.
const BASELINE_TIME: Duration = Duration::from_secs(3);
/// The two phases: name and the role every client's token carries.
const PHASES: [(&str, &str); 2] = [("RLS off", "service_role"), ("RLS on", "authenticated")];

/// The second table of `--table orders`: a bigint key, row level security with a policy that
/// reads the subscriber's JWT claims for every row (a user sees the rows it owns and the
/// team's rows; the bench writes team rows, so every subscriber gets every row and the rates
/// compare with the events table's), in walcast's publication.
const ORDERS_SETUP_SQL: &str = "
    create table public.orders (
      id bigint primary key,
      owner text not null,
      amount int not null,
      data jsonb not null default '{}',
      created_at timestamptz not null default now());
    alter table public.orders enable row level security;
    grant select on public.orders to authenticated, service_role;
    create policy orders_own_or_team on public.orders for select to authenticated
      using (owner = 'team'
             or owner = nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub');
    alter publication walcast_events add table public.orders";

/// Rows of `--table orders`: `$1..=$2` as ids, team rows.
const ORDERS_BURST_SQL: &str = "insert into public.orders (id, owner, amount, data) \
     select g, 'team', (g % 1000)::int, jsonb_build_object('seq', g, 'host', 'bench', 'value', 0.5) \
     from generate_series($1::bigint, $2::bigint) g";

/// Which table the rows go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// `public.monitoring_events` (uuid key, the default `authenticated` policy).
    Events,
    /// `public.orders`, created and published by the bench ([`ORDERS_SETUP_SQL`]).
    Orders,
}

impl Table {
    /// The table name (schema `public`).
    fn name(self) -> &'static str {
        match self {
            Table::Events => "monitoring_events",
            Table::Orders => "orders",
        }
    }

    /// The statement that writes rows `$1..=$2`.
    fn insert_sql(self) -> &'static str {
        match self {
            Table::Events => BURST_SQL,
            Table::Orders => ORDERS_BURST_SQL,
        }
    }
}

/// Which endpoint the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    /// `/realtime/v1/websocket`, serializer 2.0.0, one `postgres_changes` binding.
    Realtime,
    /// `/realtime/v1/websocket`, serializer 1.0.0 (JSON objects, what realtime-js sends
    /// without a `vsn` option), one `postgres_changes` binding.
    RealtimeV1,
    /// `/ws`, one `subscribe` to INSERTs.
    Ws,
}

impl Endpoint {
    /// A Phoenix heartbeat with reference `r`, for the Realtime endpoints.
    fn heartbeat(self, r: u64) -> Option<String> {
        match self {
            Endpoint::Realtime => Some(format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#)),
            Endpoint::RealtimeV1 => Some(format!(
                r#"{{"topic":"phoenix","event":"heartbeat","payload":{{}},"ref":"{r}"}}"#
            )),
            Endpoint::Ws => None,
        }
    }

    /// What every change frame of this endpoint contains (frames are counted unparsed).
    fn change_marker(self) -> &'static str {
        match self {
            Endpoint::Realtime | Endpoint::RealtimeV1 => "\"postgres_changes\"",
            Endpoint::Ws => "\"type\":\"event\"",
        }
    }

    /// The commit time field of a change frame.
    fn commit_key(self) -> &'static str {
        match self {
            Endpoint::Realtime | Endpoint::RealtimeV1 => "\"commit_timestamp\":\"",
            Endpoint::Ws => "\"commit_ts\":\"",
        }
    }
}

/// `walcast-bench realtime`.
#[derive(Debug, clap::Args)]
pub struct RealtimeArgs {
    /// The endpoint every client uses.
    #[arg(long, value_enum, default_value = "realtime")]
    pub endpoint: Endpoint,
    /// Realtime WebSocket clients, each joined to one channel with a postgres_changes binding.
    #[arg(long, default_value_t = 500)]
    pub subscribers: usize,
    /// Delivered messages/s to try, in order (rows/s written = rate / subscribers).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50000,100000,200000,300000,400000,500000,600000,800000,1000000,1200000,1500000"
    )]
    pub rates: Vec<u64>,
    /// Seconds of steady writing per rate.
    #[arg(long, default_value_t = 5)]
    pub step_secs: u64,
    /// The latency bound a rate must hold: commit-to-receipt p99, in ms.
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,
    /// Distinct users (JWT `sub`) the RLS-on clients are spread over: each is its own claims
    /// group, so the row check runs once per commit per user.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// The table the rows go to: the events table, or `orders`, a second table the bench
    /// creates and adds to walcast's publication (bigint key, its own claims-reading policy).
    #[arg(long, value_enum, default_value = "events")]
    pub table: Table,
    /// Instead of the rate search: one burst of --rows rows in --txns transactions.
    #[arg(long)]
    pub burst: bool,
    /// Rows in the burst (all transactions together; --burst only).
    #[arg(long, default_value_t = 20000)]
    pub rows: usize,
    /// Transactions the burst is split into (--burst only).
    #[arg(long, default_value_t = 20)]
    pub txns: usize,
    /// The server's --client-queue (changes a client may fall behind). The bench raises it
    /// above walcast's default (65536) so that the rate search measures delivery, not the cut
    /// of a client behind by more; pass 65536 to measure walcast's defaults.
    #[arg(long, default_value_t = 262_144)]
    pub client_queue: usize,
    /// Worker threads of the clients' own runtime in --burst mode (their CPU is reported
    /// apart from walcast's).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
pub async fn run(args: RealtimeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    if args.burst {
        anyhow::ensure!(
            args.txns > 0 && args.rows >= args.txns,
            "--txns must be at least 1, and --rows at least --txns"
        );
    } else {
        anyhow::ensure!(
            !args.rates.is_empty() && args.rates.iter().all(|&r| r > 0) && args.step_secs > 0,
            "--rates needs at least one rate above 0, and --step-secs at least 1"
        );
    }
    let db = bench_db(None).await?;
    let pg = connect_pg(&db.url).await?;
    let version = server_version(&pg).await?;
    if args.table == Table::Orders {
        pg.batch_execute(ORDERS_SETUP_SQL)
            .await
            .context("creating public.orders")?;
    }

    let mut server_args = bench_server_args();
    server_args.jwt_secret = Some(SECRET.to_owned());
    server_args.insecure_no_auth = false;
    server_args.client_queue = args.client_queue;
    let config = ServerConfig::from_args(&db.url, &server_args)?;
    let (addr, token, handle) = start_server(&db.url, &server_args).await?;
    let result = async {
        wait_slot_active(&pg, &config.slot).await?;
        if args.burst {
            burst(addr, &pg, &args).await
        } else {
            paced(addr, &pg, &args).await
        }
    }
    .await;
    stop_server(token, handle).await?;
    remove_spool(&config);
    let mut report = result?;
    report["subscribers"] = json!(args.subscribers);
    report["endpoint"] = json!(format!("{:?}", args.endpoint).to_lowercase());
    report["table"] = json!(format!("public.{}", args.table.name()));
    report["client_queue"] = json!(server_args.client_queue);
    report["sample_every"] = json!(SAMPLE_EVERY);
    report["postgres"] = json!(version);
    report["date"] = json!(chrono::Utc::now().to_rfc3339());
    emit(&report, args.json)
}

/// The target of a phase, by role.
fn target(role: &str) -> f64 {
    if role == "service_role" {
        TARGET_RLS_OFF
    } else {
        TARGET_RLS_ON
    }
}

/// The rate search: both phases, each climbing `--rates` until a rate does not hold.
async fn paced(addr: SocketAddr, pg: &Client, args: &RealtimeArgs) -> anyhow::Result<Value> {
    let n = args.subscribers as u64;
    let stmt = pg.prepare(args.table.insert_sql()).await?;
    let mut seq = 0i64;
    let step = Duration::from_secs(args.step_secs);
    println!(
        "| phase | offered msgs/s | rows/s | delivered msgs/s | p50 / p95 / p99 / max latency | complete clients | holds (p99 < {} ms) |",
        args.p99_ms
    );
    println!("|---|---|---|---|---|---|---|");
    let mut json_phases = Vec::new();
    let mut all_met = true;
    for (name, role) in PHASES {
        eprintln!("realtime {name}: {} subscribers ({role})", args.subscribers);
        let users = if role == "service_role" {
            1
        } else {
            args.users
        };
        let baseline = if role == "service_role" {
            None
        } else {
            let b = per_subscriber_baseline(
                pg,
                args.table,
                role,
                args.subscribers,
                users,
                BASELINE_TIME,
            )
            .await?;
            eprintln!(
                "realtime {name}: baseline, one check per change for every subscriber: at most {b:.0} msgs/s"
            );
            Some(b)
        };
        let jwts = tokens(role, users)?;
        let clients =
            Clients::join(addr, args.endpoint, args.table, &jwts, args.subscribers).await?;
        // Clients count from 0: rows written before they joined are not theirs.
        let base = seq;
        // Warm-up: a second at the lowest rate, not reported.
        let warm = (args.rates[0] / n).max(1) as f64;
        write_paced(pg, &stmt, &mut seq, warm, Duration::from_secs(1)).await?;
        clients.drain((seq - base) as u64).await;
        clients.take_samples();

        let mut steps = Vec::new();
        let mut best: Option<(u64, f64)> = None;
        for &rate in &args.rates {
            let rows_per_s = rate as f64 / n as f64;
            let before = seq;
            let t0 = Instant::now();
            write_paced(pg, &stmt, &mut seq, rows_per_s, step).await?;
            let wrote = (seq - before) as u64;
            let all_in = clients.drain((seq - base) as u64).await;
            let elapsed = all_in.unwrap_or_else(Instant::now).duration_since(t0);
            let mut samples = clients.take_samples();
            samples.sort_by(f64::total_cmp);
            let (complete, closed) = clients.standing((seq - base) as u64);
            let delivered = n as f64 * wrote as f64 / elapsed.as_secs_f64().max(1e-9);
            let p = |q| percentile(&samples, q);
            let holds = all_in.is_some() && closed == 0 && p(0.99) < args.p99_ms;
            eprintln!(
                "realtime {name}: offered {rate} msgs/s ({rows_per_s:.0} rows/s): delivered {delivered:.0} msgs/s, p50 {:.1} ms, p99 {:.1} ms, {complete}/{n} complete{}",
                p(0.5),
                p(0.99),
                if holds { "" } else { " - does not hold" }
            );
            println!(
                "| {name} ({role}) | {rate} | {rows_per_s:.0} | {delivered:.0} | {:.0} / {:.0} / {:.0} / {:.0} ms | {complete}/{n} | {} |",
                p(0.5),
                p(0.95),
                p(0.99),
                samples.last().copied().unwrap_or(0.0),
                if holds { "yes" } else { "no" }
            );
            steps.push(json!({
                "offered_msgs_per_s": rate,
                "rows_per_s": rows_per_s,
                "rows": wrote,
                "delivered_msgs_per_s": delivered.round(),
                "elapsed_s": round3(elapsed.as_secs_f64()),
                "complete_clients": complete,
                "closed_clients": closed,
                "latency_samples": samples.len(),
                "p50_ms": p(0.5),
                "p95_ms": p(0.95),
                "p99_ms": p(0.99),
                "max_ms": samples.last().copied().unwrap_or(0.0),
                "holds": holds,
            }));
            if !holds {
                break;
            }
            best = Some((rate, p(0.99)));
        }
        clients.close().await;
        let sustained = best.map_or(0, |b| b.0);
        let met = sustained as f64 >= target(role);
        all_met &= met;
        eprintln!(
            "realtime {name}: sustained {sustained} msgs/s with p99 < {} ms (target {}: {})",
            args.p99_ms,
            target(role),
            if met { "met" } else { "not met" }
        );
        json_phases.push(json!({
            "phase": name,
            "role": role,
            "sustained_msgs_per_s": sustained,
            "baseline_per_subscriber_check_msgs_per_s": baseline.map(f64::round),
            "target_msgs_per_s": target(role),
            "met": met,
            "steps": steps,
        }));
    }
    Ok(json!({
        "scenario": "realtime",
        "mode": "paced",
        "step_secs": args.step_secs,
        "tick_ms": TICK.as_millis() as u64,
        "p99_bound_ms": args.p99_ms,
        "rls_users": args.users,
        "phases": json_phases,
        "met": all_met,
    }))
}

/// Baseline, same run: the per-subscriber check of a Realtime server that asks Postgres once per
/// change for all subscribers (one statement per change, each subscriber's claims checked in
/// turn, as Supabase Realtime's `apply_rls` does). Runs walcast's row check with one row and one
/// claims group per subscriber for `dur` (`walcast.realtime_visible_sets`, the check walcast
/// itself calls) and returns the messages/s this alone allows
/// (changes checked/s × subscribers); delivery is not included, so it is an upper bound.
async fn per_subscriber_baseline(
    pg: &Client,
    table: Table,
    role: &str,
    subscribers: usize,
    users: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let roles: Vec<&str> = vec![role; subscribers];
    let claims: Vec<String> = (0..subscribers)
        .map(|i| {
            let mut c = json!({"role": role});
            if users > 1 {
                c["sub"] = json!(format!("bench-user-{}", i % users));
            }
            c.to_string()
        })
        .collect();
    let t0 = Instant::now();
    let mut checked = 0u64;
    let name = table.name();
    let keys: Vec<String> = pg
        .query(
            &format!(
                "select jsonb_build_object('id', id)::text from public.{name} order by id desc \
                 limit 1000"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    anyhow::ensure!(!keys.is_empty(), "no rows to check");
    let oid: u32 = pg
        .query_one(&format!("select 'public.{name}'::regclass::oid"), &[])
        .await?
        .get(0);
    let groups: Vec<i32> = (1..=subscribers as i32).collect();
    let tables: Vec<u32> = vec![oid; subscribers];
    let stmt = pg
        .prepare(
            "select count(*) from walcast.realtime_visible_sets('{}', $1, $2::text[]::jsonb[], \
             $3, $4, $5, $6, 0)",
        )
        .await?;
    while t0.elapsed() < dur {
        let key = [keys[checked as usize % keys.len()].as_str()];
        pg.query_one(
            &stmt,
            &[&&[oid][..], &&key[..], &roles, &claims, &groups, &tables],
        )
        .await?;
        checked += 1;
    }
    Ok(checked as f64 * subscribers as f64 / t0.elapsed().as_secs_f64())
}

/// One token per user for `role`: `sub` is `bench-user-<i>` (one user: no `sub`).
fn tokens(role: &str, users: usize) -> anyhow::Result<Vec<String>> {
    if users <= 1 {
        return Ok(vec![walcast::auth::mint(
            SECRET,
            role,
            Duration::from_secs(3600),
        )?]);
    }
    let now = chrono::Utc::now().timestamp();
    (0..users)
        .map(|i| {
            let claims = walcast::auth::Claims {
                role: role.to_owned(),
                exp: now + 3600,
                iat: Some(now),
                iss: Some("walcast".to_owned()),
                sub: Some(format!("bench-user-{i}")),
                extra: Default::default(),
            };
            Ok(walcast::auth::mint_claims(SECRET, &claims)?)
        })
        .collect()
}

/// Writes `rows_per_s` rows per second for `dur`: every [`TICK`] one transaction with the rows
/// due by then (a slow commit makes the next transaction bigger, so the rate holds).
async fn write_paced(
    pg: &Client,
    stmt: &tokio_postgres::Statement,
    seq: &mut i64,
    rows_per_s: f64,
    dur: Duration,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let total = (rows_per_s * dur.as_secs_f64()).round() as i64;
    let mut written = 0i64;
    while written < total {
        tick.tick().await;
        let due = ((rows_per_s * t0.elapsed().as_secs_f64()) as i64).min(total) - written;
        if due <= 0 {
            continue;
        }
        let last = *seq + due - 1;
        pg.execute(stmt, &[&*seq, &last]).await?;
        *seq = last + 1;
        written += due;
    }
    Ok(())
}

/// What one long-lived client has seen so far.
#[derive(Default)]
struct Tally {
    /// Change frames.
    rows: AtomicU64,
    /// The server closed it (or the connection failed).
    closed: AtomicBool,
    /// Latency samples since the last [`Clients::take_samples`], ms.
    samples: std::sync::Mutex<Vec<f64>>,
}

/// N joined clients, each counting in its own task until closed.
struct Clients {
    tallies: Vec<Arc<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Clients {
    /// Connects and joins `n` clients to `table`, client i with `jwts[i % jwts.len()]`.
    async fn join(
        addr: SocketAddr,
        endpoint: Endpoint,
        table: Table,
        jwts: &[String],
        n: usize,
    ) -> anyhow::Result<Self> {
        let sockets = futures::stream::iter(0..n)
            .map(|i| joined(addr, endpoint, table, &jwts[i % jwts.len()]))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let stop = CancellationToken::new();
        let mut tallies = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for (i, ws) in sockets.into_iter().enumerate() {
            let tally = Arc::new(Tally::default());
            tallies.push(Arc::clone(&tally));
            // Clients sample different rows: client i samples rows i, i + SAMPLE_EVERY, ...
            let offset = i as u64 % SAMPLE_EVERY;
            tasks.push(tokio::spawn(listen(
                ws,
                endpoint,
                tally,
                offset,
                stop.clone(),
            )));
        }
        Ok(Self {
            tallies,
            tasks,
            stop,
        })
    }

    /// Waits until every open client holds `total` rows; when that happened (`None` if some
    /// client did not within [`DRAIN_TIMEOUT`]).
    async fn drain(&self, total: u64) -> Option<Instant> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let behind = self.tallies.iter().any(|t| {
                !t.closed.load(Ordering::Relaxed) && t.rows.load(Ordering::Relaxed) < total
            });
            if !behind {
                let (complete, _) = self.standing(total);
                return (complete == self.tallies.len()).then(Instant::now);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Clients holding `total` rows, and clients closed.
    fn standing(&self, total: u64) -> (usize, usize) {
        let complete = self
            .tallies
            .iter()
            .filter(|t| t.rows.load(Ordering::Relaxed) >= total)
            .count();
        let closed = self
            .tallies
            .iter()
            .filter(|t| t.closed.load(Ordering::Relaxed))
            .count();
        (complete, closed)
    }

    /// Every client's latency samples since the last call.
    fn take_samples(&self) -> Vec<f64> {
        let mut all = Vec::new();
        for t in &self.tallies {
            all.append(&mut t.samples.lock().expect("samples lock"));
        }
        all
    }

    /// Closes every client.
    async fn close(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Counts change frames into `tally` until `stop` or a close; then closes the socket.
async fn listen(
    mut ws: Ws,
    endpoint: Endpoint,
    tally: Arc<Tally>,
    offset: u64,
    stop: CancellationToken,
) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.tick().await;
    let mut hb_ref = 100u64;
    let mut rows = 0u64;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => m,
            _ = heartbeat.tick() => {
                hb_ref += 1;
                if let Some(f) = endpoint.heartbeat(hb_ref)
                    && ws.send(Message::text(f)).await.is_err()
                {
                    tally.closed.store(true, Ordering::Relaxed);
                    break;
                }
                continue;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let s = t.as_str();
                if s.contains(endpoint.change_marker()) {
                    rows += 1;
                    if (rows + offset).is_multiple_of(SAMPLE_EVERY)
                        && let Some(ms) = latency_ms(s, endpoint.commit_key())
                    {
                        tally.samples.lock().expect("samples lock").push(ms);
                    }
                    tally.rows.store(rows, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                tally.closed.store(true, Ordering::Relaxed);
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
}

/// One burst per phase, each to freshly joined clients.
async fn burst(addr: SocketAddr, pg: &Client, args: &RealtimeArgs) -> anyhow::Result<Value> {
    let total = args.rows as u64;
    let n = args.subscribers as u64;
    let mut seq = 0i64;
    let mut phases = Vec::new();
    for (name, role) in PHASES {
        eprintln!(
            "realtime {name}: {} subscribers ({role}), {} rows in {} txns",
            args.subscribers, args.rows, args.txns
        );
        let jwt = walcast::auth::mint(SECRET, role, Duration::from_secs(3600))?;
        let p = phase(addr, &jwt, pg, args, &mut seq).await?;
        eprintln!(
            "realtime {name}: {:.0} msgs/s, {}/{} clients complete, p50 {:.0} ms, p99 {:.0} ms",
            p.rate(n, total),
            p.complete,
            args.subscribers,
            p.p(0.5),
            p.p(0.99)
        );
        for (why, n) in &p.closed_why {
            eprintln!("realtime {name}: {n} clients closed: {why}");
        }
        eprintln!(
            "realtime {name}: {:.0} msgs/s from the first frame to the last client ({:.2} s)",
            p.rate_over(p.from_first, n, total),
            p.from_first.as_secs_f64()
        );
        eprintln!(
            "realtime {name}: CPU from the burst's start to the last client: clients {:.2} s \
             ({} thread(s)), walcast and the writer {:.2} s, over {:.2} s",
            p.client_cpu,
            args.client_threads,
            p.server_cpu,
            p.elapsed.as_secs_f64()
        );
        phases.push((name, role, p));
    }
    println!(
        "| phase | subscribers | rows (txns) | delivered msgs/s | time | p50 / p95 / p99 latency | complete clients | target |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json_phases = Vec::new();
    let mut all_met = true;
    for (name, role, p) in &phases {
        let rate = p.rate(n, total);
        let ok = p.complete == args.subscribers && rate >= target(role) && p.p(0.99) < args.p99_ms;
        all_met &= ok;
        println!(
            "| {name} ({role}) | {} | {} ({}) | {:.0} | {:.2} s | {:.0} / {:.0} / {:.0} ms | {}/{} | >= {:.0}, p99 < {} ms ({}) |",
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
            target(role),
            args.p99_ms,
            if ok { "met" } else { "not met" }
        );
        json_phases.push(json!({
            "phase": name,
            "role": role,
            "msgs_per_s": rate.round(),
            "elapsed_s": round3(p.elapsed.as_secs_f64()),
            "msgs_per_s_from_first_frame": p.rate_over(p.from_first, n, total).round(),
            "from_first_frame_s": round3(p.from_first.as_secs_f64()),
            "burst_write_s": round3(p.write.as_secs_f64()),
            "delivered": p.delivered,
            "expected": n * total,
            "complete_clients": p.complete,
            "closed_clients": p.closed,
            "closed_why": p.closed_why,
            "client_threads": args.client_threads,
            "client_cpu_s": round3(p.client_cpu),
            "server_cpu_s": round3(p.server_cpu),
            "latency_samples": p.samples.len(),
            "p50_ms": p.p(0.5),
            "p95_ms": p.p(0.95),
            "p99_ms": p.p(0.99),
            "max_ms": p.samples.last().copied().unwrap_or(0.0),
            "target_msgs_per_s": target(role),
            "met": ok,
        }));
    }
    Ok(json!({
        "scenario": "realtime",
        "mode": "burst",
        "rows": args.rows,
        "txns": args.txns,
        "phases": json_phases,
        "met": all_met,
    }))
}

/// What one phase measured.
struct Phase {
    /// Burst start to the last complete client (or to the timeout).
    elapsed: Duration,
    /// The first change frame any client received to the last complete client.
    from_first: Duration,
    /// Writing the burst.
    write: Duration,
    /// Change frames received, all clients.
    delivered: u64,
    /// Clients that got every row.
    complete: usize,
    /// Clients the server closed (or whose connection failed) before the end.
    closed: usize,
    /// Why they were closed, and how many each time.
    closed_why: std::collections::BTreeMap<String, usize>,
    /// CPU seconds of the clients' threads from the burst's start to the end.
    client_cpu: f64,
    /// CPU seconds of the rest of the process (walcast, the writer) over the same time.
    server_cpu: f64,
    /// Sorted latency samples, ms.
    samples: Vec<f64>,
}

impl Phase {
    /// Delivered messages per second, from the burst's start.
    fn rate(&self, n: u64, total: u64) -> f64 {
        self.rate_over(self.elapsed, n, total)
    }

    /// Delivered messages per second over `time`.
    fn rate_over(&self, time: Duration, n: u64, total: u64) -> f64 {
        let secs = time.as_secs_f64().max(1e-9);
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
    args: &RealtimeArgs,
    seq: &mut i64,
) -> anyhow::Result<Phase> {
    let total = args.rows as u64;
    // The clients run on their own threads, so their CPU can be told from walcast's.
    let runtime = ClientRuntime::new(args.client_threads)?;
    let on_clients = runtime.handle();
    let (endpoint, table) = (args.endpoint, args.table);
    let clients = futures::stream::iter(0..args.subscribers)
        .map(|_| {
            let jwt = jwt.to_owned();
            on_clients.spawn(async move { joined(addr, endpoint, table, &jwt).await })
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.context("a client task failed")?)
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|ws| on_clients.spawn(count(ws, endpoint, total, deadline)))
        .collect();
    let (client_cpu0, process_cpu0) = (cpu_seconds(Some(CLIENT_THREAD)), cpu_seconds(None));

    let stmt = pg.prepare(args.table.insert_sql()).await?;
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
        from_first: Duration::ZERO,
        write,
        delivered: 0,
        complete: 0,
        closed: 0,
        closed_why: std::collections::BTreeMap::new(),
        client_cpu: 0.0,
        server_cpu: 0.0,
        samples: Vec::new(),
    };
    let mut last_done = None::<Instant>;
    let mut first = None::<Instant>;
    for t in tasks {
        let o = t.await?;
        if let Some(f) = o.first {
            first = Some(first.map_or(f, |x| x.min(f)));
        }
        p.delivered += o.rows;
        p.closed += usize::from(o.closed);
        if let Some(why) = o.why {
            *p.closed_why.entry(why).or_default() += 1;
        }
        p.samples.extend(o.samples);
        match o.done {
            Some(d) => {
                p.complete += 1;
                last_done = Some(last_done.map_or(d, |l| l.max(d)));
            }
            None => last_done = Some(Instant::now()),
        }
    }
    let end = last_done.unwrap_or_else(Instant::now);
    p.elapsed = end.duration_since(t0);
    p.from_first = end.duration_since(first.unwrap_or(t0));
    p.client_cpu = cpu_seconds(Some(CLIENT_THREAD)) - client_cpu0;
    p.server_cpu = (cpu_seconds(None) - process_cpu0 - p.client_cpu).max(0.0);
    p.samples.sort_by(f64::total_cmp);
    Ok(p)
}

/// What one client saw.
struct Outcome {
    /// Change frames.
    rows: u64,
    /// When the first one arrived.
    first: Option<Instant>,
    /// When it had all of them.
    done: Option<Instant>,
    /// The server closed it (or the connection failed) first.
    closed: bool,
    /// Why: the close frame's code and reason, the last system/error frame before it, or the
    /// connection error.
    why: Option<String>,
    /// Latency samples, ms.
    samples: Vec<f64>,
}

/// Counts change frames until `total`, the deadline or a close; then closes the socket.
async fn count(
    mut ws: Ws,
    endpoint: Endpoint,
    total: u64,
    deadline: tokio::time::Instant,
) -> Outcome {
    let mut o = Outcome {
        rows: 0,
        first: None,
        done: None,
        closed: false,
        why: None,
        samples: Vec::with_capacity((total / SAMPLE_EVERY + 1) as usize),
    };
    let mut last_notice: Option<String> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.tick().await;
    let mut hb_ref = 100u64;
    while o.rows < total {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, ws.next()) => m,
            _ = heartbeat.tick() => {
                hb_ref += 1;
                if let Some(f) = endpoint.heartbeat(hb_ref)
                    && ws.send(Message::text(f)).await.is_err()
                {
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
                if s.contains(endpoint.change_marker()) {
                    o.rows += 1;
                    if o.rows == 1 {
                        o.first = Some(Instant::now());
                    }
                    if o.rows.is_multiple_of(SAMPLE_EVERY)
                        && let Some(ms) = latency_ms(s, endpoint.commit_key())
                    {
                        o.samples.push(ms);
                    }
                    if o.rows == total {
                        o.done = Some(Instant::now());
                    }
                } else if s.contains("\"system\"")
                    || s.contains("\"error\"")
                    || s.contains("lagged")
                {
                    last_notice = Some(s.chars().take(300).collect());
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                o.closed = true;
                o.why = Some(match (f, last_notice.take()) {
                    (Some(f), n) => format!(
                        "close {} {}{}",
                        u16::from(f.code),
                        f.reason,
                        n.map(|n| format!(" after {n}")).unwrap_or_default()
                    ),
                    (None, Some(n)) => format!("close after {n}"),
                    (None, None) => "close".to_owned(),
                });
                break;
            }
            Ok(Some(Err(e))) => {
                o.closed = true;
                o.why = Some(format!("connection error: {e}"));
                break;
            }
            Ok(None) => {
                o.closed = true;
                o.why = Some("connection ended".to_owned());
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    o
}

/// Receipt time minus the frame's commit time (the field `key` opens), in ms.
fn latency_ms(frame: &str, key: &str) -> Option<f64> {
    let start = frame.find(key)? + key.len();
    let end = start + frame[start..].find('"')?;
    let ts = chrono::DateTime::parse_from_rfc3339(&frame[start..end]).ok()?;
    let d = chrono::Utc::now().signed_duration_since(ts);
    Some(d.num_microseconds()? as f64 / 1000.0)
}

/// Connects with `jwt` to `endpoint` and waits until changes of `table` flow to it.
async fn joined(
    addr: SocketAddr,
    endpoint: Endpoint,
    table: Table,
    jwt: &str,
) -> anyhow::Result<Ws> {
    match endpoint {
        Endpoint::Realtime => joined_realtime(addr, table, jwt, false).await,
        Endpoint::RealtimeV1 => joined_realtime(addr, table, jwt, true).await,
        Endpoint::Ws => subscribed_ws(addr, table, jwt).await,
    }
}

/// Connects to `/ws` with `jwt`, subscribes to INSERTs of `table` and waits for `subscribed`.
async fn subscribed_ws(addr: SocketAddr, table: Table, jwt: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/ws?apikey={jwt}");
    let mut ws = connect(&url).await?;
    let sub = json!({"type": "subscribe", "id": "bench", "ops": ["INSERT"], "table": table.name()});
    ws.send(Message::text(sub.to_string())).await?;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no `subscribed` answer in time")?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => anyhow::bail!("walcast closed the socket: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed before `subscribed`"),
        };
        let v: Value = serde_json::from_str(text.as_str())?;
        match v["type"].as_str() {
            Some("subscribed") => return Ok(ws),
            Some("error") => anyhow::bail!("subscribe refused: {text}"),
            _ => {}
        }
    }
}

/// Connects with `jwt` (vsn 2.0.0), joins [`TOPIC`] with an INSERT binding on `table`, waits for
/// the ok reply and the "Subscribed to PostgreSQL" system message.
async fn joined_realtime(
    addr: SocketAddr,
    table: Table,
    jwt: &str,
    v1: bool,
) -> anyhow::Result<Ws> {
    let vsn = if v1 { "1.0.0" } else { "2.0.0" };
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={jwt}&vsn={vsn}");
    let mut ws = connect(&url).await?;
    let payload = json!({"config": {
        "broadcast": {"ack": false, "self": false},
        "presence": {"key": "", "enabled": false},
        "postgres_changes": [{"event": "INSERT", "schema": "public", "table": table.name()}],
        "private": false
    }});
    let join = if v1 {
        json!({"topic": TOPIC, "event": "phx_join", "payload": payload, "ref": "1", "join_ref": "1"})
    } else {
        json!(["1", "1", TOPIC, "phx_join", payload])
    };
    ws.send(Message::text(join.to_string())).await?;
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
        let (event, reference, payload) = if v1 {
            (&v["event"], &v["ref"], &v["payload"])
        } else {
            (&v[3], &v[1], &v[4])
        };
        if event == "phx_reply" && reference == "1" {
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
