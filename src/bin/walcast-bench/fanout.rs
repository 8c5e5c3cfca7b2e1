//! `walcast-bench fanout`: N subscribed `/ws` clients, one burst: deliveries/s, vs LISTEN/NOTIFY
//! from a row trigger to N connections (the baseline, same run).
//!
//! Its own private Postgres cluster (fsync on); walcast runs in-process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use walcast::config::ServerConfig;

use crate::support::{
    Outcome, RUN_TIMEOUT, bench_db, bench_server_args, burst, connect_pg, count_ws_events, emit,
    met, remove_spool, round3, server_version, start_server, stop_server, wait_slot_active,
    ws_subscribed,
};

/// NOTIFY channel of the fan-out baseline.
const NOTIFY_CHANNEL: &str = "walcast_bench";

/// `walcast-bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// WebSocket clients, each receiving every row.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Transactions in the burst.
    #[arg(long, default_value_t = 20)]
    pub txns: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the scenario.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
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
