-- What `walcast serve` needs from a role that is not a superuser, the way Supabase's
-- `authenticator` runs: LOGIN and REPLICATION (given when the role is created), membership in the
-- API roles it switches to for row level security, and the privileges on walcast's own objects.
--
-- Run once as a superuser after `walcast migrate`, in the database walcast serves:
--
--   create role walcast_app login replication password '...';
--   psql -v role=walcast_app -f sql/deploy/runtime_role.sql postgres://postgres@host/app
--
-- Run it again after a later `walcast migrate` (new functions and tables need their grants).
-- `service_role` is not granted: walcast shows it every change without switching to it.

grant anon, authenticated to :"role";

grant usage on schema walcast to :"role";
grant select, insert, update, delete on all tables in schema walcast to :"role";
grant usage, select on all sequences in schema walcast to :"role";
grant execute on all functions in schema walcast to :"role";

grant select, insert on public.monitoring_events to :"role";
-- Ingest writes every event whoever it is about: the server's own role passes the table's row
-- level security (the API roles keep their own policies).
drop policy if exists walcast_runtime on public.monitoring_events;
create policy walcast_runtime on public.monitoring_events
  for all to :"role" using (true) with check (true);
grant select on public.refinery_schema_history to :"role";

-- Realtime private channels and stored broadcasts: the probes of private-channel checks, the
-- broadcasts stored with `persist` and read back by replay (as this role, after the channel's
-- own checks), in Supabase's `realtime.messages` or the one the migrations created.
grant usage on schema realtime to :"role";
grant select, insert on realtime.messages to :"role";
drop policy if exists walcast_runtime on realtime.messages;
create policy walcast_runtime on realtime.messages
  for all to :"role" using (true) with check (true);
