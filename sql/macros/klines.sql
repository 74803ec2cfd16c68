{#- The two kline relations (1m and 1h) share their reading and staging; one definition here.
    {% import 'macros/klines.sql' as k %} -#}

{#- read shards in place: `files` is a glob or a list of absolute paths; no files -> no rows -#}
{% macro read_shards(files) -%}
{% if files %}
select
    -- the file name is authoritative for the symbol (CONTRACT §1-2: shards may omit the column)
    regexp_extract(filename, 'binance_([A-Z0-9]{2,20})_1[mh]_', 1) as symbol,
    open_time,
    close_time,
    open,
    high,
    low,
    close,
    volume,
    quote_volume,
    trades,
    taker_buy_base,
    taker_buy_quote,
    filename,
from read_parquet({{ files | sql_paths }}, filename = true, union_by_name = true)
{% else %}
select
    null::varchar as symbol,
    null::timestamptz as open_time,
    null::timestamptz as close_time,
    null::double as open,
    null::double as high,
    null::double as low,
    null::double as close,
    null::double as volume,
    null::double as quote_volume,
    null::bigint as trades,
    null::double as taker_buy_base,
    null::double as taker_buy_quote,
    null::varchar as filename,
where false
{% endif %}
{%- endmacro %}

{#- typed, deduplicated, sorted klines of `source`, restricted to the symbols and open_time bounds -#}
{% macro stage(source, symbols, open_from, open_to, monthly_files=false) -%}
with source as (
    select * from {{ source }}
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
        {%- if monthly_files %}
        regexp_extract(filename, '_(\d{6})\.parquet$', 1)::integer as file_month,
        {%- endif %}
    from source
    where true
    {%- if symbols %}
        and symbol in ({{ symbols | sql_values }})
    {%- endif %}
    {%- if open_from %}
        and open_time >= {{ open_from | sql_ts }}
    {%- endif %}
    {%- if open_to %}
        and open_time < {{ open_to | sql_ts }}
    {%- endif %}
),

{%- if monthly_files %}

deduplicated as (
    -- one file per symbol and month, unique open_time inside (the writer's guarantee): a bar can
    -- only repeat if a file holds rows outside the month it is named for, so those are dropped
    select * from typed
    where open_time >= strptime(file_month || '01 +0000', '%Y%m%d %z')
        and open_time < strptime(
            (case when file_month % 100 = 12 then file_month + 89 else file_month + 1 end)::varchar || '01 +0000',
            '%Y%m%d %z'
        )
),
{%- else %}

deduplicated as (
    -- a shard being renamed as it grows may briefly sit beside its successor: the later name wins
    select * from typed
    qualify row_number() over (partition by symbol, open_time order by filename desc) = 1
),
{%- endif %}

final as (
    select * exclude (filename{% if monthly_files %}, file_month{% endif %}) from deduplicated
    order by symbol, open_time
)

select * from final
{%- endmacro %}
