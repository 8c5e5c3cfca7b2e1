//! Private Broadcast and Presence channels: who may read and write them, asked of the policies
//! of Supabase's `realtime.messages` table with probe rows in transactions that are always
//! rolled back (see `docs/realtime.md`). walcast's migrations create the table where it is
//! missing; without policies on it (or without the table) private channels are open to
//! `service_role` only. The statements live in `sql/realtime/`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::access::cache::TtlCache;
use crate::access::{
    ClaimsGroup, GATE_TIMEOUT, GateError, MAX_CACHED_ROLE_CHECKS, ROLE_CHECK_TTL, statement_timeout,
};

/// What a token may read on a private channel topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAccess {
    /// The database has no `realtime.messages` table, so there are no policies to ask: private
    /// channels are open to `service_role` only.
    NoPolicies,
    /// What the `realtime.messages` policies let the role read on the topic.
    Read {
        /// Broadcast messages (extension `broadcast`).
        broadcast: bool,
        /// Presence (extension `presence`); only asked when the join enables presence.
        presence: bool,
    },
}

impl ChannelAccess {
    /// Whether the channel may be joined: the role may read broadcast or presence.
    pub fn may_join(self) -> bool {
        matches!(self, ChannelAccess::Read { broadcast, presence } if broadcast || presence)
    }
}

/// The part of a private channel a write goes to (the `extension` of `realtime.messages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelExtension {
    /// A broadcast message.
    Broadcast,
    /// A presence track.
    Presence,
}

impl ChannelExtension {
    /// The `extension` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelExtension::Broadcast => "broadcast",
            ChannelExtension::Presence => "presence",
        }
    }
}

/// A cached read check: who, which topic, whether presence was asked.
type ReadKey = (Arc<ClaimsGroup>, String, bool);

/// Sets the statement timeout for the transaction; whether `realtime.messages` exists.
const MESSAGES_EXISTS_SQL: &str = include_str!("../../sql/realtime/messages_exists.sql");

/// One probe row per extension in `$2` (text array) on topic `$1`, standing for private
/// messages, in Supabase's `realtime.messages` (its other columns have defaults).
const PROBE_INSERT_SQL: &str = include_str!("../../sql/realtime/probe_insert.sql");

/// Sets role, claims (also the older `request.jwt.claim.sub`/`.role` settings) and the topic
/// that `realtime.topic()` returns, for the rest of the transaction.
const SET_CHANNEL_CLAIMS_SQL: &str = include_str!("../../sql/realtime/set_channel_claims.sql");

/// Reads back probe rows (`$1` ids) under the current role's policies.
const PROBE_READ_SQL: &str = include_str!("../../sql/realtime/probe_read.sql");

/// Whether a database error is the role being refused (privileges, policies, an unknown role)
/// rather than the database failing (connection, resources, timeouts, internal errors).
fn is_refusal(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        !matches!(class, "08" | "40" | "53" | "57" | "58" | "XX")
    })
}

/// Private-channel checks: a pool and the cached read answers.
#[derive(Debug)]
pub struct PrivateChannels {
    /// Connections for the probes.
    pool: Pool,
    /// Read checks: what the role may read on the topic.
    reads: TtlCache<ReadKey, ChannelAccess>,
}

impl PrivateChannels {
    /// Checks run on `pool`.
    pub fn new(pool: Pool) -> Self {
        PrivateChannels {
            pool,
            reads: TtlCache::new(ROLE_CHECK_TTL, MAX_CACHED_ROLE_CHECKS),
        }
    }

    /// What the group may read on private channel `sub_topic` (the topic without
    /// `realtime:`), asked of the `realtime.messages` policies the way Supabase Realtime asks
    /// them; `presence` also asks about presence. Results are reused for [`ROLE_CHECK_TTL`].
    ///
    /// In a transaction that is always rolled back, walcast inserts one probe row per
    /// extension (as its own database user, so the role needs no INSERT policy to read), then
    /// sets `role`, `request.jwt.claims` and `realtime.topic` and selects the probes back as the
    /// role: a probe it can see is an extension it may read.
    pub async fn access(
        &self,
        group: &Arc<ClaimsGroup>,
        sub_topic: &str,
        presence: bool,
    ) -> Result<ChannelAccess, GateError> {
        let key = (Arc::clone(group), sub_topic.to_owned(), presence);
        if let Some(access) = self.reads.get(&key) {
            return Ok(access);
        }
        let access = tokio::time::timeout(
            GATE_TIMEOUT + Duration::from_secs(1),
            self.run_channel_read(group, sub_topic, presence),
        )
        .await
        .map_err(|_| GateError::Timeout)??;
        self.reads.put(key, access);
        Ok(access)
    }

    /// Whether the group may write `extension` messages on private channel `sub_topic`: an
    /// INSERT into `realtime.messages` as the role, under a savepoint of a transaction that is
    /// always rolled back. A refusal (privileges, policies) is `false`; so is a database
    /// without `realtime.messages`. The channel keeps the answer until its claims change.
    pub async fn write(
        &self,
        group: &Arc<ClaimsGroup>,
        sub_topic: &str,
        extension: ChannelExtension,
    ) -> Result<bool, GateError> {
        tokio::time::timeout(
            GATE_TIMEOUT + Duration::from_secs(1),
            self.run_channel_write(group, sub_topic, extension),
        )
        .await
        .map_err(|_| GateError::Timeout)?
    }

    /// Whether `realtime.messages` exists (inside `tx`, which also gets the statement
    /// timeout).
    async fn has_messages_table(
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = tx
            .query_one(MESSAGES_EXISTS_SQL, &[&statement_timeout()])
            .await?;
        Ok(row.get(1))
    }

    /// Runs one read check (see [`PrivateChannels::access`]).
    async fn run_channel_read(
        &self,
        group: &ClaimsGroup,
        sub_topic: &str,
        presence: bool,
    ) -> Result<ChannelAccess, GateError> {
        let mut client = self.pool.get().await.map_err(GateError::Pool)?;
        let tx = client.transaction().await.map_err(GateError::Db)?;
        if !Self::has_messages_table(&tx).await.map_err(GateError::Db)? {
            tx.rollback().await.map_err(GateError::Db)?;
            return Ok(ChannelAccess::NoPolicies);
        }
        let mut extensions = vec![ChannelExtension::Broadcast.as_str()];
        if presence {
            extensions.push(ChannelExtension::Presence.as_str());
        }
        // The probes are written as walcast's own user: reading needs no INSERT policy.
        let ids: Vec<Uuid> = tx
            .query(PROBE_INSERT_SQL, &[&sub_topic, &extensions])
            .await
            .map_err(GateError::Db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let seen = async {
            tx.query(
                SET_CHANNEL_CLAIMS_SQL,
                &[&group.role, &group.claims_json, &sub_topic],
            )
            .await?;
            tx.query(PROBE_READ_SQL, &[&ids]).await
        }
        .await;
        let access = match seen {
            Ok(rows) => {
                let seen: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
                ChannelAccess::Read {
                    broadcast: seen.contains(ChannelExtension::Broadcast.as_str()),
                    presence: seen.contains(ChannelExtension::Presence.as_str()),
                }
            }
            Err(e) if is_refusal(&e) => ChannelAccess::Read {
                broadcast: false,
                presence: false,
            },
            Err(e) => return Err(GateError::Db(e)),
        };
        tx.rollback().await.map_err(GateError::Db)?;
        Ok(access)
    }

    /// Runs one write check (see [`RlsGate::private_channel_write`]).
    async fn run_channel_write(
        &self,
        group: &ClaimsGroup,
        sub_topic: &str,
        extension: ChannelExtension,
    ) -> Result<bool, GateError> {
        let mut client = self.pool.get().await.map_err(GateError::Pool)?;
        let mut tx = client.transaction().await.map_err(GateError::Db)?;
        if !Self::has_messages_table(&tx).await.map_err(GateError::Db)? {
            tx.rollback().await.map_err(GateError::Db)?;
            return Ok(false);
        }
        match tx
            .query(
                SET_CHANNEL_CLAIMS_SQL,
                &[&group.role, &group.claims_json, &sub_topic],
            )
            .await
        {
            Ok(_) => {}
            // An unknown role, for instance.
            Err(e) if is_refusal(&e) => return Ok(false),
            Err(e) => return Err(GateError::Db(e)),
        }
        let may = {
            let probe = tx
                .savepoint("walcast_write_probe")
                .await
                .map_err(GateError::Db)?;
            let extensions = vec![extension.as_str()];
            let inserted = probe
                .query(PROBE_INSERT_SQL, &[&sub_topic, &extensions])
                .await;
            let may = match inserted {
                Ok(rows) => !rows.is_empty(),
                Err(e) if is_refusal(&e) => false,
                Err(e) => return Err(GateError::Db(e)),
            };
            probe.rollback().await.map_err(GateError::Db)?;
            may
        };
        tx.rollback().await.map_err(GateError::Db)?;
        Ok(may)
    }
}
