-- DuckDB scalar macros used by the views. Created in the warehouse so they also work in the `duckdb` shell.
-- Every time helper works on epoch milliseconds, so results never depend on the session's TimeZone.

-- decision time of a bar that closes at t: the first hour boundary at or after t (right-closed
-- buckets), as epoch milliseconds and as a timestamp
create or replace macro decision_ms(t) as ((epoch_ms(t) + 3599999) // 3600000) * 3600000;
create or replace macro decision_ts(t) as to_timestamp(decision_ms(t) // 1000);

-- UTC hour of day (0..23) and day of week (Monday = 0) of a timestamp
create or replace macro utc_hour(t) as (epoch_ms(t) // 3600000) % 24;
create or replace macro utc_dow(t) as ((epoch_ms(t) // 86400000) + 3) % 7;
