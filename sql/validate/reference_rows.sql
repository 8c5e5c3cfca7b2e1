-- The rows of public.monitoring_events created inside a validation window, as JSON, oldest first.
-- $1, $2: window start and end (timestamptz); $3: most rows.
select to_jsonb(e) as row
  from public.monitoring_events e
 where e.created_at >= $1
   and e.created_at <= $2
 order by e.created_at, e.id
 limit $3
