//! The replication slot and the checks before streaming: `wal_level`, privilege, publication,
//! slot existence and health. SQL lives in `sql/replication/`.

use tokio_postgres::Client;

use super::error::ReplicationError;
use crate::decode::Lsn;

/// Reads a slot's state.
const SLOT_STATUS_SQL: &str = include_str!("../../sql/replication/slot_status.sql");
/// Creates a pgoutput slot.
const CREATE_SLOT_SQL: &str = include_str!("../../sql/replication/create_slot.sql");
/// Drops a slot.
const DROP_SLOT_SQL: &str = include_str!("../../sql/replication/drop_slot.sql");
/// Checks the server before streaming.
const PREFLIGHT_SQL: &str = include_str!("../../sql/replication/preflight.sql");
/// Whether a publication exists.
const PUBLICATION_EXISTS_SQL: &str = include_str!("../../sql/replication/publication_exists.sql");

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// Output plugin.
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// A session is streaming from it.
    pub active: bool,
    /// WAL before this position has been confirmed.
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL the slot retains.
    pub restart_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub wal_status: Option<String>,
    /// The server's current WAL position.
    pub current_lsn: String,
    /// Bytes between current and confirmed positions.
    pub lag_bytes: Option<i64>,
    /// Bytes of WAL the slot retains.
    pub retained_bytes: Option<i64>,
}

impl SlotStatus {
    /// The confirmed position as an [`Lsn`].
    pub fn confirmed(&self) -> Option<Lsn> {
        self.confirmed_flush_lsn
            .as_deref()
            .and_then(|s| s.parse().ok())
    }
}

/// Reads a slot (None when it does not exist).
pub async fn status(client: &Client, slot: &str) -> Result<Option<SlotStatus>, ReplicationError> {
    let row = client
        .query_opt(SLOT_STATUS_SQL, &[&slot])
        .await
        .map_err(ReplicationError::Sql)?;
    Ok(row.map(|r| SlotStatus {
        name: r.get(0),
        plugin: r.get(1),
        slot_type: r.get(2),
        database: r.get(3),
        active: r.get(4),
        confirmed_flush_lsn: r.get(5),
        restart_lsn: r.get(6),
        wal_status: r.get(7),
        current_lsn: r.get(8),
        lag_bytes: r.get(9),
        retained_bytes: r.get(10),
    }))
}

/// Drops a slot; returns false when it did not exist.
pub async fn drop(client: &Client, slot: &str) -> Result<bool, ReplicationError> {
    if status(client, slot).await?.is_none() {
        return Ok(false);
    }
    client
        .execute(DROP_SLOT_SQL, &[&slot])
        .await
        .map_err(ReplicationError::Sql)?;
    Ok(true)
}

/// Checks the server can stream `publication` and returns the database name.
pub async fn preflight(client: &Client, publication: &str) -> Result<String, ReplicationError> {
    let row = client
        .query_one(PREFLIGHT_SQL, &[&publication])
        .await
        .map_err(ReplicationError::Sql)?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(ReplicationError::WalLevel(wal_level));
    }
    let can_replicate: Option<bool> = row.get(1);
    if can_replicate != Some(true) {
        return Err(ReplicationError::NoReplicationPrivilege);
    }
    let exists: bool = row.get(2);
    let has_table: bool = row.get(3);
    if !exists || !has_table {
        return Err(ReplicationError::Publication(publication.to_owned()));
    }
    Ok(row.get(4))
}

/// Whether publication `name` exists.
pub async fn publication_exists(client: &Client, name: &str) -> Result<bool, ReplicationError> {
    let row = client
        .query_one(PUBLICATION_EXISTS_SQL, &[&name])
        .await
        .map_err(ReplicationError::Sql)?;
    Ok(row.get(0))
}

/// Makes sure the slot exists and is usable; creates it when missing.
/// Returns its status and whether it was created now.
pub async fn ensure(
    client: &Client,
    slot: &str,
    database: &str,
) -> Result<(SlotStatus, bool), ReplicationError> {
    let mut created = false;
    let st = match status(client, slot).await? {
        Some(st) => st,
        None => {
            client
                .query_one(CREATE_SLOT_SQL, &[&slot])
                .await
                .map_err(ReplicationError::Sql)?;
            created = true;
            tracing::info!(slot, "created replication slot");
            status(client, slot)
                .await?
                .ok_or_else(|| ReplicationError::SlotReplaced {
                    slot: slot.to_owned(),
                    detail: "it vanished right after creation".into(),
                })?
        }
    };
    let unusable = |reason: String| ReplicationError::SlotUnusable {
        slot: slot.to_owned(),
        reason,
    };
    if st.slot_type != "logical" || st.plugin.as_deref() != Some("pgoutput") {
        return Err(unusable(format!(
            "it is a {} slot with plugin {:?}, walcast needs a logical pgoutput slot: choose another name with --slot",
            st.slot_type, st.plugin
        )));
    }
    if st.database.as_deref() != Some(database) {
        return Err(unusable(format!(
            "it belongs to database {:?}, not {database:?}: choose another name with --slot",
            st.database
        )));
    }
    if st.wal_status.as_deref() == Some("lost") {
        return Err(unusable(
            "it was invalidated because it retained more WAL than max_slot_wal_keep_size allows; the changes in between are gone. Drop it with `walcast slot drop` and restart walcast (clients resuming from older cursors will get cursor_expired)"
                .into(),
        ));
    }
    Ok((st, created))
}
