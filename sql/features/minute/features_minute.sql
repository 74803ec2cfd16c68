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
        -- the previous 30 days' 60-minute ranges, for this hour's percentile among them
        list(m_range_60m) filter (where m_range_60m is not null) over (
            partition by symbol order by hour_no range between 720 preceding and 1 preceding
        ) as range_history,
        -- this hour's minute volume against the same UTC hour on the previous 7 days
        {{ w.z_over('m_vol_sum_60m', 'range between 168 preceding and 24 preceding', 4, partition='symbol, utc_hour(ts)') }} as m_vol_z_hod,
    from buckets
),

final as (
    select
        symbol,
        ts + to_hours({{ minute_lag_hours }}) as ts,
        m_last_close_time,
        m_n_60m,
        * exclude (symbol, ts, hour_no, m_last_close_time, m_n_60m, range_history, m_vol_z_hod),
        case when m_range_60m is not null and len(range_history) >= 360 then
            len(list_filter(range_history, lambda x: x <= m_range_60m)) / len(range_history)
        end as m_range_pct_30d,
        m_vol_z_hod,
    from long_windows
)

select * from final
