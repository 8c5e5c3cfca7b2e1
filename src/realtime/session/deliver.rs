//! Live changes: from the hub, matched against every channel's bindings, through the row
//! gate (one ask per commit and claims group), encoded once per change and wrapped per channel.
//!
//! Every table of walcast's publication is served. `service_role` gets every matching change.
//! Any other role gets a change only when walcast knows its table (facts read again when a
//! change names a table they do not know) and the role may read that table, with the columns it
//! may read; INSERT and UPDATE rows also pass the gate by primary key. A table without one
//! cannot be checked: such a role gets Supabase's "Error 400: Bad Request, no primary key"
//! change object instead of the row.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::Session;
use crate::access::{Ask, ClaimsGroup, RowKey, TableAccess, row_key};
use crate::decode::{Change, Lsn, Operation};
use crate::hub::HubItem;
use crate::realtime::protocol::frame::Vsn;
use crate::realtime::protocol::payload::{self, encode_change_data, encode_change_data_for};
use crate::realtime::protocol::text;
use crate::ws::socket::{ClientSink, ClientStream, End, WRITE_BATCH, WRITE_BATCH_BYTES};

/// What a Realtime change frame of the shared data depends on besides the change (the key of
/// the frame kept on the hub item).
struct FrameKey {
    /// Serializer.
    vsn: Vsn,
    /// The channel's legacy (pre-bindings) form.
    legacy: bool,
    /// The channel's topic.
    topic: String,
    /// The matching binding ids.
    ids: Vec<u32>,
}

/// A change matched by a channel, waiting for the gate.
pub(super) struct Hit {
    /// Index into the batch.
    item: usize,
    /// Index into the channels.
    channel: usize,
    /// Matching binding ids.
    ids: Vec<u32>,
    /// Where the gate's answer for the row is (the ask and the row's position in it), when
    /// the role is not `service_role` and the row is not a DELETE.
    check: Option<(usize, usize)>,
    /// The columns the channel's role may read of the change's table; `None`: all.
    columns: Option<Arc<[String]>>,
    /// The table has no primary key and the role is not `service_role`: Supabase's error
    /// change object is sent instead of the row.
    no_key: bool,
}

impl<S: ClientSink, R: ClientStream> Session<S, R> {
    /// Delivers live changes: the first item and whatever else is ready.
    pub(super) async fn on_live(
        &mut self,
        first: Result<Arc<HubItem>, RecvError>,
    ) -> Result<(), End> {
        let mut items = match first {
            Ok(i) => vec![i],
            Err(RecvError::Lagged(_)) => return self.lagged().await,
            Err(RecvError::Closed) => return Err(End::Closed),
        };
        // More than its byte budget was published after the change it just took.
        if self.hub.backlog().over() {
            return Err(End::OverBudget);
        }
        let mut lagged = false;
        let mut held = items[0].bytes();
        while items.len() < WRITE_BATCH && held < WRITE_BATCH_BYTES {
            match self.hub.try_recv() {
                Ok(i) => {
                    held += i.bytes();
                    items.push(i);
                }
                Err(TryRecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let delivered = self.deliver_changes(&items).await?;
        self.out.client.delivered(delivered, self.position);
        if lagged {
            return self.lagged().await;
        }
        Ok(())
    }

    /// Matches a batch of changes against every channel, asks the gate once per (commit,
    /// claims group), and sends one frame per matching channel and change; returns how many.
    pub(super) async fn deliver_changes(&mut self, items: &[Arc<HubItem>]) -> Result<usize, End> {
        // 0. Skip what was already examined.
        let mut fresh = Vec::with_capacity(items.len());
        let mut last = self.position;
        for item in items {
            if last.is_none_or(|p| item.change.cursor > p) {
                last = Some(item.change.cursor);
                fresh.push(Arc::clone(item));
            }
        }
        let sent = self.deliver_to(&fresh, None).await?;
        // Only once the batch is written: a close the client answers saves this position as
        // received (see `resume`), so a batch cut short must not count.
        self.position = last;
        Ok(sent)
    }

    /// Matches changes against every channel (or channel `only`, for a replay, which also
    /// ignores the channels' resume points), asks the gate, sends; returns how many frames.
    pub(super) async fn deliver_to(
        &mut self,
        items: &[Arc<HubItem>],
        only: Option<usize>,
    ) -> Result<usize, End> {
        if self.channels.iter().all(|c| c.bindings.is_empty()) {
            return Ok(0);
        }
        // 1. Match.
        let gate = &self.state.gate;
        let seen = std::time::Instant::now();
        let mut tables = match gate.tables_for_delivery().await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, kind = e.kind(), "realtime: table facts not read");
                gate.tables_now()
            }
        };
        let mut hits: Vec<Hit> = Vec::new();
        // Per (commit, group): the xid, the rows to ask about, and the batch item asked last
        // (each row is asked once per group, whatever the number of its channels); found by
        // commit and the group's address (channels of one claims group share it).
        type Asked = (Lsn, Arc<ClaimsGroup>, u32, Vec<RowKey>, Option<usize>);
        let mut asks: Vec<Asked> = Vec::new();
        let mut ask_of: HashMap<(Lsn, usize), usize> = HashMap::new();
        let mut failed: HashSet<Arc<ClaimsGroup>> = HashSet::new();
        // What each role may read of each table, asked once per batch.
        let mut access: HashMap<(&str, u32), Option<Option<TableAccess>>> = HashMap::new();
        for (ii, item) in items.iter().enumerate() {
            // Matching is this task's work: let others run between changes when its share of
            // the runtime is used up.
            tokio::task::consume_budget().await;
            let change = &item.change;
            let rel = &change.relation;
            // A table added to the publication since the facts were read: read them again.
            if tables
                .as_ref()
                .is_none_or(|t| t.of(rel.oid, &rel.schema, &rel.table).is_none())
                && let Ok(t) = gate
                    .tables_knowing(rel.oid, &rel.schema, &rel.table, seen)
                    .await
            {
                tables = Some(t);
            }
            let facts = tables
                .as_ref()
                .and_then(|t| t.of(rel.oid, &rel.schema, &rel.table));
            let known_since = tables.as_ref().map_or(seen, |t| t.started());
            // The row's key, made once per change when a channel needs it.
            let mut key: Option<Option<RowKey>> = None;
            for (ci, ch) in self.channels.iter().enumerate() {
                let skipped = match only {
                    Some(o) => o != ci,
                    // Live: what a resumed channel received before this session.
                    None => ch
                        .resume
                        .as_ref()
                        .is_some_and(|r| r.received(change.cursor)),
                };
                if skipped {
                    continue;
                }
                let ids = ch.matching_ids(change, &item.texts);
                if ids.is_empty() {
                    continue;
                }
                if ch.claims.is_service_role() {
                    hits.push(Hit {
                        item: ii,
                        channel: ci,
                        ids,
                        check: None,
                        columns: ch.selected.clone(),
                        no_key: false,
                    });
                    continue;
                }
                // Others: only tables walcast knows, and that the role may read.
                let Some(facts) = facts else { continue };
                let role = ch.claims.role.as_str();
                let allowed = match access.get(&(role, facts.oid)) {
                    Some(a) => a.clone(),
                    None => {
                        let a = match gate.role_tables_knowing(role, facts.oid, known_since).await {
                            Ok(tables) => Some(tables.get(facts.oid).cloned()),
                            Err(e) => {
                                tracing::debug!(error = %e, kind = e.kind(), "realtime: role check failed");
                                None
                            }
                        };
                        access.insert((role, facts.oid), a.clone());
                        a
                    }
                };
                let columns = match allowed {
                    None => {
                        failed.insert(Arc::clone(&ch.claims.group));
                        continue;
                    }
                    Some(None) => continue,
                    Some(Some(a)) => super::channel::combine(a.columns, &ch.selected),
                };
                let (check, no_key) = if change.op == Operation::Delete {
                    (None, false)
                } else if !facts.has_primary_key() {
                    (None, true)
                } else {
                    // A row without its whole key cannot be checked, so it is not sent.
                    let Some(key) = key.get_or_insert_with(|| row_key(change, facts)).clone()
                    else {
                        continue;
                    };
                    let lsn = change.cursor.commit_lsn;
                    let group = &ch.claims.group;
                    let a = *ask_of
                        .entry((lsn, Arc::as_ptr(group) as usize))
                        .or_insert_with(|| {
                            asks.push((lsn, Arc::clone(group), change.xid, Vec::new(), None));
                            asks.len() - 1
                        });
                    let asked = &mut asks[a];
                    if asked.4 != Some(ii) {
                        asked.3.push(key);
                        asked.4 = Some(ii);
                    }
                    (Some((a, asked.3.len() - 1)), false)
                };
                hits.push(Hit {
                    item: ii,
                    channel: ci,
                    ids,
                    check,
                    columns,
                    no_key,
                });
            }
        }
        if hits.is_empty() && failed.is_empty() {
            return Ok(0);
        }
        // 2. Ask the gate.
        let questions: Vec<Ask<'_>> = asks
            .iter()
            .map(|(lsn, group, xid, ids, _)| Ask {
                group,
                lsn: *lsn,
                xid: *xid,
                ids,
            })
            .collect();
        // A slow database holds the session here: its byte budget still counts.
        let answers = {
            let step = std::pin::pin!(async { Ok(self.state.gate.visible_all(&questions).await) });
            self.out.guarded(step).await?
        };
        let mut visible: Vec<Vec<bool>> = Vec::with_capacity(answers.len());
        for ((lsn, group, ..), answer) in asks.iter().zip(answers) {
            match answer {
                Ok(v) => visible.push(v),
                Err(e) => {
                    tracing::debug!(error = %e, kind = e.kind(), lsn = %lsn, "realtime: row level security check failed");
                    failed.insert(Arc::clone(group));
                    visible.push(Vec::new());
                }
            }
        }
        // 3. Encode and send, one frame at a time (a frame is a copy of the change's data:
        // building them all first would hold one copy per matching channel).
        let mut n = 0usize;
        for hit in hits {
            if let Some((a, p)) = hit.check {
                let seen = visible[a].get(p).copied() == Some(true);
                if !seen {
                    continue;
                }
            }
            let item = &items[hit.item];
            let ch = &self.channels[hit.channel];
            let table_facts = |c: &Change| {
                let rel = &c.relation;
                tables
                    .as_deref()
                    .and_then(|t| t.of(rel.oid, &rel.schema, &rel.table))
            };
            // The change's `data` for this channel: shared unless column privileges or a missing
            // key make it the channel's own.
            let data = || -> Arc<str> {
                match &hit.columns {
                    _ if hit.no_key => Arc::from(payload::encode_no_primary_key(&item.change)),
                    // Column privileges differ from the shared payload: encode for this channel.
                    Some(cols) => Arc::from(encode_change_data_for(
                        &item.change,
                        table_facts(&item.change),
                        Some(cols),
                    )),
                    None => item.realtime_data(&self.state.metrics, |c| {
                        encode_change_data(c, table_facts(c))
                    }),
                }
            };
            let encode = || {
                let data = data();
                if ch.legacy {
                    payload::encode_legacy_change_frame(self.vsn, &ch.topic, item.change.op, &data)
                } else {
                    payload::encode_change_frame(self.vsn, &ch.topic, &hit.ids, &data)
                }
            };
            let frame = if hit.columns.is_none() && !hit.no_key {
                // The shared data: every channel of this topic, serializer and bindings sends
                // the same text, made once.
                let vsn = self.vsn;
                item.realtime_frame(
                    |k: &FrameKey| {
                        k.vsn == vsn
                            && k.legacy == ch.legacy
                            && k.topic == ch.topic
                            && k.ids == hit.ids
                    },
                    || {
                        let key = FrameKey {
                            vsn,
                            legacy: ch.legacy,
                            topic: ch.topic.clone(),
                            ids: hit.ids.clone(),
                        };
                        (key, encode())
                    },
                )
            } else {
                Utf8Bytes::from(encode())
            };
            self.out.feed(Message::Text(frame)).await?;
            n += 1;
        }
        self.flush(n).await?;
        // 4. Channels whose rows could not be checked are closed: they would miss changes.
        if !failed.is_empty() {
            while let Some(i) = self
                .channels
                .iter()
                .position(|c| failed.contains(&c.claims.group) && !c.claims.is_service_role())
            {
                self.fail_channel(i, text::DATABASE_UNAVAILABLE).await?;
            }
        }
        Ok(n)
    }
}
