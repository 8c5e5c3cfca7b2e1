//! Joined channels: `phx_join` (topic, token, private-channel policies, bindings, presence
//! state), the `postgres_changes` subscription against the published tables and the role's
//! privileges on each, and `access_token` refresh.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::Session;
use crate::access::GateError;
use crate::admin::clients::SubscriptionInfo;
use crate::catalog::{REALTIME_SCHEMA, REALTIME_TABLE};
use crate::decode::Change;
use crate::filter::ColumnTexts;
use crate::realtime::TokenClaims;
use crate::realtime::bus::{MemberId, TopicKey};
use crate::realtime::protocol::binding::{self, Binding, BindingError, BindingRequest};
use crate::realtime::protocol::frame::{self, ClientMessage};
use crate::realtime::protocol::join::{TopicError, parse_join, sub_topic};
use crate::realtime::protocol::text::{self, JoinError, TokenProblem};
use crate::realtime::protocol::{MAX_CHANNELS, TOKEN_REFRESH_WINDOW};
use crate::ws::socket::{ClientSink, ClientStream, End, MAX_CONDITIONS};

/// How often a join with `postgres_changes_options.wait` asks a database that could not be
/// asked again.
const WAIT_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// One joined channel.
#[derive(Debug)]
pub(super) struct Channel {
    /// `realtime:<name>`.
    pub(super) topic: String,
    /// `<name>`.
    pub(super) sub_topic: String,
    /// The ref of its `phx_join`.
    pub(super) join_ref: Option<String>,
    /// Its bus topic.
    pub(super) key: TopicKey,
    /// Its bus membership.
    pub(super) member: MemberId,
    /// `broadcast.ack`.
    pub(super) ack: bool,
    /// Joined without `config`: legacy change events.
    pub(super) legacy: bool,
    /// The token in effect.
    pub(super) token: String,
    /// Its claims.
    pub(super) claims: TokenClaims,
    /// The bindings as requested.
    pub(super) requests: Vec<BindingRequest>,
    /// The subscribed bindings (empty when the subscription failed).
    pub(super) bindings: Vec<Binding>,
    /// Whether its bindings covered the events table and no other published table when they
    /// were subscribed (the registry's "everything").
    pub(super) events_only: bool,
    /// The columns its bindings `select` (primary key included); `None`: all.
    pub(super) selected: Option<Arc<[String]>>,
    /// The stored broadcasts replayed at its join (`broadcast.replay`), not delivered again.
    pub(super) replayed: Option<crate::realtime::dbcast::Replayed>,
    /// Times of recent presence calls, for the rate limit.
    pub(super) presence_calls: VecDeque<Instant>,
    /// `presence.enabled`.
    pub(super) presence: bool,
    /// Whether the policies let its token broadcast, once asked.
    pub(super) may_broadcast: Option<bool>,
    /// Whether the policies let its token track presence, once asked.
    pub(super) may_track: Option<bool>,
    /// When an `access_token` refresh was last applied (refreshes are throttled).
    pub(super) token_applied_at: Option<Instant>,
    /// A refresh received inside the throttle window, applied at the window's end.
    pub(super) pending_token: Option<String>,
    /// Where it resumes, when the client connected with a `resume_id` and it has bindings.
    pub(super) resume: Option<super::resume::ChannelResume>,
}

impl Channel {
    /// A private channel joined under the `realtime.messages` policies (not as
    /// `service_role`): broadcasts and tracks are checked for write permission.
    pub(super) fn policed(&self) -> bool {
        self.key.private && !self.claims.is_service_role()
    }

    /// Whether the channel receives rows through the gate: its role's table and column
    /// privileges are asked again while it is joined.
    pub(super) fn recheckable(&self) -> bool {
        !self.claims.is_service_role() && !self.bindings.is_empty()
    }

    /// How the client registry shows this channel: its bindings and role, and whether it
    /// receives every change of the events table with every column, and nothing else.
    pub(super) fn registry_info(&self) -> SubscriptionInfo {
        let bindings: Vec<String> = self.requests.iter().map(|r| r.describe()).collect();
        let filter = if bindings.is_empty() {
            format!("role={} (broadcast/presence only)", self.claims.role)
        } else {
            format!("role={} {}", self.claims.role, bindings.join("; "))
        };
        let everything = !self.legacy
            && self.claims.is_service_role()
            && self.events_only
            && self.bindings.iter().any(|b| {
                b.event == binding::EventFilter::All
                    && b.conditions.is_empty()
                    && b.covers(REALTIME_SCHEMA, REALTIME_TABLE)
            });
        SubscriptionInfo {
            id: self.topic.clone(),
            filter,
            everything,
        }
    }

    /// Ids of the bindings matching a change, each once, in binding order.
    pub(super) fn matching_ids(&self, change: &Change, texts: &ColumnTexts) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        for b in &self.bindings {
            if !ids.contains(&b.id) && b.matches_with(change, texts) {
                ids.push(b.id);
            }
        }
        ids
    }
}

/// A successful `postgres_changes` subscription.
#[derive(Debug, Clone, Default)]
pub(super) struct Subscribed {
    /// The bindings.
    bindings: Vec<Binding>,
    /// Whether they cover the events table and no other published table.
    events_only: bool,
    /// The columns the bindings `select`; `None`: all.
    selected: Option<Arc<[String]>>,
}

/// What a channel sends of a change: the columns its role may read of the table (`role`,
/// `None`: all) cut to those its bindings select (`selected`, `None`: all).
pub(super) fn combine(
    role: Option<Arc<[String]>>,
    selected: &Option<Arc<[String]>>,
) -> Option<Arc<[String]>> {
    match (role, selected) {
        (role, None) => role,
        (None, Some(s)) => Some(Arc::clone(s)),
        (Some(r), Some(s)) => Some(s.iter().filter(|c| r.contains(c)).cloned().collect()),
    }
}

impl<S: ClientSink, R: ClientStream> Session<S, R> {
    /// Sends a join error reply, after the configured pause (`--join-error-backoff`).
    async fn send_join_error(&mut self, reply: String) -> Result<(), End> {
        let pause = self.state.joins.error_backoff;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        self.send(reply).await
    }

    /// `phx_join`.
    pub(super) async fn on_join(&mut self, m: ClientMessage) -> Result<(), End> {
        let join_ref = m.join_ref.clone().or_else(|| m.r#ref.clone());
        let vsn = self.vsn;
        let refuse = |reason: String| {
            frame::encode_error_reply(
                vsn,
                join_ref.as_deref(),
                m.r#ref.as_deref(),
                &m.topic,
                &reason,
            )
        };
        let sub = match sub_topic(&m.topic) {
            Ok(s) => s.to_owned(),
            Err(TopicError::Unmatched) => {
                return self
                    .send_join_error(refuse(JoinError::UnmatchedTopic.reason()))
                    .await;
            }
            Err(TopicError::NameRequired) => {
                return self
                    .send_join_error(refuse(JoinError::TopicNameRequired.reason()))
                    .await;
            }
        };
        // A second join of the same topic replaces the first.
        if let Some(i) = self.channel_index(&m.topic) {
            self.close_channel(i).await?;
        }
        if self.channels.len() >= MAX_CHANNELS {
            return self
                .send_join_error(refuse(JoinError::TooManyChannels.reason()))
                .await;
        }
        let req = parse_join(&sub, &m.payload);
        if !req.problems.is_empty() {
            tracing::debug!(problems = ?req.problems, "realtime: join payload values ignored");
        }
        let token = req
            .access_token
            .clone()
            .unwrap_or_else(|| self.connect_token.clone());
        // The connect token was checked at upgrade, but it may have expired since.
        let claims = match self.verify(&token).await {
            Ok(c) => c,
            Err(p) => return self.send_join_error(refuse(p.join_error().reason())).await,
        };
        // A role that is a superuser or bypasses RLS is refused whatever its token says.
        if !claims.is_service_role() {
            match self.state.gate.check_api_role(&claims.role).await {
                Ok(()) => {}
                Err(GateError::Privileged { role }) => {
                    let p = TokenProblem::RoleNotAllowed { role };
                    return self.send_join_error(refuse(p.join_error().reason())).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: role check failed");
                    return self
                        .send_join_error(refuse(JoinError::DatabaseUnavailable.reason()))
                        .await;
                }
            }
        }
        let config = req.config;
        if self.state.joins.private_only && !config.private {
            return self
                .send_join_error(refuse(JoinError::PrivateOnly.reason()))
                .await;
        }
        if config.replay && !config.private {
            return self
                .send_join_error(refuse(JoinError::ReplayOnPublicChannel.reason()))
                .await;
        }
        if config.private && !claims.is_service_role() {
            let access = self
                .state
                .private
                .access(&claims.group, &sub, config.presence_enabled)
                .await;
            let refused = match access {
                Ok(a) if a.may_join() => None,
                // Denied by the policies, or no `realtime.messages`: service_role only.
                Ok(_) => Some(JoinError::Unauthorized {
                    sub_topic: sub.clone(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: private channel check failed");
                    Some(JoinError::DatabaseUnavailable)
                }
            };
            if let Some(error) = refused {
                return self.send_join_error(refuse(error.reason())).await;
            }
        }
        // `broadcast.replay`: the channel's stored broadcasts, read now, sent after the reply.
        let replayed = match crate::realtime::dbcast::replay_for_join(
            &self.state.messages,
            &config,
            &m.topic,
            &sub,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return self.send_join_error(refuse(e.reason())).await,
        };
        let subscription = if config.postgres_changes.is_empty() {
            None
        } else {
            Some(
                self.subscribe(&config.postgres_changes, &claims, None)
                    .await,
            )
        };
        // `postgres_changes_options.wait`: the reply says whether the bindings are live. A
        // database that cannot be asked is asked again until the wait runs out; a binding that
        // can never be served is refused at once.
        let subscription = match (config.wait_ms, subscription) {
            (Some(ms), Some(mut result)) => {
                let deadline = Instant::now() + std::time::Duration::from_millis(ms);
                while matches!(&result, Err(e) if e == text::DATABASE_UNAVAILABLE)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(WAIT_RETRY.min(deadline - Instant::now())).await;
                    result = self
                        .subscribe(&config.postgres_changes, &claims, None)
                        .await;
                }
                match result {
                    Ok(s) => Some(Ok(s)),
                    Err(e) if e == text::DATABASE_UNAVAILABLE => {
                        let error = JoinError::SubscribeTimeout { ms };
                        return self.send_join_error(refuse(error.reason())).await;
                    }
                    Err(e) => {
                        let error = JoinError::SubscribeFailed(e);
                        return self.send_join_error(refuse(error.reason())).await;
                    }
                }
            }
            (_, subscription) => subscription,
        };
        let response = if config.legacy {
            "{}".to_owned()
        } else {
            binding::encode_join_response(&config.postgres_changes)
        };
        let reply = frame::encode_reply(
            self.vsn,
            join_ref.as_deref(),
            m.r#ref.as_deref(),
            &m.topic,
            true,
            &response,
        );
        // The member joins the bus before the reply goes out, so a broadcast sent by anyone who
        // saw the reply (this client included) reaches it.
        let key = TopicKey {
            private: config.private,
            topic: m.topic.clone(),
        };
        let presence_key = config
            .presence_key
            .clone()
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let joined = self.state.bus.join(
            &key,
            self.inbox.clone(),
            config.broadcast_self,
            config.presence_enabled,
            presence_key,
        );
        let subscribed = match &subscription {
            Some(Ok(s)) => s.clone(),
            _ => Subscribed::default(),
        };
        self.channels.push(Channel {
            topic: m.topic.clone(),
            sub_topic: sub,
            join_ref,
            key,
            member: joined.member,
            ack: config.broadcast_ack,
            legacy: config.legacy,
            token,
            claims,
            requests: config.postgres_changes,
            bindings: subscribed.bindings,
            events_only: subscribed.events_only,
            selected: subscribed.selected,
            presence_calls: VecDeque::new(),
            presence: config.presence_enabled,
            may_broadcast: None,
            may_track: None,
            token_applied_at: None,
            pending_token: None,
            resume: None,
            replayed,
        });
        let i = self.channels.len() - 1;
        self.out.client.subscribe(self.channels[i].registry_info());
        self.send(reply).await?;
        if let Some(state) = joined.presence_state {
            let push = frame::encode_push(
                self.vsn,
                self.channels[i].join_ref.as_deref(),
                &m.topic,
                "presence_state",
                &state,
            );
            self.send(push).await?;
        }
        self.send_replayed(i).await?;
        if config.replication_ready {
            // The channel is on the hub already: every change committed from now on reaches
            // it, whether the reader is streaming this instant or catching up from the slot.
            self.system(i, "system", true, text::REPLICATION_READY)
                .await?;
        }
        let resumable = matches!(subscription, Some(Ok(_)));
        if let Some(result) = subscription {
            self.announce_subscription(i, result.map(|_| ())).await?;
        }
        // With a `resume_id`: what the channel missed first, then live.
        if resumable && let Some(id) = self.resume_id.clone() {
            // Boxed: a replay's state is large and rare; every socket's future stays small.
            Box::pin(self.start_resume(i, id)).await?;
        }
        Ok(())
    }

    /// Checks bindings against the published tables and the role; the error is the client
    /// text. `replacing` is the channel whose bindings these replace (its conditions are not
    /// counted against [`MAX_CONDITIONS`] twice).
    ///
    /// A binding must cover at least one published table (like Supabase Realtime, whose
    /// publication is matched with `LIKE`); a table added to the publication a moment ago is
    /// found by reading the facts again. A role other than `service_role` must be able to read
    /// at least one of the tables each binding covers; the others are left out of its stream
    /// (rows of tables it may not read never reach it).
    pub(super) async fn subscribe(
        &self,
        requests: &[BindingRequest],
        claims: &TokenClaims,
        replacing: Option<usize>,
    ) -> Result<Subscribed, String> {
        let asked = std::time::Instant::now();
        let unavailable = |e: GateError| {
            tracing::warn!(error = %e, kind = e.kind(), "realtime: cannot read table facts");
            text::DATABASE_UNAVAILABLE.to_owned()
        };
        let mut tables = self.state.gate.tables().await.map_err(unavailable)?;
        let mut bindings = Vec::with_capacity(requests.len());
        for r in requests {
            let b = match binding::bind(r, tables.all()) {
                Err(BindingError::NotPublished { .. }) => {
                    // Perhaps added to the publication since the facts were read.
                    tables = self
                        .state
                        .gate
                        .tables_read_after(asked)
                        .await
                        .map_err(unavailable)?;
                    binding::bind(r, tables.all())
                }
                other => other,
            };
            bindings.push(b.map_err(|e| e.to_string())?);
        }
        // Every change is matched against every condition of the socket: their number bounds
        // one socket's share of the matching work.
        let held: usize = self
            .channels
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != replacing)
            .flat_map(|(_, c)| &c.bindings)
            .map(|b| b.conditions.len())
            .sum();
        let asked: usize = bindings.iter().map(|b| b.conditions.len()).sum();
        if held + asked > MAX_CONDITIONS {
            return Err(text::too_many_conditions(held + asked, MAX_CONDITIONS));
        }
        let covered = |b: &Binding| {
            tables
                .all()
                .iter()
                .filter(|t| b.covers(&t.schema, &t.table))
                .collect::<Vec<_>>()
        };
        if !claims.is_service_role() {
            let refused = |r: &BindingRequest, e: GateError| match e {
                GateError::Denied { .. } | GateError::Privileged { .. } => {
                    BindingError::Exception {
                        params: r.describe(),
                        cause: e.to_string(),
                    }
                    .to_string()
                }
                e => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: role check failed");
                    text::DATABASE_UNAVAILABLE.to_owned()
                }
            };
            for (r, b) in requests.iter().zip(&bindings) {
                let on = covered(b);
                let mut readable = false;
                for t in &on {
                    let role = self
                        .state
                        .gate
                        .role_tables_knowing(&claims.role, t.oid, tables.started())
                        .await
                        .map_err(|e| refused(r, e))?;
                    readable |= role.get(t.oid).is_some();
                }
                if !readable {
                    let what = match on.as_slice() {
                        [one] => one.qualified(),
                        _ => "any table these parameters name".to_owned(),
                    };
                    let denied = GateError::Denied {
                        role: claims.role.clone(),
                        what,
                    };
                    return Err(refused(r, denied));
                }
            }
        }
        // `select`: the union of what the bindings select (a binding without `select` wants
        // every column); each selected column must be one the role may read.
        let selected: Option<Arc<[String]>> = if bindings.iter().all(|b| b.select.is_some()) {
            let mut union: Vec<String> = Vec::new();
            for b in &bindings {
                for c in b.select.iter().flat_map(|s| s.iter()) {
                    if !union.contains(c) {
                        union.push(c.clone());
                    }
                }
            }
            Some(union.into())
        } else {
            None
        };
        if !claims.is_service_role() {
            for (r, b) in requests.iter().zip(&bindings) {
                let Some(sel) = &b.select else { continue };
                for t in covered(b) {
                    let role = self
                        .state
                        .gate
                        .role_tables_knowing(&claims.role, t.oid, tables.started())
                        .await
                        .map_err(|e| {
                            tracing::warn!(error = %e, kind = e.kind(), "realtime: role check failed");
                            text::DATABASE_UNAVAILABLE.to_owned()
                        })?;
                    let readable = role.get(t.oid).and_then(|a| a.columns.clone());
                    if let Some(cols) = readable
                        && let Some(denied) = sel.iter().find(|c| !cols.contains(c))
                    {
                        return Err(BindingError::Exception {
                            params: r.describe(),
                            cause: format!(
                                "permission denied for column {denied}: role {} may not select it",
                                claims.role
                            ),
                        }
                        .to_string());
                    }
                }
            }
        }
        let events_only = bindings.iter().all(|b| {
            covered(b)
                .iter()
                .all(|t| t.schema == REALTIME_SCHEMA && t.table == REALTIME_TABLE)
        });
        Ok(Subscribed {
            bindings,
            events_only,
            selected,
        })
    }

    /// Sends the `postgres_changes` system message for channel `i`.
    pub(super) async fn announce_subscription(
        &mut self,
        i: usize,
        result: Result<(), String>,
    ) -> Result<(), End> {
        match result {
            Ok(()) => {
                self.system(i, "postgres_changes", true, text::SUBSCRIBED_TO_POSTGRES)
                    .await
            }
            Err(message) => self.system(i, "postgres_changes", false, &message).await,
        }
    }

    /// `access_token` on channel `i`: no reply. Refreshes are throttled like Supabase
    /// Realtime's: the first is applied at once, later ones at most once per
    /// [`TOKEN_REFRESH_WINDOW`] (the newest held until the window ends). A bad token closes the
    /// channel when it is applied.
    pub(super) async fn on_access_token(&mut self, i: usize, payload: &Value) -> Result<(), End> {
        let Some(token) = payload
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::trim)
        else {
            return Ok(());
        };
        let ch = &mut self.channels[i];
        if token.is_empty()
            || token.starts_with("sb_")
            || token == ch.token
            || ch.pending_token.as_deref() == Some(token)
        {
            return Ok(());
        }
        if ch
            .token_applied_at
            .is_some_and(|at| at.elapsed() < TOKEN_REFRESH_WINDOW)
        {
            ch.pending_token = Some(token.to_owned());
            return Ok(());
        }
        let token = token.to_owned();
        self.apply_access_token(i, &token).await
    }

    /// When the earliest held `access_token` refresh is due.
    pub(super) fn next_pending_token(&self) -> Option<Instant> {
        self.channels
            .iter()
            .filter(|c| c.pending_token.is_some())
            .filter_map(|c| c.token_applied_at)
            .min()
            .map(|at| at + TOKEN_REFRESH_WINDOW)
    }

    /// Applies every held refresh whose window has ended (or, with `expired`, every held
    /// refresh of a channel whose token has expired, which the new token may save).
    pub(super) async fn apply_pending_tokens(&mut self, expired: bool) -> Result<(), End> {
        let now_secs = self.clock.unix_secs();
        while let Some(i) = self.channels.iter().position(|c| {
            c.pending_token.is_some()
                && (c
                    .token_applied_at
                    .is_none_or(|at| at.elapsed() >= TOKEN_REFRESH_WINDOW)
                    || (expired && c.claims.exp <= now_secs))
        }) {
            let token = self.channels[i].pending_token.take().unwrap_or_default();
            self.apply_access_token(i, &token).await?;
        }
        Ok(())
    }

    /// Applies a refreshed token to channel `i` now.
    async fn apply_access_token(&mut self, i: usize, token: &str) -> Result<(), End> {
        {
            let ch = &mut self.channels[i];
            ch.token_applied_at = Some(Instant::now());
            ch.pending_token = None;
        }
        let claims = match self.verify(token).await {
            Ok(c) => c,
            Err(p) => return self.fail_channel(i, &p.live_message()).await,
        };
        let ch = &self.channels[i];
        if ch.key.private && !claims.is_service_role() && ch.claims.group != claims.group {
            let access = self
                .state
                .private
                .access(&claims.group, &ch.sub_topic, ch.presence)
                .await;
            match access {
                Ok(a) if a.may_join() => {}
                Ok(_) => {
                    let message = text::read_revoked(&ch.sub_topic);
                    return self.fail_channel(i, &message).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: private channel check failed");
                    return self.fail_channel(i, text::DATABASE_UNAVAILABLE).await;
                }
            }
        }
        let ch = &mut self.channels[i];
        if ch.claims.group != claims.group {
            // Write permission is asked again with the new claims.
            ch.may_broadcast = None;
            ch.may_track = None;
        }
        let regroup = ch.claims.group != claims.group && !ch.requests.is_empty();
        let requests = ch.requests.clone();
        self.channels[i].token = token.to_owned();
        if regroup {
            let result = self.subscribe(&requests, &claims, Some(i)).await;
            let subscribed = result.clone().unwrap_or_default();
            let ch = &mut self.channels[i];
            ch.claims = claims;
            ch.bindings = subscribed.bindings;
            ch.events_only = subscribed.events_only;
            ch.selected = subscribed.selected;
            self.out.client.subscribe(self.channels[i].registry_info());
            self.announce_subscription(i, result.map(|_| ())).await?;
        } else {
            self.channels[i].claims = claims;
            self.out.client.subscribe(self.channels[i].registry_info());
        }
        Ok(())
    }

    /// Asks again what each joined channel's role may read: a revoked column or table stops
    /// now (deliveries read the answer); a channel none of whose covered tables its role may
    /// read any more is closed with Supabase's text. A transient failure keeps what is known
    /// until the next check.
    pub(super) async fn on_recheck(&mut self) -> Result<(), End> {
        let mut roles: Vec<String> = Vec::new();
        for ch in self.channels.iter().filter(|c| c.recheckable()) {
            if !roles.contains(&ch.claims.role) {
                roles.push(ch.claims.role.clone());
            }
        }
        if roles.is_empty() {
            return Ok(());
        }
        let tables = match self.state.gate.tables().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "realtime: table facts re-read failed");
                return Ok(());
            }
        };
        for role in roles {
            let readable = match self.state.gate.recheck_role(&role).await {
                Ok(access) => Some(access),
                Err(GateError::Denied { .. } | GateError::Privileged { .. }) => None,
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: role re-check failed");
                    continue;
                }
            };
            // A channel is kept while its role may read one of the published tables it covers
            // (a channel whose tables all left the publication has nothing to check).
            let kept = |c: &Channel| {
                let mut covered = tables
                    .all()
                    .iter()
                    .filter(|t| c.bindings.iter().any(|b| b.covers(&t.schema, &t.table)))
                    .peekable();
                covered.peek().is_none()
                    || readable
                        .as_ref()
                        .is_some_and(|access| covered.any(|t| access.get(t.oid).is_some()))
            };
            while let Some(i) = self
                .channels
                .iter()
                .position(|c| c.claims.role == role && c.recheckable() && !kept(c))
            {
                let message = text::read_revoked(&self.channels[i].sub_topic);
                self.fail_channel(i, &message).await?;
            }
        }
        Ok(())
    }
}
