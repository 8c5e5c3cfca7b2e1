select set_config('role', $1, true),
       set_config('request.jwt.claims', $2, true),
       set_config('request.jwt.claim.sub', coalesce($2::jsonb ->> 'sub', ''), true),
       set_config('request.jwt.claim.role', $1, true),
       set_config('realtime.topic', $3, true)
