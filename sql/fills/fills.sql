-- grain: (symbol, ts), one row per klines_1h row
-- reads: klines_1h, klines_1m
-- purpose: fill prices after the decision at ts (look past ts by construction) and past-only minute spread estimates; never joined into features
{%- set twap_windows = [5, 15, 30, 60] %}
{%- set min_spread_pairs = 30 %}
{%- set cs_k = '(3 - 2 * sqrt(2))' %}

with hours as (
    select
        symbol,
        close_time as ts,
        epoch_ms(close_time) as ts_ms,
        close,
    from klines_1h
),

minutes as (
    select
        symbol,
        open_time,
        close_time,
        epoch_ms(close_time) as close_ms,
        high,
        low,
        close,
    from klines_1m
),

fill_minutes as (
    -- a minute closing in (ts, ts + 60 min] fills the decision at ts: the decision time before its own
    select
        symbol,
        close_time,
        close_ms,
        close,
        decision_ms(close_time) - 3600000 as ts_ms,
    from minutes
),

forward_fills as (
    select
        symbol,
        ts_ms,
        arg_min(close, close_ms) as fill_next_minute,
        min(close_time) as next_minute_close_time,
        {%- for n in twap_windows %}
        avg(close) filter (where close_ms <= ts_ms + {{ n * 60000 }}) as fill_twap_{{ n }}m,
        {%- endfor %}
        count(*) as fill_minutes_60m,
    from fill_minutes
    group by symbol, ts_ms
),

minute_pairs as (
    -- each minute with the previous available minute of its symbol (lag: earlier bars only)
    select
        symbol,
        close_ms,
        decision_ms(close_time) as ts_ms,
        high,
        low,
        close,
        lag(close_ms) over by_minute as prev_close_ms,
        lag(high) over by_minute as prev_high,
        lag(low) over by_minute as prev_low,
        lag(close) over by_minute as prev_close,
    from minutes
    window by_minute as (partition by symbol order by open_time)
),

qualifying_pairs as (
    -- both minutes close in (ts - 60 min, ts] and exactly one minute apart (no pair across a gap);
    -- prices must be positive for the logarithms (a pair with a missing or zero price is skipped)
    select *
    from minute_pairs
    where close_ms - prev_close_ms = 60000
        and prev_close_ms > ts_ms - 3600000
        and high > 0 and low > 0 and close > 0
        and prev_high > 0 and prev_low > 0 and prev_close > 0
),

pair_terms as (
    -- Corwin-Schultz (2012) beta and gamma; Abdi-Ranaldo (2017) (c[i-1] - eta[i-1]) * (c[i-1] - eta[i])
    select
        symbol,
        ts_ms,
        pow(ln(high / low), 2) + pow(ln(prev_high / prev_low), 2) as cs_beta,
        pow(ln(greatest(high, prev_high) / least(low, prev_low)), 2) as cs_gamma,
        (ln(prev_close) - (ln(prev_high) + ln(prev_low)) / 2) * (ln(prev_close) - (ln(high) + ln(low)) / 2) as ar_product,
    from qualifying_pairs
),

pair_cs_alpha as (
    select
        symbol,
        ts_ms,
        (sqrt(2 * cs_beta) - sqrt(cs_beta)) / {{ cs_k }} - sqrt(cs_gamma / {{ cs_k }}) as cs_alpha,
        ar_product,
    from pair_terms
),

pair_cs_spread as (
    -- negative estimates set to zero per pair, as Corwin and Schultz do
    select
        symbol,
        ts_ms,
        greatest(2 * (exp(cs_alpha) - 1) / (1 + exp(cs_alpha)), 0) as cs_spread,
        ar_product,
    from pair_cs_alpha
),

past_spreads as (
    -- known at ts: every pair closed at or before ts
    select
        symbol,
        ts_ms,
        case when count(*) >= {{ min_spread_pairs }} then avg(cs_spread) end as spread_cs_60m,
        case when count(*) >= {{ min_spread_pairs }} then sqrt(greatest(4 * avg(ar_product), 0)) end as spread_ar_60m,
    from pair_cs_spread
    group by symbol, ts_ms
),

final as (
    select
        h.symbol,
        h.ts,
        h.close,
        f.fill_next_minute,
        f.next_minute_close_time,
        {%- for n in twap_windows %}
        f.fill_twap_{{ n }}m,
        {%- endfor %}
        coalesce(f.fill_minutes_60m, 0) as fill_minutes_60m,
        s.spread_cs_60m,
        s.spread_ar_60m,
    from hours as h
    left join forward_fills as f
        on f.symbol = h.symbol and f.ts_ms = h.ts_ms
    left join past_spreads as s
        on s.symbol = h.symbol and s.ts_ms = h.ts_ms
)

select * from final
