-- Feature flags: which endpoints a walcast node serves, which clients move to the Realtime
-- endpoint, and any flag you add. docs/flags.md explains the model with psql examples.
--
-- Evaluation of flag F for subject S with segments G (the same in walcast, bit for bit):
--   1. F disabled (enabled = false)          -> off, default variant        (source 'disabled')
--   2. an override for subject S             -> that override               (source 'subject_override')
--   3. an override for a segment in G        -> the first one, in G's order (source 'segment_override')
--   4. bucket(F, S) < rollout_percentage*100 -> on, weighted variant        (source 'rollout')
--   5. otherwise                             -> off, default variant        (source 'default')
-- bucket(F, S): the first 8 bytes of sha256(utf8(F || ':' || S)) as a big-endian integer with
-- the top bit cleared, mod 10000. A larger percentage only adds subjects. The weighted variant
-- uses bytes 9..16 the same way, mod 100, against the running sum of the weights in list order.
--
-- Tables are read-only for everyone but their owner: every change goes through the
-- walcast.flag_* functions below, which validate, record history and notify.

create table if not exists walcast.flags (
  name               text         primary key,
  description        text         not null default '',
  enabled            boolean      not null default true,
  rollout_percentage numeric(5,2) not null default 0,
  variants           jsonb        not null default '[]',
  default_variant    text,
  created_at         timestamptz  not null default now(),
  updated_at         timestamptz  not null default now(),
  updated_by         text         not null default current_user,
  constraint flags_name_format check (name ~ '^[a-z][a-z0-9_]{0,62}$' and name <> 'evaluate'),
  constraint flags_description_length check (length(description) <= 1000),
  constraint flags_rollout_range check (rollout_percentage between 0 and 100),
  constraint flags_variants_array check (jsonb_typeof(variants) = 'array'),
  constraint flags_default_variant_present
    check ((jsonb_array_length(variants) = 0) = (default_variant is null))
);

create table if not exists walcast.flag_overrides (
  flag       text        not null references walcast.flags (name) on delete cascade,
  kind       text        not null,
  key        text        not null,
  enabled    boolean     not null,
  variant    text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  updated_by text        not null default current_user,
  primary key (flag, kind, key),
  constraint flag_overrides_kind check (kind in ('subject', 'segment')),
  constraint flag_overrides_key_length check (length(key) between 1 and 256),
  constraint flag_overrides_variant_when_enabled check (enabled or variant is null)
);

create table if not exists walcast.flag_history (
  id         bigint      generated always as identity primary key,
  flag       text        not null,
  action     text        not null,
  who        text        not null,
  changed_at timestamptz not null default now(),
  old        jsonb,
  new        jsonb,
  constraint flag_history_action
    check (action in ('create', 'set', 'rollout', 'override', 'clear_override', 'delete'))
);

create index if not exists flag_history_flag_idx on walcast.flag_history (flag, id);

-- Grants: nobody but the owner writes; service_role reads.
revoke all on walcast.flags, walcast.flag_overrides, walcast.flag_history from public;
grant select on walcast.flags, walcast.flag_overrides, walcast.flag_history to service_role;

-- History is append-only, for the owner too.
create or replace function walcast.flag_history_append_only() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception using
    errcode = 'WF009',
    message = 'walcast.flag_history is append-only',
    hint = 'history rows are written by the walcast.flag_* functions and never changed';
end
$$;

drop trigger if exists flag_history_append_only on walcast.flag_history;
create trigger flag_history_append_only
  before update or delete on walcast.flag_history
  for each row execute function walcast.flag_history_append_only();

drop trigger if exists flag_history_no_truncate on walcast.flag_history;
create trigger flag_history_no_truncate
  before truncate on walcast.flag_history
  for each statement execute function walcast.flag_history_append_only();

-- Every committed change of a flag or an override notifies channel walcast_flags with the
-- flag's name; running walcast nodes reload their snapshot on it.
create or replace function walcast.flag_notify() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_table_name = 'flags' then
    perform pg_notify('walcast_flags', coalesce(new.name, old.name));
  else
    perform pg_notify('walcast_flags', coalesce(new.flag, old.flag));
  end if;
  return null;
end
$$;

drop trigger if exists flags_notify on walcast.flags;
create trigger flags_notify
  after insert or update or delete on walcast.flags
  for each row execute function walcast.flag_notify();

drop trigger if exists flag_overrides_notify on walcast.flag_overrides;
create trigger flag_overrides_notify
  after insert or update or delete on walcast.flag_overrides
  for each row execute function walcast.flag_notify();

-- Hashing -----------------------------------------------------------------------------------

-- The rollout bucket of a subject, 0..9999.
create or replace function walcast.flag_bucket(name text, subject text) returns integer
language sql stable strict parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select ((('x' || encode(substring(sha256(convert_to(flag_bucket.name || ':' || flag_bucket.subject, 'UTF8'))
                                    from 1 for 8), 'hex'))::bit(64)::bigint
           & 9223372036854775807) % 10000)::integer
$$;

-- The variant bucket of a subject, 0..99 (bytes 9..16 of the same hash).
create or replace function walcast.flag_variant_bucket(name text, subject text) returns integer
language sql stable strict parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select ((('x' || encode(substring(sha256(convert_to(flag_variant_bucket.name || ':' || flag_variant_bucket.subject, 'UTF8'))
                                    from 9 for 8), 'hex'))::bit(64)::bigint
           & 9223372036854775807) % 100)::integer
$$;

-- The weighted variant of a subject (null for a flag without variants).
create or replace function walcast.flag_pick(name text, variants jsonb, subject text) returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select w.v ->> 'name'
  from (select e.v, e.ord, sum((e.v ->> 'weight')::integer) over (order by e.ord) as upto
        from jsonb_array_elements(flag_pick.variants) with ordinality as e (v, ord)) as w
  where walcast.flag_variant_bucket(flag_pick.name, flag_pick.subject) < w.upto
  order by w.ord
  limit 1
$$;

-- Evaluation --------------------------------------------------------------------------------

-- The full answer for one flag: on/off, variant, and which rule decided. An unknown flag is
-- off with source 'unknown'. A null subject counts as '' and null segments as none.
create or replace function walcast.flag_evaluate(name text, subject text, segments text[] default '{}')
returns table (enabled boolean, variant text, source text)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  f walcast.flags;
  o_enabled boolean;
  o_variant text;
  s text := coalesce(flag_evaluate.subject, '');
begin
  select fl.* into f from walcast.flags fl where fl.name = flag_evaluate.name;
  if not found then
    return query select false, null::text, 'unknown'::text;
    return;
  end if;
  if not f.enabled then
    return query select false, f.default_variant, 'disabled'::text;
    return;
  end if;
  select ov.enabled, ov.variant into o_enabled, o_variant
  from walcast.flag_overrides ov
  where ov.flag = f.name and ov.kind = 'subject' and ov.key = s;
  if found then
    return query select o_enabled,
      case when o_enabled then coalesce(o_variant, walcast.flag_pick(f.name, f.variants, s))
           else f.default_variant end,
      'subject_override'::text;
    return;
  end if;
  select ov.enabled, ov.variant into o_enabled, o_variant
  from unnest(coalesce(flag_evaluate.segments, '{}'::text[])) with ordinality as sg (key, ord)
  join walcast.flag_overrides ov on ov.flag = f.name and ov.kind = 'segment' and ov.key = sg.key
  order by sg.ord
  limit 1;
  if found then
    return query select o_enabled,
      case when o_enabled then coalesce(o_variant, walcast.flag_pick(f.name, f.variants, s))
           else f.default_variant end,
      'segment_override'::text;
    return;
  end if;
  if walcast.flag_bucket(f.name, s) < (f.rollout_percentage * 100)::integer then
    return query select true, walcast.flag_pick(f.name, f.variants, s), 'rollout'::text;
    return;
  end if;
  return query select false, f.default_variant, 'default'::text;
end
$$;

-- Is the flag on for this subject?
create or replace function walcast.flag_enabled(name text, subject text, segments text[] default '{}')
returns boolean
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select e.enabled from walcast.flag_evaluate(flag_enabled.name, flag_enabled.subject, flag_enabled.segments) as e
$$;

-- Which variant does this subject get?
create or replace function walcast.flag_variant(name text, subject text, segments text[] default '{}')
returns text
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select e.variant from walcast.flag_evaluate(flag_variant.name, flag_variant.subject, flag_variant.segments) as e
$$;

-- Validation helpers (not callable by API roles) ---------------------------------------------

-- Checks `variants` (a list of {"name", "weight"} with unique names and whole weights that
-- sum to 100, or an empty list) and returns it with every weight as an integer.
create or replace function walcast.flag_checked_variants(variants jsonb) returns jsonb
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  e jsonb;
  total integer := 0;
  seen text[] := '{}';
  out_ jsonb := '[]';
  n text;
  w numeric;
begin
  if flag_checked_variants.variants is null or jsonb_typeof(flag_checked_variants.variants) <> 'array' then
    raise exception using errcode = 'WF004',
      message = 'variants must be a JSON array',
      hint = 'e.g. ''[{"name": "direct", "weight": 50}, {"name": "realtime", "weight": 50}]'', or ''[]'' for an on/off flag';
  end if;
  if jsonb_array_length(flag_checked_variants.variants) > 32 then
    raise exception using errcode = 'WF004',
      message = format('a flag has at most 32 variants, got %s', jsonb_array_length(flag_checked_variants.variants)),
      hint = 'merge variants or use a second flag';
  end if;
  for e in select t.x from jsonb_array_elements(flag_checked_variants.variants) as t (x) loop
    if jsonb_typeof(e) <> 'object' then
      raise exception using errcode = 'WF004',
        message = format('each variant must be {"name": ..., "weight": ...}, got %s', e),
        hint = 'e.g. {"name": "realtime", "weight": 25}';
    end if;
    if not (e ? 'name') or not (e ? 'weight') or (select count(*) from jsonb_object_keys(e)) <> 2 then
      raise exception using errcode = 'WF004',
        message = format('each variant must be {"name": ..., "weight": ...}, got %s', e),
        hint = 'e.g. {"name": "realtime", "weight": 25}';
    end if;
    if jsonb_typeof(e -> 'name') <> 'string' then
      raise exception using errcode = 'WF004',
        message = format('invalid variant name %s', e -> 'name'),
        hint = 'variant names are strings of 1-63 characters [a-z0-9_-] starting with a letter';
    end if;
    n := e ->> 'name';
    if n !~ '^[a-z][a-z0-9_-]{0,62}$' or n in ('on', 'off') then
      raise exception using errcode = 'WF004',
        message = format('invalid variant name %L', n),
        hint = 'variant names are 1-63 characters [a-z0-9_-] starting with a letter, and not "on" or "off"';
    end if;
    if n = any (seen) then
      raise exception using errcode = 'WF004',
        message = format('variant %L appears twice', n),
        hint = 'list each variant once';
    end if;
    seen := seen || n;
    if jsonb_typeof(e -> 'weight') <> 'number' then
      raise exception using errcode = 'WF004',
        message = format('variant %L has weight %s; weights are whole numbers from 0 to 100', n, e -> 'weight'),
        hint = 'weights are the percentages of the subjects that get the flag, and sum to 100';
    end if;
    w := (e ->> 'weight')::numeric;
    if w <> trunc(w) or w < 0 or w > 100 then
      raise exception using errcode = 'WF004',
        message = format('variant %L has weight %s; weights are whole numbers from 0 to 100', n, e -> 'weight'),
        hint = 'weights are the percentages of the subjects that get the flag, and sum to 100';
    end if;
    total := total + w::integer;
    out_ := out_ || jsonb_build_array(jsonb_build_object('name', n, 'weight', w::integer));
  end loop;
  if jsonb_array_length(flag_checked_variants.variants) > 0 and total <> 100 then
    raise exception using errcode = 'WF004',
      message = format('variant weights sum to %s, not 100', total),
      hint = 'weights are the percentages of the subjects that get the flag, and sum to 100';
  end if;
  return out_;
end
$$;

-- Raises unless `variant` is one of `variants`.
create or replace function walcast.flag_check_variant(name text, variants jsonb, variant text) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from jsonb_array_elements(flag_check_variant.variants) as e (v)
                 where e.v ->> 'name' = flag_check_variant.variant) then
    raise exception using errcode = 'WF005',
      message = case when jsonb_array_length(flag_check_variant.variants) = 0
                     then format('flag %L has no variants, so it has no variant %L', flag_check_variant.name, flag_check_variant.variant)
                     else format('flag %L has no variant %L', flag_check_variant.name, flag_check_variant.variant) end,
      hint = case when jsonb_array_length(flag_check_variant.variants) = 0
                  then 'give it variants first: walcast.flag_set(name, variants => ...)'
                  else format('its variants are: %s',
                              (select string_agg(e.v ->> 'name', ', ' order by e.ord)
                               from jsonb_array_elements(flag_check_variant.variants) with ordinality as e (v, ord))) end;
  end if;
end
$$;

-- The flag row, locked, or an unknown_flag error.
create or replace function walcast.flag_lock(name text) returns walcast.flags
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  f walcast.flags;
begin
  select fl.* into f from walcast.flags fl where fl.name = flag_lock.name for update;
  if not found then
    raise exception using errcode = 'WF001',
      message = format('unknown flag %L', flag_lock.name),
      hint = 'list the flags with: select name from walcast.flags';
  end if;
  return f;
end
$$;

-- Raises unless `who` names someone.
create or replace function walcast.flag_check_who(who text) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if flag_check_who.who is null or length(trim(flag_check_who.who)) = 0 or length(flag_check_who.who) > 256 then
    raise exception using errcode = 'WF008',
      message = 'who must name who makes the change (1-256 characters)',
      hint = 'leave it out to record current_user';
  end if;
end
$$;

-- Raises unless `percentage` is 0..100 with at most two decimals.
create or replace function walcast.flag_check_percentage(percentage numeric) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if flag_check_percentage.percentage is null
     or flag_check_percentage.percentage < 0 or flag_check_percentage.percentage > 100 then
    raise exception using errcode = 'WF003',
      message = format('rollout percentage must be between 0 and 100, got %s',
                       coalesce(flag_check_percentage.percentage::text, 'null')),
      hint = 'e.g. 25 for a quarter of the subjects; 0 turns the rollout off, 100 reaches everyone';
  end if;
  if flag_check_percentage.percentage <> round(flag_check_percentage.percentage, 2) then
    raise exception using errcode = 'WF003',
      message = format('rollout percentage %s has more than two decimals', flag_check_percentage.percentage),
      hint = 'buckets are 0.01 % wide: use e.g. 12.5 or 0.25';
  end if;
end
$$;

-- Setters -----------------------------------------------------------------------------------

-- Creates a flag. `variants` is '[]' for an on/off flag; `default_variant` defaults to the first.
create or replace function walcast.flag_create(
  name text,
  description text default '',
  variants jsonb default '[]',
  default_variant text default null,
  enabled boolean default true,
  rollout_percentage numeric default 0,
  who text default current_user
) returns walcast.flags
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  f walcast.flags;
  dv text := flag_create.default_variant;
  vs jsonb;
begin
  perform walcast.flag_check_who(flag_create.who);
  if flag_create.name is null or flag_create.name !~ '^[a-z][a-z0-9_]{0,62}$' or flag_create.name = 'evaluate' then
    raise exception using errcode = 'WF002',
      message = format('invalid flag name %L', flag_create.name),
      hint = 'flag names are 1-63 characters [a-z0-9_] starting with a letter (and not "evaluate")';
  end if;
  if exists (select 1 from walcast.flags fl where fl.name = flag_create.name) then
    raise exception using errcode = 'WF007',
      message = format('flag %L already exists', flag_create.name),
      hint = 'change it with walcast.flag_set, or delete it first with walcast.flag_delete';
  end if;
  if flag_create.description is null or length(flag_create.description) > 1000 then
    raise exception using errcode = 'WF008',
      message = 'description must be a text of at most 1000 characters',
      hint = 'use '''' for no description';
  end if;
  vs := walcast.flag_checked_variants(flag_create.variants);
  perform walcast.flag_check_percentage(flag_create.rollout_percentage);
  if flag_create.enabled is null then
    raise exception using errcode = 'WF008',
      message = 'enabled must be true or false',
      hint = 'a disabled flag is off for everyone';
  end if;
  if jsonb_array_length(vs) = 0 then
    if dv is not null then
      perform walcast.flag_check_variant(flag_create.name, vs, dv);
    end if;
  else
    dv := coalesce(dv, vs -> 0 ->> 'name');
    perform walcast.flag_check_variant(flag_create.name, vs, dv);
  end if;
  insert into walcast.flags as fl (name, description, enabled, rollout_percentage, variants,
                                   default_variant, updated_by)
  values (flag_create.name, flag_create.description, flag_create.enabled,
          flag_create.rollout_percentage, vs, dv, flag_create.who)
  returning fl.* into f;
  insert into walcast.flag_history (flag, action, who, old, new)
  values (f.name, 'create', flag_create.who, null, to_jsonb(f));
  return f;
end
$$;

-- Changes a flag's switch, description, variants or default variant; null leaves a field as it is.
create or replace function walcast.flag_set(
  name text,
  enabled boolean default null,
  description text default null,
  variants jsonb default null,
  default_variant text default null,
  who text default current_user
) returns walcast.flags
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  old_f walcast.flags;
  f walcast.flags;
  vs jsonb;
  dv text;
  bad text;
begin
  perform walcast.flag_check_who(flag_set.who);
  old_f := walcast.flag_lock(flag_set.name);
  if flag_set.enabled is null and flag_set.description is null and flag_set.variants is null
     and flag_set.default_variant is null then
    raise exception using errcode = 'WF008',
      message = format('nothing to change for flag %L', flag_set.name),
      hint = 'pass enabled, description, variants or default_variant, e.g. walcast.flag_set(''use_realtime'', enabled => false)';
  end if;
  if flag_set.description is not null and length(flag_set.description) > 1000 then
    raise exception using errcode = 'WF008',
      message = 'description must be a text of at most 1000 characters',
      hint = 'shorten it';
  end if;
  vs := old_f.variants;
  if flag_set.variants is not null then
    vs := walcast.flag_checked_variants(flag_set.variants);
  end if;
  if jsonb_array_length(vs) = 0 then
    if flag_set.default_variant is not null then
      perform walcast.flag_check_variant(old_f.name, vs, flag_set.default_variant);
    end if;
    dv := null;
  else
    dv := coalesce(flag_set.default_variant, old_f.default_variant);
    if dv is null then
      dv := vs -> 0 ->> 'name';
    elsif flag_set.default_variant is null
          and not exists (select 1 from jsonb_array_elements(vs) as e (v) where e.v ->> 'name' = dv) then
      raise exception using errcode = 'WF005',
        message = format('the default variant %L of flag %L is not among the new variants', dv, old_f.name),
        hint = 'pass default_variant with one of the new variants';
    end if;
    perform walcast.flag_check_variant(old_f.name, vs, dv);
  end if;
  select string_agg(format('%s %L', ov.kind, ov.key), ', ' order by ov.kind, ov.key) into bad
  from walcast.flag_overrides ov
  where ov.flag = old_f.name and ov.variant is not null
    and not exists (select 1 from jsonb_array_elements(vs) as e (v) where e.v ->> 'name' = ov.variant);
  if bad is not null then
    raise exception using errcode = 'WF005',
      message = format('overrides of flag %L use variants that the new list lacks: %s', old_f.name, bad),
      hint = 'change or clear those overrides first (walcast.flag_override / walcast.flag_clear_override)';
  end if;
  update walcast.flags as fl
     set enabled = coalesce(flag_set.enabled, fl.enabled),
         description = coalesce(flag_set.description, fl.description),
         variants = vs,
         default_variant = dv,
         updated_at = now(),
         updated_by = flag_set.who
   where fl.name = old_f.name
  returning fl.* into f;
  insert into walcast.flag_history (flag, action, who, old, new)
  values (f.name, 'set', flag_set.who, to_jsonb(old_f), to_jsonb(f));
  return f;
end
$$;

-- Sets the share of subjects that get the flag, 0..100 (two decimals at most).
create or replace function walcast.flag_rollout(
  name text,
  percentage numeric,
  who text default current_user
) returns walcast.flags
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  old_f walcast.flags;
  f walcast.flags;
begin
  perform walcast.flag_check_who(flag_rollout.who);
  old_f := walcast.flag_lock(flag_rollout.name);
  perform walcast.flag_check_percentage(flag_rollout.percentage);
  update walcast.flags as fl
     set rollout_percentage = flag_rollout.percentage,
         updated_at = now(),
         updated_by = flag_rollout.who
   where fl.name = old_f.name
  returning fl.* into f;
  insert into walcast.flag_history (flag, action, who, old, new)
  values (f.name, 'rollout', flag_rollout.who, to_jsonb(old_f), to_jsonb(f));
  return f;
end
$$;

-- Sets the flag for one subject or one segment (exactly one of the two), optionally pinning a variant.
create or replace function walcast.flag_override(
  name text,
  subject text default null,
  segment text default null,
  enabled boolean default true,
  variant text default null,
  who text default current_user
) returns walcast.flag_overrides
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  f walcast.flags;
  old_o walcast.flag_overrides;
  o walcast.flag_overrides;
  k text;
  key_ text;
begin
  perform walcast.flag_check_who(flag_override.who);
  f := walcast.flag_lock(flag_override.name);
  if (flag_override.subject is null) = (flag_override.segment is null) then
    raise exception using errcode = 'WF006',
      message = 'an override needs exactly one of subject and segment',
      hint = 'e.g. walcast.flag_override(''use_realtime'', subject => ''user-42'') or (..., segment => ''beta'')';
  end if;
  k := case when flag_override.subject is not null then 'subject' else 'segment' end;
  key_ := coalesce(flag_override.subject, flag_override.segment);
  if length(key_) = 0 or length(key_) > 256 then
    raise exception using errcode = 'WF006',
      message = format('the %s of an override must be 1-256 characters', k),
      hint = 'subjects are user, client or node ids; segments are group names such as beta';
  end if;
  if flag_override.enabled is null then
    raise exception using errcode = 'WF006',
      message = 'enabled must be true or false',
      hint = 'false turns the flag off for this ' || k;
  end if;
  if flag_override.variant is not null then
    if not flag_override.enabled then
      raise exception using errcode = 'WF006',
        message = 'an override that turns the flag off cannot pick a variant',
        hint = 'subjects that are off get the default variant; leave variant out or set enabled => true';
    end if;
    perform walcast.flag_check_variant(f.name, f.variants, flag_override.variant);
  end if;
  select ov.* into old_o from walcast.flag_overrides ov
  where ov.flag = f.name and ov.kind = k and ov.key = key_;
  insert into walcast.flag_overrides as ov (flag, kind, key, enabled, variant, updated_by)
  values (f.name, k, key_, flag_override.enabled, flag_override.variant, flag_override.who)
  on conflict (flag, kind, key) do update
     set enabled = excluded.enabled,
         variant = excluded.variant,
         updated_at = now(),
         updated_by = excluded.updated_by
  returning ov.* into o;
  insert into walcast.flag_history (flag, action, who, old, new)
  values (f.name, 'override', flag_override.who,
          case when old_o.flag is null then null else to_jsonb(old_o) end, to_jsonb(o));
  return o;
end
$$;

-- Removes the override of one subject or one segment; false when there was none.
create or replace function walcast.flag_clear_override(
  name text,
  subject text default null,
  segment text default null,
  who text default current_user
) returns boolean
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  f walcast.flags;
  o walcast.flag_overrides;
begin
  perform walcast.flag_check_who(flag_clear_override.who);
  f := walcast.flag_lock(flag_clear_override.name);
  if (flag_clear_override.subject is null) = (flag_clear_override.segment is null) then
    raise exception using errcode = 'WF006',
      message = 'clearing an override needs exactly one of subject and segment',
      hint = 'e.g. walcast.flag_clear_override(''use_realtime'', subject => ''user-42'')';
  end if;
  delete from walcast.flag_overrides as ov
   where ov.flag = f.name
     and ov.kind = case when flag_clear_override.subject is not null then 'subject' else 'segment' end
     and ov.key = coalesce(flag_clear_override.subject, flag_clear_override.segment)
  returning ov.* into o;
  if not found then
    return false;
  end if;
  insert into walcast.flag_history (flag, action, who, old, new)
  values (f.name, 'clear_override', flag_clear_override.who, to_jsonb(o), null);
  return true;
end
$$;

-- Deletes a flag and its overrides (its history stays).
create or replace function walcast.flag_delete(
  name text,
  who text default current_user
) returns boolean
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  f walcast.flags;
begin
  perform walcast.flag_check_who(flag_delete.who);
  f := walcast.flag_lock(flag_delete.name);
  delete from walcast.flags as fl where fl.name = f.name;
  insert into walcast.flag_history (flag, action, who, old, new)
  values (f.name, 'delete', flag_delete.who, to_jsonb(f), null);
  return true;
end
$$;

-- Execute rights: service_role only.
revoke all on function
  walcast.flag_history_append_only(),
  walcast.flag_notify(),
  walcast.flag_bucket(text, text),
  walcast.flag_variant_bucket(text, text),
  walcast.flag_pick(text, jsonb, text),
  walcast.flag_evaluate(text, text, text[]),
  walcast.flag_enabled(text, text, text[]),
  walcast.flag_variant(text, text, text[]),
  walcast.flag_checked_variants(jsonb),
  walcast.flag_check_variant(text, jsonb, text),
  walcast.flag_lock(text),
  walcast.flag_check_who(text),
  walcast.flag_check_percentage(numeric),
  walcast.flag_create(text, text, jsonb, text, boolean, numeric, text),
  walcast.flag_set(text, boolean, text, jsonb, text, text),
  walcast.flag_rollout(text, numeric, text),
  walcast.flag_override(text, text, text, boolean, text, text),
  walcast.flag_clear_override(text, text, text, text),
  walcast.flag_delete(text, text)
from public;

grant execute on function
  walcast.flag_bucket(text, text),
  walcast.flag_variant_bucket(text, text),
  walcast.flag_evaluate(text, text, text[]),
  walcast.flag_enabled(text, text, text[]),
  walcast.flag_variant(text, text, text[]),
  walcast.flag_create(text, text, jsonb, text, boolean, numeric, text),
  walcast.flag_set(text, boolean, text, jsonb, text, text),
  walcast.flag_rollout(text, numeric, text),
  walcast.flag_override(text, text, text, boolean, text, text),
  walcast.flag_clear_override(text, text, text, text),
  walcast.flag_delete(text, text)
to service_role;

-- The broadcaster's flags.
do $$
begin
  if not exists (select 1 from walcast.flags fl where fl.name = 'broadcaster_mode') then
    perform walcast.flag_create(
      name => 'broadcaster_mode',
      description => 'Endpoints a walcast node serves, evaluated with the node name as subject: '
                     'direct = only /ws, realtime = only /realtime/v1/websocket, dual = both.',
      variants => '[{"name": "direct", "weight": 0}, {"name": "realtime", "weight": 0}, {"name": "dual", "weight": 100}]',
      default_variant => 'dual',
      enabled => true,
      rollout_percentage => 0,
      who => 'migration');
  end if;
  if not exists (select 1 from walcast.flags fl where fl.name = 'use_realtime') then
    perform walcast.flag_create(
      name => 'use_realtime',
      description => 'Clients (subjects) that should prefer /realtime/v1/websocket while broadcaster_mode is dual.',
      variants => '[]',
      default_variant => null,
      enabled => true,
      rollout_percentage => 0,
      who => 'migration');
  end if;
end
$$;
