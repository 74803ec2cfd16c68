-- grain: one row per offending (symbol, ts)
-- reads: features, klines_1m
-- purpose: the no-leak unit check: for sampled (symbol, ts), the minutes that feed ts all closed at or before ts
with sampled as (
    select symbol, ts, m_n_60m, m_last_close_time
    from features
    where m_n_60m is not null
    using sample reservoir({{ check_sample_rows }} rows) repeatable (42)
),

contributing as (
    -- recomputed from the minutes: close_time in (ts - lag - 1 h, ts - lag]
    select
        s.symbol,
        s.ts,
        count(k.close_time) as n_minutes,
        max(k.close_time) as last_close_time,
    from sampled as s
    left join klines_1m as k
        on k.symbol = s.symbol
        and k.close_time > s.ts - to_hours({{ minute_lag_hours }} + 1)
        and k.close_time <= s.ts - to_hours({{ minute_lag_hours }})
    group by s.symbol, s.ts
),

final as (
    select
        s.symbol,
        s.ts,
        s.m_n_60m,
        c.n_minutes,
        s.m_last_close_time,
        c.last_close_time,
    from sampled as s
    join contributing as c using (symbol, ts)
    where s.m_last_close_time > s.ts
        or c.last_close_time > s.ts
        or s.m_last_close_time is distinct from c.last_close_time
        or s.m_n_60m <> c.n_minutes
)

select * from final
