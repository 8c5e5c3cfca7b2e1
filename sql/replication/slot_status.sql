select slot_name::text, plugin::text, slot_type::text, database::text, active,
       confirmed_flush_lsn::text, restart_lsn::text, wal_status::text,
       pg_current_wal_lsn()::text as current_lsn,
       (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 as lag_bytes,
       (pg_current_wal_lsn() - restart_lsn)::int8 as retained_bytes
from pg_replication_slots
where slot_name = $1
