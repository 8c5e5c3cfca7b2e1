select c.oid,
       has_schema_privilege($2, c.relnamespace, 'USAGE') as usage,
       array(select a.attname::text from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
               and has_column_privilege($2, c.oid, a.attnum, 'SELECT')
             order by a.attnum) as readable,
       (select count(*) from pg_attribute a
        where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped) as total,
       exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary) as has_key,
       coalesce((select bool_and(has_column_privilege($2, c.oid, k.attnum, 'SELECT'))
                 from pg_index i, unnest(i.indkey::int2[]) as k(attnum)
                 where i.indrelid = c.oid and i.indisprimary), false) as key_readable
from pg_publication_tables p
join pg_namespace n on n.nspname = p.schemaname
join pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
where p.pubname = $1
