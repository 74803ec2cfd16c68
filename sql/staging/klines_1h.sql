-- grain: (symbol, open_time)
-- reads: src_klines_1h
-- purpose: typed, UTC, deduplicated and sorted hourly klines (CONTRACT §2) and each bar's source (exchange, import, resampled, ...); no logic
{% import 'macros/klines.sql' as k %}
{{ k.stage('src_klines_1h', symbols, hourly_from, hourly_to, with_source=true) }}
