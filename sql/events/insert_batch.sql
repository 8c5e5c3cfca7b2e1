insert into public.monitoring_events (id, event_type, "timestamp", source, data, metadata)
select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::jsonb[], $6::jsonb[])
on conflict (id) do nothing
