-- Records the newest commit LSN slot $1 can no longer replay ($2) while walcast has confirmed
-- $3 (both text).
insert into walcast.replication_windows (slot_name, expired_through, confirmed_lsn, updated_at)
values ($1, $2::text::pg_lsn, $3::text::pg_lsn, now())
    on conflict (slot_name) do update
   set expired_through = excluded.expired_through,
       confirmed_lsn = excluded.confirmed_lsn,
       updated_at = excluded.updated_at
