//! Who a `/ws` client is, and what it may see.
//!
//! Unless walcast runs with `--insecure-no-auth`, `/ws` needs credentials before it upgrades,
//! read like every HTTP API's ([`crate::auth::Credentials`]): a user JWT (`Authorization:
//! Bearer`, or the `access_token` query parameter for browsers) and/or an API key (an `apikey`
//! header or query parameter: a JWT, or a configured `sb_publishable_…` / `sb_secret_…` key).
//! `service_role` sees every change. Any other role sees exactly what
//! its row level security policies and column privileges let it read, asked of Postgres by the
//! same batched gate as the Realtime endpoint ([`crate::access`]): an INSERT or UPDATE only if
//! the row (its current version) is visible to the role, with the columns it may read; a
//! DELETE with the old row cut to the primary key when the table has row level security (the
//! row is gone and cannot be checked); a TRUNCATE (the role may read the table). Changes of
//! other tables are not sent to such roles.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use uuid::Uuid;

use crate::access::view::restrict;
use crate::access::{Ask, ClaimsGroup, GateError, RlsGate, row_id};
use crate::auth::{Auth, Credentials, TokenProblem, authenticate};
use crate::catalog::{REALTIME_SCHEMA, REALTIME_TABLE};
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
    /// The columns the role may read; `None`: all.
    pub columns: Option<Arc<[String]>>,
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
    let columns = gate.check_role(&group).await.map_err(refusal)?;
    Ok(Some(RoleView {
        role: token.role,
        exp: token.exp,
        group,
        columns,
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

/// What `view` may see of each change: one call of the gate for every commit among them.
pub async fn verdicts(
    gate: &RlsGate,
    view: &RoleView,
    changes: &[&Change],
) -> Result<Vec<Verdict>, GateError> {
    let served =
        |c: &Change| &*c.relation.schema == REALTIME_SCHEMA && &*c.relation.table == REALTIME_TABLE;
    // 1. The rows to ask about, by commit.
    let mut asks: HashMap<Lsn, (u32, Vec<Uuid>)> = HashMap::new();
    for c in changes {
        if served(c)
            && matches!(c.op, Operation::Insert | Operation::Update)
            && let Some(id) = row_id(c)
        {
            asks.entry(c.cursor.commit_lsn)
                .or_insert_with(|| (c.xid, Vec::new()))
                .1
                .push(id);
        }
    }
    // 2. Ask.
    let asks: Vec<(Lsn, (u32, Vec<Uuid>))> = asks.into_iter().collect();
    let questions: Vec<Ask<'_>> = asks
        .iter()
        .map(|(lsn, (xid, ids))| Ask {
            group: &view.group,
            lsn: *lsn,
            xid: *xid,
            ids,
        })
        .collect();
    let mut visible: HashMap<Lsn, std::collections::HashSet<Uuid>> = HashMap::new();
    for ((lsn, _), answer) in asks.iter().zip(gate.visible_all(&questions).await) {
        visible.insert(*lsn, answer?);
    }
    // 3. Decide.
    let facts = if asks.is_empty() && !changes.iter().any(|c| c.op == Operation::Delete) {
        None
    } else {
        Some(gate.table_facts().await?)
    };
    Ok(changes
        .iter()
        .map(|c| {
            // A gap carries no row: every role hears of it.
            if c.op == Operation::Gap {
                return Verdict::Shared;
            }
            if !served(c) {
                return Verdict::Skip;
            }
            match c.op {
                Operation::Truncate | Operation::Gap => Verdict::Shared,
                Operation::Delete => {
                    Verdict::Own(restrict(c, view.columns.as_deref(), facts.as_deref()))
                }
                Operation::Insert | Operation::Update => {
                    let seen = row_id(c).is_some_and(|id| {
                        visible
                            .get(&c.cursor.commit_lsn)
                            .is_some_and(|v| v.contains(&id))
                    });
                    match (seen, &view.columns) {
                        (false, _) => Verdict::Skip,
                        (true, None) => Verdict::Shared,
                        (true, Some(cols)) => {
                            Verdict::Own(restrict(c, Some(cols), facts.as_deref()))
                        }
                    }
                }
            }
        })
        .collect())
}
