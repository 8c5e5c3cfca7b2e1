-- Saves resume positions in one statement: arrays of resume_id, topic, private, bindings'
-- canonical text, subject, commit LSN (text) and change index, one element per channel (each
-- channel at most once).
insert into walcast.realtime_resume_positions as p
       (resume_id, topic, private, bindings_key, subject, commit_lsn, change_index, updated_at)
select r, t, pr, md5(b), s, l::pg_lsn, i, now()
  from unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[], $7::int8[])
       as u(r, t, pr, b, s, l, i)
    on conflict (resume_id, topic, private, bindings_key) do update
   set subject = excluded.subject,
       commit_lsn = excluded.commit_lsn,
       change_index = excluded.change_index,
       updated_at = excluded.updated_at
