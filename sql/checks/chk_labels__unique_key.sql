-- grain: one row per duplicated (symbol, ts)
-- reads: labels
-- purpose: the view's grain is unique
select symbol, ts, count(*) as n_rows
from labels
group by symbol, ts
having count(*) > 1
