-- The row level security check of both WebSocket endpoints (docs/realtime.md), in the form
-- walcast calls since 2026-12-13: the same question as walcast.realtime_visible_rows, answered
-- with one row per (group, table) pair instead of one row per visible row, and without a
-- subtransaction per pair unless a pair fails.
--
-- Row j is (row_tables[j], row_keys[j]): a table and the primary key of one of its rows as a
-- jsonb object ({"id": 5}, {"tenant": "a", "slug": "b"}), cast to the key's column types by
-- jsonb_populate_record. Group i is (roles[i], claims[i]). Pair p asks whether group
-- pair_groups[p] may see the rows of table pair_tables[p]; pairs of one table should be
-- consecutive (walcast sends them ordered by table), so each table's rows are gathered once.
-- The result has one row per pair: (group, table, the numbers j of the rows the group may see,
-- null, null) — for the events table (null, the ids of those rows, null) instead, cheaper to
-- gather — or (group, table, null, null, problem) when the pair's check failed (unknown role,
-- permission denied: the SQLSTATE; `no_primary_key` for a table without one), so one bad pair
-- never hides the answers of the others.
--
-- The pairs are checked in one go, without a subtransaction each; a pair that fails is checked
-- again alone in its own subtransaction, which tells its problem, and the rest go on in one go
-- (the answers returned before it stay right). Role and claims are set transaction-locally
-- (the role only when it changes) and reset at the end; the function's own plan_cache_mode
-- setting ends with it too. Only walcast's own connection should
-- call this (it can switch to these roles).
--
-- Postgres may stream a commit a moment before the committing session has published it to
-- other sessions: walcast.await_visible_xids waits first (up to wait_ms).
--
-- Each table's check is a prepared statement of the session (`walcast_sets_<oid>_<hash of its
-- text>`), planned once per role; the events table, `public.monitoring_events` (key `id uuid`),
-- is checked by a static statement of this function (one index scan with `= any`), whose
-- answer is the ids it found.

-- Waits up to wait_ms until the transactions `xids` (32-bit xids, widened with the current
-- epoch) are visible to new snapshots; true when they are.
create or replace function walcast.await_visible_xids(xids bigint[], wait_ms integer)
returns boolean
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
    if committed or clock_timestamp() >= deadline then
      return committed;
    end if;
    perform pg_sleep(0.002);
  end loop;
end
$$;

revoke all on function walcast.await_visible_xids(bigint[], integer) from public;

create or replace function walcast.realtime_visible_sets(
  xids bigint[],
  row_tables oid[],
  row_keys jsonb[],
  roles text[],
  claims text[],
  pair_groups integer[],
  pair_tables oid[],
  wait_ms integer default 2000
) returns table (grp integer, tbl oid, visible integer[], visible_ids uuid[], problem text)
language plpgsql volatile
-- One plan per statement and role, reused for every group: without this the plan cache may
-- plan the `= any` statements again for every group (planning costs more than the check).
set plan_cache_mode = force_generic_plan
as $$
declare
  -- One prepared statement per distinct table: tabs[k] is checked by stmts[k] (its name;
  -- 'events': the static statement; null: no primary key).
  tabs oid[] := '{}';
  stmts text[] := '{}';
  -- Per table, its rows: keys, row numbers, and for the events table the ids.
  tab_keys jsonb[];
  tab_rows integer[];
  tab_ids uuid[];
  -- The EXECUTE of the current table's prepared statement with its rows.
  tab_exec text;
  rows_table oid;
  one_table oid;
  stmt text;
  stmt_name text;
  g integer;
  role_now text;
  -- Pairs answered so far, and the pair checked alone after it failed.
  done integer := 0;
  isolated integer;
  -- What set_config returns (assigned, not PERFORMed: evaluated without a query).
  setting text;
  npairs integer := coalesce(array_length(pair_groups, 1), 0);
begin
  perform walcast.await_visible_xids(xids, wait_ms);

  -- Built once per table, before any role switch: schema-qualified names (the search path may
  -- name other schemas once the role changes), each key column compared with its own type.
  foreach one_table in array coalesce((select array_agg(distinct x) from unnest(pair_tables) x), '{}') loop
    if one_table = to_regclass('public.monitoring_events')
       and (select count(*) = 1 and bool_and(att.attname = 'id' and att.atttypid = 'uuid'::regtype)
              from pg_index idx
              join pg_attribute att on att.attrelid = idx.indrelid and att.attnum = any(idx.indkey)
             where idx.indrelid = one_table and idx.indisprimary) then
      tabs := tabs || one_table;
      stmts := stmts || 'events'::text;
      continue;
    end if;
    select format(
             'select coalesce(array_agg(k.j), ''{}'') from unnest($1, $2) as k(key, j) '
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
      stmt_name := format('walcast_sets_%s_%s', one_table, left(md5(stmt), 12));
      if not exists (select 1 from pg_prepared_statements ps where ps.name = stmt_name) then
        execute format('prepare %I(jsonb[], integer[]) as %s', stmt_name, stmt);
      end if;
    end if;
    tabs := tabs || one_table;
    stmts := stmts || stmt_name;
    stmt := null;
  end loop;

  -- The pairs in one go, without a subtransaction each. When one fails, what it did is rolled
  -- back (the rows returned before it stay), it is checked again alone in its own
  -- subtransaction, which tells its problem, and the rest go on in one go.
  while done < npairs loop
    begin
      for p in done + 1 .. npairs loop
        g := pair_groups[p];
        one_table := pair_tables[p];
        stmt_name := stmts[array_position(tabs, one_table)];
        grp := g;
        tbl := one_table;
        visible := null;
        visible_ids := null;
        problem := null;
        if stmt_name is null then
          problem := 'no_primary_key';
          return next;
          done := p;
          continue;
        end if;
        if rows_table is distinct from one_table then
          select array_agg(row_keys[j] order by j), array_agg(j order by j)
            into tab_keys, tab_rows
            from generate_subscripts(row_tables, 1) as s(j)
           where row_tables[j] = one_table;
          tab_ids := null;
          tab_exec := null;
          if stmt_name = 'events' then
            select array_agg((k ->> 'id')::uuid) into tab_ids from unnest(tab_keys) as k;
          else
            tab_exec := format('execute %I(%L, %L)', stmt_name, tab_keys, tab_rows);
          end if;
          rows_table := one_table;
        end if;
        if p = isolated then
          begin
            setting := set_config('role', roles[g], true);
            setting := set_config('request.jwt.claims', claims[g], true);
            if stmt_name = 'events' then
              visible_ids := array(select e.id from public.monitoring_events e where e.id = any(tab_ids));
            else
              execute tab_exec into visible;
            end if;
          exception when others then
            -- The failed block's settings are rolled back with it.
            problem := sqlstate;
          end;
          role_now := null;
        else
          if role_now is distinct from roles[g] then
            setting := set_config('role', roles[g], true);
            role_now := roles[g];
          end if;
          setting := set_config('request.jwt.claims', claims[g], true);
          if stmt_name = 'events' then
            visible_ids := array(select e.id from public.monitoring_events e where e.id = any(tab_ids));
          else
            execute tab_exec into visible;
          end if;
        end if;
        return next;
        done := p;
      end loop;
    exception when others then
      -- Pair done + 1 failed; its settings are rolled back.
      role_now := null;
      rows_table := null;
      if isolated = done + 1 then
        -- It failed again outside its own check: answered with the error.
        grp := pair_groups[done + 1];
        tbl := pair_tables[done + 1];
        visible := null;
        visible_ids := null;
        problem := sqlstate;
        return next;
        done := done + 1;
      else
        isolated := done + 1;
      end if;
    end;
  end loop;
  setting := set_config('role', 'none', true);
  setting := set_config('request.jwt.claims', '', true);
end
$$;

revoke all on function walcast.realtime_visible_sets(bigint[], oid[], jsonb[], text[], text[], integer[], oid[], integer) from public;
