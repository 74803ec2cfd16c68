-- grain: (symbol, open_time)
-- reads: src_klines_1m
-- purpose: typed, UTC, deduplicated and sorted minute klines (CONTRACT §2); no logic
{% import 'macros/klines.sql' as k %}
{{ k.stage('src_klines_1m', symbols, minute_from, minute_to, monthly_files=true) }}
