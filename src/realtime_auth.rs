//! Authorization for the Supabase Realtime endpoint: token checks and the row level security
//! gate.
//!
//! This module owns two decisions. [`verify_token`] decides whether a JWT is acceptable (HS256,
//! HS384 or HS512 with the server's secret; `role` and `exp` required; `exp` in the future) and
//! names the problem the way Realtime clients expect ([`TokenProblem`]). [`RlsGate`] decides
//! which changed rows a role may see, by asking Postgres with that role's own policies.
//!
//! # The gate
//!
//! `service_role` sees everything and never reaches the gate. For any other role, INSERT and
//! UPDATE rows are checked in Postgres by `walcast.realtime_visible_ids` (a migration), which
//! for each claims group sets `role` and `request.jwt.claims` transaction-locally and selects
//! the asked ids from `public.monitoring_events` under that role's policies. One call covers
//! every check waiting, across commits and claims groups: a session whose check is not answered
//! yet queues it and takes its turn; the turn's holder runs one call for everything queued, so
//! checks that arrive while a call runs are all answered by the next one. However many
//! subscribers, distinct users and commits there are, one call is in flight at a time.
//! Answers are cached per (claims group, commit LSN), so every subscriber of a group reuses
//! them. The check reads the row's *current* version, not the version in the WAL (see
//! `docs/realtime.md`).
//!
//! # Private channels
//!
//! [`RlsGate::private_channel_access`] and [`RlsGate::private_channel_write`] decide who may
//! read and write a private Broadcast/Presence channel by asking the policies of Supabase's
//! `realtime.messages` table with probe rows in transactions that are always rolled back
//! (see `docs/realtime.md`). A database without that table has no such policies.
//!
//! It never logs tokens or row values, never lets database error text reach a client, and
//! holds no lock across an await (waiters for a call park on a notification, not a lock).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::decode::Lsn;
use crate::metrics::Metrics;
use crate::protocol::realtime::{TableFacts, TokenProblem};

/// The role that bypasses the gate and sees every change.
pub const SERVICE_ROLE: &str = "service_role";

/// Schema of the one table the Realtime endpoint serves.
pub const REALTIME_SCHEMA: &str = "public";

/// The one table the Realtime endpoint serves.
pub const REALTIME_TABLE: &str = "monitoring_events";

/// How long table facts (columns, primary key, RLS flag, publication membership) are reused
/// before they are read again.
pub const TABLE_FACTS_TTL: Duration = Duration::from_secs(30);

/// How long a role check (may this role read the table at all) is reused.
pub const ROLE_CHECK_TTL: Duration = Duration::from_secs(60);

/// Most (commit LSN, claims group) answers kept. A transaction's answers are needed only while
/// sessions read that transaction from the hub, so a few thousand cover every session that is
/// not about to be closed for lagging anyway.
pub const MAX_CACHED_ANSWERS: usize = 4096;

/// Most role check results kept (the cache is cleared when full).
pub const MAX_CACHED_ROLE_CHECKS: usize = 4096;

/// Time limit of one gate statement (set as `statement_timeout`) and, with a margin, of one
/// gate round trip.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// `statement_timeout` of every gate transaction: [`GATE_TIMEOUT`].
fn statement_timeout() -> String {
    format!("{}ms", GATE_TIMEOUT.as_millis())
}

/// The batched visibility check: `$1` xids, `$2` ids, `$3` roles, `$4` claims, `$5` wait (ms).
const VISIBLE_IDS_SQL: &str =
    "select grp, id, problem from walcast.realtime_visible_ids($1, $2, $3, $4, $5)";

/// Sets role and claims for the rest of the transaction.
const SET_CLAIMS_SQL: &str = "select set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), set_config('statement_timeout', $3, true)";

/// How long the gate waits for a committed transaction to become visible to new snapshots.
/// Postgres may stream a commit a moment before the committing backend has published it to
/// other sessions; without the wait such rows would look invisible.
pub const COMMIT_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// Whether the role may read the table's primary key at all (privileges, not policies).
const ROLE_CHECK_SQL: &str = "select id from public.monitoring_events limit 0";

/// The columns a role may read, and how many columns the table has.
const COLUMN_PRIVILEGES_SQL: &str = "\
select coalesce(array_agg(a.attname::text order by a.attnum)
                  filter (where has_column_privilege($1, a.attrelid, a.attname, 'SELECT')),
                '{}'),
       count(*)
from pg_attribute a
where a.attrelid = 'public.monitoring_events'::regclass and a.attnum > 0 and not a.attisdropped";

/// What a role may read of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleAccess {
    /// Nothing: the role does not exist or may not read the primary key.
    Denied,
    /// Every column.
    All,
    /// Only these columns.
    Columns(Arc<[String]>),
}

/// Facts about the served table and whether walcast's publication includes it.
const TABLE_FACTS_SQL: &str = "\
select c.relrowsecurity,
       exists (select 1 from pg_publication_tables p
               where p.pubname = $1 and p.schemaname = 'public'
                 and p.tablename = 'monitoring_events') as published,
       array(select a.attname::text from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             order by a.attnum) as names,
       array(select t.typname::text from pg_attribute a join pg_type t on t.oid = a.atttypid
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             order by a.attnum) as types,
       array(select a.attname::text from pg_index i
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = c.oid and i.indisprimary
             order by a.attnum) as pk
from pg_class c
where c.oid = to_regclass('public.monitoring_events')";

/// Who a subscriber is, for row level security: the role and the full claims. Subscribers with
/// equal groups see the same rows, so they share the gate's answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimsGroup {
    /// The `role` claim (a Postgres role).
    pub role: String,
    /// All claims as compact JSON (keys sorted), passed as `request.jwt.claims`.
    pub claims_json: String,
}

/// An accepted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The `role` claim.
    pub role: String,
    /// The `exp` claim, seconds since the Unix epoch.
    pub exp: i64,
    /// Role and claims, shared by every subscriber holding equal claims.
    pub group: Arc<ClaimsGroup>,
}

impl TokenClaims {
    /// Whether the role sees every change without the gate.
    pub fn is_service_role(&self) -> bool {
        self.role == SERVICE_ROLE
    }
}

/// Checks a token at time `now` (seconds since the Unix epoch).
pub fn verify_token(secret: &str, token: &str, now: i64) -> Result<TokenClaims, TokenProblem> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenProblem::Missing);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let data = jsonwebtoken::decode::<Map<String, Value>>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenProblem::BadSignature,
        _ => TokenProblem::Malformed,
    })?;
    let claims = data.claims;
    let role = claims.get("role").and_then(Value::as_str);
    let exp = claims.get("exp").and_then(number_as_i64);
    let (Some(role), Some(exp)) = (role, exp) else {
        return Err(TokenProblem::MissingClaims);
    };
    if claims
        .get("iat")
        .is_some_and(|v| number_as_i64(v).is_none())
    {
        return Err(TokenProblem::Malformed);
    }
    if exp <= now {
        return Err(TokenProblem::Expired {
            seconds_ago: u64::try_from(now - exp).unwrap_or(0),
        });
    }
    let role = role.to_owned();
    Ok(TokenClaims {
        group: Arc::new(ClaimsGroup {
            role: role.clone(),
            claims_json: Value::Object(claims).to_string(),
        }),
        role,
        exp,
    })
}

/// A JSON number as whole seconds (fractions are cut).
fn number_as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// Why the gate could not answer.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No pool connection.
    #[error("no database connection for the row level security check")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The statement failed.
    #[error("the row level security check failed")]
    Db(#[source] tokio_postgres::Error),
    /// The round trip took longer than [`GATE_TIMEOUT`].
    #[error("the row level security check timed out")]
    Timeout,
    /// The role may not read the table (or does not exist).
    #[error("role {role:?} may not read public.monitoring_events")]
    Denied {
        /// The role.
        role: String,
    },
    /// The shared check that covered this commit and group failed (its cause was logged by
    /// the session that ran it).
    #[error("the shared row level security check for this commit failed ({kind})")]
    Shared {
        /// The failed check's [`GateError::kind`].
        kind: &'static str,
    },
}

impl GateError {
    /// A low-cardinality label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GateError::Pool(_) => "pool",
            GateError::Db(_) => "db",
            GateError::Timeout => "timeout",
            GateError::Denied { .. } => "denied",
            GateError::Shared { kind } => kind,
        }
    }
}

/// The cached answer for one (commit LSN, claims group).
#[derive(Debug, Default)]
struct Answer {
    /// Ids checked so far and whether each is visible.
    known: Mutex<HashMap<Uuid, bool>>,
    /// Set when the check that covered this key failed.
    failed: Mutex<Option<&'static str>>,
}

impl Answer {
    /// The visible ids among `ids`, or `None` when some are not known yet.
    fn lookup(&self, ids: &[Uuid]) -> Option<HashSet<Uuid>> {
        let known = lock(&self.known);
        let mut visible = HashSet::new();
        for id in ids {
            match known.get(id) {
                Some(true) => {
                    visible.insert(*id);
                }
                Some(false) => {}
                None => return None,
            }
        }
        Some(visible)
    }

    /// The ids among `ids` not known yet (each once).
    fn missing(&self, ids: &[Uuid]) -> Vec<Uuid> {
        let known = lock(&self.known);
        let mut seen = HashSet::new();
        ids.iter()
            .filter(|id| !known.contains_key(id) && seen.insert(**id))
            .copied()
            .collect()
    }

    /// Records a query's result.
    fn record(&self, asked: &[Uuid], visible: &HashSet<Uuid>) {
        let mut known = lock(&self.known);
        for id in asked {
            known.insert(*id, visible.contains(id));
        }
    }

    /// Records that the check covering this key failed.
    fn fail(&self, kind: &'static str) {
        *lock(&self.failed) = Some(kind);
    }
}

/// One check asked of [`RlsGate::visible_all`]: may `group` see rows `ids` of transaction
/// `xid`, committed at `lsn`?
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Who asks.
    pub group: &'a Arc<ClaimsGroup>,
    /// The commit.
    pub lsn: Lsn,
    /// The transaction that wrote the rows.
    pub xid: u32,
    /// The rows.
    pub ids: &'a [Uuid],
}

/// A check waiting for the next call.
#[derive(Debug)]
struct Pending {
    /// Who asks.
    group: Arc<ClaimsGroup>,
    /// Where the answer goes (one per commit and group).
    answer: Arc<Answer>,
    /// The transaction that wrote the rows.
    xid: u32,
    /// The ids not known yet.
    ids: Vec<Uuid>,
}

/// The checks waiting, and whether a call is running.
#[derive(Debug, Default)]
struct QueueState {
    /// Checks not yet taken by a call.
    pending: Vec<Pending>,
    /// A call is running; the next one starts when it ends.
    in_flight: bool,
}

/// The gate's queue of checks (see the module docs).
#[derive(Debug, Default)]
struct CheckQueue {
    /// Pending checks and the running flag.
    state: Mutex<QueueState>,
    /// Woken whenever a call ends: waiters look for their answers, one leads the next call.
    done: tokio::sync::Notify,
}

/// A running call. Ending it, normally or because the asker went away mid-call, clears the
/// running flag and wakes every waiter; checks of a call that did not finish go back to the
/// queue, so no waiter is left without an answer.
struct InFlight<'a> {
    /// The queue.
    queue: &'a CheckQueue,
    /// The call's checks while it has not finished.
    batch: Option<Vec<Pending>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.queue.state);
            if let Some(batch) = self.batch.take() {
                state.pending.extend(batch);
            }
            state.in_flight = false;
        }
        self.queue.done.notify_waiters();
    }
}

/// Answers by key, oldest first for eviction.
#[derive(Debug, Default)]
struct AnswerCache {
    /// The answers.
    entries: HashMap<(Lsn, Arc<ClaimsGroup>), Arc<Answer>>,
    /// Insertion order.
    order: VecDeque<(Lsn, Arc<ClaimsGroup>)>,
}

/// Table facts and when they were read.
#[derive(Debug, Clone)]
struct CachedFacts {
    /// When they were read.
    at: Instant,
    /// The facts.
    facts: Arc<TableFacts>,
}

/// The shared row level security gate (see the module docs).
#[derive(Debug)]
pub struct RlsGate {
    /// Connections for the checks.
    pool: Pool,
    /// walcast's publication.
    publication: String,
    /// Visibility queries run.
    queries: AtomicU64,
    /// Table facts.
    facts: Mutex<Option<CachedFacts>>,
    /// Serialises facts reloads.
    facts_load: tokio::sync::Mutex<()>,
    /// Visibility answers.
    answers: Mutex<AnswerCache>,
    /// Checks waiting for a call.
    queue: CheckQueue,
    /// Role checks: what the role may read.
    roles: TtlCache<Arc<ClaimsGroup>, RoleAccess>,
    /// Private channel read checks: what the role may read on the topic.
    channel_reads: TtlCache<ReadKey, ChannelAccess>,
    /// Where calls, checks, durations and failures are counted (`walcast_realtime_rls_*`).
    metrics: Option<Arc<Metrics>>,
}

/// Answers reused for [`ROLE_CHECK_TTL`]; cleared when [`MAX_CACHED_ROLE_CHECKS`] are held.
#[derive(Debug)]
struct TtlCache<K, V> {
    /// Answers and when they were asked.
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    /// An empty cache.
    fn new() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key` if it is recent enough.
    fn get(&self, key: &K) -> Option<V> {
        lock(&self.entries)
            .get(key)
            .filter(|(at, _)| at.elapsed() < ROLE_CHECK_TTL)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `value` for `key`.
    fn put(&self, key: K, value: V) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_CACHED_ROLE_CHECKS {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }
}

/// Locks a std mutex; a poisoned lock still holds consistent data here (every critical section
/// is a plain map update).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RlsGate {
    /// A gate using `pool`, for walcast's `publication`.
    pub fn new(pool: Pool, publication: &str) -> Self {
        RlsGate {
            pool,
            publication: publication.to_owned(),
            queries: AtomicU64::new(0),
            facts: Mutex::new(None),
            facts_load: tokio::sync::Mutex::new(()),
            answers: Mutex::new(AnswerCache::default()),
            queue: CheckQueue::default(),
            roles: TtlCache::new(),
            channel_reads: TtlCache::new(),
            metrics: None,
        }
    }

    /// The gate counting its calls in `metrics` (`walcast_realtime_rls_*` on `GET /metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Visibility calls run so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
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

    /// Checks that the group's role may read the table (the role exists and may `SELECT` the
    /// primary key) and returns the columns it may read: `None` when it may read all of them.
    /// Results are reused for [`ROLE_CHECK_TTL`].
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
        match access {
            RoleAccess::Denied => Err(GateError::Denied {
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

    /// The ids among `ids` (rows of transaction `xid`, committed at `lsn`) that the group may
    /// see. Ids already answered for this key come from the cache; the rest wait for the next
    /// batched call (see the module docs).
    pub async fn visible(
        &self,
        group: &Arc<ClaimsGroup>,
        lsn: Lsn,
        xid: u32,
        ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, GateError> {
        let ask = Ask {
            group,
            lsn,
            xid,
            ids,
        };
        let mut out = self.visible_all(std::slice::from_ref(&ask)).await;
        out.pop().unwrap_or_else(|| Ok(HashSet::new()))
    }

    /// [`RlsGate::visible`] for several checks at once (a session's commits and groups): all are
    /// queued together, so one call answers them all. One result per ask, in order.
    pub async fn visible_all(&self, asks: &[Ask<'_>]) -> Vec<Result<HashSet<Uuid>, GateError>> {
        let answers: Vec<Arc<Answer>> = asks.iter().map(|a| self.answer(a.group, a.lsn)).collect();
        let mut out: Vec<Option<Result<HashSet<Uuid>, GateError>>> =
            asks.iter().map(|_| None).collect();
        let queue = &self.queue;
        {
            let mut state = lock(&queue.state);
            for (i, (ask, answer)) in asks.iter().zip(&answers).enumerate() {
                match answer.lookup(ask.ids) {
                    Some(v) => out[i] = Some(Ok(v)),
                    None => state.pending.push(Pending {
                        group: Arc::clone(ask.group),
                        answer: Arc::clone(answer),
                        xid: ask.xid,
                        ids: answer.missing(ask.ids),
                    }),
                }
            }
        }
        loop {
            // Registered before looking, so a call ending in between still wakes us.
            let done = queue.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let batch = {
                let mut state = lock(&queue.state);
                let mut open = false;
                for (i, (ask, answer)) in asks.iter().zip(&answers).enumerate() {
                    if out[i].is_some() {
                        continue;
                    }
                    if let Some(v) = answer.lookup(ask.ids) {
                        out[i] = Some(Ok(v));
                    } else if let Some(kind) = *lock(&answer.failed) {
                        out[i] = Some(Err(GateError::Shared { kind }));
                    } else {
                        open = true;
                    }
                }
                if !open {
                    break;
                }
                if state.in_flight {
                    None
                } else {
                    // Some check is still pending: run one call for everything pending.
                    state.in_flight = true;
                    Some(
                        std::mem::take(&mut state.pending)
                            .into_iter()
                            .filter(|p| !p.answer.missing(&p.ids).is_empty())
                            .collect::<Vec<_>>(),
                    )
                }
            };
            let Some(batch) = batch else {
                done.await;
                continue;
            };
            let mut call = InFlight {
                queue,
                batch: Some(batch),
            };
            let batch = call.batch.as_deref().unwrap_or_default();
            if let Err(e) = self.check_batch(batch).await {
                tracing::warn!(error = %e, kind = e.kind(), checks = batch.len(), "realtime: row level security check failed");
                for p in batch {
                    p.answer.fail(e.kind());
                }
            }
            call.batch = None;
            drop(call);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(HashSet::new())))
            .collect()
    }

    /// The answer slot of a key, created (and the oldest evicted) when new.
    fn answer(&self, group: &Arc<ClaimsGroup>, lsn: Lsn) -> Arc<Answer> {
        let mut cache = lock(&self.answers);
        let key = (lsn, Arc::clone(group));
        if let Some(a) = cache.entries.get(&key) {
            return Arc::clone(a);
        }
        while cache.order.len() >= MAX_CACHED_ANSWERS {
            if let Some(old) = cache.order.pop_front() {
                cache.entries.remove(&old);
            }
        }
        let a = Arc::new(Answer::default());
        cache.entries.insert(key.clone(), Arc::clone(&a));
        cache.order.push_back(key);
        a
    }

    /// One call of `walcast.realtime_visible_ids` for every check in `batch`, recording each
    /// (commit, group) answer for all the ids asked; a group whose check failed in Postgres is
    /// marked failed ("denied") without failing the others.
    async fn check_batch(&self, batch: &[Pending]) -> Result<(), GateError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Distinct groups, each with its distinct answers (one per commit) and the ids asked of
        // each; all ids and xids.
        type Asked<'b> = (&'b Arc<Answer>, Vec<Uuid>);
        let mut index: HashMap<&ClaimsGroup, usize> = HashMap::new();
        let mut groups: Vec<(&ClaimsGroup, Vec<Asked<'_>>)> = Vec::new();
        let mut slot: HashMap<usize, usize> = HashMap::new();
        let (mut ids, mut seen): (Vec<Uuid>, _) = (Vec::new(), HashSet::new());
        let (mut xids, mut seen_xids): (Vec<i64>, _) = (Vec::new(), HashSet::new());
        for p in batch {
            let i = *index.entry(&*p.group).or_insert_with(|| {
                groups.push((&*p.group, Vec::new()));
                groups.len() - 1
            });
            let answers = &mut groups[i].1;
            let j = *slot
                .entry(Arc::as_ptr(&p.answer) as usize)
                .or_insert_with(|| {
                    answers.push((&p.answer, Vec::new()));
                    answers.len() - 1
                });
            answers[j].1.extend_from_slice(&p.ids);
            ids.extend(p.ids.iter().filter(|id| seen.insert(**id)));
            if seen_xids.insert(p.xid) {
                xids.push(i64::from(p.xid));
            }
        }
        let roles: Vec<&str> = groups.iter().map(|(g, _)| g.role.as_str()).collect();
        let claims: Vec<&str> = groups.iter().map(|(g, _)| g.claims_json.as_str()).collect();
        let wait_ms = COMMIT_VISIBLE_WAIT.as_millis() as i32;
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.realtime_rls_calls.inc();
        }
        let started = Instant::now();
        let run = async {
            let client = self.pool.get().await.map_err(GateError::Pool)?;
            let stmt = client
                .prepare_cached(VISIBLE_IDS_SQL)
                .await
                .map_err(GateError::Db)?;
            // Opens the transaction with the time limit.
            let begin = format!(
                "begin; select set_config('statement_timeout', '{}', true)",
                statement_timeout()
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&xids, &ids, &roles, &claims, &wait_ms];
            // Polled in order on first poll, so the three are sent together: one round trip.
            let (began, rows, ended) = futures::future::join3(
                client.batch_execute(&begin),
                client.query(&stmt, &params),
                client.batch_execute("commit"),
            )
            .await;
            began
                .and(rows)
                .and_then(|r| ended.map(|()| r))
                .map_err(GateError::Db)
        };
        let result = tokio::time::timeout(
            GATE_TIMEOUT + COMMIT_VISIBLE_WAIT + Duration::from_secs(1),
            run,
        )
        .await
        .map_err(|_| GateError::Timeout)
        .and_then(|r| r);
        if let Some(m) = &self.metrics {
            m.realtime_rls_call_seconds
                .observe(started.elapsed().as_secs_f64());
            match &result {
                // One check per (commit, claims group) key of the call.
                Ok(_) => m
                    .realtime_rls_checks
                    .add(groups.iter().map(|(_, a)| a.len() as u64).sum()),
                Err(_) => m.realtime_rls_errors.inc(),
            }
        }
        let rows = result?;
        tracing::debug!(
            checks = batch.len(),
            groups = groups.len(),
            ids = ids.len(),
            xids = xids.len(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "realtime gate: call"
        );
        let mut visible: Vec<HashSet<Uuid>> = vec![HashSet::new(); groups.len()];
        let mut problems: Vec<bool> = vec![false; groups.len()];
        for row in rows {
            let Some(i) = usize::try_from(row.get::<_, i32>(0))
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|i| *i < groups.len())
            else {
                continue;
            };
            match (
                row.get::<_, Option<Uuid>>(1),
                row.get::<_, Option<String>>(2),
            ) {
                (Some(id), None) => {
                    visible[i].insert(id);
                }
                (_, Some(sqlstate)) => {
                    tracing::debug!(role = %groups[i].0.role, sqlstate, "realtime gate: a group's check failed");
                    problems[i] = true;
                }
                (None, None) => {}
            }
        }
        for (i, (_, answers)) in groups.iter().enumerate() {
            for (answer, asked) in answers {
                if problems[i] {
                    answer.fail("denied");
                } else {
                    answer.record(asked, &visible[i]);
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Private channels (Broadcast and Presence authorization)
// ---------------------------------------------------------------------------------------------

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
const MESSAGES_EXISTS_SQL: &str = "select set_config('statement_timeout', $1, true), \
     to_regclass('realtime.messages') is not null";

/// One probe row per extension in `$2` (text array) on topic `$1`, standing for private
/// messages, in Supabase's `realtime.messages` (its other columns have defaults).
const PROBE_INSERT_SQL: &str = "insert into realtime.messages (topic, extension, private) \
     select $1::text, e, true from unnest($2::text[]) as e returning id";

/// Sets role, claims (also the older `request.jwt.claim.sub`/`.role` settings) and the topic
/// that `realtime.topic()` returns, for the rest of the transaction.
const SET_CHANNEL_CLAIMS_SQL: &str = "select set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), \
     set_config('request.jwt.claim.sub', coalesce($2::jsonb ->> 'sub', ''), true), \
     set_config('request.jwt.claim.role', $1, true), \
     set_config('realtime.topic', $3, true)";

/// Reads back probe rows (`$1` ids) under the current role's policies.
const PROBE_READ_SQL: &str = "select extension::text from realtime.messages where id = any($1)";

/// Whether a database error is the role being refused (privileges, policies, an unknown role)
/// rather than the database failing (connection, resources, timeouts, internal errors).
fn is_refusal(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        !matches!(class, "08" | "40" | "53" | "57" | "58" | "XX")
    })
}

impl RlsGate {
    /// What the group may read on private channel `sub_topic` (the topic without
    /// `realtime:`), asked of the `realtime.messages` policies the way Supabase Realtime asks
    /// them; `presence` also asks about presence. Results are reused for [`ROLE_CHECK_TTL`].
    ///
    /// In a transaction that is always rolled back, walcast inserts one probe row per
    /// extension (as its own database user, so the role needs no INSERT policy to read), then
    /// sets `role`, `request.jwt.claims` and `realtime.topic` and selects the probes back as the
    /// role: a probe it can see is an extension it may read.
    pub async fn private_channel_access(
        &self,
        group: &Arc<ClaimsGroup>,
        sub_topic: &str,
        presence: bool,
    ) -> Result<ChannelAccess, GateError> {
        let key = (Arc::clone(group), sub_topic.to_owned(), presence);
        if let Some(access) = self.channel_reads.get(&key) {
            return Ok(access);
        }
        let access = tokio::time::timeout(
            GATE_TIMEOUT + Duration::from_secs(1),
            self.run_channel_read(group, sub_topic, presence),
        )
        .await
        .map_err(|_| GateError::Timeout)??;
        self.channel_reads.put(key, access);
        Ok(access)
    }

    /// Whether the group may write `extension` messages on private channel `sub_topic`: an
    /// INSERT into `realtime.messages` as the role, under a savepoint of a transaction that is
    /// always rolled back. A refusal (privileges, policies) is `false`; so is a database
    /// without `realtime.messages`. The channel keeps the answer until its claims change.
    pub async fn private_channel_write(
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

    /// Runs one read check (see [`RlsGate::private_channel_access`]).
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

/// Sets role, claims and the statement timeout for the rest of the transaction.
async fn set_claims(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &ClaimsGroup,
) -> Result<(), tokio_postgres::Error> {
    tx.query(
        SET_CLAIMS_SQL,
        &[&group.role, &group.claims_json, &statement_timeout()],
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn sign(alg: Algorithm, claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn accepts_hs_tokens_with_role_and_exp() {
        let now = 1_000_000;
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = sign(
                alg,
                json!({"role":"anon","exp":now + 60,"sub":"u1"}),
                SECRET,
            );
            let c = verify_token(SECRET, &format!(" {t} "), now).unwrap();
            assert_eq!(c.role, "anon");
            assert_eq!(c.exp, now + 60);
            assert_eq!(c.group.role, "anon");
            let claims: Value = serde_json::from_str(&c.group.claims_json).unwrap();
            assert_eq!(claims["sub"], "u1");
            assert!(!c.is_service_role());
        }
        // Equal claims, equal groups.
        let a = verify_token(
            SECRET,
            &sign(
                Algorithm::HS256,
                json!({"role":"x","exp":now+9,"a":1,"b":2}),
                SECRET,
            ),
            now,
        )
        .unwrap();
        let b = verify_token(
            SECRET,
            &sign(
                Algorithm::HS256,
                json!({"b":2,"a":1,"exp":now+9,"role":"x"}),
                SECRET,
            ),
            now,
        )
        .unwrap();
        assert_eq!(a.group, b.group);
    }

    #[test]
    fn names_each_problem() {
        let now = 1_000_000;
        assert_eq!(verify_token(SECRET, " ", now), Err(TokenProblem::Missing));
        assert_eq!(
            verify_token(SECRET, "nope", now),
            Err(TokenProblem::Malformed)
        );
        assert_eq!(
            verify_token(SECRET, "a.b.c", now),
            Err(TokenProblem::Malformed)
        );
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 60}),
            "another-secret-another-secret-xx",
        );
        assert_eq!(
            verify_token(SECRET, &t, now),
            Err(TokenProblem::BadSignature)
        );
        let t = sign(Algorithm::HS256, json!({"exp":now + 60}), SECRET);
        assert_eq!(
            verify_token(SECRET, &t, now),
            Err(TokenProblem::MissingClaims)
        );
        let t = sign(Algorithm::HS256, json!({"role":"anon"}), SECRET);
        assert_eq!(
            verify_token(SECRET, &t, now),
            Err(TokenProblem::MissingClaims)
        );
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":"soon"}),
            SECRET,
        );
        assert_eq!(
            verify_token(SECRET, &t, now),
            Err(TokenProblem::MissingClaims)
        );
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 5,"iat":"x"}),
            SECRET,
        );
        assert_eq!(verify_token(SECRET, &t, now), Err(TokenProblem::Malformed));
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now - 7}),
            SECRET,
        );
        assert_eq!(
            verify_token(SECRET, &t, now),
            Err(TokenProblem::Expired { seconds_ago: 7 })
        );
        let t = sign(Algorithm::HS256, json!({"role":"anon","exp":now}), SECRET);
        assert_eq!(
            verify_token(SECRET, &t, now),
            Err(TokenProblem::Expired { seconds_ago: 0 })
        );
    }

    #[test]
    fn answers_track_known_ids() {
        let a = Answer::default();
        let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(a.lookup(&[x]), None);
        assert_eq!(a.missing(&[x, x, y]), vec![x, y]);
        a.record(&[x, y], &HashSet::from([x]));
        assert_eq!(a.lookup(&[x, y]), Some(HashSet::from([x])));
        assert!(a.missing(&[x, y]).is_empty());
    }
}
