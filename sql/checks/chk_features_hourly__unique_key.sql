-- grain: one row per duplicated (symbol, ts)
-- reads: features_hourly
-- purpose: the view's grain is unique
select symbol, ts, count(*) as n_rows
from features_hourly
group by symbol, ts
having count(*) > 1
