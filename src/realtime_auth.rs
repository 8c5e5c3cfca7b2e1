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
//! UPDATE rows are checked by running, on a pool connection,
//! `begin; set_config('role', <role>, true); set_config('request.jwt.claims', <claims>, true);
//! select id from public.monitoring_events where id = any(<ids>); commit` — one query per
//! transaction (commit LSN) and claims group, however many subscribers share that group. The
//! answer is cached per (claims group, commit LSN) so every subscriber of the group reuses it;
//! concurrent askers for the same key wait for the one query in flight. The check reads the
//! row's *current* version, not the version in the WAL (see `docs/realtime.md`).
//!
//! It never logs tokens or row values, never lets database error text reach a client, and
//! holds no lock across an await except the per-key query lock that serialises one key.

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

/// Sets role and claims for the rest of the transaction.
const SET_CLAIMS_SQL: &str = "select set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), set_config('statement_timeout', $3, true)";

/// The visibility check, run as the subscriber's role: whether the changing transaction (32-bit
/// xid `$2`, widened with the snapshot's epoch) is visible to this statement's snapshot yet,
/// and which of the rows `$1` the role can see.
const VISIBLE_IDS_SQL: &str = "\
with snap as (select pg_current_snapshot() as s),
     x as (select s, pg_snapshot_xmax(s)::text::int8 as xmax from snap),
     f as (select s, xmax, ((xmax >> 32) << 32) | $2::int8 as wide from x)
select pg_visible_in_snapshot(
         (case when wide >= xmax and wide >= 4294967296 then wide - 4294967296 else wide end)
           ::text::xid8, s),
       array(select id from public.monitoring_events where id = any($1))
from f";

/// How long the gate waits for a committed transaction to become visible to new snapshots.
/// Postgres may stream a commit a moment before the committing backend has published it to
/// other sessions; without the wait such rows would look invisible.
pub const COMMIT_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// Pause between two looks while waiting for [`COMMIT_VISIBLE_WAIT`].
const COMMIT_VISIBLE_POLL: Duration = Duration::from_millis(5);

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
}

impl GateError {
    /// A low-cardinality label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GateError::Pool(_) => "pool",
            GateError::Db(_) => "db",
            GateError::Timeout => "timeout",
            GateError::Denied { .. } => "denied",
        }
    }
}

/// The cached answer for one (commit LSN, claims group).
#[derive(Debug, Default)]
struct Answer {
    /// Ids checked so far and whether each is visible.
    known: Mutex<HashMap<Uuid, bool>>,
    /// Held while a query for this key runs, so concurrent askers wait instead of querying.
    query: tokio::sync::Mutex<()>,
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
    /// Role checks: when, and what the role may read.
    roles: Mutex<HashMap<Arc<ClaimsGroup>, (Instant, RoleAccess)>>,
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
            roles: Mutex::new(HashMap::new()),
        }
    }

    /// Visibility queries run so far.
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
        let cached = lock(&self.roles)
            .get(group)
            .filter(|(at, _)| at.elapsed() < ROLE_CHECK_TTL)
            .map(|(_, access)| access.clone());
        let access = match cached {
            Some(access) => access,
            None => {
                let access = self.run_role_check(group).await?;
                let mut roles = lock(&self.roles);
                if roles.len() >= MAX_CACHED_ROLE_CHECKS {
                    roles.clear();
                }
                roles.insert(Arc::clone(group), (Instant::now(), access.clone()));
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
    /// see. Ids already answered for this key come from the cache; the rest are checked with
    /// one query, shared with concurrent askers of the same key.
    pub async fn visible(
        &self,
        group: &Arc<ClaimsGroup>,
        lsn: Lsn,
        xid: u32,
        ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, GateError> {
        let answer = self.answer(group, lsn);
        if let Some(v) = answer.lookup(ids) {
            return Ok(v);
        }
        let _running = answer.query.lock().await;
        let missing = answer.missing(ids);
        if !missing.is_empty() {
            let found = self.query_visible(group, xid, &missing).await?;
            answer.record(&missing, &found);
        }
        Ok(answer.lookup(ids).unwrap_or_default())
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

    /// Runs the visibility query as the group's role, once the transaction `xid` is visible
    /// (each statement of the transaction takes a fresh snapshot, so a retry sees newer
    /// commits).
    async fn query_visible(
        &self,
        group: &ClaimsGroup,
        xid: u32,
        ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, GateError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let xid = i64::from(xid);
        let run = async {
            let mut client = self.pool.get().await.map_err(GateError::Pool)?;
            let tx = client.transaction().await.map_err(GateError::Db)?;
            set_claims(&tx, group).await.map_err(GateError::Db)?;
            let started = Instant::now();
            let found = loop {
                let row = tx
                    .query_one(VISIBLE_IDS_SQL, &[&ids, &xid])
                    .await
                    .map_err(GateError::Db)?;
                let committed: bool = row.get(0);
                if committed || started.elapsed() >= COMMIT_VISIBLE_WAIT {
                    if !committed {
                        tracing::debug!(xid, "realtime gate: transaction still not visible");
                    }
                    break row.get::<_, Vec<Uuid>>(1);
                }
                tokio::time::sleep(COMMIT_VISIBLE_POLL).await;
            };
            tx.commit().await.map_err(GateError::Db)?;
            Ok::<_, GateError>(found.into_iter().collect())
        };
        tokio::time::timeout(
            GATE_TIMEOUT + COMMIT_VISIBLE_WAIT + Duration::from_secs(1),
            run,
        )
        .await
        .map_err(|_| GateError::Timeout)?
    }
}

/// Sets role, claims and the statement timeout for the rest of the transaction.
async fn set_claims(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &ClaimsGroup,
) -> Result<(), tokio_postgres::Error> {
    let timeout = format!("{}ms", GATE_TIMEOUT.as_millis());
    tx.query(SET_CLAIMS_SQL, &[&group.role, &group.claims_json, &timeout])
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
