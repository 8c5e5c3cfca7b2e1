//! Where each slot's resume window ends, kept in `walcast.replication_windows` so that a
//! restarted walcast knows it too: the newest commit LSN whose transaction left the window (see
//! [`super::retention::Window::expired_through`]). Without it a restarted process could only
//! assume that everything before the slot's confirmed position is gone, and would refuse resume
//! positions that are still good (a channel that joined before the first change, for example).

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use super::error::ReplicationError;
use crate::decode::Lsn;

/// `sql/replication/window_load.sql`.
const LOAD_SQL: &str = include_str!("../../sql/replication/window_load.sql");
/// `sql/replication/window_save.sql`.
const SAVE_SQL: &str = include_str!("../../sql/replication/window_save.sql");
/// `sql/replication/window_forget.sql`.
const FORGET_SQL: &str = include_str!("../../sql/replication/window_forget.sql");
/// Writes at most this often: the edge moves with every transaction that leaves the window,
/// and a restart only needs a recent value (an older one is merely stricter).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The recorded edge of `slot`'s window, when it still holds: recorded while walcast had
/// confirmed at least `slot_confirmed` (the edge only moves when the confirmed position does,
/// so a slot that has not moved past the record still has that edge).
pub async fn load(
    client: &Client,
    slot: &str,
    slot_confirmed: u64,
) -> Result<Option<Lsn>, ReplicationError> {
    let row = client
        .query_opt(LOAD_SQL, &[&slot])
        .await
        .map_err(ReplicationError::Sql)?;
    let Some(row) = row else { return Ok(None) };
    let edge: Option<Lsn> = row.get::<_, String>(0).parse().ok();
    let at: Option<Lsn> = row.get::<_, String>(1).parse().ok();
    Ok(match (edge, at) {
        (Some(edge), Some(at)) if at.0 >= slot_confirmed => Some(edge),
        _ => None,
    })
}

/// Forgets `slot`'s edge (the slot is new).
pub async fn forget(client: &Client, slot: &str) -> Result<(), ReplicationError> {
    client
        .execute(FORGET_SQL, &[&slot])
        .await
        .map_err(ReplicationError::Sql)?;
    Ok(())
}

/// Writes the latest (edge, confirmed position) of `slot` whenever it changes (at most once per [`SAVE_EVERY`]),
/// until the sender is dropped. A failed write is tried again with the next change or second:
/// the edge only ever moves forward, and a stale one is only stricter.
pub async fn run_saver(database_url: String, slot: String, mut edge: watch::Receiver<(u64, u64)>) {
    let mut client: Option<Client> = None;
    let mut saved = (0u64, 0u64);
    loop {
        let value = *edge.borrow_and_update();
        if value != saved {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = match tokio_postgres::connect(&database_url, NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        Some(c)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "resume window edge not saved: no connection");
                        None
                    }
                };
            }
            if let Some(c) = &client {
                let (e, at) = (Lsn(value.0).to_string(), Lsn(value.1).to_string());
                match c.execute(SAVE_SQL, &[&slot, &e, &at]).await {
                    Ok(_) => saved = value,
                    Err(e) => tracing::debug!(error = %e, "resume window edge not saved"),
                }
            }
        }
        tokio::time::sleep(SAVE_EVERY).await;
        if value == saved && edge.changed().await.is_err() {
            return;
        }
    }
}
