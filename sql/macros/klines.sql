{#- The two kline relations (1m and 1h) share their reading and staging; one definition here.
    {% import 'macros/klines.sql' as k %} -#}

{#- read shards in place: `files` is a glob or a list of absolute paths; no files -> no rows.
    `with_source` adds each bar's `source` (hourly shards): the shard's own column, else, for a shard
    written before that column existed, the class of the one writer its `mscale.source` metadata
    names (several writers: 'unknown'). The classes mirror mscale.store.source_class. -#}
{#- the CONTRACT §2 columns after symbol, as stored -#}
{% macro kline_columns() -%}
open_time, close_time, open, high, low, close, volume, quote_volume, trades, taker_buy_base, taker_buy_quote,
{%- endmacro %}

{% macro read_shards(files, with_source=false) -%}
{% if files %}
{%- if with_source %}
with shard_rows as (
    -- `union all by name` gives NULL `source` to rows of shards without the column, even when no
    -- shard has it yet
    select null::varchar as source
    where false
    union all by name
    select * from read_parquet({{ files | sql_paths }}, filename = true, union_by_name = true)
),

shard_writers as (
    select
        file_name as filename,
        decode(value) as writers,
    from parquet_kv_metadata({{ files | sql_paths }})
    where decode(key) = 'mscale.source'
),

final as (
    select
        -- the file name is authoritative for the symbol (CONTRACT §1-2: shards may omit the column)
        regexp_extract(shard_rows.filename, 'binance_([A-Z0-9]{2,20})_1[mh]_', 1) as symbol,
        {{ kline_columns() }}
        coalesce(
            source,
            case
                when writers is null or writers = '' or writers like '%,%' then 'unknown'
                when writers in ('bulk', 'rest') then 'exchange'
                else writers
            end
        ) as source,
        shard_rows.filename as filename,
    from shard_rows
    left join shard_writers on shard_writers.filename = shard_rows.filename
)

select * from final
{%- else %}
select
    -- the file name is authoritative for the symbol (CONTRACT §1-2: shards may omit the column)
    regexp_extract(filename, 'binance_([A-Z0-9]{2,20})_1[mh]_', 1) as symbol,
    {{ kline_columns() }}
    filename,
from read_parquet({{ files | sql_paths }}, filename = true, union_by_name = true)
{%- endif %}
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
    {%- if with_source %}
    null::varchar as source,
    {%- endif %}
    null::varchar as filename,
where false
{% endif %}
{%- endmacro %}

{#- typed, deduplicated klines of `source`, restricted to the symbols and open_time bounds, sorted
    by (symbol, open_time) unless `ordered` is false; `with_source` keeps each bar's `source` column
    after CONTRACT §2's columns -#}
{% macro stage(source, symbols, open_from, open_to, monthly_files=false, with_source=false, ordered=true) -%}
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
        {%- if with_source %}
        source::varchar as source,
        {%- endif %}
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
    {%- if ordered %}
    order by symbol, open_time
    {%- endif %}
)

select * from final
{%- endmacro %}
