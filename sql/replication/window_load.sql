-- The newest commit LSN slot $1 can no longer replay, and the position walcast had confirmed
-- when it recorded it.
select expired_through::text, confirmed_lsn::text from walcast.replication_windows where slot_name = $1
