-- DuckDB scalar macros used by the views. Created in the warehouse so they also work in the `duckdb` shell.
-- Every time helper works on epoch milliseconds, so results never depend on the session's TimeZone.

-- decision time of a bar that closes at t: the first hour boundary at or after t (right-closed
-- buckets), as epoch milliseconds and as a timestamp
create or replace macro decision_ms(t) as ((epoch_ms(t) + 3599999) // 3600000) * 3600000;
create or replace macro decision_ts(t) as to_timestamp(decision_ms(t) // 1000);

-- UTC hour of day (0..23) and day of week (Monday = 0) of a timestamp
create or replace macro utc_hour(t) as (epoch_ms(t) // 3600000) % 24;
create or replace macro utc_dow(t) as ((epoch_ms(t) // 86400000) + 3) % 7;

-- the non-NULL values of a list
create or replace macro non_null(xs) as list_filter(xs, lambda x: x is not null);

-- Recursive indicators over the last K bars of a list (oldest first), as one dot product with
-- geometric weights instead of a row-by-row recursion. Truncating to K bars changes a value by
-- (1 - alpha)^(K - n) times the seed's distance from the full recursion: for K = 300 bars that is
-- 6e-10 for n = 14 and 1e-10 for span 26, well inside the contract's 1e-6 after 300 bars.

-- weights w^(m-1), ..., w^1, w^0 times `scale`, oldest first, for the last m of at most k values
-- (k is a constant, so the full weight list is computed once per query, then sliced)
create or replace macro geometric_weights(w, scale, m, k) as
    list_slice(list_transform(range(k - 1, -1, -1), lambda j: scale * pow(w, j)), k - m + 1, k);

-- Wilder's smoothing of the last (at most k) values: seed with the mean of the first n,
-- then s = (s * (n - 1) + x) / n. NULL when the list holds fewer than n values.
create or replace macro wilder_smooth(xs, n, k) as (
    case when len(xs) >= n then
        pow((n - 1) / n, len(xs) - n) * list_avg(list_slice(xs, 1, n))
        + coalesce(list_dot_product(list_slice(xs, n + 1, len(xs)), geometric_weights((n - 1) / n, 1 / n, len(xs) - n, k)), 0)
    end
);

-- exponential moving average of the last (at most k) values, seeded with the first (pandas ewm(span, adjust=False))
create or replace macro ema(xs, span, k) as (
    case when len(xs) >= 1 then
        pow(1 - 2 / (span + 1), len(xs) - 1) * xs[1]
        + coalesce(list_dot_product(list_slice(xs, 2, len(xs)), geometric_weights(1 - 2 / (span + 1), 2 / (span + 1), len(xs) - 1, k)), 0)
    end
);
