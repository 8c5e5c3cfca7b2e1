select id, operation, source, payload, error_code, error_message, hint, retry_policy, status,
       attempts, requeues, next_attempt_at, last_attempt_at, claimed_by, created_at, updated_at,
       recovered_at
  from walcast.dlq_claim($1::int4, $2::text, $3::text[], $4::int8, make_interval(secs => $5::float8))
