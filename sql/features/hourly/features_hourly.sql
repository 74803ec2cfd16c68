-- grain: (symbol, ts)
-- reads: klines_1h
-- purpose: hourly-bar features at decision time ts = close of the bar; every value uses bars with close_time <= ts
{% import 'macros/windows.sql' as w %}
{% import 'macros/recursive.sql' as rec %}
{%- set return_hours = [1, 3, 6, 12, 24] %}
{%- set wilder = '13.0 / 14' %}

with bars as (
    select
        symbol,
        close_time as ts,
        epoch_ms(close_time) // 3600000 as hour_no,
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
        row_number() over by_bar as bar_no,
        lag(close) over by_bar as prev_close,
        lag(high) over by_bar as prev_high,
        lag(low) over by_bar as prev_low,
    from bars
    window by_bar as (partition by symbol order by hour_no)
),

directional_moves as (
    -- NULL on the first bar, which has no previous bar
    select
        *,
        case when bar_no > 1 then greatest(close - prev_close, 0) end as gain,
        case when bar_no > 1 then greatest(prev_close - close, 0) end as loss,
        case when bar_no > 1 then greatest(high - low, abs(high - prev_close), abs(low - prev_close)) end as true_range,
        case when bar_no > 1 then
            case when high - prev_high > prev_low - low and high - prev_high > 0 then high - prev_high else 0 end
        end as dm_plus,
        case when bar_no > 1 then
            case when prev_low - low > high - prev_high and prev_low - low > 0 then prev_low - low else 0 end
        end as dm_minus,
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
        ln(close / {{ w.rolling('avg', 'close', w.last_hours(24)) }}) as px_sma_24h,
        ln(close / {{ w.rolling('avg', 'close', w.last_hours(168)) }}) as px_sma_168h,
        sqrt({{ w.rolling('sum', 'ret_1h * ret_1h', w.last_hours(24)) }}) as rv_24h,
        ln({{ w.rolling('max', 'high', w.last_hours(24)) }} / close) as dist_high_24h,
        ln(close / {{ w.rolling('min', 'low', w.last_hours(24)) }}) as dist_low_24h,
        ret_1h - {{ w.hours_ago('ret_1h', 1) }} as ret_accel,
        {{ w.rolling('avg', 'close', 'rows between 19 preceding and current row') }} as bb_middle_20,
        {{ w.rolling('stddev_pop', 'close', 'rows between 19 preceding and current row') }} as bb_sd_20,
    from returns
),

{{ rec.smoothing('smoothed', 'trend_and_range', [
    {'name': 'ema_12', 'col': 'close', 'w': '11.0 / 13', 'n': 1},
    {'name': 'ema_26', 'col': 'close', 'w': '25.0 / 27', 'n': 1},
    {'name': 'avg_gain_14', 'col': 'gain', 'w': wilder, 'n': 14},
    {'name': 'avg_loss_14', 'col': 'loss', 'w': wilder, 'n': 14},
    {'name': 'atr_14', 'col': 'true_range', 'w': wilder, 'n': 14},
    {'name': 'dm_plus_14', 'col': 'dm_plus', 'w': wilder, 'n': 14},
    {'name': 'dm_minus_14', 'col': 'dm_minus', 'w': wilder, 'n': 14},
]) }},

oscillators as (
    select
        *,
        ln(close / ema_12) as px_ema_12,
        ln(close / ema_26) as px_ema_26,
        100 * avg_gain_14 / nullif(avg_gain_14 + avg_loss_14, 0) as rsi_14,
        100 * dm_plus_14 / nullif(atr_14, 0) as di_plus_14,
        100 * dm_minus_14 / nullif(atr_14, 0) as di_minus_14,
        case when bar_no >= 20 then 4 * bb_sd_20 / bb_middle_20 end as bb_width_20,
    from smoothed
),

directional_index as (
    -- DX from bar 15 on (the first bar with 14 true ranges); 0 when neither direction moved
    select
        *,
        case when bar_no > 14 then
            coalesce(100 * abs(di_plus_14 - di_minus_14) / nullif(di_plus_14 + di_minus_14, 0), 0)
        end as dx_14,
    from oscillators
),

{{ rec.smoothing('trend_strength', 'directional_index', [
    {'name': 'adx_14', 'col': 'dx_14', 'w': wilder, 'n': 14},
]) }},

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
        adx_14,
        di_plus_14,
        di_minus_14,
        true_range,
        {{ w.rolling_z('true_range', z_window) }} as true_range_z,
        bb_width_20,
        {{ w.rolling_z('bb_width_20', z_window) }} as bb_width_z,
    from trend_strength
)

select * from final
