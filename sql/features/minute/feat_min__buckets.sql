-- grain: (symbol, ts) where ts is the bucket's own decision time (before minute_lag_hours)
-- reads: klines_1m
-- purpose: right-closed minute->hour aggregates: every minute with close_time in (ts - 1 h, ts] feeds ts, nothing later
{% import 'macros/windows.sql' as w %}
{%- set trailing_week = 'range between 168 preceding and 1 preceding' %}
{#- the week's log-volume sums add up in fixed point, in units of 2^-32: integer sums are exact, so
    the same in any order, and a bucket's reference does not depend on which rows its query started
    from (a float window sum does, by the last bit). A bucket's sums of finite log-volumes are at
    most 60 * 745^2 (subnormal to largest double), about 1.4e17 in these units: inside a BIGINT. -#}
{%- set fixed_point = 4294967296 %}

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
        -- halts (zero volume) and bad data (a non-finite volume) have no log-volume
        case when volume > 0 and isfinite(volume) then ln(volume) end as log_volume,
        sign(close - open) * log_volume as signed_log_volume,
        epoch_ms(close_time) as close_ms,
        decision_ms(close_time) as ts_ms,
    from minutes
    window by_minute as (partition by symbol order by open_time)
),

hour_buckets as (
    -- one pass over the minutes: every aggregate of the bucket, and what its volume columns need
    -- once the trailing week's reference is known (which needs the earlier buckets first)
    select
        symbol,
        ts_ms,
        ts_ms // 3600000 as hour_no,
        count(*) as m_n_60m,
        max(close_time) as m_last_close_time,
        {%- for wm in minute_windows %}
        {{ w.covered(wm, 'sum(' ~ w.within(wm, 'r') ~ ')') }} as m_ret_{{ wm }}m,
        {%- endfor %}
        {%- for wm in minute_windows if wm >= 15 %}
        {{ w.covered(wm, 'sqrt(sum(' ~ w.within(wm, 'r * r') ~ '))') }} as m_rv_{{ wm }}m,
        {%- endfor %}
        {{ w.covered(60, 'pi() / 2 * sum(abs(r) * abs(r_prev))') }} as m_bpv_60m,
        {%- for wm in minute_windows if wm >= 15 %}
        {{ w.covered(wm, 'skewness(' ~ w.within(wm, 'r') ~ ')') }} as m_skew_{{ wm }}m,
        {{ w.covered(wm, 'kurtosis(' ~ w.within(wm, 'r') ~ ')') }} as m_kurt_{{ wm }}m,
        {%- endfor %}
        {%- for wm in minute_windows %}
        {{ w.covered(wm, 'sum(' ~ w.within(wm, 'volume') ~ ')') }} as m_vol_sum_{{ wm }}m,
        {{ w.covered(wm, 'avg(' ~ w.within(wm, 'volume') ~ ')') }} as m_vol_mean_{{ wm }}m,
        {%- endfor %}
        {{ w.covered(60, 'ln(max(high) / min(low))') }} as m_range_60m,
        {{ w.covered(60, 'ln(arg_max(close, close_time) / (sum(quote_volume) / nullif(sum(volume), 0)))') }} as m_vwap_div_60m,
        -- the minutes' (finite) volumes, counted against the burst threshold below
        {%- for wm in minute_windows %}
        {{ w.covered(wm, 'list(volume) filter (where isfinite(volume) and ' ~ w.in_window(wm) ~ ')') }} as volumes_{{ wm }}m,
        {%- endfor %}
        -- for the pressure, over W_15's minutes with a signed log-volume: the sum of those, of their
        -- signs, and their number
        {{ w.covered(15, 'sum(' ~ w.within(15, 'signed_log_volume') ~ ')') }} as signed_log_volume_15m,
        sum(sign(close - open)) filter (where signed_log_volume is not null and {{ w.in_window(15) }}) as signed_traded_15m,
        count({{ w.within(15, 'signed_log_volume') }}) as traded_15m,
        -- pre-aggregates of the bucket's minute log-volume, for the trailing 7-day volume distribution
        count(log_volume) as n_traded,
        sum(log_volume) as sum_log_volume,
        sum(log_volume ^ 2) as sum_log_volume_sq,
    from minute_returns
    group by symbol, ts_ms
),

trailing_week_sums as (
    -- the 168 buckets before ts (minutes with close_time in (ts - 169 h, ts - 1 h]): earlier minutes only
    select
        *,
        {{ w.rolling('sum', 'n_traded', trailing_week) }} as week_n,
        {{ w.rolling('sum', 'round(sum_log_volume * ' ~ fixed_point ~ ')::bigint', trailing_week) }} / {{ fixed_point }} as week_s1,
        {{ w.rolling('sum', 'round(sum_log_volume_sq * ' ~ fixed_point ~ ')::bigint', trailing_week) }} / {{ fixed_point }} as week_s2,
    from hour_buckets
),

volume_reference as (
    -- log-normal fit of the trailing week's minute volume and its 95th percentile, the burst
    -- threshold; NULL below 5040 traded minutes (half the week's)
    select
        *,
        case when week_n >= 5040 then week_s1 / week_n end as log_volume_mean,
        case when week_n >= 5040 then sqrt(greatest(week_s2 / week_n - (week_s1 / week_n) ^ 2, 0)) end as log_volume_sd,
        exp(log_volume_mean + 1.6448536269514722 * log_volume_sd) as burst_threshold,
    from trailing_week_sums
),

final as (
    select
        symbol,
        to_timestamp(ts_ms // 1000) as ts,
        * exclude (symbol, ts_ms, hour_no, n_traded, sum_log_volume, sum_log_volume_sq, week_n, week_s1, week_s2,
                   log_volume_mean, log_volume_sd, burst_threshold, signed_log_volume_15m, signed_traded_15m, traded_15m,
                   {%- for wm in minute_windows %} volumes_{{ wm }}m{{ ',' if not loop.last }}{% endfor %}),
        {%- for wm in minute_windows %}
        case when burst_threshold is not null then len(list_filter(volumes_{{ wm }}m, lambda v: v > burst_threshold)) end as m_burst_{{ wm }}m,
        {%- endfor %}
        -- mean over those minutes of sign(close - open) * (ln volume - mean) / sd
        (signed_log_volume_15m - log_volume_mean * signed_traded_15m) / nullif(log_volume_sd, 0) / nullif(traded_15m, 0) as m_pressure_15m,
    from volume_reference
)

{# the feature bench's core-only mode (RenderParams.buckets_core_only): the CONTRACT §5 core
    columns are all in hour_buckets; the volume reference above feeds only burst and pressure -#}
{% if buckets_core_only -%}
select symbol, to_timestamp(ts_ms // 1000) as ts, * exclude (symbol, ts_ms) from hour_buckets
{% else -%}
select * from final
{% endif -%}
