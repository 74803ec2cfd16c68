-- grain: (symbol, ts)
-- reads: feat_min__buckets
-- purpose: minute->hour features at ts: the bucket aggregates plus longer windows over earlier buckets, published minute_lag_hours later
{% import 'macros/windows.sql' as w %}

with buckets as (
    select *, epoch_ms(ts) // 3600000 as hour_no from feat_min__buckets
),

long_windows as (
    select
        *,
        -- this hour's 60-minute range against the previous 30 days' (NULLs sort last, so never count):
        -- the cumulative distribution over those and this hour counts the ranges <= this one, itself included
        {{ w.rolling('count', 'm_range_60m', 'range between 720 preceding and 1 preceding') }} as n_range_history,
        round(
            cume_dist(order by m_range_60m asc nulls last) over last_30_days_and_now * count(*) over last_30_days_and_now
        )::bigint - 1 as n_range_at_most,
        -- this hour's minute volume against the same UTC hour on the previous 7 days
        {{ w.z_over('m_vol_sum_60m', 'range between 168 preceding and 24 preceding', 4, partition='symbol, utc_hour(ts)') }} as m_vol_z_hod,
    from buckets
    window last_30_days_and_now as (partition by symbol order by hour_no range between 720 preceding and current row)
),

final as (
    select
        symbol,
        ts + to_hours({{ minute_lag_hours }}) as ts,
        m_last_close_time,
        m_n_60m,
        * exclude (symbol, ts, hour_no, m_last_close_time, m_n_60m, n_range_history, n_range_at_most, m_vol_z_hod),
        case when m_range_60m is not null and n_range_history >= 360 then n_range_at_most / n_range_history end as m_range_pct_30d,
        m_vol_z_hod,
    from long_windows
)

select * from final
