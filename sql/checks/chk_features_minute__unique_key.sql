-- grain: one row per duplicated (symbol, ts)
-- reads: features_minute
-- purpose: the view's grain is unique
select symbol, ts, count(*) as n_rows
from features_minute
group by symbol, ts
having count(*) > 1
