-- grain: (symbol, ts)
-- reads: klines_1h
-- purpose: forward-looking targets; the only layer allowed to look past ts (never joined into features)
with bars as (
    select symbol, close_time as ts, close from klines_1h
),

final as (
    select
        symbol,
        ts,
        -- a trade decided at ts earns close(ts) -> close(ts + 1 h); NULL when that bar is missing
        ln(first_value(close) over (
            partition by symbol order by ts
            range between interval 1 hour following and interval 1 hour following
        ) / close) as fwd_ret_1h,
    from bars
)

select * from final
