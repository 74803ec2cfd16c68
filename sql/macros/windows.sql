{#- Jinja macros for the repeated window patterns. Imported explicitly:
    {% import 'macros/windows.sql' as w %}

    Rolling statistics over doubles collect the frame with list() and reduce it in order, so a
    value depends only on the rows in its frame, never on where the partition starts (DuckDB's
    segment-tree window sums do): incremental refresh and full rebuild agree bit for bit. -#}

{#- the frame of the last `hours` hours up to and including the current row, by time -#}
{% macro last_hours(hours) -%}
range between interval {{ hours - 1 }} hours preceding and current row
{%- endmacro %}

{#- the frame of the previous `n` rows, the current row excluded -#}
{% macro previous_rows(n) -%}
rows between {{ n }} preceding and 1 preceding
{%- endmacro %}

{#- the list of `col` over a frame of one symbol's hourly rows -#}
{% macro history(col, frame, partition='symbol') -%}
list({{ col }}) over (partition by {{ partition }} order by ts {{ frame }})
{%- endmacro %}

{#- the value of `col` exactly `hours` hours before ts (NULL when that bar is missing) -#}
{% macro hours_ago(col, hours) -%}
first_value({{ col }}) over (partition by symbol order by ts range between interval {{ hours }} hours preceding and interval {{ hours }} hours preceding)
{%- endmacro %}

{#- rolling z-score of `col` against the previous `n` rows, current row excluded; needs n/2 values -#}
{% macro rolling_z(col, n) -%}
z_against({{ col }}, {{ history(col, previous_rows(n)) }}, {{ (n + 1) // 2 }})
{%- endmacro %}

{#- FILTER predicate: minute bars in the window of w minutes at ts, i.e. close_time in (ts - w, ts] -#}
{% macro in_window(w) -%}
close_time > ts - interval {{ w }} minutes
{%- endmacro %}

{#- a minute aggregate, NULL when its window holds fewer than half its bars -#}
{% macro covered(w, expr) -%}
case when 2 * count(*) filter (where {{ in_window(w) }}) >= {{ w }} then {{ expr }} end
{%- endmacro %}
