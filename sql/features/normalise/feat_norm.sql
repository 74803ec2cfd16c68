-- grain: (symbol, ts)
-- reads: feat_time
-- purpose: {col}_z, the rolling z-score of {col} over the previous z_window hourly rows (current row excluded)
{% import 'macros/windows.sql' as w %}
{%- set z_columns = [
    'ret_1h', 'ret_24h', 'rv_24h', 'volume', 'rsi_14', 'adx_14',
    'm_ret_60m', 'm_rv_60m', 'm_bpv_60m', 'm_range_60m', 'm_vol_sum_15m', 'm_vol_sum_60m', 'm_vwap_div_60m',
    'm_burst_60m', 'm_pressure_15m', 'x_rv_ratio',
] %}

with features as (
    select *, epoch_ms(ts) // 3600000 as hour_no from feat_time
),

normalised as (
    select
        *,
        {%- for col in z_columns %}
        {{ w.rolling_z(col, z_window) }} as {{ col }}_z,
        {%- endfor %}
    from features
),

final as (
    select
        * exclude (hour_no),
        -- volume surprise of the last 15 minutes minus that of the whole hourly bar
        m_vol_sum_15m_z - volume_z as x_vol_z_diff,
    from normalised
)

select * from final
