insert into realtime.messages (topic, extension, private)
select $1::text, e, true from unnest($2::text[]) as e
returning id
