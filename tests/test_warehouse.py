"""The warehouse build: templates, window edges, minute lag, time zones, refresh, checks, shell, audit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, make_config, random_minutes, write_market
from mscale.errors import CheckFailedError, MscaleError
from mscale.store import list_shards
from mscale.warehouse import render as r
from mscale.warehouse.audit import audit, format_audit
from mscale.warehouse.build import build_features, compute_features, connect, create_views, materialise

HOUR = 3_600_000
MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
MINUTE_COLUMNS = ["m_ret_5m", "m_ret_15m", "m_ret_60m", "m_rv_15m", "m_rv_60m", "m_bpv_60m", "m_vol_sum_60m",
                  "m_vol_mean_5m", "m_range_60m", "m_vwap_div_60m", "m_skew_60m", "m_kurt_60m"]


def _ts_ms(table: pa.Table, column: str = "ts") -> np.ndarray:
    return table.column(column).cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()


def _mart(cfg, **overrides) -> pa.Table:
    return compute_features(cfg.sql_dir, r.params_from_config(cfg, **overrides))


def _row(table: pa.Table, ts_ms: int) -> dict:
    i = int(np.flatnonzero(_ts_ms(table) == ts_ms)[0])
    return table.slice(i, 1).to_pylist()[0]


# --- templates ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", r.discover(REPO / "sql"), ids=lambda m: f"{m.layer}/{m.name}")
def test_every_template_renders_and_explains(model, demo_market):
    con = connect()
    params = r.params_from_config(demo_market)
    create_views(con, demo_market.sql_dir, params)
    env = r.environment(demo_market.sql_dir)
    sql = r.render(env, model, r.RenderParams(**{**params.__dict__, "extra_models": ()}))
    head = sql.lstrip().splitlines()[:3]
    assert [line.split(":")[0] for line in head] == ["-- grain", "-- reads", "-- purpose"], f"{model.path} header"
    con.execute(f"explain {sql}")


def test_no_lookahead_outside_labels():
    """labels/ and fills/ look past ts by construction (targets, fill prices); nothing else may."""
    offenders = []
    for path in (REPO / "sql").rglob("*.sql"):
        if path.parent.relative_to(REPO / "sql").as_posix() in ("labels", "fills"):
            continue
        text = re.sub(r"--[^\n]*", "", path.read_text()).lower()
        if re.search(r"\blead\s*\(", text) or re.search(r"\bfollowing\b", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_templates_reject_values_that_could_inject_sql():
    with pytest.raises(MscaleError, match="invalid symbol"):
        r.RenderParams(symbols=("BTC'; drop table x; --",)).context()
    with pytest.raises(MscaleError, match="divisor of 60"):
        r.RenderParams(minute_windows=(5, 15, 60, 7)).context()
    assert r.sql_paths(["/tmp/it's.parquet"]) == "['/tmp/it''s.parquet']"


# --- window edges -------------------------------------------------------------------------------

def _edge_market(cfg, extra_rows: list[dict] | None = None, drop_open_ms: tuple[int, ...] = ()):
    """3 hours of minutes from T0, written as shards; extra rows are appended to the raw shard."""
    minutes = random_minutes("EDGEUSDT", T0, 180, seed=3)
    keep = ~np.isin(minutes.column("open_time").cast(pa.int64()).to_numpy(), drop_open_ms)
    write_market(cfg, minutes.filter(pa.array(keep)))
    if extra_rows:
        path = list_shards(cfg.market_dir, "1m")[0].path
        table = pq.read_table(path)
        extra = pa.Table.from_pylist(extra_rows, schema=table.schema)
        pq.write_table(pa.concat_tables([table, extra]), path)


def test_minute_closing_exactly_at_ts_is_in_and_later_ones_are_out(tmp_path):
    cfg = make_config(tmp_path)
    _edge_market(cfg)
    base = _mart(cfg)
    ts = T0 + HOUR
    assert _row(base, ts)["m_n_60m"] == 60
    assert _row(base, ts)["m_last_close_time"].timestamp() * 1000 == ts  # the minute closing at ts feeds ts

    # a bar closing 1 ms after ts (an odd close time) and the bar opening at ts are not in ts's window
    cfg2 = make_config(tmp_path / "late")
    odd = {"symbol": "EDGEUSDT", "open_time": pd.Timestamp(ts - MIN + 1, unit="ms", tz="UTC"),
           "close_time": pd.Timestamp(ts + 1, unit="ms", tz="UTC"), "open": 1e6, "high": 1e6, "low": 1e6,
           "close": 1e6, "volume": 1e6, "quote_volume": 1e12, "trades": 1, "taker_buy_base": 1.0, "taker_buy_quote": 1.0}
    _edge_market(cfg2, extra_rows=[odd])
    late = _mart(cfg2)
    for col in ["m_n_60m", *MINUTE_COLUMNS]:
        assert _row(late, ts)[col] == _row(base, ts)[col], col
    assert _row(late, ts + HOUR)["m_n_60m"] == 61  # it belongs to the next decision time


def test_burst_and_pressure_follow_their_definitions_through_halts_missing_prices_and_bad_volumes(tmp_path):
    """m_burst_{5,15,60}m and m_pressure_15m against CONTRACT §5 written out in numpy, over 9 days
    of minutes with zero-volume halts, a few NULL closes and a NaN volume (bad data: the minute
    buckets must not fail on it; their log-volume sums add in fixed point): the trailing week's traded minutes (finite volume > 0) fit
    mu and sigma; a burst is a finite volume above exp(mu + 1.6449 sigma); the pressure is the mean,
    over W_15's minutes with both a sign and a log-volume, of sign(close - open) * (ln v - mu) / sigma."""
    n = 9 * 24 * 60
    minutes = random_minutes("EDGEUSDT", T0, n, seed=12)
    write_market(make_config(tmp_path), minutes)
    cfg = make_config(tmp_path)
    shard = list_shards(cfg.market_dir, "1m")[0].path
    table = pq.read_table(shard)
    rng = np.random.default_rng(1)
    close = table.column("close").to_numpy().astype(float)
    volume = table.column("volume").to_numpy().astype(float)
    null_close = np.zeros(n, dtype=bool)
    null_close[rng.choice(np.arange(8 * 24 * 60, n), 40, replace=False)] = True  # in the last day, where the reference exists
    volume[n - 500] = np.nan
    table = table.set_column(table.schema.get_field_index("close"), "close", pa.array(close, mask=null_close))
    table = table.set_column(table.schema.get_field_index("volume"), "volume", pa.array(volume))
    pq.write_table(table, shard)

    from mscale.warehouse.build import bucket_inputs, bucket_query, shards_by_month
    from mscale.warehouse.executors import run_queries

    month = 2024 * 12  # January 2024: the 9 days
    query = bucket_query(cfg.sql_dir, r.params_from_config(cfg), "EDGEUSDT", month, month,
                         bucket_inputs(shards_by_month(cfg.market_dir, "1m")["EDGEUSDT"], month, month))
    (buckets,) = run_queries((cfg.sql_dir / r.MACROS_FILE).read_text(), [query])
    got = buckets.to_pandas().set_index("ts")
    open_ = table.column("open").to_numpy().astype(float)
    close_ms = table.column("close_time").cast(pa.int64()).to_numpy()
    traded = (volume > 0) & np.isfinite(volume)
    log_volume = np.where(traded, np.log(np.where(traded, volume, 1.0)), np.nan)
    sign = np.where(null_close, np.nan, np.sign(close - open_))
    checked = {"burst": 0, "pressure": 0}
    for ts in range(T0 + HOUR, T0 + n * MIN + 1, HOUR):
        week = (close_ms > ts - 169 * HOUR) & (close_ms <= ts - HOUR) & traded
        row = got.loc[pd.Timestamp(ts, unit="ms", tz="UTC")]
        if week.sum() < 5040:
            assert pd.isna(row["m_burst_60m"]) and pd.isna(row["m_pressure_15m"])
            continue
        mu, sigma = log_volume[week].mean(), log_volume[week].std()
        threshold = np.exp(mu + 1.6448536269514722 * sigma)
        for w in (5, 15, 60):
            window = (close_ms > ts - w * MIN) & (close_ms <= ts)
            assert row[f"m_burst_{w}m"] == np.sum(np.isfinite(volume[window]) & (volume[window] > threshold)), (ts, w)
            checked["burst"] += 1
        w15 = (close_ms > ts - 15 * MIN) & (close_ms <= ts) & ~np.isnan(sign) & traded
        want = np.mean(sign[w15] * (log_volume[w15] - mu) / sigma)
        assert row["m_pressure_15m"] == pytest.approx(want, rel=1e-9, abs=1e-12), ts
        checked["pressure"] += 1
    assert checked["burst"] > 300 and checked["pressure"] > 100


def test_a_missing_minute_changes_coverage_and_nothing_breaks(tmp_path):
    cfg = make_config(tmp_path)
    _edge_market(cfg, drop_open_ms=(T0 + 30 * MIN,))
    row = _row(_mart(cfg), T0 + HOUR)
    assert row["m_n_60m"] == 59
    assert all(row[c] is not None and np.isfinite(row[c]) for c in MINUTE_COLUMNS)


def test_window_with_less_than_half_its_bars_is_null(tmp_path):
    cfg = make_config(tmp_path)
    last_five = tuple(T0 + HOUR - k * MIN for k in range(1, 4))  # 3 of the last 5 minutes missing
    _edge_market(cfg, drop_open_ms=last_five)
    row = _row(_mart(cfg), T0 + HOUR)
    assert row["m_ret_5m"] is None and row["m_vol_mean_5m"] is None
    assert row["m_ret_15m"] is not None and row["m_n_60m"] == 57


# --- minute lag ----------------------------------------------------------------------------------

def test_minute_lag_moves_every_minute_feature_by_one_decision_time(demo_market):
    lag0 = _mart(demo_market, minute_lag_hours=0).to_pandas().set_index(["symbol", "ts"])
    lag1 = _mart(demo_market, minute_lag_hours=1).to_pandas().set_index(["symbol", "ts"])
    shifted = lag0.reset_index()
    shifted["ts"] = shifted["ts"] + pd.Timedelta(hours=1)
    shifted = shifted.set_index(["symbol", "ts"])
    common = lag1.index.intersection(shifted.index)
    assert len(common) > 2000
    for col in ["m_n_60m", "m_last_close_time", *MINUTE_COLUMNS, "m_burst_15m", "m_pressure_15m"]:
        pd.testing.assert_series_equal(lag1.loc[common, col], shifted.loc[common, col], check_names=False)
    # hourly features do not move
    pd.testing.assert_series_equal(lag1["rsi_14"], lag0["rsi_14"])


def test_seed_recipe_is_one_minute_later_than_close_time_windows(demo_market):
    """The plan's resample(label=right, closed=right) on open times + shift(1) holds the minutes
    opened in (t - 2h, t - 1h]; the lag-1 close-time window (close_time in (t - 2h, t - 1h]) holds
    those opened in [t - 2h, t - 1h - 1m]: the seed's bucket is one minute later."""
    from mscale.store import read_klines

    minutes = read_klines(demo_market.market_dir, "1m", "BTCUSDT").to_pandas().set_index("open_time")
    seed = minutes["volume"].resample("1h", label="right", closed="right").sum(min_count=1).shift(1)
    lag1 = _mart(demo_market, minute_lag_hours=1).to_pandas()
    lag1 = lag1[lag1.symbol == "BTCUSDT"].set_index("ts")["m_vol_sum_60m"]
    vol = minutes["volume"]
    checked = 0
    for t in lag1.index[200:400]:
        opened_seed = vol[(vol.index > t - pd.Timedelta(hours=2)) & (vol.index <= t - pd.Timedelta(hours=1))]
        opened_ours = vol[(vol.index >= t - pd.Timedelta(hours=2)) & (vol.index <= t - pd.Timedelta(hours=1, minutes=1))]
        if len(opened_seed) < 60 or len(opened_ours) < 60:
            continue
        assert seed[t] == pytest.approx(opened_seed.sum(), rel=1e-12)
        assert lag1[t] == pytest.approx(opened_ours.sum(), rel=1e-12)
        # both leak-free: the latest minute in either bucket closed at or before t - 1h + 1m <= t
        assert opened_seed.index.max() + pd.Timedelta(minutes=1) <= t
        checked += 1
    assert checked > 150
    # and they really differ by one minute at the edges
    assert not np.allclose(seed.reindex(lag1.index[200:400]), lag1.iloc[200:400])


# --- time zones -----------------------------------------------------------------------------------

@pytest.mark.parametrize("view", ["klines_1m", "klines_1h", "features_hourly", "features_minute", "features", "labels", "fills"])
def test_views_do_not_depend_on_the_session_time_zone(demo_market, view):
    params = r.params_from_config(demo_market)
    results = []
    for tz in ("UTC", "Asia/Kolkata", "America/New_York"):
        con = connect()
        con.execute("set threads = 1")  # parallel sums may differ in the last bit from run to run
        con.execute(f"set TimeZone = '{tz}'")
        create_views(con, demo_market.sql_dir, params)
        key = "open_time" if view.startswith("klines") else "ts"
        table = con.execute(f"select * from {view} order by symbol, {key}").to_arrow_table()
        con.close()
        # Arrow carries the session zone as display metadata; compare the instants in UTC
        results.append(pa.table([c.cast(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(c.type) else c
                                 for c in table.columns], names=table.column_names))
    assert results[0].num_rows > 0
    assert results[0].equals(results[1]) and results[0].equals(results[2])


# --- refresh and the whole build -------------------------------------------------------------------

def _cache(cfg) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((cfg.derived_dir / "features").glob("symbol=*/*.parquet"))])


def test_incremental_refresh_equals_full_rebuild(tmp_path):
    from mscale.demo import write_demo

    full = make_config(tmp_path / "full")
    write_demo(full, symbols=("BTCUSDT",), start=date(2024, 1, 1), months=5, seed=3)
    inc = make_config(tmp_path / "inc")
    shutil.copytree(full.data_dir, inc.data_dir)
    held = tmp_path / "held"
    held.mkdir()
    for s in list_shards(inc.market_dir, "1m") + list_shards(inc.market_dir, "1h"):
        if s.month >= 4:
            shutil.move(s.path, held / s.path.name)

    first = materialise(inc)
    assert first.months_computed == 3
    assert materialise(inc).months_computed == 0  # nothing changed, nothing recomputed
    for p in held.iterdir():
        shutil.move(p, (inc.minute_dir if "_1m_" in p.name else inc.hourly_dir) / p.name)
    refresh = materialise(inc)
    assert refresh.months_computed == 2 and refresh.months_skipped == 3  # only the new quarter
    materialise(full, full=True)
    a, b = _cache(full), _cache(inc)
    assert a.num_rows == b.num_rows > 3000
    assert a.equals(b), [c for c in a.column_names if not a.column(c).equals(b.column(c))]


def _buckets(cfg) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cfg.derived_dir / "minute_buckets").glob("symbol=*/*.parquet"))}


def test_minute_buckets_are_computed_once_per_month_and_again_when_their_minutes_change(tmp_path):
    """The minute-bucket cache: a new month computes its own buckets only; a change in a month's
    last week recomputes the next month's buckets too (their trailing week reads it); every state
    equals a full rebuild, buckets and features alike."""
    from mscale.demo import write_demo
    from mscale.warehouse.build import bucket_path

    inc = make_config(tmp_path / "inc")
    write_demo(inc, symbols=("BTCUSDT",), start=date(2024, 1, 1), months=5, seed=4)
    held = tmp_path / "held"
    held.mkdir()
    for s in list_shards(inc.market_dir, "1m") + list_shards(inc.market_dir, "1h"):
        if s.month == 5:
            shutil.move(s.path, held / s.path.name)
    materialise(inc)
    before = {p: p.stat().st_mtime_ns for p in (inc.derived_dir / "minute_buckets").rglob("*.parquet")}
    assert sorted(p.name for p in before) == ["202401.parquet", "202402.parquet", "202403.parquet", "202404.parquet"]
    for p in held.iterdir():
        shutil.move(p, (inc.minute_dir if "_1m_" in p.name else inc.hourly_dir) / p.name)
    assert materialise(inc).months_computed == 2  # April and May: the quarter
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # no earlier month's buckets again
    may = bucket_path(inc, "BTCUSDT", 2024 * 12 + 4)
    assert may.exists()

    def check_equals_a_full_rebuild() -> None:
        full = make_config(tmp_path / f"full{len(list(tmp_path.iterdir()))}")
        shutil.copytree(inc.data_dir, full.data_dir, ignore=shutil.ignore_patterns("derived"))
        materialise(full, full=True)
        assert _buckets(full) == _buckets(inc)
        assert _cache(full).equals(_cache(inc))

    check_equals_a_full_rebuild()
    # a heavier last minute of April: May's trailing week reads it, so May's buckets change too
    april = next(s.path for s in list_shards(inc.market_dir, "1m") if s.month == 4)
    table = pq.read_table(april)
    volume = table.column("volume").to_numpy().copy()
    volume[-1] *= 50
    pq.write_table(table.set_column(table.schema.get_field_index("volume"), "volume", pa.array(volume)), april)
    may_before = may.read_bytes()
    materialise(inc)
    assert may.read_bytes() != may_before
    check_equals_a_full_rebuild()


def test_a_months_minute_buckets_are_the_same_bits_alone_or_in_a_run_of_months(tmp_path):
    """A full build computes a quarter's minute buckets in one query, a refresh one month alone:
    each month's rows must be the same bits either way (the trailing week's sums add in fixed
    point; a float window sum changes in the last bits with where its rows start)."""
    from mscale.demo import write_demo
    from mscale.warehouse.build import bucket_inputs, bucket_query, shards_by_month
    from mscale.warehouse.executors import run_queries, split_rows, stage_rows, task_connection

    cfg = make_config(tmp_path)
    write_demo(cfg, symbols=("BTCUSDT",), start=date(2024, 1, 1), months=4, seed=8)
    minutes = shards_by_month(cfg.market_dir, "1m")["BTCUSDT"]
    base = r.params_from_config(cfg)
    macros = (cfg.sql_dir / r.MACROS_FILE).read_text()
    first, last = 2024 * 12 + 1, 2024 * 12 + 3  # February to April
    con = task_connection(macros)
    try:
        stage_rows(con, [bucket_query(cfg.sql_dir, base, "BTCUSDT", first, last, bucket_inputs(minutes, first, last))])
        runs = split_rows(con, range(first, last + 1))
    finally:
        con.close()
    for k, in_run in zip(range(first, last + 1), runs):
        (alone,) = run_queries(macros, [bucket_query(cfg.sql_dir, base, "BTCUSDT", k, k, bucket_inputs(minutes, k, k))])
        assert alone.num_rows > 600 and alone.column("m_pressure_15m").null_count < alone.num_rows / 2
        assert alone.equals(in_run), [c for c in alone.column_names if not alone.column(c).equals(in_run.column(c))]


def test_the_sampled_live_checks_pass_with_a_minute_lag(demo_market, tmp_path):
    """The live-layer checks read a sampled month and the hours before it whose minutes feed it
    (minute_lag_hours + 2 h): with a lag, the alignment check must still find every minute of the
    month's first hours, and the sampled rows must include them."""
    cfg = make_config(tmp_path, minute_lag_hours=5)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    result = build_features(cfg)
    checks = {c.name: c for c in result.checks}
    assert checks["chk_features__alignment"].failing_rows == 0 and checks["chk_klines_1m__unique_key"].failing_rows == 0
    assert all(c.failing_rows == 0 for c in result.checks)


def test_build_creates_views_checks_and_cache(demo_market, tmp_path):
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    result = build_features(cfg)
    assert all(c.failing_rows == 0 for c in result.checks) and len(result.checks) >= 5
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    n_bars = con.execute("select count(*) from klines_1h").fetchone()[0]
    assert con.execute("select count(*) from features").fetchone()[0] == n_bars
    assert con.execute("select count(*) from check_results where failing_rows = 0").fetchone()[0] == len(result.checks)
    cached = con.execute("select * from features order by symbol, ts").to_arrow_table()
    con.close()
    live = compute_features(cfg.sql_dir, r.params_from_config(cfg)).to_pandas()
    # the cache is computed one symbol at a time; DuckDB's window trees then group the sums of the
    # second symbol differently than in one query over both, so the last bits may differ
    pd.testing.assert_frame_equal(cached.to_pandas()[list(live.columns)], live, check_dtype=False, rtol=1e-9)


def test_a_cache_computed_another_way_is_recomputed_though_sql_and_shards_are_unchanged(demo_market, tmp_path):
    """A manifest from an earlier layout of the cache (no minute buckets) matches the SQL and the
    shards, but its bits came from other windows: a refresh recomputes it, to a full rebuild's bytes."""
    import json

    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    materialise(cfg)
    manifest_path = cfg.derived_dir / "features" / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    old = {key: {k: v for k, v in entry.items() if k != "layout"} for key, entry in manifest.items() if "/m" not in key}
    manifest_path.write_text(json.dumps(old))
    shutil.rmtree(cfg.derived_dir / "minute_buckets")
    again = materialise(cfg)
    assert again.months_computed == again.months_computed + again.months_skipped > 0  # every month
    assert json.loads(manifest_path.read_text()) == manifest


def test_cache_agrees_with_the_live_views_across_a_minute_gap_longer_than_the_lookback(demo_market, tmp_path):
    """The first returns after a month without minutes lag on the last minutes before the gap
    (CONTRACT §5: the previous available bar), in the cached minute buckets as in the live view."""
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    (feb,) = [s.path for s in list_shards(cfg.market_dir, "1m", "ETHUSDT") if s.month == 2]
    feb.unlink()
    materialise(cfg)
    cached = _cache(cfg).to_pandas().sort_values(["symbol", "ts"], ignore_index=True)
    live = compute_features(cfg.sql_dir, r.params_from_config(cfg)).to_pandas()
    first_march = (cached.symbol == "ETHUSDT") & (cached.ts == pd.Timestamp("2024-03-01 01:00", tz="UTC"))
    assert cached.loc[first_march, "m_ret_60m"].notna().all()  # the gap's first return is defined ...
    pd.testing.assert_frame_equal(cached[list(live.columns)], live, check_dtype=False, rtol=1e-9)  # ... as live


def test_shell_reads_the_warehouse_from_any_directory(demo_market, tmp_path):
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    build_features(cfg)
    shell = Path(sys.executable).with_name("duckdb")
    assert shell.exists(), "the duckdb shell is installed with the project"
    for cwd in (tmp_path, Path("/")):
        out = subprocess.run([str(shell), str(cfg.warehouse), "-csv", "-c", "SELECT symbol, ts, m_n_60m FROM features LIMIT 5"],
                             cwd=cwd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[0] == "symbol,ts,m_n_60m" and len(lines) == 6
    out = subprocess.run([str(shell), str(cfg.warehouse), "-csv", "-c", "SELECT count(*) FROM klines_1m"],
                         cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and int(out.stdout.split()[-1]) > 100_000, out.stderr


def test_new_minute_shards_show_up_without_a_rebuild(demo_market, tmp_path):
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    build_features(cfg)
    from mscale.store import write_klines

    write_klines(cfg.market_dir, "1m", random_minutes("NEWUSDT", T0, 120, seed=1))
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    assert con.execute("select count(*) from klines_1m where symbol = 'NEWUSDT'").fetchone()[0] == 120


# --- checks plant their violations ----------------------------------------------------------------

@pytest.fixture
def built(demo_market, tmp_path):
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    build_features(cfg)
    return cfg


def _tamper(cfg, fn) -> None:
    path = sorted((cfg.derived_dir / "features").glob("symbol=*/*.parquet"))[1]
    pq.write_table(fn(pq.read_table(path)), path)


def test_alignment_check_catches_a_minute_after_ts(built):
    def late(t):
        ts = t.column("ts")
        return t.set_column(t.schema.get_field_index("m_last_close_time"), "m_last_close_time",
                            pa.compute.add(ts, pa.scalar(60_000_000, pa.duration("us"))).cast(t.schema.field("m_last_close_time").type))
    _tamper(built, late)
    with pytest.raises(CheckFailedError, match="chk_features__alignment"):
        build_features(built, full=False) if False else _rerun_checks(built)


def test_unique_key_and_grid_checks_catch_duplicates_and_missing_rows(built):
    _tamper(built, lambda t: pa.concat_tables([t, t.slice(0, 3)]))
    with pytest.raises(CheckFailedError, match="chk_features__unique_key"):
        _rerun_checks(built)
    _tamper(built, lambda t: t.slice(10))
    with pytest.raises(CheckFailedError, match="chk_features__hourly_grid"):
        _rerun_checks(built)


def test_increasing_check_catches_a_cache_file_out_of_order(built):
    _rerun_checks(built)  # passes as built
    _tamper(built, lambda t: t.take(pa.array([1, 0] + list(range(2, t.num_rows)))))
    with pytest.raises(CheckFailedError, match="chk_features__increasing"):
        _rerun_checks(built)


def _rerun_checks(cfg):
    """Run the build's checks against the (tampered) cache without refreshing it."""
    from mscale.warehouse import build

    con = connect(cfg.warehouse)
    try:
        params = r.params_from_config(cfg)
        checks = build.run_checks(con, cfg.sql_dir, params)
        checks.append(build.check_stored_order(con, str(cfg.derived_dir / "features" / "symbol=*" / "*.parquet")))
    finally:
        con.close()
    failing = [c for c in checks if c.failing_rows]
    if failing:
        raise CheckFailedError("; ".join(f"{c.name}: {c.failing_rows}" for c in failing))


# --- audit -----------------------------------------------------------------------------------------

LEAKY = {
    "feat_extra__next_close": """-- grain: (symbol, ts)
-- reads: klines_1h
-- purpose: planted leak: the next bar's close
select symbol, close_time as ts, lead(close) over (partition by symbol order by close_time) as next_close from klines_1h
""",
    "feat_extra__future_high": """-- grain: (symbol, ts)
-- reads: klines_1h
-- purpose: planted leak: a following frame
select symbol, close_time as ts,
    max(high) over (partition by symbol order by close_time rows between current row and 2 following) as future_high
from klines_1h
""",
    "feat_extra__open_time_window": """-- grain: (symbol, ts)
-- reads: klines_1m
-- purpose: planted leak: a 60-minute window keyed on open times takes the bar that opens at ts
select
    symbol,
    open_time as ts,
    sum(volume) over (partition by symbol order by open_time range between interval 59 minutes preceding and current row) as open_window_volume,
from klines_1m
qualify minute(open_time at time zone 'UTC') = 0
""",
}


def test_audit_passes_the_shipped_features_and_flags_planted_leaks(demo_market, tmp_path):
    clean = audit(demo_market, cuts=1, seed=1)
    assert clean.ok and len(clean.columns) > 100, format_audit(clean)

    sql_dir = tmp_path / "sql"
    shutil.copytree(demo_market.sql_dir, sql_dir)
    for name, text in LEAKY.items():
        (sql_dir / "features" / "extra" / f"{name}.sql").write_text(text)
    leaky = audit(demo_market, cuts=2, seed=1, sql_dir=sql_dir)
    flagged = {(v.relation, v.column) for v in leaky.leaking}
    for name, column in [("feat_extra__next_close", "next_close"), ("feat_extra__future_high", "future_high"),
                         ("feat_extra__open_time_window", "open_window_volume")]:
        assert (name, column) in flagged
        assert ("features", column) in flagged  # joined into the mart, it leaks there too
    assert not any(rel == "features_hourly" for rel, _ in flagged)
    text = format_audit(leaky)
    assert "LEAK feat_extra__next_close.next_close" in text and "first at" in text


def test_audit_command_exit_code(demo_market, tmp_path):
    from mscale.cli import main

    assert main(["audit", "--data-dir", str(demo_market.data_dir), "--cuts", "1", "--quiet"]) == 0
    assert main(["audit", "--data-dir", str(tmp_path / "empty"), "--cuts", "1", "--quiet"]) == 2


# --- review follow-ups --------------------------------------------------------------------------

def test_a_removed_symbol_leaves_the_cache_and_the_checks_pass(tmp_path):
    from mscale.demo import write_demo

    cfg = make_config(tmp_path)
    write_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 1, 1), months=1, seed=2)
    build_features(cfg)
    for s in list_shards(cfg.market_dir, "1m", "ETHUSDT") + list_shards(cfg.market_dir, "1h", "ETHUSDT"):
        s.path.unlink()
    result = build_features(cfg)
    assert all(c.failing_rows == 0 for c in result.checks)
    assert not list((cfg.derived_dir / "features").glob("symbol=ETHUSDT/*.parquet"))
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    assert con.execute("select distinct symbol from features").fetchall() == [("BTCUSDT",)]


def test_shards_without_a_symbol_column_take_it_from_the_file_name(tmp_path):
    cfg = make_config(tmp_path)
    write_market(cfg, random_minutes("NOSYMUSDT", T0, 180, seed=4))
    for s in list_shards(cfg.market_dir, "1m") + list_shards(cfg.market_dir, "1h"):
        pq.write_table(pq.read_table(s.path).drop(["symbol"]), s.path)
    mart = _mart(cfg)
    assert set(mart.column("symbol").to_pylist()) == {"NOSYMUSDT"} and mart.num_rows == 3


@pytest.mark.parametrize("check, key", [
    ("chk_klines_1m__unique_key", "open_time"), ("chk_klines_1h__unique_key", "open_time"),
    ("chk_features_hourly__unique_key", "ts"), ("chk_features_minute__unique_key", "ts"),
    ("chk_features__unique_key", "ts"), ("chk_fills__unique_key", "ts"), ("chk_labels__unique_key", "ts"),
])
def test_every_unique_key_check_returns_a_planted_duplicate(check, key):
    view = check.removeprefix("chk_").split("__")[0]
    con = duckdb.connect()
    con.execute(f"create table {view} as select 'BTCUSDT' as symbol, to_timestamp(3600 * (range % 3)) as {key} from range(4)")
    env = r.environment(REPO / "sql")
    model = next(m for m in r.discover(REPO / "sql") if m.name == check)
    rows = con.execute(r.render(env, model, r.RenderParams())).fetchall()
    assert len(rows) == 1 and rows[0][-1] == 2  # ts 0 appears twice


@pytest.mark.parametrize("settings, message", [
    ({"threads": 0}, "threads"), ({"memory_limit": "lots"}, "memory_limit"), ({"z_window": 1}, "z_window"),
    ({"start": "2024/01/01"}, "start"), ({"minute_lag_hours": -1}, "minute_lag_hours"),
])
def test_bad_feature_settings_are_one_line_errors(tmp_path, settings, message):
    with pytest.raises(MscaleError, match=message):
        make_config(tmp_path, **settings)


def test_bad_mscale_toml_is_a_one_line_error(tmp_path):
    from mscale.config import load_config

    (tmp_path / "mscale.toml").write_text("data_dir = 5\n")
    with pytest.raises(MscaleError, match="data_dir must be a string"):
        load_config(project_root=tmp_path)
    (tmp_path / "mscale.toml").write_text("[features]\nz_windw = 10\n")
    with pytest.raises(MscaleError, match="unknown keys"):
        load_config(project_root=tmp_path)


def test_audit_command_exits_non_zero_on_a_leak(demo_market, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "sql", project / "sql")
    (project / "mscale.toml").write_text(f'data_dir = "{demo_market.data_dir}"\n')
    (project / "sql" / "features" / "extra" / "feat_extra__next_close.sql").write_text(LEAKY["feat_extra__next_close"])
    out = subprocess.run([sys.executable, "-m", "mscale", "audit", "--cuts", "1", "--quiet"], cwd=project,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "LEAK feat_extra__next_close.next_close" in out.stdout


def test_longer_window_features_match_a_pandas_recomputation(demo_market):
    """z-scores (previous N rows, current excluded), same-hour volume z, 30-day range percentile, labels."""
    mart = _mart(demo_market, z_window=48).to_pandas()
    one = mart[mart.symbol == "BTCUSDT"].set_index("ts").sort_index()
    prev = one["ret_24h"].shift(1).rolling(48, min_periods=24)
    expected_z = (one["ret_24h"] - prev.mean()) / prev.std()
    pd.testing.assert_series_equal(one["ret_24h_z"], expected_z, check_names=False, rtol=1e-8)

    vol = one["m_vol_sum_60m"]
    same_hour = pd.concat([vol.reindex(vol.index - pd.Timedelta(days=k)).set_axis(vol.index) for k in range(1, 8)], axis=1)
    n = same_hour.notna().sum(axis=1)
    z_hod = ((vol - same_hour.mean(axis=1)) / same_hour.std(axis=1)).where(n >= 4)
    pd.testing.assert_series_equal(one["m_vol_z_hod"], z_hod, check_names=False, rtol=1e-8)

    rng_ = one["m_range_60m"]
    sample = one.index[800::97]
    for t in sample:
        hist = rng_[(rng_.index >= t - pd.Timedelta(hours=720)) & (rng_.index <= t - pd.Timedelta(hours=1))].dropna()
        want = (hist <= rng_[t]).mean() if len(hist) >= 360 and pd.notna(rng_[t]) else None
        got = one.loc[t, "m_range_pct_30d"]
        assert (want is None and pd.isna(got)) or got == pytest.approx(want, rel=1e-12)

    con = connect()
    create_views(con, demo_market.sql_dir, r.params_from_config(demo_market))
    labels = con.execute("select ts, fwd_ret_1h from labels where symbol = 'BTCUSDT' order by ts").df().set_index("ts")
    closes = con.execute("select close_time as ts, close from klines_1h where symbol = 'BTCUSDT' order by ts").df().set_index("ts")["close"]
    want = np.log(closes.reindex(closes.index + pd.Timedelta(hours=1)).to_numpy() / closes.to_numpy())
    np.testing.assert_allclose(labels["fwd_ret_1h"].to_numpy(dtype=float), want, rtol=1e-12, equal_nan=True)


def test_klines_views_never_show_a_bar_twice(tmp_path):
    """A minute row misplaced in another month's file is dropped (each file only speaks for its month);
    overlapping hourly shards (a rename in progress) keep the bar of the later file name."""
    cfg = make_config(tmp_path)
    feb1 = 1_706_745_600_000
    minutes = random_minutes("DUPUSDT", feb1 - 120 * MIN, 240, seed=6)  # Jan 31 22:00 .. Feb 1 02:00
    write_market(cfg, minutes)
    jan, feb = list_shards(cfg.market_dir, "1m")
    stray = pq.read_table(feb.path).slice(0, 5)  # February bars copied into the January file
    pq.write_table(pa.concat_tables([pq.read_table(jan.path), stray]), jan.path)
    hourly = list_shards(cfg.market_dir, "1h")[-1].path
    shutil.copy(hourly, hourly.with_name(hourly.name.replace("_20240201.parquet", "_20240131.parquet")))
    con = connect()
    create_views(con, cfg.sql_dir, r.params_from_config(cfg))
    assert con.execute("select count(*), count(distinct open_time) from klines_1m").fetchone() == (240, 240)
    n_hours = con.execute("select count(*), count(distinct open_time) from klines_1h").fetchone()
    assert n_hours[0] == n_hours[1] == 4


def test_a_key_the_minute_sql_duplicates_is_caught_by_the_sampled_blocks_and_the_cache(demo_market, tmp_path):
    """The live-layer uniqueness checks run on a sample of blocks only (build.BLOCK_CHECKS); a key
    the SQL duplicates still fails the build, from the sampled block and from the cached rows."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "sql", project / "sql")
    minute = project / "sql" / "features" / "minute" / "features_minute.sql"
    text = minute.read_text()
    assert text.rstrip().endswith("select * from final")
    minute.write_text(text.rstrip() + "\nunion all (select * from final order by ts desc limit 1)\n")
    shutil.copytree(demo_market.data_dir, project / "data")
    from mscale.config import load_config

    cfg = load_config(project_root=project)
    with pytest.raises(CheckFailedError) as err:
        build_features(cfg)
    failing = dict(line.strip().split(": ", 1) for line in str(err.value).splitlines()[1:])
    assert failing["chk_features_minute__unique_key"].startswith("2 offending rows")  # one per sampled block
    assert failing["chk_features__unique_key"].startswith("2 offending rows")  # over every cached row


def test_a_task_whose_connection_cannot_be_set_up_fails_with_the_one_line_naming_its_block(tmp_path):
    """A broken macros file fails the task as its queries would: one MscaleError naming the symbol
    and the block, not a raw DuckDB error."""
    from mscale.warehouse.executors import Block, build_block

    block = Block("BTCUSDT", "2024-Q1", "create or replace macro broken(x) as (x +;", ("select 1 as ts",), (24288,),
                  (str(tmp_path / "202401.parquet"),))
    with pytest.raises(MscaleError, match=r"^features BTCUSDT 2024-Q1: Parser Error"):
        build_block(block)
    assert not list(tmp_path.iterdir())


def test_mscale_features_does_not_import_pandas(demo_market, tmp_path):
    """Nothing `mscale features` runs needs pandas, and importing it costs about 0.3 s, a fifth of
    a 1-symbol build: DuckDB's Python parameters and Arrow tables made from Python values pull it
    in, so the build, its views, catalog and check results use neither. Run from a research
    folder with a feature of its own, whose checks run too."""
    folder = tmp_path / "research"
    (folder / "features" / "extra").mkdir(parents=True)
    (folder / "mscale.toml").write_text("# a research folder\n")
    (folder / "features" / "extra" / "feat_extra__mine.sql").write_text(
        "-- grain: (symbol, ts)\n-- reads: features_hourly\n-- purpose: a researcher's own feature\n"
        "select symbol, ts, rsi_14 / 100 as my_rsi_share from features_hourly\n")
    shutil.copytree(demo_market.data_dir, tmp_path / "data")
    code = (
        "import sys\n"
        "from mscale.cli import main\n"
        f"code = main(['features', '--data-dir', {str(tmp_path / 'data')!r}, '--warehouse', {str(tmp_path / 'w.duckdb')!r}])\n"
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'pandas')[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder, timeout=300)
    assert out.stdout.split("\n")[-2] == "0 []", out.stdout + out.stderr
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        assert con.execute("select count(my_rsi_share) from features").fetchone()[0] > 1000
    finally:
        con.close()
