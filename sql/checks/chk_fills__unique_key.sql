-- grain: one row per duplicated (symbol, ts)
-- reads: fills
-- purpose: the view's grain is unique
select symbol, ts, count(*) as n_rows
from fills
group by symbol, ts
having count(*) > 1
