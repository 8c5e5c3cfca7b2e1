select jsonb_build_object(
         'name', f.name,
         'description', f.description,
         'enabled', f.enabled,
         'rollout_percentage', f.rollout_percentage,
         'variants', f.variants,
         'default_variant', f.default_variant,
         'created_at', f.created_at,
         'updated_at', f.updated_at,
         'updated_by', f.updated_by,
         'overrides', coalesce((select jsonb_agg(jsonb_build_object(
                                         'kind', o.kind,
                                         'key', o.key,
                                         'enabled', o.enabled,
                                         'variant', o.variant,
                                         'updated_at', o.updated_at,
                                         'updated_by', o.updated_by)
                                       order by o.kind, o.key)
                                from walcast.flag_overrides o
                                where o.flag = f.name), '[]'::jsonb))
from walcast.flags f
order by f.name
