-- grain: one row per duplicated (symbol, open_time)
-- reads: klines_1m
-- purpose: the view's grain is unique
select symbol, open_time, count(*) as n_rows
from klines_1m
group by symbol, open_time
having count(*) > 1
