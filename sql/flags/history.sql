select jsonb_build_object(
         'id', h.id,
         'flag', h.flag,
         'action', h.action,
         'who', h.who,
         'changed_at', h.changed_at,
         'old', h.old,
         'new', h.new)
from walcast.flag_history h
where $1::text is null or h.flag = $1::text
order by h.id desc
limit $2
