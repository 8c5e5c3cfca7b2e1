select extension::text from realtime.messages where id = any($1)
