-- The row level security check of the Realtime endpoint (docs/realtime.md), one call for
-- every check waiting, whatever the commits and subscribers: which of the rows `ids` each claims
-- group may read, evaluated as that group's role with its claims, against the table's real
-- policies.
--
-- Group i is (roles[i], claims[i]). The result has one row per visible (group, id), and one
-- row (group, null, problem) for a group whose check failed (unknown role, permission denied),
-- so one bad group never hides the answers of the others.
--
-- Postgres may stream a commit a moment before the committing session has published it to
-- other sessions, so the call first waits up to wait_ms for the transactions (32-bit xids
-- `xids`, widened with the current epoch) to be visible; each statement of this volatile
-- function takes a fresh snapshot. Role and claims are set transaction-locally and reset at
-- the end. Only walcast's own connection should call this (it can switch to these roles).
create or replace function walcast.realtime_visible_ids(
  xids bigint[],
  ids uuid[],
  roles text[],
  claims text[],
  wait_ms integer default 2000
) returns table (grp integer, id uuid, problem text)
language plpgsql volatile
as $$
declare
  deadline timestamptz := clock_timestamp() + make_interval(secs => greatest(wait_ms, 0) / 1000.0);
  committed boolean;
begin
  loop
    select coalesce(bool_and(pg_visible_in_snapshot(
             (case when f.wide >= f.xmax and f.wide >= 4294967296
                   then f.wide - 4294967296 else f.wide end)::text::xid8, f.s)), true)
      into committed
      from (select x.s, x.xmax, ((x.xmax >> 32) << 32) | t.xid32 as wide
              from (select pg_current_snapshot() as s,
                           pg_snapshot_xmax(pg_current_snapshot())::text::int8 as xmax) x,
                   unnest(xids) as t(xid32)) f;
    exit when committed or clock_timestamp() >= deadline;
    perform pg_sleep(0.002);
  end loop;

  for i in 1 .. coalesce(array_length(roles, 1), 0) loop
    begin
      perform set_config('role', roles[i], true);
      perform set_config('request.jwt.claims', claims[i], true);
      return query
        select i, e.id, null::text from public.monitoring_events e where e.id = any(ids);
    exception when others then
      return query select i, null::uuid, sqlstate::text;
    end;
  end loop;
  perform set_config('role', 'none', true);
  perform set_config('request.jwt.claims', '', true);
end
$$;

revoke all on function walcast.realtime_visible_ids(bigint[], uuid[], text[], text[], integer) from public;
