select walcast.dlq_push($1::text, $2::text, $3::jsonb, $4::text, $5::text, $6::text, $7::jsonb)
