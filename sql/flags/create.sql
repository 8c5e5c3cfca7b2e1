select f.name
from walcast.flag_create($1, coalesce($2, ''), coalesce($3, '[]'::jsonb), $4, coalesce($5, true),
                         coalesce(($6::text)::numeric, 0), coalesce($7, current_user)) as f
