//! The `walcast` binary: parse the command line, validate configuration, run the subcommand.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage, 3 a resume cursor
//! expired (`tail`).

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use walcast::cli::{Cli, Command};
use walcast::config::{ConfigError, ServerConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    // Validate server configuration before the runtime starts.
    let serve_config = match &cli.command {
        Command::Serve(a) => match ServerConfig::from_args(&a.db.database_url, &a.server) {
            Ok(c) => Some(c),
            Err(e) => return config_error(&e),
        },
        _ => None,
    };
    // The flags' environment tier (WALCAST_FLAG_*, MONITORING_*): bad values are config errors.
    if matches!(cli.command, Command::Serve(_) | Command::Dev(_))
        && let Err(e) = walcast::flags::EnvTier::from_env()
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
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
            Command::Migrate(a) => walcast::cmd::migrate(a).await.map(|_| ExitCode::SUCCESS),
            Command::Serve(_) => {
                let Some(config) = serve_config else {
                    return Ok(ExitCode::from(2));
                };
                let token = CancellationToken::new();
                walcast::app::spawn_signal_task(token.clone());
                walcast::app::serve(config, token, |addr| {
                    println!("walcast listening on http://{addr}");
                })
                .await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Dev(a) => {
                let token = CancellationToken::new();
                walcast::app::spawn_signal_task(token.clone());
                walcast::cmd::dev::run(a, token)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
            Command::Emit(a) => walcast::cmd::emit::run(a).await.map(|_| ExitCode::SUCCESS),
            Command::Keys(a) => walcast::cmd::keys::run(a).map(|_| ExitCode::SUCCESS),
            Command::Tail(a) => match walcast::cmd::tail::run(a).await? {
                walcast::cmd::tail::TailEnd::Done => Ok(ExitCode::SUCCESS),
                walcast::cmd::tail::TailEnd::CursorExpired(m) => {
                    eprintln!("error: cursor_expired: {m}");
                    Ok(ExitCode::from(walcast::cmd::tail::EXIT_CURSOR_EXPIRED))
                }
            },
            Command::Slot(c) => walcast::cmd::slot::run(c).await.map(|_| ExitCode::SUCCESS),
            Command::Dlq(c) => walcast::cmd::dlq::run(c).await,
            Command::Flags(c) => walcast::cmd::flags::run(c).await.map(|_| ExitCode::SUCCESS),
            Command::Validate(a) => walcast::cmd::validate::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                return config_error(ce);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Prints a configuration error on one line; exit code 2.
fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// Logs to stderr with the given filter.
fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
