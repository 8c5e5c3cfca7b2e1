-- Forgets slot $1's recorded window (the slot was created afresh).
delete from walcast.replication_windows where slot_name = $1
