-- The event store: one row per monitoring event, in the unified event model.
create table if not exists public.monitoring_events (
  id          uuid        primary key default walcast.uuid_v7(),
  event_type  text        not null,
  "timestamp" timestamptz not null default now(),
  source      text        not null,
  data        jsonb       not null default '{}',
  metadata    jsonb       not null default '{}',
  created_at  timestamptz not null default now(),
  constraint monitoring_events_event_type_length check (length(event_type) between 1 and 128),
  constraint monitoring_events_source_length check (length(source) between 1 and 256),
  constraint monitoring_events_data_is_object check (jsonb_typeof(data) = 'object'),
  constraint monitoring_events_metadata_is_object check (jsonb_typeof(metadata) = 'object'),
  constraint monitoring_events_data_size check (octet_length(data::text) <= 1048576),
  constraint monitoring_events_metadata_size check (octet_length(metadata::text) <= 65536)
);

create index if not exists monitoring_events_timestamp_idx on public.monitoring_events ("timestamp");
create index if not exists monitoring_events_event_type_idx on public.monitoring_events (event_type);
create index if not exists monitoring_events_source_idx on public.monitoring_events (source);
create index if not exists monitoring_events_created_at_idx on public.monitoring_events (created_at);

-- Grants as a Supabase project has them: the API roles hold table privileges and
-- row level security decides which rows each one sees.
grant select, insert, update, delete on public.monitoring_events to anon, authenticated, service_role;

alter table public.monitoring_events enable row level security;

-- Default policies: service_role may do everything, authenticated users may read, anon sees nothing.
drop policy if exists monitoring_events_service_role_all on public.monitoring_events;
create policy monitoring_events_service_role_all on public.monitoring_events
  for all to service_role using (true) with check (true);

drop policy if exists monitoring_events_authenticated_read on public.monitoring_events;
create policy monitoring_events_authenticated_read on public.monitoring_events
  for select to authenticated using (true);
