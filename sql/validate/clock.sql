-- The database's clock, which also stamps commits: validation windows are measured with it.
select clock_timestamp() as now
