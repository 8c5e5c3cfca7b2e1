-- Where a Realtime channel joined with a resume_id may resume: $1 resume_id, $2 topic,
-- $3 private, $4 the bindings' canonical text (the key holds its md5).
select subject, commit_lsn::text, change_index
  from walcast.realtime_resume_positions
 where resume_id = $1 and topic = $2 and private = $3 and bindings_key = md5($4)
