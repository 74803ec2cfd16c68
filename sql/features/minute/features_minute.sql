-- grain: (symbol, ts)
-- reads: feat_min__buckets
-- purpose: minute->hour features at ts: the bucket aggregates plus longer windows over earlier buckets, published minute_lag_hours later
{% import 'macros/windows.sql' as w %}

with buckets as (
    select * from feat_min__buckets
),

long_windows as (
    select
        *,
        -- share of the previous 30 days' 60-minute ranges at or below this hour's range
        {{ w.history('m_range_60m', 'range between interval 720 hours preceding and interval 1 hour preceding') }} as range_history,
        -- this hour's minute volume against the same UTC hour on the previous 7 days
        {{ w.history('m_vol_sum_60m', 'range between interval 168 hours preceding and interval 24 hours preceding', partition='symbol, utc_hour(ts)') }} as same_hour_volume_history,
    from buckets
),

final as (
    select
        symbol,
        ts + to_hours({{ minute_lag_hours }}) as ts,
        m_last_close_time,
        m_n_60m,
        * exclude (symbol, ts, m_last_close_time, m_n_60m, range_history, same_hour_volume_history),
        case when len(non_null(range_history)) >= 360 then
            len(list_filter(non_null(range_history), lambda x: x <= m_range_60m)) / len(non_null(range_history))
        end as m_range_pct_30d,
        z_against(m_vol_sum_60m, same_hour_volume_history, 4) as m_vol_z_hod,
    from long_windows
)

select * from final
