//! The `walcast-bench` binary: end-to-end measurements of walcast for BENCHMARKS.md, each with
//! its baseline in the same run, on this machine.
//!
//! It is not part of the product: it uses only the `walcast` library's public API, starts its
//! own private Postgres cluster (and usually walcast in-process) per scenario, and the `memory`
//! scenario runs the `walcast` binary that sits beside it.
//!
//! Layout: this file parses the command line and dispatches; [`support`] holds what the
//! scenarios share; each scenario is one module that imports only [`support`] and the library.
//!
//! Exit codes: 0 success, 1 the run failed, 2 invalid configuration or usage.

mod dbcast;
mod drain;
mod fanout;
mod ingest;
mod latency;
mod memory;
mod realtime;
mod resume;
mod spool;
mod support;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use walcast::config::ConfigError;

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "walcast-bench",
    version,
    subcommand_value_name = "SCENARIO",
    subcommand_help_heading = "Scenarios",
    about = "Measure walcast against a baseline on this machine (results for BENCHMARKS.md).",
    after_help = "Examples:\n  walcast-bench ingest\n  \
walcast-bench --log warn realtime --users 50\n\n\
Build with `cargo build --release` and run target/release/walcast-bench: `memory` runs the \
walcast binary that sits beside it.\n\
Run `walcast-bench <scenario> --help` for each scenario's options."
)]
struct Cli {
    /// Log filter, e.g. `info`, `walcast=debug`.
    #[arg(long, global = true, env = "WALCAST_LOG", default_value = "info")]
    log: String,

    /// Which scenario to run.
    #[command(subcommand)]
    command: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// Events/s committed through POST /v1/events vs one INSERT per event on one connection.
    #[command(
        after_help = "Example:\n  walcast-bench ingest                       # private cluster, defaults\n  \
walcast-bench ingest --events 200000 --producers 8 --batch 500\n\n\
Starts its own private Postgres cluster and walcast server unless --database-url is given."
    )]
    Ingest(ingest::IngestArgs),
    /// A burst through walcast to one /ws client vs pg_recvlogical draining the same burst.
    #[command(after_help = "Example:\n  walcast-bench drain --txns 200 --rows 1000")]
    Drain(drain::DrainArgs),
    /// Commit-to-receipt latency on a /ws client at a steady commit rate, vs a bare replication client.
    #[command(after_help = "Example:\n  walcast-bench latency --rate 1000 --seconds 10")]
    Latency(latency::LatencyArgs),
    /// A burst to many /ws clients: deliveries/s, vs LISTEN/NOTIFY fan-out to as many connections.
    #[command(after_help = "Example:\n  walcast-bench fanout --clients 100 --txns 20 --rows 1000")]
    Fanout(fanout::FanoutArgs),
    /// Ingest with Postgres down (spool), then the replay: events/s and time to spool empty.
    #[command(after_help = "Example:\n  walcast-bench spool --events 50000")]
    Spool(spool::SpoolArgs),
    /// RSS idle, per idle client, and with one stalled client under load.
    #[command(after_help = "Example:\n  walcast-bench memory --clients 1000\n\n\
Runs the walcast binary that sits beside walcast-bench as the server (a child process, so its \
RSS is its own): build both with `cargo build --release`.")]
    Memory(memory::MemoryArgs),
    /// Many Supabase-Realtime clients, RLS off and on: the highest paced rate with p99 in target.
    #[command(after_help = "Examples:\n  walcast-bench realtime\n  \
walcast-bench realtime --subscribers 500 --rates 100000,300000,600000 --step-secs 5\n  \
walcast-bench realtime --burst --rows 20000 --txns 20\n\n\
Every client joins one channel with a postgres_changes INSERT binding. Phase 1 joins them with \
a service_role token (RLS off), phase 2 with an authenticated token (RLS on, batched check). \
The default is a rate search: rows are written at a steady pace for --step-secs per rate, \
lowest rate first, and the search stops at the first rate whose commit-to-receipt p99 reaches \
--p99-ms or where a client falls behind. --burst writes everything at once instead. Starts its \
own private Postgres cluster and walcast server.")]
    Realtime(realtime::RealtimeArgs),
    /// supabase-js with a resume_id: a live burst, then a backlog after a restart vs /ws `since`.
    #[command(
        after_help = "Example:\n  walcast-bench resume --txns 200 --rows 1000\n\n\
Runs tests/realtime_js/bench_resume.mjs with Node 22 (.tools/node22, or --node) and the \
packages of tests/realtime_js (npm ci --prefix tests/realtime_js). Starts its own private \
Postgres cluster and walcast server."
    )]
    Resume(resume::ResumeArgs),
    /// Broadcast from Database (`realtime.send`) to many subscribers of one topic, vs client broadcast.
    #[command(
        after_help = "Example:\n  walcast-bench dbcast --subscribers 500 --rates 100,500,1000,2000\n\n\
Every client joins the public channel realtime:bench (serializer 2.0.0). Per rate, realtime.send \
runs in one transaction per 10 ms tick for --step-secs, then a client socket broadcasts as many \
messages the same way; each message carries its send time, so clients measure send-to-receipt \
latency (for realtime.send, commit included). Starts its own private Postgres cluster and \
walcast server."
    )]
    Dbcast(dbcast::DbcastArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Scenario::Ingest(a) => ingest::run(a).await,
            Scenario::Drain(a) => drain::run(a).await,
            Scenario::Latency(a) => latency::run(a).await,
            Scenario::Fanout(a) => fanout::run(a).await,
            Scenario::Spool(a) => spool::run(a).await,
            Scenario::Memory(a) => memory::run(a).await,
            Scenario::Realtime(a) => realtime::run(a).await,
            Scenario::Resume(a) => resume::run(a).await,
            Scenario::Dbcast(a) => dbcast::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {ce}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr with the given filter (the in-process walcast server logs through it).
fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
