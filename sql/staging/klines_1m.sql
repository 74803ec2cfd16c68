-- grain: (symbol, open_time)
-- reads: src_klines_1m
-- purpose: typed, UTC, deduplicated and sorted minute klines (CONTRACT §2); no logic
with source as (
    select * from src_klines_1m
),

typed as (
    select
        symbol::varchar as symbol,
        open_time::timestamptz as open_time,
        close_time::timestamptz as close_time,
        open::double as open,
        high::double as high,
        low::double as low,
        close::double as close,
        volume::double as volume,
        quote_volume::double as quote_volume,
        trades::bigint as trades,
        taker_buy_base::double as taker_buy_base,
        taker_buy_quote::double as taker_buy_quote,
        filename,
    from source
    where true
    {%- if symbols %}
        and symbol in ({{ symbols | sql_values }})
    {%- endif %}
    {%- if minute_from %}
        and open_time >= {{ minute_from | sql_ts }}
    {%- endif %}
    {%- if minute_to %}
        and open_time < {{ minute_to | sql_ts }}
    {%- endif %}
),

deduplicated as (
    -- shards never overlap; if copies do, the bar from the later file name wins
    select * from typed
    qualify row_number() over (partition by symbol, open_time order by filename desc) = 1
),

final as (
    select * exclude (filename) from deduplicated
    order by symbol, open_time
)

select * from final
