select coalesce((select rolsuper or rolbypassrls from pg_roles where rolname = $1), false)
