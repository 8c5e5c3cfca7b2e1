-- Resume positions of the Realtime endpoint (docs/realtime.md, "Resuming with resume_id"): for a
-- client that connects with `?resume_id=…`, where each of its channels may resume.
--
-- One row per (resume_id, topic, private, bindings): the channel's identity as the client sees
-- it (bindings_key is md5 of the bindings in a canonical text form). `subject` is the token's
-- `sub` (or `role:<role>` without one): a join with another subject gets no replay. The
-- position is a WAL cursor — the commit LSN and the index of a change inside its transaction —
-- that every node of one primary understands. Rows not touched for longer than walcast's
-- --retention are deleted by walcast (they could not be resumed anyway).
--
-- Only walcast writes here; service_role may read the table (to see who can resume).
create table if not exists walcast.realtime_resume_positions (
  resume_id    text        not null,
  topic        text        not null,
  private      boolean     not null,
  bindings_key text        not null,
  subject      text        not null,
  commit_lsn   pg_lsn      not null,
  change_index bigint      not null,
  updated_at   timestamptz not null default now(),
  primary key (resume_id, topic, private, bindings_key),
  constraint realtime_resume_positions_resume_id_length check (length(resume_id) between 8 and 128),
  constraint realtime_resume_positions_index_range check (change_index between 0 and 4294967295)
);

create index if not exists realtime_resume_positions_updated_at
  on walcast.realtime_resume_positions (updated_at);

comment on table walcast.realtime_resume_positions is
  'Where each Realtime channel joined with a resume_id may resume (WAL cursor). Written by walcast only.';

revoke all on table walcast.realtime_resume_positions from public, anon, authenticated, service_role;
grant select on table walcast.realtime_resume_positions to service_role;

-- Where each slot's resume window ends at the old side: the newest commit LSN whose transaction
-- walcast let go of (it can no longer be replayed). A resume position at or after it is still
-- resumable after a walcast restart even when it is older than the slot's confirmed position
-- (no transaction left the window in between). Written by walcast's replication reader; a slot
-- created afresh forgets its row.
-- `confirmed_lsn` is the slot position walcast had confirmed when it recorded the edge: the
-- edge is only used while the slot has not moved past it (else a newer edge may not have been
-- recorded yet).
create table if not exists walcast.replication_windows (
  slot_name       text        primary key,
  expired_through pg_lsn      not null,
  confirmed_lsn   pg_lsn      not null,
  updated_at      timestamptz not null default now()
);

comment on table walcast.replication_windows is
  'The newest commit LSN each walcast slot can no longer replay. Written by walcast only.';

revoke all on table walcast.replication_windows from public, anon, authenticated, service_role;
grant select on table walcast.replication_windows to service_role;
