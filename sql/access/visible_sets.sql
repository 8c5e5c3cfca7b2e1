select grp, visible, visible_ids, problem, tbl
from walcast.realtime_visible_sets($1, $2, $3::text[]::jsonb[], $4, $5, $6, $7, $8)
