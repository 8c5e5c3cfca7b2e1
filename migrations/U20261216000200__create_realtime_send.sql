-- Broadcast from Database, part 2: the SQL functions that send a broadcast by storing it in
-- `realtime.messages`, with Supabase's signatures: `realtime.send`, `realtime.send_binary`
-- and `realtime.broadcast_changes` (for row triggers). walcast streams the stored rows to the
-- channels of their topic. A database that already has a function of that signature keeps it.
do $$
begin
  if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null then
    -- Stores one broadcast of `payload` (an object; its `id` is the message id unless it has
    -- one) as `event` on `topic`. A failure is a warning, never an error of the caller.
    create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
    returns void
    language plpgsql
    as $fn$
    declare
      message_id uuid := gen_random_uuid();
      body jsonb;
    begin
      begin
        if payload ? 'id' then
          body := payload;
        else
          body := payload || jsonb_build_object('id', message_id);
        end if;
        perform set_config('realtime.topic', topic, true);
        insert into realtime.messages (id, payload, event, topic, private, extension)
        values (message_id, body, event, topic, private, 'broadcast');
      exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
      end;
    end
    $fn$;
  end if;

  if to_regprocedure('realtime.send_binary(bytea, text, text, boolean)') is null then
    -- Like `realtime.send` with raw bytes: clients receive a binary payload.
    create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
    returns void
    language plpgsql
    as $fn$
    begin
      begin
        perform set_config('realtime.topic', topic, true);
        insert into realtime.messages (id, binary_payload, event, topic, private, extension)
        values (gen_random_uuid(), payload, event, topic, private, 'broadcast');
      exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
      end;
    end
    $fn$;
  end if;

  if to_regprocedure('realtime.broadcast_changes(text, text, text, text, text, record, record, text)') is null then
    -- For row triggers: sends `{operation, table, schema, record, old_record}` as `event_name`
    -- on `topic_name` (a private message).
    create function realtime.broadcast_changes(topic_name text, event_name text, operation text,
                                               table_name text, table_schema text,
                                               new record, old record, level text default 'ROW')
    returns void
    language plpgsql
    as $fn$
    begin
      if level = 'STATEMENT' then
        raise exception 'realtime.broadcast_changes works in row triggers only (FOR EACH ROW)';
      end if;
      if operation not in ('INSERT', 'UPDATE', 'DELETE') then
        raise exception 'realtime.broadcast_changes: unexpected operation %', operation;
      end if;
      perform realtime.send(
        jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                           'table', table_name, 'schema', table_schema),
        event_name, topic_name);
    end
    $fn$;
  end if;
end
$$;
