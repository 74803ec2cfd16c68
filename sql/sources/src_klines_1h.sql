-- grain: one row per stored hourly bar (the views deduplicate)
-- reads: hourly shards, Parquet, read in place
-- purpose: the only place the hourly shard paths appear (rendered absolute)
{% if hourly_files %}
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
    trades,
    taker_buy_base,
    taker_buy_quote,
    filename,
from read_parquet({{ hourly_files | sql_paths }}, filename = true, union_by_name = true)
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
