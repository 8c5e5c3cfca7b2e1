select id, operation, source, payload, error_code, error_message, hint, retry_policy, status,
       attempts, requeues, next_attempt_at, last_attempt_at, claimed_by, created_at, updated_at,
       recovered_at
  from walcast.dead_letter_queue
 where id = $1::int8
