select id from public.monitoring_events limit 0
