select walcast.flag_clear_override($1, $2, $3, coalesce($4, current_user))
