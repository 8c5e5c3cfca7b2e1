-- Broadcast from Database, part 3: the publication walcast streams `realtime.messages` from,
-- next to `walcast_events`. Inserts only, decoded as the partitioned table itself (not as its
-- daily partitions). Its rows reach Realtime channels as broadcasts, never as table changes.
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'walcast_messages') then
    create publication walcast_messages for table realtime.messages
      with (publish = 'insert', publish_via_partition_root = true);
  end if;
end
$$;
