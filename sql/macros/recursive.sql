{#- Exact recursive smoothers (EMA, Wilder) as window queries, without a row-by-row recursion.
    {% import 'macros/recursive.sql' as rec %}

    For a series x with seed s0 = mean of its first n values (at bar k0) and
        s_t = w * s_(t-1) + (1 - w) * x_t,
    the closed form is s_t = w^(t-k0) * s0 + P_t with P_t = sum_(k0<j<=t) (1-w) * w^(t-j) * x_j.
    Bars are cut into chunks of C rows; inside a chunk P is a running sum of x_j * w^-(pos_j),
    rescaled by w^pos (no overflow for C = 512), and P carries over from the two previous chunk
    ends (a chunk further back weighs w^(2C) < 1e-30: below double precision). Every value uses
    only bars up to its own, and running sums are sequential, so results are reproducible. -#}

{% set chunk = 512 %}

{#- `series`: list of dicts {name, col, w, n}; defines CTEs ending in `name`, which is `source`
    plus one column per series. `source` must have `symbol` and a 1-based `bar_no`. -#}
{% macro smoothing(name, source, series) -%}
{{ name }}__seeds as (
    select
        *,
        bar_no // {{ chunk }} as smoothing_chunk,
        bar_no % {{ chunk }} as smoothing_pos,
        {%- for s in series %}
        -- the bar where {{ s.name }} gets its seed, and the seed: the mean of the first {{ s.n }} values
        min(bar_no) filter (where {{ s.name }}__n >= {{ s.n }}) over running as {{ s.name }}__k0,
        arg_min({{ s.name }}__sma, bar_no) filter (where {{ s.name }}__n >= {{ s.n }}) over running as {{ s.name }}__seed,
        {%- endfor %}
    from (
        select
            *,
            {%- for s in series %}
            count({{ s.col }}) over running as {{ s.name }}__n,
            avg({{ s.col }}) over (partition by symbol order by bar_no rows between {{ s.n - 1 }} preceding and current row) as {{ s.name }}__sma,
            {%- endfor %}
        from {{ source }}
        window running as (partition by symbol order by bar_no rows between unbounded preceding and current row)
    )
    window running as (partition by symbol order by bar_no rows between unbounded preceding and current row)
),

{{ name }}__partials as (
    select
        *,
        {%- for s in series %}
        pow({{ s.w }}, smoothing_pos) * sum(
            case when bar_no > {{ s.name }}__k0 then (1 - {{ s.w }}) * {{ s.col }} * pow({{ s.w }}, -smoothing_pos) end
        ) over in_chunk as {{ s.name }}__part,
        {%- endfor %}
    from {{ name }}__seeds
    window in_chunk as (partition by symbol, smoothing_chunk order by bar_no rows between unbounded preceding and current row)
),

{{ name }}__chunk_ends as (
    -- the sums at the last bar of each chunk, for the chunks after it
    select
        symbol,
        smoothing_chunk + 1 as smoothing_chunk,
        {%- for s in series %}
        coalesce(arg_max({{ s.name }}__part, bar_no), 0) as {{ s.name }}__end,
        {%- endfor %}
    from {{ name }}__partials
    group by symbol, smoothing_chunk
),

{{ name }} as (
    select
        p.* exclude (
            smoothing_chunk, smoothing_pos,
            {%- for s in series %} {{ s.name }}__n, {{ s.name }}__sma, {{ s.name }}__k0, {{ s.name }}__seed, {{ s.name }}__part,{% endfor %}
        ),
        {%- for s in series %}
        case when p.bar_no >= p.{{ s.name }}__k0 then
            pow({{ s.w }}, p.bar_no - p.{{ s.name }}__k0) * p.{{ s.name }}__seed
            + coalesce(p.{{ s.name }}__part, 0)
            + pow({{ s.w }}, p.smoothing_pos + 1) * (coalesce(e1.{{ s.name }}__end, 0) + pow({{ s.w }}, {{ chunk }}) * coalesce(e2.{{ s.name }}__end, 0))
        end as {{ s.name }},
        {%- endfor %}
    from {{ name }}__partials as p
    left join {{ name }}__chunk_ends as e1
        on e1.symbol = p.symbol and e1.smoothing_chunk = p.smoothing_chunk
    left join {{ name }}__chunk_ends as e2
        on e2.symbol = p.symbol and e2.smoothing_chunk = p.smoothing_chunk - 1
)
{%- endmacro %}
