//! What the gate knows about the published tables (columns, types, primary key, RLS flag), and
//! which of them a role may read, with which columns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{GATE_TIMEOUT, GateError, RlsGate, TABLE_FACTS_MISS_INTERVAL, TABLE_FACTS_TTL, lock};
use crate::catalog::{TableFacts, Tables};

/// Which published tables a role may read: USAGE on the schema and SELECT on every primary key
/// column (on some column for a table without one), with the columns it may read.
const ROLE_TABLES_SQL: &str = include_str!("../../sql/access/role_tables.sql");

/// Facts about every table in walcast's publication.
const TABLE_FACTS_SQL: &str = include_str!("../../sql/access/table_facts.sql");

/// Whether a role is a superuser or bypasses row level security (a role that does not exist
/// is neither).
const ROLE_PRIVILEGED_SQL: &str = include_str!("../../sql/access/role_privileged.sql");

/// What a role may read of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAccess {
    /// The columns it may read; `None`: every column.
    pub columns: Option<Arc<[String]>>,
}

/// Which published tables a role may read, asked at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleTables {
    /// The role.
    pub role: String,
    /// A superuser or a role that bypasses row level security: refused whatever it may read.
    privileged: bool,
    /// The tables it may read, by OID.
    tables: HashMap<u32, TableAccess>,
    /// When the asking started.
    at: Instant,
}

impl RoleTables {
    /// What the role may read of the table with this OID; `None`: nothing (or the table was not
    /// published when the role was asked).
    pub fn get(&self, oid: u32) -> Option<&TableAccess> {
        self.tables.get(&oid)
    }

    /// Whether the role may read no published table at all.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

impl RlsGate {
    /// Refuses a role that is a superuser or bypasses row level security (whatever its token
    /// says, such a role would see rows its policies hide). Answers are reused for
    /// [`super::ROLE_CHECK_TTL`].
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
    pub fn tables_now(&self) -> Option<Arc<Tables>> {
        lock(&self.facts).clone()
    }

    /// Facts about every published table, read at most every [`TABLE_FACTS_TTL`].
    pub async fn tables(&self) -> Result<Arc<Tables>, GateError> {
        self.load_unless(|t| t.started().elapsed() < TABLE_FACTS_TTL)
            .await
    }

    /// Facts that know the table of a change (`oid` named `schema.table`) that this session
    /// had received at `seen`: read again when they do not and their catalog read started
    /// before `seen` (the table was published when the change was committed, so facts read
    /// after it know the table unless it left the publication since). The table may still be
    /// missing (not published any more, or dropped).
    pub async fn tables_knowing(
        &self,
        oid: u32,
        schema: &str,
        table: &str,
        seen: Instant,
    ) -> Result<Arc<Tables>, GateError> {
        let tables = self.tables_for_delivery().await?;
        if tables.of(oid, schema, table).is_some() {
            return Ok(tables);
        }
        self.tables_read_after(seen).await
    }

    /// Facts whose catalog read started after `seen` (read now if needed): for a binding or a
    /// table filter received at `seen` that names no table the facts know.
    pub async fn tables_read_after(&self, seen: Instant) -> Result<Arc<Tables>, GateError> {
        self.load_unless(|t| t.started() >= seen).await
    }

    /// The facts read last if `good` accepts them, else read now (one reload at a time: a
    /// caller that waited for another's reload takes it if `good` accepts it).
    async fn load_unless(&self, good: impl Fn(&Tables) -> bool) -> Result<Arc<Tables>, GateError> {
        let accepted = || self.tables_now().filter(|t| good(t));
        if let Some(t) = accepted() {
            return Ok(t);
        }
        let mut loading = self.facts_load.lock().await;
        if let Some(t) = accepted() {
            return Ok(t);
        }
        self.reload(&mut loading).await
    }

    /// Facts for a delivery: the ones read last, even when older than [`TABLE_FACTS_TTL`]; when
    /// they are, the one caller that finds no reload running reads them again (the others go on
    /// with the old ones meanwhile, so 500 sessions never queue behind one catalog read).
    /// Read now only when there are none yet.
    pub async fn tables_for_delivery(&self) -> Result<Arc<Tables>, GateError> {
        let Some(now) = self.tables_now() else {
            return self.tables().await;
        };
        if now.started().elapsed() < TABLE_FACTS_TTL {
            return Ok(now);
        }
        let Ok(mut loading) = self.facts_load.try_lock() else {
            return Ok(now);
        };
        if let Some(t) = self
            .tables_now()
            .filter(|t| t.started().elapsed() < TABLE_FACTS_TTL)
        {
            return Ok(t);
        }
        Ok(self.reload(&mut loading).await.unwrap_or(now))
    }

    /// Reads the facts now, with the reload lock held. A reload that failed less than
    /// [`TABLE_FACTS_MISS_INTERVAL`] ago is not tried again: the facts read last are used
    /// meanwhile (or the failure returned), so a database that cannot be reached does not hold
    /// every delivery.
    async fn reload(
        &self,
        loading: &mut Option<(Instant, &'static str)>,
    ) -> Result<Arc<Tables>, GateError> {
        if let Some((at, kind)) = *loading
            && at.elapsed() < TABLE_FACTS_MISS_INTERVAL
        {
            return self.tables_now().ok_or(GateError::Shared { kind });
        }
        let tables = match self.load_facts().await {
            Ok(t) => Arc::new(t),
            Err(e) => {
                *loading = Some((Instant::now(), e.kind()));
                return Err(e);
            }
        };
        *loading = None;
        *lock(&self.facts) = Some(Arc::clone(&tables));
        Ok(tables)
    }

    /// Reads the facts from the catalog.
    async fn load_facts(&self) -> Result<Tables, GateError> {
        let started = Instant::now();
        let run = async {
            let client = self.pool.get().await.map_err(GateError::Pool)?;
            let stmt = client
                .prepare_cached(TABLE_FACTS_SQL)
                .await
                .map_err(GateError::Db)?;
            client
                .query(&stmt, &[&self.publication])
                .await
                .map_err(GateError::Db)
        };
        let rows = tokio::time::timeout(GATE_TIMEOUT + Duration::from_secs(1), run)
            .await
            .map_err(|_| GateError::Timeout)??;
        let list = rows
            .iter()
            .map(|row| {
                let names: Vec<String> = row.get(4);
                let types: Vec<String> = row.get(5);
                TableFacts {
                    oid: row.get(0),
                    schema: row.get(1),
                    table: row.get(2),
                    published: true,
                    rls_enabled: row.get(3),
                    columns: names.into_iter().zip(types).collect(),
                    primary_key: row.get(6),
                }
            })
            .collect();
        Ok(Tables::read_at(list, started))
    }

    /// Which published tables the role may read, with which columns. Refuses a role that is a
    /// superuser or bypasses row level security ([`GateError::Privileged`]); a role that does
    /// not exist may read nothing. Answers are reused for [`super::ROLE_CHECK_TTL`].
    pub async fn role_tables(&self, role: &str) -> Result<Arc<RoleTables>, GateError> {
        let tables = match self.roles.get(&role.to_owned()) {
            Some(t) => t,
            None => self.recheck_tables(role).await?,
        };
        Self::usable(tables)
    }

    /// [`RlsGate::role_tables`], asked again when the answer does not know the table with this
    /// OID and was asked before `known_since`, when the facts that know the table were read
    /// (the table was added to the publication since the role was asked).
    pub async fn role_tables_knowing(
        &self,
        role: &str,
        oid: u32,
        known_since: Instant,
    ) -> Result<Arc<RoleTables>, GateError> {
        let tables = self.role_tables(role).await?;
        if tables.get(oid).is_some() || tables.at >= known_since {
            return Ok(tables);
        }
        Self::usable(self.recheck_tables(role).await?)
    }

    /// [`RlsGate::role_tables`] asked of Postgres now, not from the cache (a connected client's
    /// periodic re-check); the answer replaces the cached one.
    pub async fn recheck_role(&self, role: &str) -> Result<Arc<RoleTables>, GateError> {
        Self::usable(self.recheck_tables(role).await?)
    }

    /// The role's tables, refused when it may read none: what a `/ws` client must have to
    /// connect as that role.
    pub async fn check_role(&self, role: &str) -> Result<Arc<RoleTables>, GateError> {
        let tables = self.role_tables(role).await?;
        if tables.is_empty() {
            return Err(GateError::Denied {
                role: role.to_owned(),
                what: "any table of walcast's publication".to_owned(),
            });
        }
        Ok(tables)
    }

    /// An answer as a result: a privileged role is refused.
    fn usable(tables: Arc<RoleTables>) -> Result<Arc<RoleTables>, GateError> {
        if tables.privileged {
            return Err(GateError::Privileged {
                role: tables.role.clone(),
            });
        }
        Ok(tables)
    }

    /// Asks Postgres now and caches the answer.
    async fn recheck_tables(&self, role: &str) -> Result<Arc<RoleTables>, GateError> {
        let tables = Arc::new(self.run_role_check(role).await?);
        self.roles.put(role.to_owned(), Arc::clone(&tables));
        Ok(tables)
    }

    /// Runs the role check; an SQL error (a role that does not exist) reads nothing.
    async fn run_role_check(&self, role: &str) -> Result<RoleTables, GateError> {
        let run = async {
            let client = self.pool.get().await.map_err(GateError::Pool)?;
            // Started before the catalog is read: tables published before then are answered.
            let mut answer = RoleTables {
                role: role.to_owned(),
                privileged: false,
                tables: HashMap::new(),
                at: Instant::now(),
            };
            answer.privileged = client
                .query_one(ROLE_PRIVILEGED_SQL, &[&role])
                .await
                .map_err(GateError::Db)?
                .get(0);
            if answer.privileged {
                return Ok(answer);
            }
            let rows = match client
                .query(ROLE_TABLES_SQL, &[&self.publication, &role])
                .await
            {
                Ok(rows) => rows,
                Err(e) if e.as_db_error().is_some() => return Ok(answer),
                Err(e) => return Err(GateError::Db(e)),
            };
            for row in rows {
                let oid: u32 = row.get(0);
                let usage: bool = row.get(1);
                let readable: Vec<String> = row.get(2);
                let total: i64 = row.get(3);
                let has_key: bool = row.get(4);
                let key_readable: bool = row.get(5);
                // A table without a primary key: some readable column is enough to read it.
                let may_read = usage
                    && if has_key {
                        key_readable
                    } else {
                        !readable.is_empty()
                    };
                if !may_read {
                    continue;
                }
                let columns = (readable.len() as i64 != total).then(|| readable.into());
                answer.tables.insert(oid, TableAccess { columns });
            }
            Ok(answer)
        };
        tokio::time::timeout(GATE_TIMEOUT + Duration::from_secs(1), run)
            .await
            .map_err(|_| GateError::Timeout)?
    }
}
