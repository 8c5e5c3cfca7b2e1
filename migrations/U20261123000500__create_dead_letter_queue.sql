-- The dead-letter queue: work walcast could not complete (an ingest batch Postgres refused, a WAL
-- change walcast could not decode), kept with its payload, the error, and a hint for operators.
-- The retry worker retries rows whose retry policy allows it; operators list, retry and purge
-- rows with `walcast dlq ...`, the /v1/dlq endpoints, or the functions below from psql.
--
-- Rows change only through the walcast.dlq_* functions (security definer). service_role may read
-- the table and call the functions; no API role may insert, update or delete rows directly.
create table if not exists walcast.dead_letter_queue (
  id              bigint      generated always as identity primary key,
  operation       text        not null,
  source          text        not null,
  payload         jsonb       not null,
  error_code      text        not null,
  error_message   text        not null,
  hint            text        not null,
  retry_policy    jsonb       not null,
  status          text        not null default 'pending',
  attempts        integer     not null default 0,
  requeues        integer     not null default 0,
  next_attempt_at timestamptz,
  last_attempt_at timestamptz,
  claimed_by      text,
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  recovered_at    timestamptz,
  constraint dead_letter_queue_operation_length check (length(operation) between 1 and 64),
  constraint dead_letter_queue_source_length check (length(source) between 1 and 256),
  constraint dead_letter_queue_error_code_length check (length(error_code) between 1 and 64),
  constraint dead_letter_queue_status_valid
    check (status in ('pending', 'retrying', 'recovered', 'failed')),
  constraint dead_letter_queue_retry_policy_valid
    check (retry_policy->>'kind' in ('timed_retry', 'manual_retry', 'no_retry')),
  constraint dead_letter_queue_counts_nonnegative check (attempts >= 0 and requeues >= 0),
  constraint dead_letter_queue_recovered_at_set
    check ((status = 'recovered') = (recovered_at is not null))
);

comment on table walcast.dead_letter_queue is
  'Work walcast could not complete, with its error and an operator hint. Change rows only through walcast.dlq_* functions.';
comment on column walcast.dead_letter_queue.operation is
  'What failed: ingest (payload: JSON array of events) or deliver (payload: the WAL change).';
comment on column walcast.dead_letter_queue.retry_policy is
  '{"kind":"timed_retry","max_attempts":n,"backoff_base_secs":s,"backoff_max_secs":s} | {"kind":"manual_retry"} | {"kind":"no_retry"}';
comment on column walcast.dead_letter_queue.status is
  'pending (waiting for next_attempt_at, or for an operator when next_attempt_at is null), retrying (claimed by a worker), recovered, failed (needs an operator)';
comment on column walcast.dead_letter_queue.attempts is
  'Attempts since the row was pushed or last requeued.';

-- The worker's query: due rows by status and time.
create index if not exists dead_letter_queue_status_next_attempt_idx
  on walcast.dead_letter_queue (status, next_attempt_at);
-- Cleanup and listings by status and age.
create index if not exists dead_letter_queue_status_updated_idx
  on walcast.dead_letter_queue (status, updated_at);

alter table walcast.dead_letter_queue enable row level security;
revoke all on table walcast.dead_letter_queue from public, anon, authenticated, service_role;
grant select on table walcast.dead_letter_queue to service_role;

-- A retry policy with its defaults filled in; raises invalid_parameter_value when it is not one.
create or replace function walcast.dlq_normalize_policy(policy jsonb) returns jsonb
language plpgsql immutable set search_path = ''
as $$
declare
  kind text := policy->>'kind';
  result jsonb;
begin
  if policy is null or jsonb_typeof(policy) <> 'object' then
    raise exception 'retry policy must be a JSON object like {"kind":"timed_retry"}'
      using errcode = 'invalid_parameter_value';
  end if;
  if kind in ('manual_retry', 'no_retry') then
    return jsonb_build_object('kind', kind);
  end if;
  if kind is distinct from 'timed_retry' then
    raise exception 'retry policy kind % is not timed_retry, manual_retry or no_retry', coalesce(kind, 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  result := '{"kind": "timed_retry", "max_attempts": 5, "backoff_base_secs": 30, "backoff_max_secs": 3600}'::jsonb
            || (policy - 'kind');
  -- Types first, values second: a cast of a non-number must never be reached.
  if jsonb_typeof(result->'max_attempts') is distinct from 'number'
     or jsonb_typeof(result->'backoff_base_secs') is distinct from 'number'
     or jsonb_typeof(result->'backoff_max_secs') is distinct from 'number' then
    raise exception 'max_attempts, backoff_base_secs and backoff_max_secs must be numbers'
      using errcode = 'invalid_parameter_value';
  end if;
  if (result->>'max_attempts')::numeric <> trunc((result->>'max_attempts')::numeric)
     or (result->>'max_attempts')::numeric not between 1 and 1000 then
    raise exception 'max_attempts must be a whole number from 1 to 1000'
      using errcode = 'invalid_parameter_value';
  end if;
  if (result->>'backoff_base_secs')::numeric < 0
     or (result->>'backoff_max_secs')::numeric < (result->>'backoff_base_secs')::numeric
     or (result->>'backoff_max_secs')::numeric > 31536000 then
    raise exception 'backoff_base_secs and backoff_max_secs must be numbers with 0 <= base <= max <= 31536000'
      using errcode = 'invalid_parameter_value';
  end if;
  if exists (select 1 from jsonb_object_keys(result) k
             where k not in ('kind', 'max_attempts', 'backoff_base_secs', 'backoff_max_secs')) then
    raise exception 'unknown field in retry policy %', policy::text
      using errcode = 'invalid_parameter_value';
  end if;
  return result;
end
$$;

-- Records a dead letter; returns its id. timed_retry rows are first retried after
-- backoff_base_secs; manual_retry rows wait for an operator (walcast.dlq_requeue); no_retry rows
-- are final (status failed) and kept for inspection.
create or replace function walcast.dlq_push(
  operation     text,
  source        text,
  payload       jsonb,
  error_code    text,
  error_message text,
  hint          text  default null,
  retry_policy  jsonb default '{"kind": "timed_retry"}'
) returns bigint
language plpgsql volatile security definer set search_path = ''
as $$
declare
  policy jsonb;
  new_id bigint;
begin
  if operation is null or length(operation) not between 1 and 64 then
    raise exception 'operation must be 1-64 characters, e.g. ingest or deliver'
      using errcode = 'invalid_parameter_value';
  end if;
  if source is null or length(source) not between 1 and 256 then
    raise exception 'source must be 1-256 characters (the node or producer)'
      using errcode = 'invalid_parameter_value';
  end if;
  if payload is null then
    raise exception 'payload must not be null' using errcode = 'invalid_parameter_value';
  end if;
  if error_code is null or length(error_code) not between 1 and 64 then
    raise exception 'error_code must be 1-64 characters' using errcode = 'invalid_parameter_value';
  end if;
  if error_message is null or error_message = '' then
    raise exception 'error_message must not be empty' using errcode = 'invalid_parameter_value';
  end if;
  policy := walcast.dlq_normalize_policy(retry_policy);
  insert into walcast.dead_letter_queue
    (operation, source, payload, error_code, error_message, hint, retry_policy, status, next_attempt_at)
  values (
    operation, source, payload, error_code, error_message,
    coalesce(nullif(hint, ''), case policy->>'kind'
      when 'timed_retry' then 'walcast retries this automatically; see `walcast dlq show <id>`'
      when 'manual_retry' then 'fix the cause, then retry it with `walcast dlq retry <id>`'
      else 'kept for inspection; purge it with `walcast dlq purge` once handled'
    end),
    policy,
    case when policy->>'kind' = 'no_retry' then 'failed' else 'pending' end,
    case when policy->>'kind' = 'timed_retry'
      then now() + make_interval(secs => (policy->>'backoff_base_secs')::float8)
    end
  )
  returning dead_letter_queue.id into new_id;
  return new_id;
end
$$;

-- Claims up to `batch` due rows for `worker`: pending rows whose next_attempt_at has passed, and
-- retrying rows whose worker's lease expired. Each claimed row becomes retrying, its attempts go
-- up by one, and next_attempt_at becomes the lease's end. Concurrent claimers never get the same
-- row (for update skip locked). `operations` limits the claim to those operations; `only_id`
-- to one row.
create or replace function walcast.dlq_claim(
  batch      integer,
  worker     text,
  operations text[]   default null,
  only_id    bigint   default null,
  lease      interval default '5 minutes'
) returns setof walcast.dead_letter_queue
language plpgsql volatile security definer set search_path = ''
as $$
#variable_conflict use_variable
begin
  if batch is null or batch not between 1 and 10000 then
    raise exception 'batch must be from 1 to 10000' using errcode = 'invalid_parameter_value';
  end if;
  if worker is null or length(worker) not between 1 and 256 then
    raise exception 'worker must be 1-256 characters' using errcode = 'invalid_parameter_value';
  end if;
  if lease is null or lease <= interval '0' then
    raise exception 'lease must be positive' using errcode = 'invalid_parameter_value';
  end if;
  return query
  with due as (
    select d.id
      from walcast.dead_letter_queue d
     where d.status in ('pending', 'retrying')
       and d.next_attempt_at <= now()
       and (operations is null or d.operation = any (operations))
       and (only_id is null or d.id = only_id)
     order by d.next_attempt_at, d.id
     limit batch
     for update skip locked
  )
  update walcast.dead_letter_queue d
     set status = 'retrying',
         attempts = d.attempts + 1,
         last_attempt_at = now(),
         next_attempt_at = now() + lease,
         claimed_by = worker,
         updated_at = now()
    from due
   where d.id = due.id
  returning d.*;
end
$$;

-- The row `id`, locked; raises no_data_found when it does not exist.
create or replace function walcast.dlq_lock_row(id bigint) returns walcast.dead_letter_queue
language plpgsql volatile set search_path = ''
as $$
#variable_conflict use_variable
declare
  r walcast.dead_letter_queue;
begin
  if id is null then
    raise exception 'id must not be null' using errcode = 'invalid_parameter_value';
  end if;
  select * into r from walcast.dead_letter_queue d where d.id = id for update;
  if not found then
    raise exception 'dead letter % does not exist', id using errcode = 'no_data_found';
  end if;
  return r;
end
$$;

-- Marks a row recovered (its work is done). Usually called by the worker for a row it claimed;
-- an operator may also mark a row recovered after handling it by hand. Already recovered: no-op.
create or replace function walcast.dlq_mark_recovered(id bigint) returns walcast.dead_letter_queue
language plpgsql volatile security definer set search_path = ''
as $$
#variable_conflict use_variable
declare
  r walcast.dead_letter_queue;
begin
  r := walcast.dlq_lock_row(id);
  if r.status = 'recovered' then
    return r;
  end if;
  update walcast.dead_letter_queue d
     set status = 'recovered',
         recovered_at = now(),
         next_attempt_at = null,
         updated_at = now()
   where d.id = id
  returning d.* into r;
  return r;
end
$$;

-- Records a failed attempt of a claimed (retrying) row. timed_retry rows with attempts left go
-- back to pending after an exponential backoff (backoff_base_secs * 2^(attempts - 1), at most
-- backoff_max_secs); other rows, and any row when give_up is true, become failed.
create or replace function walcast.dlq_mark_failed(
  id            bigint,
  error_code    text,
  error_message text,
  hint          text    default null,
  give_up       boolean default false
) returns walcast.dead_letter_queue
language plpgsql volatile security definer set search_path = ''
as $$
#variable_conflict use_variable
declare
  r walcast.dead_letter_queue;
  delay float8;
  retry boolean;
begin
  if error_code is null or length(error_code) not between 1 and 64 then
    raise exception 'error_code must be 1-64 characters' using errcode = 'invalid_parameter_value';
  end if;
  if error_message is null or error_message = '' then
    raise exception 'error_message must not be empty' using errcode = 'invalid_parameter_value';
  end if;
  r := walcast.dlq_lock_row(id);
  if r.status <> 'retrying' then
    raise exception 'dead letter % is %, not retrying: only a claimed row can fail an attempt', id, r.status
      using errcode = 'object_not_in_prerequisite_state';
  end if;
  retry := not coalesce(give_up, false)
           and r.retry_policy->>'kind' = 'timed_retry'
           and r.attempts < (r.retry_policy->>'max_attempts')::integer;
  if retry then
    delay := least((r.retry_policy->>'backoff_max_secs')::float8,
                   (r.retry_policy->>'backoff_base_secs')::float8 * power(2, least(r.attempts - 1, 40)));
  end if;
  update walcast.dead_letter_queue d
     set status = case when retry then 'pending' else 'failed' end,
         next_attempt_at = case when retry then now() + make_interval(secs => delay) end,
         error_code = error_code,
         error_message = error_message,
         hint = coalesce(nullif(hint, ''), d.hint),
         updated_at = now()
   where d.id = id
  returning d.* into r;
  return r;
end
$$;

-- Manual retry: puts a row back to pending, due now, with a fresh attempt budget. With an id,
-- that row (raises when it does not exist, is recovered, is being retried, or is no_retry);
-- without, every failed row and every manual_retry row waiting for an operator, except no_retry
-- rows. Returns the requeued rows.
create or replace function walcast.dlq_requeue(id bigint default null)
returns setof walcast.dead_letter_queue
language plpgsql volatile security definer set search_path = ''
as $$
#variable_conflict use_variable
declare
  r walcast.dead_letter_queue;
begin
  if id is not null then
    r := walcast.dlq_lock_row(id);
    if r.status in ('recovered', 'retrying') then
      raise exception 'dead letter % is %: only pending or failed rows can be retried', id, r.status
        using errcode = 'object_not_in_prerequisite_state';
    end if;
    if r.retry_policy->>'kind' = 'no_retry' then
      raise exception 'dead letter % has retry policy no_retry: walcast cannot retry its operation (%)', id, r.operation
        using errcode = 'object_not_in_prerequisite_state',
              hint = 'inspect it with `walcast dlq show`, handle it by hand, then purge it';
    end if;
  end if;
  return query
  update walcast.dead_letter_queue d
     set status = 'pending',
         next_attempt_at = now(),
         attempts = 0,
         requeues = d.requeues + 1,
         updated_at = now()
   where case when id is not null then d.id = id
              else d.retry_policy->>'kind' <> 'no_retry'
                   and (d.status = 'failed' or (d.status = 'pending' and d.next_attempt_at is null))
         end
  returning d.*;
end
$$;

-- Deletes rows in `statuses` (pending, failed, recovered; never retrying) last changed more than
-- `older_than` ago; returns how many.
create or replace function walcast.dlq_cleanup(
  older_than interval,
  statuses   text[] default array['recovered']
) returns bigint
language plpgsql volatile security definer set search_path = ''
as $$
#variable_conflict use_variable
declare
  deleted bigint;
begin
  if older_than is null or older_than < interval '0' then
    raise exception 'older_than must be zero or positive, e.g. ''7 days''' using errcode = 'invalid_parameter_value';
  end if;
  if statuses is null or cardinality(statuses) = 0 then
    raise exception 'statuses must name at least one of pending, failed, recovered'
      using errcode = 'invalid_parameter_value';
  end if;
  if exists (select 1 from unnest(statuses) s where s is null or s not in ('pending', 'failed', 'recovered')) then
    raise exception 'statuses % may only hold pending, failed and recovered (retrying rows are being worked on)', statuses::text
      using errcode = 'invalid_parameter_value';
  end if;
  delete from walcast.dead_letter_queue d
   where d.status = any (statuses)
     and d.updated_at < now() - older_than;
  get diagnostics deleted = row_count;
  return deleted;
end
$$;

-- Counts by status, the oldest pending row, and when the next row is due.
create or replace function walcast.dlq_stats()
returns table (
  pending            bigint,
  retrying           bigint,
  recovered          bigint,
  failed             bigint,
  total              bigint,
  oldest_pending_at  timestamptz,
  oldest_pending_age interval,
  next_attempt_at    timestamptz
)
language sql stable security definer set search_path = ''
as $$
  select count(*) filter (where d.status = 'pending'),
         count(*) filter (where d.status = 'retrying'),
         count(*) filter (where d.status = 'recovered'),
         count(*) filter (where d.status = 'failed'),
         count(*),
         min(d.created_at) filter (where d.status = 'pending'),
         now() - min(d.created_at) filter (where d.status = 'pending'),
         min(d.next_attempt_at) filter (where d.status in ('pending', 'retrying'))
    from walcast.dead_letter_queue d
$$;

revoke all on function walcast.dlq_normalize_policy(jsonb) from public, anon, authenticated;
revoke all on function walcast.dlq_lock_row(bigint) from public, anon, authenticated, service_role;
revoke all on function walcast.dlq_push(text, text, jsonb, text, text, text, jsonb) from public, anon, authenticated;
revoke all on function walcast.dlq_claim(integer, text, text[], bigint, interval) from public, anon, authenticated;
revoke all on function walcast.dlq_mark_recovered(bigint) from public, anon, authenticated;
revoke all on function walcast.dlq_mark_failed(bigint, text, text, text, boolean) from public, anon, authenticated;
revoke all on function walcast.dlq_requeue(bigint) from public, anon, authenticated;
revoke all on function walcast.dlq_cleanup(interval, text[]) from public, anon, authenticated;
revoke all on function walcast.dlq_stats() from public, anon, authenticated;

grant execute on function walcast.dlq_normalize_policy(jsonb) to service_role;
grant execute on function walcast.dlq_push(text, text, jsonb, text, text, text, jsonb) to service_role;
grant execute on function walcast.dlq_claim(integer, text, text[], bigint, interval) to service_role;
grant execute on function walcast.dlq_mark_recovered(bigint) to service_role;
grant execute on function walcast.dlq_mark_failed(bigint, text, text, text, boolean) to service_role;
grant execute on function walcast.dlq_requeue(bigint) to service_role;
grant execute on function walcast.dlq_cleanup(interval, text[]) to service_role;
grant execute on function walcast.dlq_stats() to service_role;
