select walcast.dlq_cleanup(make_interval(secs => $1::float8), $2::text[])
