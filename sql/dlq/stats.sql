select pending, retrying, recovered, failed, total, oldest_pending_at,
       extract(epoch from oldest_pending_age)::float8 as oldest_pending_age_secs, next_attempt_at
  from walcast.dlq_stats()
