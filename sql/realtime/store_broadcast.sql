insert into realtime.messages (id, topic, extension, event, payload, binary_payload, private)
values ($1, $2, 'broadcast', $3, $4, $5, true)
