-- grain: one row per stored hourly bar (the staging view deduplicates)
-- reads: hourly shards, Parquet, read in place
-- purpose: the only place the hourly shard paths appear (rendered absolute), with each bar's source
{% import 'macros/klines.sql' as k %}
{{ k.read_shards(hourly_files, with_source=true) }}
