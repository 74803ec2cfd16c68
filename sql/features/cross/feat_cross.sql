-- grain: (symbol, ts), one row per klines_1h row
-- reads: features_hourly, features_minute
-- purpose: the hourly grid with its minute block joined at the same decision time, plus cross-scale ratios
with hourly as (
    select * from features_hourly
),

minute as (
    select * from features_minute
),

joined as (
    select
        hourly.*,
        minute.* exclude (symbol, ts),
    from hourly
    left join minute using (symbol, ts)
),

final as (
    select
        * replace (coalesce(m_n_60m, 0) as m_n_60m),  -- an hour with no minutes at all has coverage 0
        -- this hour's minute-level volatility against the typical hour of the last day
        m_rv_60m / nullif(rv_24h / sqrt(24), 0) as x_rv_ratio,
    from joined
)

select * from final
