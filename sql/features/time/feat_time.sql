-- grain: (symbol, ts)
-- reads: feat_cross
-- purpose: calendar position of ts (UTC), as sin/cos pairs
with features as (
    select * from feat_cross
),

final as (
    select
        *,
        sin(2 * pi() * utc_hour(ts) / 24) as hod_sin,
        cos(2 * pi() * utc_hour(ts) / 24) as hod_cos,
        sin(2 * pi() * utc_dow(ts) / 7) as dow_sin,
        cos(2 * pi() * utc_dow(ts) / 7) as dow_cos,
    from features
)

select * from final
