select current_setting('wal_level') as wal_level,
       (select rolreplication or rolsuper from pg_roles where rolname = current_user) as can_replicate,
       exists (select 1 from pg_publication where pubname = $1) as publication_exists,
       exists (select 1 from pg_publication_tables
               where pubname = $1 and schemaname = 'public' and tablename = 'monitoring_events') as publication_has_table,
       current_database()::text as database
