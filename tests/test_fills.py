"""The `fills` view (fill prices after ts, past-only spread estimates) and its loader, mscale.backtest.market."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import make_config, random_minutes, write_market
from mscale.backtest.market import fill_modes, load_prices
from mscale.errors import MscaleError
from mscale.resample import hours_from_minutes
from mscale.schema import klines_from_arrays
from mscale.store import write_klines
from mscale.warehouse import render as r
from mscale.warehouse.audit import audit
from mscale.warehouse.build import build_features, compute_features, connect, create_views

HOUR = 3_600_000
MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
TWAP_WINDOWS = (5, 15, 30, 60)
FILL_COLUMNS = ["fill_next_minute", *(f"fill_twap_{n}m" for n in TWAP_WINDOWS)]
SPREAD_COLUMNS = ["spread_cs_60m", "spread_ar_60m"]
COLUMNS = ["symbol", "ts", "close", "fill_next_minute", "next_minute_close_time",
           *(f"fill_twap_{n}m" for n in TWAP_WINDOWS), "fill_minutes_60m", *SPREAD_COLUMNS]


def _minutes(symbol: str, closes, *, drop=()) -> pa.Table:
    """Minute k opens at T0 + k min and closes at T0 + (k + 1) min with close closes[k]; `drop` removes minutes by k."""
    closes = np.asarray(closes, dtype=float)
    k = np.flatnonzero(~np.isin(np.arange(len(closes)), drop))
    c = closes[k]
    return klines_from_arrays(symbol, T0 + MIN * k, "1m", open=c, high=c + 0.5, low=c - 0.5, close=c, volume=np.ones(len(k)))


def _con(cfg) -> duckdb.DuckDBPyConnection:
    con = connect()
    con.execute("set threads = 1")  # exact comparisons below: one summation order
    create_views(con, cfg.sql_dir, r.params_from_config(cfg))
    return con


def _fills(cfg, minutes: pa.Table) -> pd.DataFrame:
    """The fills view over `minutes` (and the hourly bars made from them), indexed by ts in epoch ms."""
    write_market(cfg, minutes)
    con = _con(cfg)
    df = con.execute(
        "select *, epoch_ms(ts) as ts_ms, epoch_ms(next_minute_close_time) as next_ms from fills order by symbol, ts"
    ).to_arrow_table().to_pandas()
    con.close()
    return df.set_index("ts_ms")


# --- fill prices --------------------------------------------------------------------------------

def test_next_minute_is_the_first_minute_closing_after_ts(tmp_path):
    closes = 1000.0 + np.arange(180)  # minute k closes at T0 + (k + 1) min at 1000 + k
    ts = T0 + HOUR
    base = _fills(make_config(tmp_path / "base"), _minutes("FILLUSDT", closes))
    assert list(base.index) == [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]
    row = base.loc[ts]
    assert row["close"] == 1059  # the hourly close: the minute closing exactly at ts
    assert row["fill_next_minute"] == 1060 and row["next_ms"] == ts + MIN  # not 1059: that minute closed at ts
    assert row["fill_minutes_60m"] == 60

    late = _fills(make_config(tmp_path / "late"), _minutes("FILLUSDT", closes, drop=(60,))).loc[ts]
    assert late["fill_next_minute"] == 1061 and late["next_ms"] == ts + 2 * MIN  # the latency shows
    assert late["fill_minutes_60m"] == 59

    # no minute closes in (ts, ts + 60 min]: NULL fills, although the minute closing at ts exists
    empty = _fills(make_config(tmp_path / "empty"), _minutes("FILLUSDT", closes, drop=range(60, 120)))
    assert list(empty.index) == [T0 + HOUR, T0 + 3 * HOUR]
    for t in (ts, T0 + 3 * HOUR):  # the last bar of the data has nothing after it either
        row = empty.loc[t]
        assert row[FILL_COLUMNS].isna().all() and pd.isna(row["next_ms"]) and row["fill_minutes_60m"] == 0
        assert row["close"] == closes[(t - T0) // MIN - 1]


@pytest.mark.parametrize("n", TWAP_WINDOWS)
def test_twap_is_the_mean_of_exactly_the_minutes_in_the_window(tmp_path, n):
    closes = np.random.default_rng(n).uniform(90, 110, 180)
    drop = (60, 63, 70, 100)  # ts + 1, ts + 4, ts + 11 and ts + 41 min are missing
    fills = _fills(make_config(tmp_path), _minutes("TWAPUSDT", closes, drop=drop))
    ts = T0 + HOUR
    k = [k for k in range(60, 60 + n) if k not in drop]  # minute k closes at T0 + (k + 1) min: in (ts, ts + n]
    if n == 5:
        assert k == [61, 62, 64]
    assert fills.loc[ts, f"fill_twap_{n}m"] == pytest.approx(np.mean(closes[k]), rel=1e-12)
    assert fills.loc[ts, "fill_minutes_60m"] == 56
    full = T0 + 2 * HOUR
    assert fills.loc[full, f"fill_twap_{n}m"] == pytest.approx(np.mean(closes[120:120 + n]), rel=1e-12)


# --- spread estimates -----------------------------------------------------------------------------

# 6 hours of random minutes; minute k closes in the hour ending at ts = T0 + (k // 60 + 1) h.
# Pairs per ts (in hours after T0): 1: 3 minutes missing (54 pairs), 2: full (59), 3: only 31
# minutes (30 pairs: defined), 4: only 30 minutes (29 pairs: NULL), 5: every other minute
# (30 minutes, 0 pairs: NULL), 6: full (59)
SPREAD_DROP = np.r_[10, 11, 40, 151:180, 210:240, 241:300:2]
SPREAD_PAIRS = {1: 54, 2: 59, 3: 30, 4: 29, 5: 0, 6: 59}


def _spread_minutes() -> pa.Table:
    keep = ~np.isin(np.arange(360), SPREAD_DROP)
    return random_minutes("SPRDUSDT", T0, 360, seed=2, keep=keep)


def _expected_spreads(minutes: pa.Table, ts_ms: int) -> tuple[float | None, float | None, int]:
    """Both estimators from the formulas, in plain Python, over consecutive minute pairs in (ts - 60 min, ts]."""
    close_ms = minutes.column("close_time").cast(pa.int64()).to_pylist()
    h, lo, c = (minutes.column(x).to_pylist() for x in ("high", "low", "close"))
    k = 3 - 2 * math.sqrt(2)
    cs, ar = [], []
    for i in range(1, len(close_ms)):
        if not (ts_ms - HOUR < close_ms[i - 1] and close_ms[i] <= ts_ms and close_ms[i] - close_ms[i - 1] == MIN):
            continue
        beta = math.log(h[i] / lo[i]) ** 2 + math.log(h[i - 1] / lo[i - 1]) ** 2
        gamma = math.log(max(h[i], h[i - 1]) / min(lo[i], lo[i - 1])) ** 2
        alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
        cs.append(max(2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha)), 0.0))
        c_prev = math.log(c[i - 1])
        eta_prev, eta = (math.log(h[i - 1]) + math.log(lo[i - 1])) / 2, (math.log(h[i]) + math.log(lo[i])) / 2
        ar.append((c_prev - eta_prev) * (c_prev - eta))
    if len(cs) < 30:
        return None, None, len(cs)
    return sum(cs) / len(cs), math.sqrt(max(4 * sum(ar) / len(ar), 0.0)), len(cs)


def test_spreads_match_the_formulas_on_consecutive_minute_pairs(tmp_path):
    minutes = _spread_minutes()
    fills = _fills(make_config(tmp_path), minutes)
    assert list(fills.index) == [T0 + h * HOUR for h in range(1, 7)]
    ar_values = []
    for ts in fills.index:
        cs, ar, pairs = _expected_spreads(minutes, ts)
        assert pairs == SPREAD_PAIRS[(ts - T0) // HOUR]  # a pair across a missing minute or ts - 60 min is no pair
        got_cs, got_ar = fills.loc[ts, "spread_cs_60m"], fills.loc[ts, "spread_ar_60m"]
        if cs is None:
            assert pd.isna(got_cs) and pd.isna(got_ar), ts
            continue
        assert got_cs == pytest.approx(cs, rel=1e-9) and got_ar == pytest.approx(ar, rel=1e-9, abs=1e-15)
        assert 0 < cs < 0.01
        ar_values.append(ar)
    assert sum(a > 0 for a in ar_values) >= 2 and 0.0 in ar_values  # AR both defined and clipped at 0
    assert fills.loc[T0 + 4 * HOUR, "fill_minutes_60m"] == 30  # the minutes of ts = T0 + 5 h: 30, yet no pairs


def _poison(minutes: pa.Table, cut_ms: int, factor: float = 10.0) -> pa.Table:
    """Prices of the minutes closing after the cut multiplied by `factor`."""
    after = minutes.column("close_time").cast(pa.int64()).to_numpy() > cut_ms
    for name in ("open", "high", "low", "close"):
        i = minutes.schema.get_field_index(name)
        values = minutes.column(name).to_numpy()
        minutes = minutes.set_column(i, name, pa.array(np.where(after, values * factor, values)))
    return minutes


# A cut inside an hour matters: both estimators are scale-free, so a spread reading only minutes
# after ts would survive poisoning from an hour boundary unchanged; a window straddling the cut would not.
@pytest.mark.parametrize("cut", [T0 + HOUR, T0 + 2 * HOUR, T0 + 2 * HOUR + 17 * MIN, T0 + 4 * HOUR + 41 * MIN])
def test_spreads_are_past_only_and_fills_look_forward(tmp_path, cut):
    minutes = _spread_minutes()
    clean = _fills(make_config(tmp_path / "clean"), minutes)
    poisoned = _fills(make_config(tmp_path / "poisoned"), _poison(minutes, cut))
    assert list(clean.index) == list(poisoned.index)
    known = clean.index[clean.index <= cut]
    for col in ["close", *SPREAD_COLUMNS]:
        np.testing.assert_array_equal(poisoned.loc[known, col].to_numpy(), clean.loc[known, col].to_numpy(), err_msg=col)
    assert clean.loc[known, "spread_cs_60m"].notna().sum() >= 1
    # fills at ts read minutes up to ts + 60 min: untouched while that is at or before the cut ...
    early = clean.index[clean.index <= cut - HOUR]
    for col in [*FILL_COLUMNS, "next_ms", "fill_minutes_60m"]:
        np.testing.assert_array_equal(poisoned.loc[early, col].to_numpy(), clean.loc[early, col].to_numpy(), err_msg=col)
    # ... and changed at the last decision time before the cut: they look past ts by construction
    d = T0 + (cut - T0) // HOUR * HOUR
    if d == cut:
        for col in FILL_COLUMNS:
            assert poisoned.loc[d, col] == pytest.approx(10 * clean.loc[d, col], rel=1e-12), col
    else:  # the 60-minute TWAP window (d, d + 60 min] straddles the cut
        assert poisoned.loc[d, "fill_twap_60m"] != clean.loc[d, "fill_twap_60m"]


# --- not a feature ----------------------------------------------------------------------------------

def test_fills_is_neither_audited_nor_joined_into_the_features_mart(tmp_path):
    cfg = make_config(tmp_path)
    write_market(cfg, random_minutes("AUDUSDT", T0, 3 * 24 * 60, seed=2))
    assert "fills" not in r.FEATURE_LAYERS
    result = audit(cfg, cuts=1, seed=0)
    relations = {relation for relation, _ in result.columns}
    assert result.ok and "features" in relations and "fills" not in relations
    mart = compute_features(cfg.sql_dir, r.params_from_config(cfg))
    assert not set(COLUMNS[3:]) & set(mart.column_names)


# --- the loader ------------------------------------------------------------------------------------

@pytest.fixture
def two_symbols(tmp_path):
    cfg = make_config(tmp_path)
    write_market(cfg, pa.concat_tables([random_minutes("BBBUSDT", T0, 300, seed=1), random_minutes("AAAUSDT", T0, 240, seed=2)]))
    con = _con(cfg)
    yield con
    con.close()


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def test_load_prices_returns_sorted_utc_rows_and_filters(two_symbols):
    con = two_symbols
    con.execute("set TimeZone = 'Asia/Kolkata'")  # the loader's answer must not depend on it
    table = load_prices(con)
    assert table.column_names == COLUMNS
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("next_minute_close_time").type == pa.timestamp("us", tz="UTC")
    rows = list(zip(table.column("symbol").to_pylist(), table.column("ts").to_pylist()))
    assert rows == [("AAAUSDT", _utc(T0 + h * HOUR)) for h in range(1, 5)] + [("BBBUSDT", _utc(T0 + h * HOUR)) for h in range(1, 6)]
    assert fill_modes(table) == ["close", "next_minute", "twap_5m", "twap_15m", "twap_30m", "twap_60m"]

    one = load_prices(con, symbols=["BBBUSDT"], start=_utc(T0 + HOUR), end=_utc(T0 + 3 * HOUR))
    assert one.column("symbol").to_pylist() == ["BBBUSDT"] * 2
    assert one.column("ts").to_pylist() == [_utc(T0 + 2 * HOUR), _utc(T0 + 3 * HOUR)]  # start < ts <= end
    naive = load_prices(con, symbols="BBBUSDT", start=datetime(2024, 1, 1, 1), end=datetime(2024, 1, 1, 3))
    assert naive.equals(one)  # naive datetimes are UTC, not the session's zone
    both = load_prices(con, symbols=["AAAUSDT", "BBBUSDT"], end=_utc(T0 + HOUR))
    assert both.column("symbol").to_pylist() == ["AAAUSDT", "BBBUSDT"]
    none = load_prices(con, symbols=[])
    assert none.num_rows == 0 and none.column_names == COLUMNS


def test_load_prices_errors_are_one_line_and_say_what_to_do(two_symbols):
    with pytest.raises(MscaleError, match="invalid symbol"):
        load_prices(two_symbols, symbols=["BTC'; drop view fills; --"])
    with pytest.raises(MscaleError, match="must be a datetime"):
        load_prices(two_symbols, start="2024-01-01")
    con = duckdb.connect()
    with pytest.raises(MscaleError, match=r"no `fills` view .*run `mscale features` first") as e:
        load_prices(con)
    assert "\n" not in str(e.value)


def test_fill_modes_follow_the_columns():
    assert fill_modes(pa.table({"symbol": ["X"], "close": [1.0]})) == ["close"]
    schema = pa.schema([("close", pa.float64()), ("fill_twap_60m", pa.float64()), ("fill_twap_5m", pa.float64()),
                        ("fill_next_minute", pa.float64()), ("fill_minutes_60m", pa.int64())])
    assert fill_modes(schema) == ["close", "next_minute", "twap_5m", "twap_60m"]


# --- the build ----------------------------------------------------------------------------------------

def test_build_creates_fills_and_checks_its_key(tmp_path):
    cfg = make_config(tmp_path)
    write_market(cfg, random_minutes("BLDUSDT", T0, 6 * 60, seed=3))
    result = build_features(cfg)
    check = next(c for c in result.checks if c.name == "chk_fills__unique_key")
    assert check.failing_rows == 0
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        assert con.execute("select count(*) from fills").fetchone() == con.execute("select count(*) from klines_1h").fetchone() == (6,)
        prices = load_prices(con, symbols=["BLDUSDT"])
        assert prices.num_rows == 6 and prices.column("fill_next_minute").null_count == 1  # only the last hour
    finally:
        con.close()


def test_fills_work_with_hourly_shards_only(tmp_path):
    cfg = make_config(tmp_path)
    write_klines(cfg.market_dir, "1h", hours_from_minutes(random_minutes("HRSUSDT", T0, 5 * 60, seed=4)))
    result = build_features(cfg)
    assert all(c.failing_rows == 0 for c in result.checks)
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        prices = load_prices(con, end=_utc(T0) + timedelta(days=1))
    finally:
        con.close()
    assert prices.num_rows == 5 and prices.column("close").null_count == 0
    for col in [*FILL_COLUMNS, "next_minute_close_time", *SPREAD_COLUMNS]:
        assert prices.column(col).null_count == 5, col
    assert prices.column("fill_minutes_60m").to_pylist() == [0] * 5
