select action, partition_name from walcast.maintain_realtime_messages($1, $2)
