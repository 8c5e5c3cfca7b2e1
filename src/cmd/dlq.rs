//! `walcast dlq list|show|retry|purge|stats`: the dead-letter queue from the command line.
//!
//! Talks SQL to `--database-url` through [`crate::dlq`] (the `walcast.dlq_*` functions), so it
//! works with or without a running server. `retry --now` redoes the work here, one attempt per
//! row, and prints the outcome.

use std::process::ExitCode;

use deadpool_postgres::{ClientWrapper, Object};

use crate::cli::{
    DatabaseArgs, DlqCommand, DlqListArgs, DlqPurgeArgs, DlqRetryArgs, DlqShowArgs, DlqStatsArgs,
};
use crate::config::validate_database_url;
use crate::dlq::{self, DeadLetterRow, ListFilter, RetryWorkerConfig, Stats, Status};
use crate::units::parse_duration;

/// Runs a dlq subcommand.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List(a) => list(a).await,
        DlqCommand::Show(a) => show(a).await,
        DlqCommand::Retry(a) => retry(a).await,
        DlqCommand::Purge(a) => purge(a).await,
        DlqCommand::Stats(a) => stats(a).await,
    }
}

/// A connection of its own (out of a one-connection pool, so `retry --now` can write events).
async fn connect(db: &DatabaseArgs) -> anyhow::Result<ClientWrapper> {
    let url = validate_database_url(&db.database_url)?;
    let pool = crate::db::pool(&url, 1, "walcast_dlq")?;
    let obj = pool.get().await.map_err(crate::db::DbError::Connect)?;
    Ok(Object::take(obj))
}

/// `walcast dlq list`.
async fn list(a: DlqListArgs) -> anyhow::Result<ExitCode> {
    let filter = ListFilter {
        status: a.status.as_deref().map(str::parse::<Status>).transpose()?,
        operation: a.operation.clone(),
        before_id: a.before,
        limit: a.limit,
    };
    let client = connect(&a.db).await?;
    let rows = dlq::list(&client, &filter).await?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no dead letters");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8}  {:<9}  {:<8}  {:>8}  {:<24}  {:<20}  ERROR",
        "ID", "STATUS", "OPERATION", "ATTEMPTS", "CREATED", "SOURCE"
    );
    for r in &rows {
        println!(
            "{:>8}  {:<9}  {:<9}  {:>8}  {:<24}  {:<20}  {}: {}",
            r.id,
            r.status.as_str(),
            r.operation,
            attempts(r),
            r.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.source,
            r.error_code,
            one_line(&r.error_message, 80)
        );
    }
    if rows.len() as i64 == filter.limit
        && let Some(last) = rows.last()
    {
        println!("(more: --before {})", last.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `walcast dlq show`.
async fn show(a: DlqShowArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.db).await?;
    let row = dlq::show(&client, a.id).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&row)?);
    } else {
        print_row(&row)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `walcast dlq retry`.
async fn retry(a: DlqRetryArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.db).await?;
    let requeued = match a.id {
        Some(id) => vec![dlq::requeue(&client, id).await?],
        None => dlq::requeue_all(&client).await?,
    };
    if !a.now {
        if a.json {
            for r in &requeued {
                println!("{}", serde_json::to_string(r)?);
            }
        } else if requeued.is_empty() {
            println!("nothing to retry");
        } else {
            for r in &requeued {
                println!("requeued dead letter {} (pending, due now)", r.id);
            }
            println!(
                "a running walcast retries them within its poll interval; `--now` retries them here"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let worker = format!("{}/cli", a.node);
    let lease = RetryWorkerConfig::new(&worker).lease;
    let mut not_recovered = 0usize;
    for r in &requeued {
        let report = dlq::run_pass(&client, &worker, 1, Some(r.id), lease).await?;
        let after = match report.rows.into_iter().next() {
            Some(after) => after,
            // Another worker claimed it first, or walcast does not retry its operation.
            None => dlq::show(&client, r.id).await?,
        };
        if after.status != Status::Recovered {
            not_recovered += 1;
        }
        if a.json {
            println!("{}", serde_json::to_string(&after)?);
        } else {
            println!("{}", outcome(&after));
        }
    }
    if !a.json {
        println!(
            "{} retried: {} recovered, {} not recovered",
            requeued.len(),
            requeued.len() - not_recovered,
            not_recovered
        );
    }
    Ok(if not_recovered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `walcast dlq purge`.
async fn purge(a: DlqPurgeArgs) -> anyhow::Result<ExitCode> {
    let older_than = parse_duration(&a.older_than).map_err(anyhow::Error::msg)?;
    let statuses = a
        .status
        .iter()
        .map(|s| s.parse::<Status>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = connect(&a.db).await?;
    let n = dlq::purge(&client, older_than, &statuses).await?;
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    println!(
        "deleted {n} dead letter(s) ({}; last changed more than {} ago)",
        names.join(", "),
        a.older_than
    );
    Ok(ExitCode::SUCCESS)
}

/// `walcast dlq stats`.
async fn stats(a: DlqStatsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.db).await?;
    let s = dlq::stats(&client).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_stats(&s);
    }
    Ok(ExitCode::SUCCESS)
}

/// `attempts/max` for timed retries, `attempts` otherwise.
fn attempts(r: &DeadLetterRow) -> String {
    match &r.retry_policy {
        dlq::RetryPolicy::TimedRetry { max_attempts, .. } => {
            format!("{}/{}", r.attempts, max_attempts)
        }
        _ => r.attempts.to_string(),
    }
}

/// The first line of `s`, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// An optional timestamp.
fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".to_owned())
}

/// One row, for people.
fn print_row(r: &DeadLetterRow) -> anyhow::Result<()> {
    println!("id:              {}", r.id);
    println!("status:          {}", r.status);
    println!("operation:       {}", r.operation);
    println!("source:          {}", r.source);
    println!("error:           {}: {}", r.error_code, r.error_message);
    println!("hint:            {}", r.hint);
    println!(
        "retry policy:    {}",
        serde_json::to_string(&r.retry_policy)?
    );
    println!("attempts:        {}", attempts(r));
    println!("requeues:        {}", r.requeues);
    println!("next attempt:    {}", next_attempt(r));
    println!("last attempt:    {}", ts(r.last_attempt_at));
    println!(
        "claimed by:      {}",
        r.claimed_by.as_deref().unwrap_or("-")
    );
    println!("created:         {}", ts(Some(r.created_at)));
    println!("updated:         {}", ts(Some(r.updated_at)));
    println!("recovered:       {}", ts(r.recovered_at));
    println!("payload:");
    println!("{}", serde_json::to_string_pretty(&r.payload)?);
    Ok(())
}

/// When a row's next attempt is, in words.
fn next_attempt(r: &DeadLetterRow) -> String {
    match (r.status, r.next_attempt_at) {
        (Status::Pending, None) => "waiting for an operator (`walcast dlq retry <id>`)".to_owned(),
        (Status::Retrying, Some(t)) => format!("being retried (lease until {})", ts(Some(t))),
        (_, t) => ts(t),
    }
}

/// The outcome of a `--now` attempt, in one line.
fn outcome(r: &DeadLetterRow) -> String {
    match r.status {
        Status::Recovered => format!("dead letter {}: recovered", r.id),
        Status::Pending => format!(
            "dead letter {}: pending, attempt {} failed ({}: {}); next attempt {}",
            r.id,
            r.attempts,
            r.error_code,
            one_line(&r.error_message, 120),
            next_attempt(r)
        ),
        Status::Failed => format!(
            "dead letter {}: failed ({}: {}); hint: {}",
            r.id,
            r.error_code,
            one_line(&r.error_message, 120),
            r.hint
        ),
        Status::Retrying => format!(
            "dead letter {}: being retried by {}",
            r.id,
            r.claimed_by.as_deref().unwrap_or("another worker")
        ),
    }
}

/// The counts, for people.
fn print_stats(s: &Stats) {
    println!("pending:         {}", s.pending);
    println!("retrying:        {}", s.retrying);
    println!("recovered:       {}", s.recovered);
    println!("failed:          {}", s.failed);
    println!("total:           {}", s.total);
    println!(
        "oldest pending:  {}",
        match (s.oldest_pending_at, s.oldest_pending_age_secs) {
            (Some(t), Some(age)) => format!("{} ({age:.0}s ago)", ts(Some(t))),
            _ => "-".to_owned(),
        }
    );
    println!("next attempt:    {}", ts(s.next_attempt_at));
}
