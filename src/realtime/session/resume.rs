//! Resume of `postgres_changes` channels for a client that connected with `?resume_id=…`.
//!
//! When such a channel joins, walcast reads its saved position ([`crate::realtime::resume`]),
//! replays from the WAL what the channel's bindings and its role's row security let it see
//! after that position, then carries on live, skipping what it already sent. While the channel
//! is joined, walcast saves a position the client has certainly received:
//!
//! - realtime-js sends a heartbeat every 25 s. At each heartbeat walcast takes a *mark* (where
//!   the channel stands); at the next heartbeat the previous mark becomes the saved position.
//!   A client that sent a heartbeat a whole interval after a frame was written has read that
//!   frame, so a drop repeats at most the changes sent since the heartbeat before last.
//! - When walcast closes the socket itself (the client fell behind, or walcast shuts down) and
//!   the client answers the close, it has read every frame before it: the position it stood at
//!   is saved, and nothing is repeated.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures::StreamExt;
use tokio::time::Instant;

use super::Session;
use crate::decode::{Cursor, Lsn};
use crate::hub::HubItem;
use crate::realtime::protocol::PHOENIX_TOPIC;
use crate::realtime::protocol::frame;
use crate::realtime::protocol::text;
use crate::realtime::resume::{ResumeKey, bindings_text};
use crate::replication::ReplicationError;
use crate::ws::socket::{ClientSink, ClientStream, End};

/// Replayed changes delivered together: one gate question per commit and claims group of a
/// batch, one flush per batch.
const REPLAY_BATCH: usize = 256;
/// How long a join waits for one of the `--max-replays` replays to be free; then the socket is
/// closed with "try again later" and realtime-js reconnects and resumes.
const REPLAY_PERMIT_WAIT: Duration = Duration::from_secs(30);
/// How long a join waits for the replication stream before judging a position.
const STREAMING_WAIT: Duration = Duration::from_secs(30);
/// An unchanged position is saved again this often, so the retention sweep keeps it while
/// its channel is joined.
const RENOTE_EVERY: Duration = Duration::from_secs(60);
/// How long walcast waits for the client to answer a close it sent, to learn that the client
/// read everything before it. Short: shutdown waits for it.
pub(super) const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(3);
/// WebSocket close code "try again later": every replay is busy.
const CLOSE_TRY_AGAIN: u16 = 1013;

/// A channel's resume state.
#[derive(Debug)]
pub(super) struct ChannelResume {
    /// The channel as its client identifies it.
    key: ResumeKey,
    /// The token subject whose position this is.
    subject: String,
    /// Saved: the client has received everything up to here.
    safe: Cursor,
    /// Where the channel stood at the client's last heartbeat: safe at the next one.
    mark: Option<Cursor>,
    /// Sent before this session: live changes at or before it are skipped.
    skip_until: Option<Cursor>,
    /// When `safe` was last saved.
    noted_at: Instant,
}

impl ChannelResume {
    /// Whether a live change at `cursor` was sent to the channel before this session.
    pub(super) fn received(&self, cursor: Cursor) -> bool {
        self.skip_until.is_some_and(|s| cursor <= s)
    }

    /// Where the channel stands when the session stands at `here`.
    fn current(&self, here: Option<Cursor>) -> Cursor {
        [Some(self.safe), here, self.skip_until]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.safe)
    }
}

/// The expiry message for a position `after` when `oldest` is the oldest resumable cursor.
fn expired_text(after: Cursor, oldest: Cursor) -> String {
    let kept_from = Lsn(oldest.commit_lsn.0.saturating_add(1));
    text::resume_expired(&after.commit_lsn.to_string(), &kept_from.to_string())
}

/// Client frames held while a replay runs, at most: beyond this many the client is not read
/// until the replay ends (heartbeats then wait too; realtime-js sends one per 25 s and little
/// else while it waits for its changes).
const MAX_HELD: usize = 64;

/// A replaying channel's saved position, moved on by heartbeats during the replay.
pub(super) struct Progress<'a> {
    /// The channel.
    key: &'a ResumeKey,
    /// Whose position it is.
    subject: &'a str,
    /// Saved: received up to here.
    safe: Cursor,
    /// Where the replay stood at the last heartbeat.
    mark: Option<Cursor>,
    /// The last change of the replay written to the socket.
    sent_to: Cursor,
}

/// What a replay waits for next.
enum Step {
    /// A replayed change, the replay's error, or its end.
    Change(Option<Result<crate::decode::Change, ReplicationError>>),
    /// A frame from the client.
    Client(Option<Result<Message, axum::Error>>),
}

/// How a replay ended.
enum Replayed {
    /// Every change up to the live stream was sent (this many frames).
    Done(u64),
    /// As `Done`, but the live stream outgrew the byte budget meanwhile and was let go.
    LiveLost(u64),
    /// The position is older than what the slot retains.
    Expired(Cursor),
    /// The replay failed, or the channel was closed during it.
    Failed,
    /// No replay was free in time.
    Busy,
}

impl<S: ClientSink, R: ClientStream> Session<S, R> {
    /// Where the session stands: the newest change examined, or where the hub starts.
    fn here(&self) -> Option<Cursor> {
        self.position.or_else(|| self.state.hub.live_from())
    }

    /// The oldest position a channel may resume after (see
    /// [`crate::replication::ReaderStatus::oldest_resumable`]).
    fn oldest_resumable(&self) -> Cursor {
        self.state.reader.oldest_resumable().unwrap_or(Cursor {
            commit_lsn: Lsn(self.state.reader.confirmed().0.saturating_sub(1)),
            index: u32::MAX,
        })
    }

    /// Sets up resume for channel `i`, just joined with bindings: replays what it missed since
    /// its saved position, then it carries on live.
    pub(super) async fn start_resume(&mut self, i: usize, id: Arc<str>) -> Result<(), End> {
        let result = self.resume_channel(i, id).await;
        // What the client sent during a replay, in order.
        let held = std::mem::take(&mut self.held);
        result?;
        for msg in held {
            self.on_client(Some(Ok(msg))).await?;
        }
        Ok(())
    }

    /// [`Session::start_resume`]'s work.
    async fn resume_channel(&mut self, i: usize, id: Arc<str>) -> Result<(), End> {
        let ch = &self.channels[i];
        let key = ResumeKey {
            resume_id: id,
            topic: ch.topic.clone(),
            private: ch.key.private,
            bindings: bindings_text(&ch.requests),
        };
        let subject = ch.claims.subject.clone();
        let topic = ch.topic.clone();
        // Positions are judged against what the reader retains.
        let deadline = Instant::now() + STREAMING_WAIT;
        while !self.state.reader.is_streaming() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let saved = {
            let load = std::pin::pin!(async { Ok(self.state.resumes.load(&key).await) });
            self.out.guarded(load).await?
        };
        let here = self.here();
        if self.position.is_none() {
            // The socket connected before walcast knew where it started: it starts there now,
            // like a socket connecting now (the reader re-streams what came before).
            self.position = here;
        }
        // Right after a restart the reader re-streams what was committed while walcast was
        // down, up to where new sockets start (`here`): those changes still come through the
        // hub, so a resumed channel takes them live instead of from a replay.
        let published = self.state.hub.last_published();
        let restreaming = here.is_some_and(|h| published.is_none_or(|p| p < h));
        let mut kind = "fresh";
        let mut problem: Option<String> = None;
        let mut safe = here;
        // A fresh channel is owed nothing from before its join.
        let mut skip_until = here;
        let mut replay = None;
        match saved {
            Err(e) => {
                tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), topic, "realtime: resume position not read");
                kind = "failed";
                problem = Some(text::RESUME_FAILED.to_owned());
            }
            Ok(None) => {}
            Ok(Some(s)) if s.subject != subject => {
                tracing::warn!(
                    topic,
                    saved_by = %s.subject,
                    joined_by = %subject,
                    "realtime: resume_id reused by another token subject; no replay"
                );
                kind = "other_subject";
            }
            Ok(Some(s)) if restreaming && s.cursor >= self.oldest_resumable() => {
                // What the hub already passed is replayed; the rest arrives live: the socket's
                // position goes back to where the hub stands (its other channels skip what
                // they were sent or not owed by their own resume points).
                let from = published.map_or(s.cursor, |p| p.max(s.cursor));
                if s.cursor < from {
                    replay = Some((s.cursor, from));
                }
                self.position = Some(self.position.map_or(from, |cur| cur.min(from)));
                kind = "resumed";
                safe = Some(s.cursor);
                skip_until = Some(s.cursor);
            }
            Ok(Some(s)) => match here {
                Some(h) if s.cursor < h => {
                    replay = Some((s.cursor, h));
                    skip_until = Some(s.cursor);
                }
                _ if here.is_none() && s.cursor < self.oldest_resumable() => {
                    kind = "expired";
                    problem = Some(expired_text(s.cursor, self.oldest_resumable()));
                }
                _ => {
                    kind = "resumed";
                    safe = Some(s.cursor);
                    skip_until = Some(s.cursor);
                }
            },
        }
        let mut live_lost = false;
        if let Some((after, until)) = replay {
            let mut progress = Progress {
                key: &key,
                subject: &subject,
                safe: after,
                mark: None,
                sent_to: after,
            };
            let replayed = self
                .replay_channel(i, &topic, after, until, &mut progress)
                .await?;
            // Heartbeats during the replay may have moved the saved position on.
            let after = progress.safe;
            match replayed {
                Replayed::Done(n) | Replayed::LiveLost(n)
                    if self.channel_index(&topic) != Some(i) =>
                {
                    tracing::debug!(
                        replayed = n,
                        topic,
                        "realtime: channel closed during its replay"
                    );
                    return Ok(());
                }
                Replayed::Done(_) => {
                    kind = "resumed";
                    safe = Some(after);
                }
                Replayed::LiveLost(_) => {
                    kind = "resumed";
                    safe = Some(after);
                    live_lost = true;
                }
                Replayed::Expired(oldest) => {
                    kind = "expired";
                    problem = Some(expired_text(after, oldest));
                }
                Replayed::Failed => {
                    if self.channel_index(&topic) != Some(i) {
                        return Ok(());
                    }
                    kind = "failed";
                    problem = Some(text::RESUME_FAILED.to_owned());
                    safe = Some(after);
                }
                Replayed::Busy => {
                    self.state.metrics.replays_busy.inc();
                    self.state.metrics.realtime_resumes.add("failed", 1);
                    let _ = self
                        .close(CLOSE_TRY_AGAIN, "every replay is busy: reconnect to resume")
                        .await;
                    return Err(End::Closed);
                }
            }
        }
        self.state.metrics.realtime_resumes.add(kind, 1);
        // Never before the oldest resumable position: a session that has examined nothing yet
        // stands where walcast started, which may be just before the slot's start; nothing
        // the channel is owed lies in between.
        let oldest = self.oldest_resumable();
        let safe = safe.map_or(oldest, |s| s.max(oldest));
        if self.state.resumes.note(&key, &subject, safe) {
            self.channels[i].resume = Some(ChannelResume {
                key,
                subject,
                safe,
                mark: None,
                skip_until,
                noted_at: Instant::now(),
            });
        } else {
            tracing::warn!(
                topic,
                "realtime: too many resume positions waiting to be written; this channel cannot resume"
            );
            problem.get_or_insert_with(|| text::RESUME_FAILED.to_owned());
        }
        if let Some(message) = problem {
            self.system(i, "postgres_changes", false, &message).await?;
        }
        if live_lost {
            // The live stream was let go during the replay: the client reconnects and resumes
            // from the replay's end.
            return self.lagged().await;
        }
        Ok(())
    }

    /// Replays changes in `(after, until]` to channel `i` alone.
    async fn replay_channel(
        &mut self,
        i: usize,
        topic: &str,
        after: Cursor,
        until: Cursor,
        progress: &mut Progress<'_>,
    ) -> Result<Replayed, End> {
        let permit = {
            let wait = std::pin::pin!(async {
                Ok(tokio::time::timeout(REPLAY_PERMIT_WAIT, self.state.replays.permit()).await)
            });
            match self.out.guarded(wait).await? {
                Ok(p) => p,
                Err(_) => return Ok(Replayed::Busy),
            }
        };
        // Counts before and after a replay are not comparable (consistency check).
        self.out.client.replayed();
        // Writes and waits of the replay run to their end whatever the budget.
        self.out.set_soft(true);
        let result = self
            .replay_into(i, topic, permit, (after, until), progress)
            .await;
        self.out.set_soft(false);
        result
    }

    /// [`Session::replay_channel`]'s work, in soft mode. The client is still read meanwhile:
    /// heartbeats are answered (a long replay must not look like a dead server) and move the
    /// channel's saved position on; anything else waits in [`Session`]'s `held` (at most
    /// [`MAX_HELD`]) until the replay ends.
    async fn replay_into(
        &mut self,
        i: usize,
        topic: &str,
        permit: crate::replication::ReplayPermit,
        (after, until): (Cursor, Cursor),
        progress: &mut Progress<'_>,
    ) -> Result<Replayed, End> {
        let mut rx = self.state.replays.replay(permit, after, until);
        let mut live_lost = false;
        let mut batch: Vec<Arc<HubItem>> = Vec::new();
        let mut sent = 0u64;
        loop {
            // The live backlog grows while the replay runs: over the budget, let it go.
            if !live_lost && self.out.take_exceeded() {
                self.hub.release();
                self.out.unguard();
                live_lost = true;
            }
            let read_client = self.held.len() < MAX_HELD;
            let waited = {
                let stream = &mut self.stream;
                let changes = &mut rx;
                let step = std::pin::pin!(async move {
                    Ok(tokio::select! {
                        biased;
                        m = stream.next(), if read_client => Step::Client(m),
                        c = changes.recv() => Step::Change(c),
                    })
                });
                self.out.guarded(step).await?
            };
            let next = match waited {
                Step::Change(c) => c,
                Step::Client(m) => {
                    self.during_replay(m, progress).await?;
                    continue;
                }
            };
            let (change, failure) = match next {
                None => (None, None),
                Some(Ok(c)) => (Some(c), None),
                Some(Err(e)) => (None, Some(e)),
            };
            let done = change.is_none();
            if let Some(change) = change {
                let metrics = Arc::clone(&self.state.metrics);
                batch.push(Arc::new(HubItem::detached(change, metrics)));
            }
            if !batch.is_empty() && (done || batch.len() >= REPLAY_BATCH) {
                sent += self.deliver_to(&batch, Some(i)).await? as u64;
                if let Some(last) = batch.last() {
                    progress.sent_to = last.change.cursor;
                }
                batch.clear();
                if self.channel_index(topic) != Some(i) {
                    // Closed meanwhile (its rows could not be checked).
                    return Ok(Replayed::Failed);
                }
            }
            match failure {
                None if done => break,
                None => {}
                Some(ReplicationError::CursorExpired { oldest }) => {
                    return Ok(Replayed::Expired(oldest));
                }
                Some(e) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), topic, "realtime: replay failed");
                    return Ok(Replayed::Failed);
                }
            }
        }
        self.state.metrics.replayed_changes.add(sent);
        if live_lost || self.out.take_exceeded() {
            return Ok(Replayed::LiveLost(sent));
        }
        Ok(Replayed::Done(sent))
    }

    /// A client frame that arrived during a replay: a heartbeat is answered and moves the
    /// replaying channel's saved position on (as [`Session::on_heartbeat_marks`] does for
    /// joined channels); anything else is held for after the replay.
    async fn during_replay(
        &mut self,
        m: Option<Result<Message, axum::Error>>,
        progress: &mut Progress<'_>,
    ) -> Result<(), End> {
        let msg = match m {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(End::Gone),
            Some(Ok(msg)) => msg,
        };
        self.last_seen = Instant::now();
        let heartbeat = match &msg {
            Message::Text(t) => frame::parse_text(self.vsn, t)
                .ok()
                .filter(|f| f.topic == PHOENIX_TOPIC && f.event == "heartbeat"),
            _ => None,
        };
        let Some(hb) = heartbeat else {
            self.held.push(msg);
            return Ok(());
        };
        if let Some(mark) = progress.mark.take()
            && mark > progress.safe
        {
            progress.safe = mark;
            self.state
                .resumes
                .note(progress.key, progress.subject, progress.safe);
        }
        progress.mark = Some(progress.sent_to);
        self.on_heartbeat_marks();
        self.reply_ok(hb.join_ref.as_deref(), hb.r#ref.as_deref(), PHOENIX_TOPIC)
            .await
    }

    /// A heartbeat arrived: each resumable channel's previous mark is now known received and
    /// is saved; a new mark is taken where the channel stands.
    pub(super) fn on_heartbeat_marks(&mut self) {
        let here = self.here();
        let now = Instant::now();
        for ch in &mut self.channels {
            let Some(r) = ch.resume.as_mut() else {
                continue;
            };
            let mut moved = false;
            if let Some(mark) = r.mark.take()
                && mark > r.safe
            {
                r.safe = mark;
                moved = true;
            }
            r.mark = Some(r.current(here));
            if (moved || now.duration_since(r.noted_at) >= RENOTE_EVERY)
                && self.state.resumes.note(&r.key, &r.subject, r.safe)
            {
                r.noted_at = now;
            }
        }
    }

    /// After a close walcast sent: waits (at most [`CLOSE_REPLY_WAIT`]) for the client's answer,
    /// which tells that it read every frame before the close; then saves where each resumable
    /// channel stands.
    pub(super) async fn confirm_close(&mut self) {
        if self.channels.iter().all(|c| c.resume.is_none()) {
            return;
        }
        let deadline = Instant::now() + CLOSE_REPLY_WAIT;
        let mut answered = false;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.stream.next()).await {
            if matches!(msg, Message::Close(_)) {
                answered = true;
                break;
            }
        }
        if !answered {
            return;
        }
        let here = self.here();
        for r in self.channels.iter_mut().filter_map(|c| c.resume.as_mut()) {
            r.safe = r.current(here);
            self.state.resumes.note(&r.key, &r.subject, r.safe);
        }
    }
}
