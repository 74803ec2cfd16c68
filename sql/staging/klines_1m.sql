-- grain: (symbol, open_time)
-- reads: src_klines_1m
-- purpose: typed, UTC, deduplicated and sorted minute klines (CONTRACT §2; unsorted with sort_staged false); no logic
{% import 'macros/klines.sql' as k %}
{#- sort_staged false: for the cached minute buckets, whose windows sort the minutes themselves -#}
{{ k.stage('src_klines_1m', symbols, minute_from, minute_to, monthly_files=true, ordered=sort_staged) }}
