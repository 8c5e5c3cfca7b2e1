select grp, id, problem from walcast.realtime_visible_ids($1, $2, $3, $4, $5)
