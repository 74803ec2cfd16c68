-- grain: (symbol, ts)
-- reads: klines_1h
-- purpose: hourly-bar features at decision time ts = close of the bar; every value uses bars with close_time <= ts
{% import 'macros/windows.sql' as w %}
{%- set return_hours = [1, 3, 6, 12, 24] %}
{%- set recursion_rows = 300 %}

with bars as (
    select
        symbol,
        close_time as ts,
        open,
        high,
        low,
        close,
        volume,
    from klines_1h
),

bar_steps as (
    -- one-bar changes against the previous available bar (recursive indicators run over bars)
    select
        *,
        lag(close) over by_bar as prev_close,
        lag(high) over by_bar as prev_high,
        lag(low) over by_bar as prev_low,
    from bars
    window by_bar as (partition by symbol order by ts)
),

directional_moves as (
    select
        *,
        greatest(close - prev_close, 0) as gain,
        greatest(prev_close - close, 0) as loss,
        greatest(high - low, abs(high - prev_close), abs(low - prev_close)) as true_range,
        case when high - prev_high > prev_low - low and high - prev_high > 0 then high - prev_high else 0 end as dm_plus,
        case when prev_low - low > high - prev_high and prev_low - low > 0 then prev_low - low else 0 end as dm_minus,
    from bar_steps
),

returns as (
    select
        *,
        {%- for h in return_hours %}
        ln(close / {{ w.hours_ago('close', h) }}) as ret_{{ h }}h,
        {%- endfor %}
    from directional_moves
),

trend_and_range as (
    select
        *,
        ln(close / list_avg({{ w.history('close', w.last_hours(24)) }})) as px_sma_24h,
        ln(close / list_avg({{ w.history('close', w.last_hours(168)) }})) as px_sma_168h,
        ln(close / ema({{ w.history('close', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 12)) as px_ema_12,
        ln(close / ema({{ w.history('close', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 26)) as px_ema_26,
        sqrt(list_sum(list_transform({{ w.history('ret_1h', w.last_hours(24)) }}, lambda r: r * r))) as rv_24h,
        ln(list_max({{ w.history('high', w.last_hours(24)) }}) / close) as dist_high_24h,
        ln(close / list_min({{ w.history('low', w.last_hours(24)) }})) as dist_low_24h,
        ret_1h - {{ w.hours_ago('ret_1h', 1) }} as ret_accel,
        wilder_smooth({{ w.history('gain', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 14) as avg_gain_14,
        wilder_smooth({{ w.history('loss', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 14) as avg_loss_14,
        wilder_smooth({{ w.history('true_range', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 14) as atr_14,
        wilder_smooth({{ w.history('dm_plus', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 14) as dm_plus_14,
        wilder_smooth({{ w.history('dm_minus', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 14) as dm_minus_14,
        list_avg({{ w.history('close', 'rows between 19 preceding and current row') }}) as bb_middle_20,
        list_stddev_pop({{ w.history('close', 'rows between 19 preceding and current row') }}) as bb_sd_20,
        count(close) over (partition by symbol order by ts rows between 19 preceding and current row) as bb_n_20,
    from returns
),

oscillators as (
    select
        *,
        100 * avg_gain_14 / nullif(avg_gain_14 + avg_loss_14, 0) as rsi_14,
        100 * dm_plus_14 / nullif(atr_14, 0) as di_plus_14,
        100 * dm_minus_14 / nullif(atr_14, 0) as di_minus_14,
        case when bb_n_20 = 20 then 4 * bb_sd_20 / bb_middle_20 end as bb_width_20,
    from trend_and_range
),

directional_index as (
    select
        *,
        100 * abs(di_plus_14 - di_minus_14) / nullif(di_plus_14 + di_minus_14, 0) as dx_14,
    from oscillators
),

final as (
    select
        symbol,
        ts,
        close,
        volume,
        {%- for h in return_hours %}
        ret_{{ h }}h,
        {%- endfor %}
        ret_accel,
        px_sma_24h,
        px_sma_168h,
        px_ema_12,
        px_ema_26,
        rv_24h,
        dist_high_24h,
        dist_low_24h,
        rsi_14,
        wilder_smooth({{ w.history('dx_14', 'rows between ' ~ (recursion_rows - 1) ~ ' preceding and current row') }}, 14) as adx_14,
        di_plus_14,
        di_minus_14,
        true_range,
        {{ w.rolling_z('true_range', z_window) }} as true_range_z,
        bb_width_20,
        {{ w.rolling_z('bb_width_20', z_window) }} as bb_width_z,
    from directional_index
)

select * from final
