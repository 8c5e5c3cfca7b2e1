select f.name
from walcast.flag_rollout($1, ($2::text)::numeric, coalesce($3, current_user)) as f
