-- The publication walcast streams from. A Supabase project may also list the table in
-- its own `supabase_realtime` publication; walcast only needs this one.
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'walcast_events') then
    create publication walcast_events for table public.monitoring_events;
  elsif not exists (select 1 from pg_publication_tables
                    where pubname = 'walcast_events' and schemaname = 'public' and tablename = 'monitoring_events') then
    alter publication walcast_events add table public.monitoring_events;
  end if;
end
$$;
