-- Deletes resume positions not saved for longer than $1 seconds (walcast's --retention): the
-- WAL they point into is gone, so they could not be resumed.
delete from walcast.realtime_resume_positions
 where updated_at < now() - make_interval(secs => $1::float8)
