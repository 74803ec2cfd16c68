-- grain: (symbol, ts), one row per klines_1h row
-- reads: klines_1h
-- purpose: forward-looking targets with past-only thresholds (CONTRACT §7); the only layer allowed to look past ts, never joined into features
{% import 'macros/windows.sql' as w %}
{#- Hourly windows are RANGE frames over the integer hour_no (as in macros/windows.sql), so a
    missing bar never stretches a window and the session TimeZone never matters. Looking forward
    is allowed in this folder only, so the forward frames are spelled out here, not in macros/. -#}
{%- set label_hours = [horizons | max, vol_window, 1] | max %}

{#- the value of `col` exactly `hours` hours after ts (NULL when that bar is missing) -#}
{% macro hours_ahead(col, hours) -%}
first_value({{ col }}) over (partition by symbol order by hour_no range between {{ hours }} following and {{ hours }} following)
{%- endmacro %}

with bars as (
    select
        symbol,
        close_time as ts,
        epoch_ms(close_time) // 3600000 as hour_no,
        high,
        low,
        close,
        volume,
    from klines_1h
),

bar_returns as (
    -- each bar's log return against the bar exactly 1 h earlier (NULL when that bar is missing), and its log range
    select
        *,
        ln(close / {{ w.hours_ago('close', 1) }}) as ret_1h,
        ln(high / low) as log_range,
    from bars
),

past_windows as (
    -- known at ts: bars closing at or before ts only
    select
        *,
        {{ w.rolling('stddev_samp', 'ret_1h', w.last_hours(epsilon_window)) }} as ret_sd,
        {{ w.rolling('count', 'ret_1h', w.last_hours(epsilon_window)) }} as ret_n,
        {{ w.rolling('avg', 'log_range', w.last_hours(24)) }} as log_range_mean,
        {{ w.rolling('count', 'log_range', w.last_hours(24)) }} as log_range_n,
        -- this bar's volume threshold: the bars at the same UTC hour of day on the previous volm_days days
        quantile_cont(volume, {{ volm_quantile | sql_float }}) over same_hour_history as volm_threshold_here,
        count(volume) over same_hour_history as volm_n,
    from bar_returns
    window same_hour_history as (
        partition by symbol, utc_hour(ts) order by hour_no
        range between {{ volm_days * 24 }} preceding and 24 preceding
    )
),

past_thresholds as (
    -- epsilon band and big-move threshold scale with sqrt(horizon) x the trailing hourly volatility
    select
        *,
        case when 2 * ret_n >= {{ epsilon_window }} then
            {{ epsilon_vol_mult | sql_float }} * sqrt({{ horizon }}) * ret_sd
        end as epsilon,
        case when 2 * ret_n >= {{ epsilon_window }} then
            {{ big_move_mult | sql_float }} * sqrt({{ horizon }}) * ret_sd
        end as big_move_threshold,
        case when log_range_n >= 12 then log_range_mean end as log_range_mean_24h,
        case when volm_n >= {{ volm_min_days }} then volm_threshold_here end as volm_threshold_bar,
    from past_windows
),

forward_reads as (
    select
        symbol,
        ts,
        hour_no,
        epsilon,
        big_move_threshold,
        log_range_mean_24h,
        {%- for h in horizons %}
        ln({{ hours_ahead('close', h) }} / close) as fwd_ret_{{ h }}h,
        {%- endfor %}
        -- the returns of the bars closing in (ts, ts + {{ vol_window }} h]; the first is against the bar at ts
        sum(ret_1h * ret_1h) over vol_horizon as fwd_sq_sum,
        count(ret_1h) over vol_horizon as fwd_n,
        first_value(volume) over next_bar as next_volume,
        first_value(log_range) over next_bar as next_log_range,
        -- the threshold of the bar closing at ts + 1 h reads bars closing at or before ts
        first_value(volm_threshold_bar) over next_bar as volm_threshold,
    from past_thresholds
    window
        next_bar as (partition by symbol order by hour_no range between 1 following and 1 following),
        vol_horizon as (partition by symbol order by hour_no range between 1 following and {{ vol_window }} following)
),

final as (
    select
        symbol,
        ts,
        {%- for h in horizons %}
        fwd_ret_{{ h }}h,
        {%- endfor %}
        epsilon,
        -- |r| <= epsilon is the flat class, so a return of exactly +-epsilon is 0
        case
            when fwd_ret_{{ horizon }}h is null or epsilon is null then null
            when fwd_ret_{{ horizon }}h > epsilon then 1
            when fwd_ret_{{ horizon }}h < -epsilon then -1
            else 0
        end::integer as y_dir,
        case when fwd_n = {{ vol_window }} then sqrt(fwd_sq_sum) end as fwd_rv_{{ vol_window }}h,
        volm_threshold,
        (next_volume > volm_threshold)::integer as y_volm_up,
        (next_log_range > {{ range_factor | sql_float }} * log_range_mean_24h)::integer as y_range_exp,
        (abs(fwd_ret_{{ horizon }}h) > big_move_threshold)::integer as y_big_move,
        -- the last decision time any label of the row reads; splits purge on it
        to_timestamp((epoch_ms(ts) + {{ label_hours * 3600000 }}) // 1000) as label_end,
    from forward_reads
)

select * from final
