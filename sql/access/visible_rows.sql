select grp, tbl, n, problem
from walcast.realtime_visible_rows($1, $2, $3::text[]::jsonb[], $4, $5, $6, $7, $8)
