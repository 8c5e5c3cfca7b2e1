select id::text, event, payload::text, binary_payload
from realtime.messages
where topic = $1
  and private is true
  and extension = 'broadcast'
  and inserted_at >= (to_timestamp($2::float8 / 1000) at time zone 'utc')
order by inserted_at desc
limit $3
