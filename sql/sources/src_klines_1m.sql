-- grain: one row per stored minute bar (the staging view deduplicates)
-- reads: minute shards, Parquet, read in place
-- purpose: the only place the minute shard paths appear (rendered absolute)
{% import 'macros/klines.sql' as k %}
{{ k.read_shards(minute_files) }}
