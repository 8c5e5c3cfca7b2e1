select set_config('role', $1, true),
       set_config('request.jwt.claims', $2, true),
       set_config('statement_timeout', $3, true)
