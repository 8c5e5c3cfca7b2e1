select set_config('statement_timeout', $1, true),
       to_regclass('realtime.messages') is not null
