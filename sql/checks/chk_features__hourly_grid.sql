-- grain: one row per (symbol, ts) present on one side only
-- reads: features, klines_1h
-- purpose: every features row has its klines_1h bar and every bar in range has a features row
with bars as (
    select symbol, close_time as ts from klines_1h
    where true
    {%- if out_from %}
        and close_time > {{ out_from | sql_ts }}
    {%- endif %}
    {%- if out_to %}
        and close_time <= {{ out_to | sql_ts }}
    {%- endif %}
),

features_without_bar as (
    select symbol, ts, 'features row without a klines_1h bar' as problem
    from features
    anti join bars using (symbol, ts)
),

bars_without_features as (
    select symbol, ts, 'klines_1h bar without a features row' as problem
    from bars
    anti join features using (symbol, ts)
),

final as (
    select * from features_without_bar
    union all
    select * from bars_without_features
)

select * from final
