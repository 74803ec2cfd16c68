-- grain: (symbol, ts), one row per klines_1h row
-- reads: feat_norm, features/extra/*
-- purpose: the feature mart: hourly + minute + cross-scale + time + rolling z-scores (+ your extra features), all known at ts
with features as (
    select
        feat_norm.*,
        {%- for extra in extra_models %}
        {{ extra }}.* exclude (symbol, ts),
        {%- endfor %}
    from feat_norm
    {%- for extra in extra_models %}
    left join {{ extra }} using (symbol, ts)
    {%- endfor %}
),

final as (
    select * exclude (close)
    from features
    where true
    {%- if out_from %}
        and ts > {{ out_from | sql_ts }}
    {%- endif %}
    {%- if out_to %}
        and ts <= {{ out_to | sql_ts }}
    {%- endif %}
)

select * from final
