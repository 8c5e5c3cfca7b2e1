//! The batched single-flight visibility call: checks queue, one call answers everything
//! queued, answers are cached per (commit, claims group). See the [module docs](super).

use std::collections::{HashMap, HashSet, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClaimsGroup, GATE_TIMEOUT, GateError, RlsGate, lock, statement_timeout};
use crate::decode::{Lsn, Row};

/// The batched visibility check: `$1` xids, `$2` each row's table, `$3` each row's key (JSON
/// text), `$4` roles, `$5` claims, `$6`/`$7` the (group, table) pairs to check, `$8` wait (ms).
/// One answer row per pair: group (1-based), the numbers (1-based) of the rows it may see, or
/// for the events table their ids, the SQLSTATE of a pair whose check failed, and the table.
const VISIBLE_SETS_SQL: &str = include_str!("../../sql/access/visible_sets.sql");

/// One answer row of [`VISIBLE_SETS_SQL`].
type Found = (
    i32,
    Option<Vec<i32>>,
    Option<Vec<uuid::Uuid>>,
    Option<String>,
    Option<u32>,
);

/// One row the gate asks about: its table's OID and its primary key as a compact JSON object
/// (`{"id":5}`, `{"tenant":"a","slug":"b"}`), which Postgres casts to the key's column types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    /// The table (`pg_class.oid`).
    pub table: u32,
    /// The primary key values as a compact JSON object, in primary key order.
    pub key: Arc<str>,
}

impl RowKey {
    /// The key of a row of table `table` whose primary key columns are `key_columns`; `None`
    /// when there are none or the row lacks one of them (an unchanged TOAST key, say).
    pub fn of(table: u32, key_columns: &[String], row: &Row) -> Option<RowKey> {
        use std::fmt::Write as _;
        if key_columns.is_empty() {
            return None;
        }
        // Written directly (this runs for every row and subscriber session): the columns in
        // primary key order, each value as compact JSON.
        let mut key = String::with_capacity(16 + 48 * key_columns.len());
        key.push('{');
        for (i, column) in key_columns.iter().enumerate() {
            let value = row.values.get(column)?;
            if value.is_null() {
                return None;
            }
            if i > 0 {
                key.push(',');
            }
            crate::json::push_str(&mut key, column);
            key.push(':');
            let _ = write!(key, "{value}");
        }
        key.push('}');
        Some(RowKey {
            table,
            key: key.into(),
        })
    }
}

/// How long the gate waits for a committed transaction to become visible to new snapshots.
/// Postgres may stream a commit a moment before the committing backend has published it to
/// other sessions; without the wait such rows would look invisible.
pub const COMMIT_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// Most (commit LSN, claims group) answers kept. A transaction's answers are needed only while
/// sessions read that transaction from the hub, so a few thousand cover every session that is
/// not about to be closed for lagging anyway.
pub const MAX_CACHED_ANSWERS: usize = 4096;

/// The cached answer for one (commit LSN, claims group).
#[derive(Debug, Default)]
struct Answer {
    /// Rows checked so far and whether each is visible.
    known: Mutex<FxHashMap<RowKey, bool>>,
    /// Set when the check that covered this key failed.
    failed: Mutex<Option<&'static str>>,
}

impl Answer {
    /// Whether each of `ids` is visible, in order, or `None` when some are not known yet.
    fn lookup(&self, ids: &[RowKey]) -> Option<Vec<bool>> {
        let known = lock(&self.known);
        ids.iter().map(|id| known.get(id).copied()).collect()
    }

    /// The rows among `ids` not known yet (each once).
    fn missing(&self, ids: &[RowKey]) -> Vec<RowKey> {
        let known = lock(&self.known);
        let mut seen = FxHashSet::default();
        ids.iter()
            .filter(|id| !known.contains_key(*id) && seen.insert(*id))
            .cloned()
            .collect()
    }

    /// Records a query's result: of the rows asked, those whose index is in `visible`.
    fn record(&self, asked: &[(usize, &RowKey)], visible: &FxHashSet<usize>) {
        let mut known = lock(&self.known);
        for (j, id) in asked {
            known.insert((*id).clone(), visible.contains(j));
        }
    }

    /// Records that the check covering this key failed.
    fn fail(&self, kind: &'static str) {
        *lock(&self.failed) = Some(kind);
    }
}

/// One check asked of [`RlsGate::visible_all`]: may `group` see rows `ids` (of any tables) of
/// transaction `xid`, committed at `lsn`?
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Who asks.
    pub group: &'a Arc<ClaimsGroup>,
    /// The commit.
    pub lsn: Lsn,
    /// The transaction that wrote the rows.
    pub xid: u32,
    /// The rows.
    pub ids: &'a [RowKey],
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
    /// The rows not known yet.
    ids: Vec<RowKey>,
}

/// The checks waiting, and whether a call is running.
#[derive(Debug, Default)]
pub(super) struct QueueState {
    /// Checks not yet taken by a call.
    pending: Vec<Pending>,
    /// A call is running; the next one starts when it ends.
    in_flight: bool,
}

/// The gate's queue of checks (see the module docs).
#[derive(Debug, Default)]
pub(super) struct CheckQueue {
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
pub(super) struct AnswerCache {
    /// The answers.
    entries: FxHashMap<(Lsn, Arc<ClaimsGroup>), Arc<Answer>>,
    /// Insertion order.
    order: VecDeque<(Lsn, Arc<ClaimsGroup>)>,
}

impl RlsGate {
    /// The rows among `ids` (rows of transaction `xid`, committed at `lsn`) that the group may
    /// see. Rows already answered for this key come from the cache; the rest wait for the next
    /// batched call (see the module docs).
    pub async fn visible(
        &self,
        group: &Arc<ClaimsGroup>,
        lsn: Lsn,
        xid: u32,
        ids: &[RowKey],
    ) -> Result<HashSet<RowKey>, GateError> {
        let ask = Ask {
            group,
            lsn,
            xid,
            ids,
        };
        let mut out = self.visible_all(std::slice::from_ref(&ask)).await;
        let seen = out.pop().unwrap_or_else(|| Ok(Vec::new()))?;
        Ok(ids
            .iter()
            .zip(seen)
            .filter(|(_, v)| *v)
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// [`RlsGate::visible`] for several checks at once (a session's commits and groups): all are
    /// queued together, so one call answers them all. One result per ask, in order: whether
    /// each of its rows is visible, in the order of its `ids`.
    pub async fn visible_all(&self, asks: &[Ask<'_>]) -> Vec<Result<Vec<bool>, GateError>> {
        let answers: Vec<Arc<Answer>> = asks.iter().map(|a| self.answer(a.group, a.lsn)).collect();
        let mut out: Vec<Option<Result<Vec<bool>, GateError>>> =
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
                // The waiters of this round hold the failed answers; a later ask (a client
                // resuming) gets a fresh one and asks Postgres again.
                self.forget(batch.iter().map(|p| &p.answer));
            }
            call.batch = None;
            drop(call);
        }
        out.into_iter()
            .zip(asks)
            .map(|(r, ask)| r.unwrap_or_else(|| Ok(vec![false; ask.ids.len()])))
            .collect()
    }

    /// Drops these answers from the cache (the call that should have filled them failed).
    fn forget<'a>(&self, failed: impl Iterator<Item = &'a Arc<Answer>>) {
        let failed: Vec<&Arc<Answer>> = failed.collect();
        let mut cache = lock(&self.answers);
        let gone: Vec<(Lsn, Arc<ClaimsGroup>)> = cache
            .entries
            .iter()
            .filter(|(_, a)| failed.iter().any(|f| Arc::ptr_eq(a, f)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            cache.entries.remove(key);
        }
        cache.order.retain(|k| !gone.contains(k));
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

    /// One call of `walcast.realtime_visible_sets` for every check in `batch`, recording each
    /// (commit, group) answer for all the rows asked; a (group, table) whose check failed in
    /// Postgres marks that group's answers failed ("denied") without failing the others.
    async fn check_batch(&self, batch: &[Pending]) -> Result<(), GateError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Distinct groups, each with its distinct answers (one per commit) and the rows asked of
        // each; every distinct row once (its index in the call), every xid once, and the
        // (group, table) pairs to check.
        type Asked<'b> = (&'b Arc<Answer>, Vec<(usize, &'b RowKey)>);
        let mut index: HashMap<&ClaimsGroup, usize> = HashMap::new();
        let mut groups: Vec<(&ClaimsGroup, Vec<Asked<'_>>)> = Vec::new();
        let mut slot: HashMap<usize, usize> = HashMap::new();
        let mut rows: HashMap<&RowKey, usize> = HashMap::new();
        let (mut row_tables, mut row_keys): (Vec<u32>, Vec<&str>) = (Vec::new(), Vec::new());
        let mut pairs: HashSet<(usize, u32)> = HashSet::new();
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
            for id in &p.ids {
                let n = *rows.entry(id).or_insert_with(|| {
                    row_tables.push(id.table);
                    row_keys.push(&id.key);
                    row_tables.len()
                });
                answers[j].1.push((n, id));
                pairs.insert((i, id.table));
            }
            if seen_xids.insert(p.xid) {
                xids.push(i64::from(p.xid));
            }
        }
        let roles: Vec<&str> = groups.iter().map(|(g, _)| g.role.as_str()).collect();
        let claims: Vec<&str> = groups.iter().map(|(g, _)| g.claims_json.as_str()).collect();
        // Ordered by table: the function gathers each table's rows once.
        let mut pairs: Vec<(usize, u32)> = pairs.into_iter().collect();
        pairs.sort_unstable_by_key(|&(g, t)| (t, g));
        let pair_groups: Vec<i32> = pairs.iter().map(|(g, _)| *g as i32 + 1).collect();
        let pair_tables: Vec<u32> = pairs.iter().map(|(_, t)| *t).collect();
        let wait_ms = COMMIT_VISIBLE_WAIT.as_millis() as i32;
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.realtime_rls_calls.inc();
        }
        let started = Instant::now();
        let run = async {
            let client = self.pool.get().await.map_err(GateError::Pool)?;
            let stmt = client
                .prepare_cached(VISIBLE_SETS_SQL)
                .await
                .map_err(GateError::Db)?;
            // Opens the transaction with the time limit.
            let begin = format!(
                "begin; select set_config('statement_timeout', '{}', true)",
                statement_timeout()
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                &xids,
                &row_tables,
                &row_keys,
                &roles,
                &claims,
                &pair_groups,
                &pair_tables,
                &wait_ms,
            ];
            // Polled in order on first poll, so the three are sent together: one round trip.
            let (began, rows, ended) = futures::future::join3(
                client.batch_execute(&begin),
                client.query(&stmt, &params),
                client.batch_execute("commit"),
            )
            .await;
            let rows = began.and(rows).and_then(|r| ended.map(|()| r));
            rows.map_err(GateError::Db)?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                    ))
                })
                .collect::<Result<Vec<Found>, tokio_postgres::Error>>()
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
        let result_rows = result?;
        tracing::debug!(
            checks = batch.len(),
            groups = groups.len(),
            rows = row_tables.len(),
            pairs = pairs.len(),
            xids = xids.len(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "realtime gate: call"
        );
        let mut visible: Vec<FxHashSet<usize>> = vec![FxHashSet::default(); groups.len()];
        let mut problems: Vec<bool> = vec![false; groups.len()];
        // Rows of the events table are answered by id: their numbers, by (table, id) (another
        // table's row may carry the same uuid), made when first needed.
        let mut numbers: Option<FxHashMap<(u32, uuid::Uuid), usize>> = None;
        for (grp, rows, ids, problem, table) in result_rows {
            let Some(i) = usize::try_from(grp)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|i| *i < groups.len())
            else {
                continue;
            };
            if let Some(sqlstate) = problem {
                tracing::debug!(role = %groups[i].0.role, sqlstate, table, "realtime gate: a group's check failed");
                problems[i] = true;
                continue;
            }
            visible[i].extend(
                rows.unwrap_or_default()
                    .into_iter()
                    .filter_map(|n| usize::try_from(n).ok()),
            );
            if let (Some(ids), Some(table)) = (ids.filter(|ids| !ids.is_empty()), table) {
                let numbers = numbers.get_or_insert_with(|| {
                    row_tables
                        .iter()
                        .zip(&row_keys)
                        .enumerate()
                        .filter_map(|(j, (t, k))| Some(((*t, events_id(k)?), j + 1)))
                        .collect()
                });
                visible[i].extend(
                    ids.iter()
                        .filter_map(|id| numbers.get(&(table, *id)).copied()),
                );
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

/// The uuid of an events-table key (`{"id":"<uuid>"}`), if that is what it is.
fn events_id(key: &str) -> Option<uuid::Uuid> {
    let v: serde_json::Value = serde_json::from_str(key).ok()?;
    let o = v.as_object().filter(|o| o.len() == 1)?;
    uuid::Uuid::try_parse(o.get("id")?.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(table: u32, id: i64) -> RowKey {
        RowKey {
            table,
            key: format!("{{\"id\":{id}}}").into(),
        }
    }

    #[test]
    fn events_keys_read_as_uuids_and_nothing_else_does() {
        let id = "0195c1de-0000-7000-8000-000000000001";
        assert_eq!(
            events_id(&format!("{{\"id\":\"{id}\"}}")),
            Some(uuid::Uuid::parse_str(id).unwrap())
        );
        assert_eq!(events_id("{\"id\":5}"), None);
        assert_eq!(events_id(&format!("{{\"id\":\"{id}\",\"b\":1}}")), None);
    }

    #[test]
    fn answers_track_known_rows() {
        let a = Answer::default();
        let (x, y) = (key(1, 1), key(2, 1));
        assert_eq!(a.lookup(std::slice::from_ref(&x)), None);
        assert_eq!(
            a.missing(&[x.clone(), x.clone(), y.clone()]),
            vec![x.clone(), y.clone()]
        );
        a.record(&[(1, &x), (2, &y)], &FxHashSet::from_iter([1]));
        assert_eq!(a.lookup(&[x.clone(), y.clone()]), Some(vec![true, false]));
        assert_eq!(a.lookup(&[y.clone(), x.clone()]), Some(vec![false, true]));
        assert!(a.missing(&[x, y]).is_empty());
    }

    #[test]
    fn row_keys_follow_the_primary_key() {
        let row = |v: serde_json::Value| Row {
            values: v.as_object().unwrap().clone(),
            unchanged_toast: Vec::new(),
        };
        let pk = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let r = row(json!({"slug": "b", "body": "x", "tenant": "a"}));
        let k = RowKey::of(9, &pk(&["tenant", "slug"]), &r).unwrap();
        assert_eq!((k.table, &*k.key), (9, r#"{"tenant":"a","slug":"b"}"#));
        // No primary key, a missing or null key column: cannot be asked about.
        assert_eq!(RowKey::of(9, &[], &r), None);
        assert_eq!(RowKey::of(9, &pk(&["id"]), &r), None);
        assert_eq!(RowKey::of(9, &pk(&["id"]), &row(json!({"id": null}))), None);
        assert_eq!(
            &*RowKey::of(9, &pk(&["id"]), &row(json!({"id": 5})))
                .unwrap()
                .key,
            r#"{"id":5}"#
        );
    }
}
