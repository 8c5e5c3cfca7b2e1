select f.name, e.enabled, e.variant, e.source
from walcast.flags f
cross join lateral walcast.flag_evaluate(f.name, $1, $2) as e
order by f.name
