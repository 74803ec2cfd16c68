-- grain: (symbol, ts) where ts is the bucket's own decision time (before minute_lag_hours)
-- reads: klines_1m
-- purpose: right-closed minute->hour aggregates: every minute with close_time in (ts - 1 h, ts] feeds ts, nothing later
{% import 'macros/windows.sql' as w %}
{%- set trailing_week = 'range between 168 preceding and 1 preceding' %}

with minutes as (
    select * from klines_1m
),

minute_returns as (
    -- r_i against the previous available minute; r_prev is the return of that previous minute
    select
        symbol,
        open_time,
        close_time,
        open,
        high,
        low,
        close,
        volume,
        quote_volume,
        ln(close / lag(close) over by_minute) as r,
        ln(lag(close) over by_minute / lag(close, 2) over by_minute) as r_prev,
        epoch_ms(close_time) as close_ms,
        decision_ms(close_time) as ts_ms,
    from minutes
    window by_minute as (partition by symbol order by open_time)
),

bucket_log_volume as (
    -- pre-aggregates of the bucket's minute log-volume, for the trailing 7-day volume distribution
    select
        symbol,
        ts_ms,
        ts_ms // 3600000 as hour_no,
        -- zero-volume minutes (halts) have no log-volume; nullif keeps ln() away from them
        count(*) filter (where volume > 0) as n_traded,
        sum(ln(nullif(volume, 0))) as sum_log_volume,
        sum(ln(nullif(volume, 0)) ^ 2) as sum_log_volume_sq,
    from minute_returns
    group by symbol, ts_ms
),

trailing_week_sums as (
    -- the 168 buckets before ts (minutes with close_time in (ts - 169 h, ts - 1 h]): earlier minutes only
    select
        symbol,
        ts_ms,
        {{ w.rolling('sum', 'n_traded', trailing_week) }} as week_n,
        {{ w.rolling('sum', 'sum_log_volume', trailing_week) }} as week_s1,
        {{ w.rolling('sum', 'sum_log_volume_sq', trailing_week) }} as week_s2,
    from bucket_log_volume
),

volume_reference as (
    -- log-normal fit of the trailing week's minute volume; burst threshold = its 95th percentile
    select
        symbol,
        ts_ms,
        week_s1 / week_n as log_volume_mean,
        sqrt(greatest(week_s2 / week_n - (week_s1 / week_n) ^ 2, 0)) as log_volume_sd,
        exp(week_s1 / week_n + 1.6448536269514722 * sqrt(greatest(week_s2 / week_n - (week_s1 / week_n) ^ 2, 0))) as burst_threshold,
    from trailing_week_sums
    where week_n >= 5040  -- at least half of the week's minutes traded
),

scored_minutes as (
    select
        m.*,
        m.volume > v.burst_threshold as is_burst,
        sign(m.close - m.open) * (ln(nullif(m.volume, 0)) - v.log_volume_mean) / nullif(v.log_volume_sd, 0) as signed_volume_z,
        v.burst_threshold is not null as has_volume_reference,
    from minute_returns as m
    left join volume_reference as v using (symbol, ts_ms)
),

final as (
    select
        symbol,
        to_timestamp(ts_ms // 1000) as ts,
        count(*) as m_n_60m,
        max(close_time) as m_last_close_time,
        {%- for wm in minute_windows %}
        {{ w.covered(wm, 'sum(r) filter (where ' ~ w.in_window(wm) ~ ')') }} as m_ret_{{ wm }}m,
        {%- endfor %}
        {%- for wm in minute_windows if wm >= 15 %}
        {{ w.covered(wm, 'sqrt(sum(r * r) filter (where ' ~ w.in_window(wm) ~ '))') }} as m_rv_{{ wm }}m,
        {%- endfor %}
        {{ w.covered(60, 'pi() / 2 * sum(abs(r) * abs(r_prev))') }} as m_bpv_60m,
        {%- for wm in minute_windows if wm >= 15 %}
        {{ w.covered(wm, 'skewness(r) filter (where ' ~ w.in_window(wm) ~ ')') }} as m_skew_{{ wm }}m,
        {{ w.covered(wm, 'kurtosis(r) filter (where ' ~ w.in_window(wm) ~ ')') }} as m_kurt_{{ wm }}m,
        {%- endfor %}
        {%- for wm in minute_windows %}
        {{ w.covered(wm, 'sum(volume) filter (where ' ~ w.in_window(wm) ~ ')') }} as m_vol_sum_{{ wm }}m,
        {{ w.covered(wm, 'avg(volume) filter (where ' ~ w.in_window(wm) ~ ')') }} as m_vol_mean_{{ wm }}m,
        {%- endfor %}
        {{ w.covered(60, 'ln(max(high) / min(low))') }} as m_range_60m,
        {{ w.covered(60, 'ln(arg_max(close, close_time) / (sum(quote_volume) / nullif(sum(volume), 0)))') }} as m_vwap_div_60m,
        {%- for wm in minute_windows %}
        {{ w.covered(wm, 'case when bool_and(has_volume_reference) then count(*) filter (where is_burst and ' ~ w.in_window(wm) ~ ') end') }} as m_burst_{{ wm }}m,
        {%- endfor %}
        {{ w.covered(15, 'avg(signed_volume_z) filter (where ' ~ w.in_window(15) ~ ')') }} as m_pressure_15m,
    from scored_minutes
    group by symbol, ts_ms
)

select * from final
