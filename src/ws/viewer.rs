//! Who a `/ws` client is, and what it may see.
//!
//! Unless walcast runs with `--insecure-no-auth`, `/ws` needs credentials before it upgrades,
//! read like every HTTP API's ([`crate::auth::Credentials`]): a user JWT (`Authorization:
//! Bearer`, or the `access_token` query parameter for browsers) and/or an API key (an `apikey`
//! header or query parameter: a JWT, or a configured `sb_publishable_…` / `sb_secret_…` key).
//! `service_role` sees every change of every table of walcast's publication. Any other role
//! sees exactly what its row level security policies and privileges let it read, table by
//! table, asked of Postgres by the same batched gate as the Realtime endpoint
//! ([`crate::access`]): changes of a table only if it may read that table (USAGE on the schema,
//! SELECT on the primary key), with the columns it may read; an INSERT or UPDATE only if the row
//! (its current version) is visible to the role; a DELETE with the old row cut to the primary
//! key when the table has row level security (the row is gone and cannot be checked); a
//! TRUNCATE. Tables it may not read, and tables without a primary key (their rows cannot be
//! checked), are left out of its stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};

use crate::access::view::restrict;
use crate::access::{Ask, ClaimsGroup, GateError, RlsGate, RowKey, TableAccess, row_key};
use crate::auth::{Auth, Credentials, TokenProblem, authenticate};
use crate::catalog::{TableFacts, Tables};
use crate::decode::{Change, Lsn, Operation};
use crate::error::ApiError;

/// A connected client that is not `service_role`.
#[derive(Debug, Clone)]
pub struct RoleView {
    /// The token's role.
    pub role: String,
    /// The token's expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Role and claims, as the gate asks with them.
    pub group: Arc<ClaimsGroup>,
}

/// What to send for one change.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing: the role may not see it.
    Skip,
    /// The frame every client gets (encoded once).
    Shared,
    /// A frame of the change as this role sees it.
    Own(Change),
}

/// Who is connecting: `Ok(None)` sees everything (no secret configured, or `service_role`);
/// `Ok(Some(view))` sees what its role may read; `Err` is the HTTP refusal.
pub async fn authorize(
    auth: &Auth,
    gate: &RlsGate,
    headers: &HeaderMap,
    query: Option<&str>,
    now: i64,
) -> Result<Option<RoleView>, ApiError> {
    let Some(verifier) = auth.verifier() else {
        return Ok(None);
    };
    let unauthorized = |p: TokenProblem| {
        ApiError::new(StatusCode::UNAUTHORIZED, p.code(), p.to_string()).with(
            "hint",
            "send a token: Authorization: Bearer <jwt>, an apikey header, or ?apikey=<jwt or \
             sb_ key> (and ?access_token=<user jwt>)",
        )
    };
    let token = authenticate(verifier, &Credentials::read(headers, query), now)
        .await
        .map_err(unauthorized)?;
    if token.is_service_role() {
        return Ok(None);
    }
    let group = ClaimsGroup::of(&token);
    gate.check_role(&token.role).await.map_err(refusal)?;
    Ok(Some(RoleView {
        role: token.role,
        exp: token.exp,
        group,
    }))
}

/// A failed role check as an HTTP refusal.
pub fn refusal(e: GateError) -> ApiError {
    match e {
        GateError::Denied { .. } | GateError::Privileged { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
        other => {
            tracing::warn!(error = %other, kind = other.kind(), "/ws: role check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the row level security check cannot reach Postgres; retry",
            )
        }
    }
}

/// What the role may read of one change's table, once known.
#[derive(Debug, Clone)]
enum Readable {
    /// Nothing: the table is unknown, not readable by the role, or has no primary key.
    No,
    /// The table (the facts that know it, and its OID), with the columns the role may read.
    Yes(Arc<Tables>, u32, TableAccess),
}

impl Readable {
    /// The facts of the table and what the role may read of it, if it may.
    fn read(&self) -> Option<(&TableFacts, &TableAccess)> {
        match self {
            Readable::No => None,
            Readable::Yes(tables, oid, access) => Some((tables.by_oid(*oid)?, access)),
        }
    }
}

/// What the role may read of `change`'s table, received by the session before `seen` (facts
/// read again when they do not know it).
async fn readable(
    gate: &RlsGate,
    role: &str,
    tables: &mut Arc<Tables>,
    change: &Change,
    seen: Instant,
) -> Result<Readable, GateError> {
    let rel = &change.relation;
    if tables.of(rel.oid, &rel.schema, &rel.table).is_none() {
        *tables = gate
            .tables_knowing(rel.oid, &rel.schema, &rel.table, seen)
            .await?;
    }
    let Some(facts) = tables.of(rel.oid, &rel.schema, &rel.table) else {
        return Ok(Readable::No);
    };
    if !facts.has_primary_key() {
        return Ok(Readable::No);
    }
    let access = gate
        .role_tables_knowing(role, facts.oid, tables.started())
        .await?;
    Ok(match access.get(facts.oid) {
        // Shared by every change of the batch on this table (the facts hold the column lists).
        Some(a) => Readable::Yes(Arc::clone(tables), facts.oid, a.clone()),
        None => Readable::No,
    })
}

/// What `view` may see of each change: one call of the gate for every commit among them.
pub async fn verdicts(
    gate: &RlsGate,
    view: &RoleView,
    changes: &[&Change],
) -> Result<Vec<Verdict>, GateError> {
    // 1. What the role may read of each change's table, and the rows to ask about, by commit:
    // each change's row is at (ask, position) of the asks.
    let seen = Instant::now();
    let mut tables = gate.tables_for_delivery().await?;
    let mut known: HashMap<u32, Readable> = HashMap::new();
    let mut reads: Vec<(Readable, Option<(usize, usize)>)> = Vec::with_capacity(changes.len());
    let mut asks: Vec<(Lsn, u32, Vec<RowKey>)> = Vec::new();
    let mut ask_of: HashMap<Lsn, usize> = HashMap::new();
    for c in changes {
        // A gap carries no row and names no table: nothing to look up.
        if c.op == Operation::Gap {
            reads.push((Readable::No, None));
            continue;
        }
        let r = match known.get(&c.relation.oid) {
            Some(r) => r.clone(),
            None => {
                let r = readable(gate, &view.role, &mut tables, c, seen).await?;
                known.insert(c.relation.oid, r.clone());
                r
            }
        };
        let mut at = None;
        if let Some((facts, _)) = r.read()
            && matches!(c.op, Operation::Insert | Operation::Update)
            && let Some(key) = row_key(c, facts)
        {
            let lsn = c.cursor.commit_lsn;
            let a = *ask_of.entry(lsn).or_insert_with(|| {
                asks.push((lsn, c.xid, Vec::new()));
                asks.len() - 1
            });
            asks[a].2.push(key);
            at = Some((a, asks[a].2.len() - 1));
        }
        reads.push((r, at));
    }
    // 2. Ask.
    let questions: Vec<Ask<'_>> = asks
        .iter()
        .map(|(lsn, xid, ids)| Ask {
            group: &view.group,
            lsn: *lsn,
            xid: *xid,
            ids,
        })
        .collect();
    let answers = gate
        .visible_all(&questions)
        .await
        .into_iter()
        .collect::<Result<Vec<Vec<bool>>, GateError>>()?;
    // 3. Decide.
    Ok(changes
        .iter()
        .zip(reads)
        .map(|(c, (r, at))| {
            // A gap carries no row: every role hears of it.
            if c.op == Operation::Gap {
                return Verdict::Shared;
            }
            let Some((facts, access)) = r.read() else {
                return Verdict::Skip;
            };
            let columns = access.columns.as_deref();
            match c.op {
                Operation::Truncate | Operation::Gap => Verdict::Shared,
                Operation::Delete => Verdict::Own(restrict(c, columns, Some(facts))),
                Operation::Insert | Operation::Update => {
                    let seen = at.is_some_and(|(a, p)| answers[a].get(p).copied() == Some(true));
                    match (seen, columns) {
                        (false, _) => Verdict::Skip,
                        (true, None) => Verdict::Shared,
                        (true, Some(cols)) => Verdict::Own(restrict(c, Some(cols), Some(facts))),
                    }
                }
            }
        })
        .collect())
}
