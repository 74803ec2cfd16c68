-- DuckDB scalar macros used by the views. Created in the warehouse so they also work in the `duckdb` shell.
-- Every time helper works on epoch milliseconds, so results never depend on the session's TimeZone.

-- decision time of a bar that closes at t: the first hour boundary at or after t (right-closed buckets)
create or replace macro decision_ts(t) as
    to_timestamp(((epoch_ms(t) + 3599999) // 3600000) * 3600);

-- UTC hour of day (0..23) and day of week (Monday = 0) of a timestamp
create or replace macro utc_hour(t) as (epoch_ms(t) // 3600000) % 24;
create or replace macro utc_dow(t) as ((epoch_ms(t) // 86400000) + 3) % 7;

-- the non-NULL values of a list
create or replace macro non_null(xs) as list_filter(xs, lambda x: x is not null);

-- Wilder's smoothing of a list, oldest first: seed with the mean of the first n values,
-- then s = (s * (n - 1) + x) / n. NULL when fewer than n values.
create or replace macro wilder_smooth(xs, n) as (
    case when len(non_null(xs)) >= n then
        list_reduce(
            list_slice(non_null(xs), n + 1, len(non_null(xs))),
            lambda s, x: (s * (n - 1) + x) / n,
            list_avg(list_slice(non_null(xs), 1, n))
        )
    end
);

-- exponential moving average of a list, oldest first, seeded with the first value (pandas adjust=False)
create or replace macro ema(xs, span) as (
    case when len(non_null(xs)) >= 1 then
        list_reduce(
            list_slice(non_null(xs), 2, len(non_null(xs))),
            lambda e, x: e + (2.0 / (span + 1)) * (x - e),
            non_null(xs)[1]
        )
    end
);

-- z-score of x against a history list; NULL when the history holds fewer than min_n values
create or replace macro z_against(x, hist, min_n) as (
    case when len(non_null(hist)) >= min_n then
        (x - list_avg(hist)) / nullif(list_stddev_samp(hist), 0)
    end
);
