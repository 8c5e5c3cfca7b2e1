//! What the gate knows about the served table (columns, types, primary key, RLS flag,
//! publication membership), and whether a role may read it, with which columns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClaimsGroup, GATE_TIMEOUT, GateError, RlsGate, TABLE_FACTS_TTL, lock, set_claims};
use crate::catalog::{REALTIME_SCHEMA, REALTIME_TABLE, TableFacts};

/// Whether the role may read the table's primary key at all (privileges, not policies).
const ROLE_CHECK_SQL: &str = include_str!("../../sql/access/role_check.sql");

/// The columns a role may read, and how many columns the table has.
const COLUMN_PRIVILEGES_SQL: &str = include_str!("../../sql/access/column_privileges.sql");

/// Facts about the served table and whether walcast's publication includes it.
const TABLE_FACTS_SQL: &str = include_str!("../../sql/access/table_facts.sql");

/// Whether a role is a superuser or bypasses row level security (a role that does not exist
/// is neither).
const ROLE_PRIVILEGED_SQL: &str = include_str!("../../sql/access/role_privileged.sql");

/// What a role may read of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RoleAccess {
    /// Nothing: the role does not exist or may not read the primary key.
    Denied,
    /// Refused whatever it may read: a superuser or a role that bypasses row level security.
    Privileged,
    /// Every column.
    All,
    /// Only these columns.
    Columns(Arc<[String]>),
}

/// Table facts and when they were read.
#[derive(Debug, Clone)]
pub(super) struct CachedFacts {
    /// When they were read.
    at: Instant,
    /// The facts.
    facts: Arc<TableFacts>,
}

impl RlsGate {
    /// Refuses a role that is a superuser or bypasses row level security (whatever its token
    /// says, such a role would see rows its policies hide). Answers are reused for
    /// [`ROLE_CHECK_TTL`].
    pub async fn check_api_role(&self, role: &str) -> Result<(), GateError> {
        let privileged = match self.privileged.get(&role.to_owned()) {
            Some(p) => p,
            None => {
                let run = async {
                    let client = self.pool.get().await.map_err(GateError::Pool)?;
                    let row = client
                        .query_one(ROLE_PRIVILEGED_SQL, &[&role])
                        .await
                        .map_err(GateError::Db)?;
                    Ok::<bool, GateError>(row.get(0))
                };
                let p = tokio::time::timeout(GATE_TIMEOUT + Duration::from_secs(1), run)
                    .await
                    .map_err(|_| GateError::Timeout)??;
                self.privileged.put(role.to_owned(), p);
                p
            }
        };
        if privileged {
            return Err(GateError::Privileged {
                role: role.to_owned(),
            });
        }
        Ok(())
    }

    /// The last facts read, if any (no I/O; used when encoding changes).
    pub fn cached_table_facts(&self) -> Option<Arc<TableFacts>> {
        lock(&self.facts).as_ref().map(|c| Arc::clone(&c.facts))
    }

    /// Facts about `public.monitoring_events`, read at most every [`TABLE_FACTS_TTL`].
    pub async fn table_facts(&self) -> Result<Arc<TableFacts>, GateError> {
        let fresh = |c: &Option<CachedFacts>| {
            c.as_ref()
                .filter(|c| c.at.elapsed() < TABLE_FACTS_TTL)
                .map(|c| Arc::clone(&c.facts))
        };
        if let Some(f) = fresh(&lock(&self.facts)) {
            return Ok(f);
        }
        let _loading = self.facts_load.lock().await;
        if let Some(f) = fresh(&lock(&self.facts)) {
            return Ok(f);
        }
        let facts = Arc::new(self.load_facts().await?);
        *lock(&self.facts) = Some(CachedFacts {
            at: Instant::now(),
            facts: Arc::clone(&facts),
        });
        Ok(facts)
    }

    /// Reads the facts from the catalog.
    async fn load_facts(&self) -> Result<TableFacts, GateError> {
        let run = async {
            let client = self.pool.get().await.map_err(GateError::Pool)?;
            let stmt = client
                .prepare_cached(TABLE_FACTS_SQL)
                .await
                .map_err(GateError::Db)?;
            client
                .query_opt(&stmt, &[&self.publication])
                .await
                .map_err(GateError::Db)
        };
        let row = tokio::time::timeout(GATE_TIMEOUT + Duration::from_secs(1), run)
            .await
            .map_err(|_| GateError::Timeout)??;
        let mut facts = TableFacts {
            schema: REALTIME_SCHEMA.to_owned(),
            table: REALTIME_TABLE.to_owned(),
            ..TableFacts::default()
        };
        if let Some(row) = row {
            facts.rls_enabled = row.get(0);
            facts.published = row.get(1);
            let names: Vec<String> = row.get(2);
            let types: Vec<String> = row.get(3);
            facts.columns = names.into_iter().zip(types).collect();
            facts.primary_key = row.get(4);
        }
        Ok(facts)
    }

    /// Checks that the group's role may read the table (the role exists, is neither a
    /// superuser nor bypasses row level security, and may `SELECT` the primary key) and returns
    /// the columns it may read: `None` when it may read all of them. Results are reused for
    /// [`ROLE_CHECK_TTL`].
    pub async fn check_role(
        &self,
        group: &Arc<ClaimsGroup>,
    ) -> Result<Option<Arc<[String]>>, GateError> {
        let access = match self.roles.get(group) {
            Some(access) => access,
            None => {
                let access = self.run_role_check(group).await?;
                self.roles.put(Arc::clone(group), access.clone());
                access
            }
        };
        Self::access_result(group, access)
    }

    /// [`RlsGate::check_role`] asked of Postgres now, not from the cache (a connected client's
    /// periodic re-check); the answer replaces the cached one.
    pub async fn recheck_role(
        &self,
        group: &Arc<ClaimsGroup>,
    ) -> Result<Option<Arc<[String]>>, GateError> {
        let access = self.run_role_check(group).await?;
        self.roles.put(Arc::clone(group), access.clone());
        Self::access_result(group, access)
    }

    /// A role check's answer as a result.
    fn access_result(
        group: &ClaimsGroup,
        access: RoleAccess,
    ) -> Result<Option<Arc<[String]>>, GateError> {
        match access {
            RoleAccess::Denied => Err(GateError::Denied {
                role: group.role.clone(),
            }),
            RoleAccess::Privileged => Err(GateError::Privileged {
                role: group.role.clone(),
            }),
            RoleAccess::All => Ok(None),
            RoleAccess::Columns(c) => Ok(Some(c)),
        }
    }

    /// Runs the role check as the role; an SQL error (unknown role, permission denied) is a
    /// refusal.
    async fn run_role_check(&self, group: &ClaimsGroup) -> Result<RoleAccess, GateError> {
        let run = async {
            let mut client = self.pool.get().await.map_err(GateError::Pool)?;
            let privileged: bool = client
                .query_one(ROLE_PRIVILEGED_SQL, &[&group.role])
                .await
                .map_err(GateError::Db)?
                .get(0);
            if privileged {
                return Ok(RoleAccess::Privileged);
            }
            let tx = client.transaction().await.map_err(GateError::Db)?;
            let result = async {
                set_claims(&tx, group).await?;
                tx.query(ROLE_CHECK_SQL, &[]).await?;
                tx.query_one(COLUMN_PRIVILEGES_SQL, &[&group.role]).await
            }
            .await;
            match result {
                Ok(row) => {
                    tx.commit().await.map_err(GateError::Db)?;
                    let readable: Vec<String> = row.get(0);
                    let total: i64 = row.get(1);
                    Ok(if readable.len() as i64 == total {
                        RoleAccess::All
                    } else {
                        RoleAccess::Columns(readable.into())
                    })
                }
                // The transaction rolls back when dropped.
                Err(e) if e.as_db_error().is_some() => Ok(RoleAccess::Denied),
                Err(e) => Err(GateError::Db(e)),
            }
        };
        tokio::time::timeout(GATE_TIMEOUT + Duration::from_secs(1), run)
            .await
            .map_err(|_| GateError::Timeout)?
    }
}
