//! The refresh task: keeps a [`Flags`] snapshot equal to the database.
//!
//! It holds one connection of its own that `LISTEN`s on `walcast_flags`; the flag tables'
//! triggers notify it on every committed change, and it reloads the whole snapshot (one query)
//! at once. It also reloads every [`RELOAD_INTERVAL`] in case a notification was lost, and after
//! every reconnect. When the connection fails it reconnects with exponential backoff
//! ([`BACKOFF_MIN`]..[`BACKOFF_MAX`]); meanwhile the last snapshot stays in force.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::error::FlagsError;
use super::{Flags, NOTIFY_CHANNEL, store};

/// Reload this often even without notifications.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts the refresh task; it ends when `shutdown` is cancelled.
pub fn spawn_refresh_task(
    flags: Flags,
    database_url: String,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(flags, database_url, shutdown))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects, listens and reloads until shutdown; reconnects with backoff.
async fn run(flags: Flags, database_url: String, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&flags, &database_url, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_ms = backoff.as_millis() as u64,
                "flag refresh connection failed; keeping the last flags and reconnecting"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: listen, load, then reload on notifications and ticks. `Ok` on shutdown.
async fn session(
    flags: &Flags,
    database_url: &str,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), FlagsError> {
    let mut config: tokio_postgres::Config = database_url.parse().map_err(FlagsError::Url)?;
    config.application_name("walcast_flags");
    config.connect_timeout(Duration::from_secs(5));
    let (client, mut connection) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = config.connect(NoTls) => r.map_err(FlagsError::Connect)?,
    };

    // The connection is driven here; notifications wake the loop below. Notify keeps at most
    // one pending wake-up, so a burst of changes costs one reload.
    let wake = Arc::new(Notify::new());
    let driver_wake = Arc::clone(&wake);
    let mut driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == NOTIFY_CHANNEL => {
                    driver_wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => return Err(FlagsError::Connect(e)),
            }
        }
        Err::<(), _>(FlagsError::Closed)
    });
    let _abort = AbortOnDrop(driver.abort_handle());

    client
        .batch_execute(store::LISTEN)
        .await
        .map_err(FlagsError::Query)?;
    reload(flags, &client).await?;
    *backoff = BACKOFF_MIN;

    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + RELOAD_INTERVAL,
        RELOAD_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = &mut driver => {
                return Err(match r {
                    Ok(Err(e)) => e,
                    _ => FlagsError::Closed,
                });
            }
            _ = wake.notified() => reload(flags, &client).await?,
            _ = tick.tick() => reload(flags, &client).await?,
        }
    }
}

/// Loads the snapshot and swaps it in; logs a mode change.
async fn reload(flags: &Flags, client: &tokio_postgres::Client) -> Result<(), FlagsError> {
    let before = flags.mode();
    let set = store::load(client).await?;
    let count = set.len();
    flags.replace(set);
    let after = flags.mode();
    if after.mode != before.mode {
        tracing::info!(
            from = before.mode.as_str(),
            to = after.mode.as_str(),
            source = after.evaluation.source.as_str(),
            "broadcaster mode changed; new connections follow it, open ones stay"
        );
    }
    tracing::debug!(flags = count, "flags reloaded");
    Ok(())
}
