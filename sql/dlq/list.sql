select id, operation, source, payload, error_code, error_message, hint, retry_policy, status,
       attempts, requeues, next_attempt_at, last_attempt_at, claimed_by, created_at, updated_at,
       recovered_at
  from walcast.dead_letter_queue
 where ($1::text is null or status = $1::text)
   and ($2::text is null or operation = $2::text)
   and ($3::int8 is null or id < $3::int8)
 order by id desc
 limit $4::int8
