select o.flag
from walcast.flag_override($1, $2, $3, $4, $5, coalesce($6, current_user)) as o
