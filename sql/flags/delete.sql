select walcast.flag_delete($1, coalesce($2, current_user))
