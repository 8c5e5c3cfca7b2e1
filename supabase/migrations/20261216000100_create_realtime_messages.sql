-- Broadcast from Database, part 1: the message store `realtime.messages`, shaped as on a
-- Supabase project (partitioned by day on `inserted_at`, primary key (id, inserted_at), row
-- level security on), and `realtime.topic()` for its policies.
--
-- A database that already has `realtime.messages` (every Supabase project) keeps it exactly as
-- it is: nothing below touches an existing table or function. walcast keeps the daily
-- partitions (`walcast.maintain_realtime_messages`) only of a table it created itself, which
-- it marks with a comment; a Supabase project's partitions stay Supabase's.
create schema if not exists realtime;

do $$
begin
  if to_regclass('realtime.messages') is null then
    create table realtime.messages (
      topic          text      not null,
      extension      text      not null,
      payload        jsonb,
      event          text,
      private        boolean   default false,
      updated_at     timestamp not null default now(),
      inserted_at    timestamp not null default now(),
      id             uuid      not null default gen_random_uuid(),
      binary_payload bytea,
      constraint messages_pkey primary key (id, inserted_at)
    ) partition by range (inserted_at);
    comment on table realtime.messages is
      'walcast: broadcast messages; walcast creates and drops its daily partitions';
    -- Replay reads the newest private broadcasts of a topic.
    create index messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic)
      where extension = 'broadcast' and private is true;
    alter table realtime.messages enable row level security;
    grant usage on schema realtime to anon, authenticated, service_role;
    grant select, insert, update on realtime.messages to anon, authenticated, service_role;
  end if;

  if to_regprocedure('realtime.topic()') is null then
    -- The topic a private-channel check or `realtime.send` is about, for policies.
    create function realtime.topic() returns text
    language sql stable
    as $fn$ select nullif(current_setting('realtime.topic', true), '')::text $fn$;
    grant execute on function realtime.topic() to anon, authenticated, service_role;
  end if;
end
$$;

-- Creates the daily partitions of walcast's `realtime.messages` from yesterday to
-- `ahead_days` days ahead and drops those older than `keep_days` days (dates in UTC); returns
-- what it did. It does nothing to a `realtime.messages` walcast did not create. walcast
-- runs it at start and every hour (`--broadcast-retention-days`). It runs as its owner (who
-- owns the table), so that walcast's runtime role needs only EXECUTE on it.
create or replace function walcast.maintain_realtime_messages(keep_days integer default 3,
                                                               ahead_days integer default 3)
returns table (action text, partition_name text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  today date := (now() at time zone 'utc')::date;
  day date;
  part text;
  i integer;
begin
  if coalesce(obj_description(to_regclass('realtime.messages'), 'pg_class'), '') not like 'walcast:%' then
    return;
  end if;
  for i in -1 .. greatest(ahead_days, 0) loop
    day := today + i;
    part := 'messages_' || to_char(day, 'YYYY_MM_DD');
    if to_regclass(format('realtime.%I', part)) is null then
      execute format('create table realtime.%I partition of realtime.messages for values from (%L) to (%L)',
                     part, day::timestamp, (day + 1)::timestamp);
      action := 'created';
      partition_name := part;
      return next;
    end if;
  end loop;
  for part in
    select c.relname::text
    from pg_inherits i
    join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'realtime.messages'::regclass
      and c.relname ~ '^messages_[0-9]{4}_[0-9]{2}_[0-9]{2}$'
    order by c.relname
  loop
    if to_date(substr(part, 10), 'YYYY_MM_DD') < today - greatest(keep_days, 0) then
      execute format('drop table realtime.%I', part);
      action := 'dropped';
      partition_name := part;
      return next;
    end if;
  end loop;
end
$$;

revoke all on function walcast.maintain_realtime_messages(integer, integer) from public;

select walcast.maintain_realtime_messages();
