-- The row level security check of both WebSocket endpoints for every table of walcast's
-- publication (docs/realtime.md), one call for every check waiting, whatever the commits, tables
-- and subscribers: which rows each claims group may read, evaluated as that group's role with its
-- claims, against each table's own policies and privileges.
--
-- Row j is (row_tables[j], row_keys[j]): a table and the primary key of one of its rows as a
-- jsonb object ({"id": 5}, {"tenant": "a", "slug": "b"}); the key is cast to the table's column
-- types by jsonb_populate_record, so any key type works. Group i is (roles[i], claims[i]). Pair p
-- asks whether group pair_groups[p] may see the rows of table pair_tables[p] (a group is only
-- asked about the tables it asked about); pairs of one table should be consecutive (walcast
-- sends them ordered by table), so each table's rows are gathered once. The result has one row (group, table, j, null) per
-- visible row, and one row (group, table, null, problem) for a pair whose check failed (unknown
-- role, permission denied: the SQLSTATE; `no_primary_key` for a table without one), so one bad
-- pair never hides the answers of the others.
--
-- Postgres may stream a commit a moment before the committing session has published it to
-- other sessions, so the call first waits up to wait_ms for the transactions (32-bit xids
-- `xids`, widened with the current epoch) to be visible; each statement of this volatile
-- function takes a fresh snapshot. Role and claims are set transaction-locally for each pair
-- and reset at the end. Only walcast's own connection should call this (it can switch to these
-- roles).
--
-- Each table's check is a prepared statement of the session (`walcast_rows_<oid>_<hash of its
-- text>`, prepared on first use), so that it is planned once per role, not once per group: the
-- plan cache plans a statement again when the role differs from the one it was planned for,
-- which applies the table's row level security policies for that role; the claims are read by
-- the policies when the statement runs. The events table, `public.monitoring_events` (key `id
-- uuid`), most of the traffic, is checked by a static statement of this function instead (plpgsql
-- caches its plan the same way, without the cost of an EXECUTE).
--
-- walcast.realtime_visible_ids (public.monitoring_events by uuid) stays for older callers;
-- walcast itself calls this function.
create or replace function walcast.realtime_visible_rows(
  xids bigint[],
  row_tables oid[],
  row_keys jsonb[],
  roles text[],
  claims text[],
  pair_groups integer[],
  pair_tables oid[],
  wait_ms integer default 2000
) returns table (grp integer, tbl oid, n integer, problem text)
language plpgsql volatile
as $$
declare
  deadline timestamptz := clock_timestamp() + make_interval(secs => greatest(wait_ms, 0) / 1000.0);
  committed boolean;
  -- One prepared statement per distinct table: tabs[k] is checked by stmts[k] (its name; null:
  -- no primary key).
  tabs oid[] := '{}';
  stmts text[] := '{}';
  -- The events table when asked about and its key is `id uuid` (checked by the static
  -- statement below).
  events oid;
  events_ids uuid[];
  events_rows integer[];
  one_table oid;
  stmt text;
  stmt_name text;
  g integer;
  -- The table whose rows `rows_tail` holds: `<oid>, '<keys>', '<row numbers>')`, the end of
  -- its prepared statement's EXECUTE.
  rows_table oid;
  rows_tail text;
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

  -- Built once per table, before any role switch: schema-qualified names (the search path may
  -- name other schemas once the role changes), each key column compared with its own type.
  foreach one_table in array coalesce((select array_agg(distinct x) from unnest(pair_tables) x), '{}') loop
    if one_table = to_regclass('public.monitoring_events')
       and (select count(*) = 1 and bool_and(att.attname = 'id' and att.atttypid = 'uuid'::regtype)
              from pg_index idx
              join pg_attribute att on att.attrelid = idx.indrelid and att.attnum = any(idx.indkey)
             where idx.indrelid = one_table and idx.indisprimary) then
      events := one_table;
      tabs := tabs || one_table;
      stmts := stmts || 'events'::text;
      continue;
    end if;
    select format(
             'select $1, $2, k.j, null::text from unnest($3, $4) as k(key, j) '
             'cross join lateral jsonb_populate_record(null::%1$s, k.key) as r '
             'where exists (select 1 from %1$s as t where %2$s)',
             format('%I.%I', nsp.nspname, cls.relname),
             string_agg(format('t.%1$I = r.%1$I', att.attname), ' and ' order by att.attnum))
      into stmt
      from pg_class cls
      join pg_namespace nsp on nsp.oid = cls.relnamespace
      join pg_index idx on idx.indrelid = cls.oid and idx.indisprimary
      join pg_attribute att on att.attrelid = cls.oid and att.attnum = any(idx.indkey)
     where cls.oid = one_table
     group by nsp.nspname, cls.relname;
    stmt_name := null;
    if stmt is not null then
      stmt_name := format('walcast_rows_%s_%s', one_table, left(md5(stmt), 12));
      if not exists (select 1 from pg_prepared_statements ps where ps.name = stmt_name) then
        execute format('prepare %I(integer, oid, jsonb[], integer[]) as %s', stmt_name, stmt);
      end if;
    end if;
    tabs := tabs || one_table;
    stmts := stmts || stmt_name;
    stmt := null;
  end loop;

  for p in 1 .. coalesce(array_length(pair_groups, 1), 0) loop
    g := pair_groups[p];
    one_table := pair_tables[p];
    stmt_name := stmts[array_position(tabs, one_table)];
    if stmt_name is null then
      return query select g, one_table, null::integer, 'no_primary_key'::text;
      continue;
    end if;
    if rows_table is distinct from one_table and one_table = events then
      select array_agg((row_keys[j] ->> 'id')::uuid order by j), array_agg(j order by j)
        into events_ids, events_rows
        from generate_subscripts(row_tables, 1) as s(j)
       where row_tables[j] = one_table;
      rows_table := one_table;
    elsif rows_table is distinct from one_table then
      select format('%s, %L, %L)', one_table,
                    array_agg(row_keys[j] order by j), array_agg(j order by j))
        into rows_tail
        from generate_subscripts(row_tables, 1) as s(j)
       where row_tables[j] = one_table;
      rows_table := one_table;
    end if;
    begin
      perform set_config('role', roles[g], true);
      perform set_config('request.jwt.claims', claims[g], true);
      if one_table = events then
        return query
          select g, one_table, k.j, null::text
            from unnest(events_ids, events_rows) as k(id, j)
            join public.monitoring_events e on e.id = k.id;
      else
        return query execute format('execute %I(%s, ', stmt_name, g) || rows_tail;
      end if;
      perform set_config('role', 'none', true);
    exception when others then
      -- The failed block's settings are rolled back with it.
      return query select g, one_table, null::integer, sqlstate::text;
    end;
  end loop;
  perform set_config('role', 'none', true);
  perform set_config('request.jwt.claims', '', true);
end
$$;

revoke all on function walcast.realtime_visible_rows(bigint[], oid[], jsonb[], text[], text[], integer[], oid[], integer) from public;
