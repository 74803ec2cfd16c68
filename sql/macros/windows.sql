{#- Jinja macros for the repeated window patterns. Imported explicitly:
    {% import 'macros/windows.sql' as w %}
    Time windows are RANGE frames over `hour_no` = whole hours since the epoch of ts (integer
    ranges are exact, fast and independent of the session TimeZone), so a missing bar never
    stretches a window; only the indicators defined over bars (Bollinger, z over the previous N
    rows; EMA and Wilder in macros/recursive.sql) use ROWS. Every relation using these macros carries `hour_no`. -#}

{#- the frame of the last `hours` hours up to and including the current row -#}
{% macro last_hours(hours) -%}
range between {{ hours - 1 }} preceding and current row
{%- endmacro %}

{#- `agg(col)` over one symbol's hourly rows in `frame` -#}
{% macro rolling(agg, col, frame, partition='symbol') -%}
{{ agg }}({{ col }}) over (partition by {{ partition }} order by hour_no {{ frame }})
{%- endmacro %}

{#- the value of `col` exactly `hours` hours before ts (NULL when that bar is missing) -#}
{% macro hours_ago(col, hours) -%}
first_value({{ col }}) over (partition by symbol order by hour_no range between {{ hours }} preceding and {{ hours }} preceding)
{%- endmacro %}

{#- z-score of `col` against `frame` (which must exclude the current row); NULL below min_n values -#}
{% macro z_over(col, frame, min_n, partition='symbol') -%}
case when {{ rolling('count', col, frame, partition) }} >= {{ min_n }} then
    ({{ col }} - {{ rolling('avg', col, frame, partition) }}) / nullif({{ rolling('stddev_samp', col, frame, partition) }}, 0)
end
{%- endmacro %}

{#- rolling z-score of `col` against the previous `n` rows, current row excluded; needs n/2 values -#}
{% macro rolling_z(col, n) -%}
{{ z_over(col, 'rows between ' ~ n ~ ' preceding and 1 preceding', (n + 1) // 2) }}
{%- endmacro %}

{#- predicate: minute bars in the window of w minutes at ts, i.e. close_time in (ts - w, ts],
    on epoch milliseconds (close_ms, ts_ms) -#}
{% macro in_window(w) -%}
close_ms > ts_ms - {{ w * 60000 }}
{%- endmacro %}

{#- `expr` for the minute bars in the window of w minutes at ts, NULL for the others, which
    aggregates skip: sum({{ within(15, 'r') }}) sums r over the last 15 minutes. (A CASE, not a
    FILTER clause: the same rows and bits, about a tenth faster in DuckDB 1.5.) Not for the
    aggregates that keep NULLs, such as list(), first() or arg_max(): those take a FILTER. -#}
{% macro within(w, expr) -%}
case when {{ in_window(w) }} then {{ expr }} end
{%- endmacro %}

{#- a minute aggregate, NULL when its window holds fewer than half its bars -#}
{% macro covered(w, expr) -%}
case when 2 * count({{ within(w, '1') }}) >= {{ w }} then {{ expr }} end
{%- endmacro %}
