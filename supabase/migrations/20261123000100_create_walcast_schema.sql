-- walcast's own objects live in the `walcast` schema; the event table lives in `public`.
-- The three API roles exist on every Supabase project; a plain Postgres gets them here,
-- with the same attributes (service_role bypasses RLS, none of them can log in).
create schema if not exists walcast;

-- Roles are cluster-wide: two databases migrating at once may race to create them, so a
-- concurrent creation counts as success.
do $$
declare
  r record;
begin
  for r in select * from (values ('anon', 'nologin noinherit'),
                                 ('authenticated', 'nologin noinherit'),
                                 ('service_role', 'nologin noinherit bypassrls')) as t(name, attrs)
  loop
    if not exists (select 1 from pg_roles where rolname = r.name) then
      begin
        execute format('create role %I %s', r.name, r.attrs);
      exception when duplicate_object or unique_violation then
        null;
      end;
    end if;
  end loop;
end
$$;

grant usage on schema public to anon, authenticated, service_role;
grant usage on schema walcast to service_role;

-- Time-ordered UUID (version 7) for rows inserted without an id, e.g. from psql.
-- walcast itself generates v7 ids in the server; this default keeps SQL inserts alike.
create or replace function walcast.uuid_v7() returns uuid
language plpgsql volatile parallel safe
as $$
declare
  v bytea;
begin
  v := overlay(uuid_send(gen_random_uuid())
               placing substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
               from 1 for 6);
  v := set_byte(v, 6, (get_byte(v, 6) & 15) | 112);
  return encode(v, 'hex')::uuid;
end
$$;

grant execute on function walcast.uuid_v7() to anon, authenticated, service_role;
