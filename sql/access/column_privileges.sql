select coalesce(array_agg(a.attname::text order by a.attnum)
                  filter (where has_column_privilege($1, a.attrelid, a.attname, 'SELECT')),
                '{}'),
       count(*)
from pg_attribute a
where a.attrelid = 'public.monitoring_events'::regclass and a.attnum > 0 and not a.attisdropped
