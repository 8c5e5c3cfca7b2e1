select f.name
from walcast.flag_set($1, $2, $3, $4, $5, coalesce($6, current_user)) as f
