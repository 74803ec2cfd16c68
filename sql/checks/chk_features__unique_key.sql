-- grain: one row per duplicated (symbol, ts)
-- reads: features
-- purpose: the mart's key is unique
select symbol, ts, count(*) as n_rows
from features
group by symbol, ts
having count(*) > 1
