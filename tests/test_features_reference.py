"""The `features` mart's CONTRACT §5 core columns against an independent numpy computation.

The reference (tests/reference_features.py) follows the contract's words one decision time at a
time; here the real sql/ is rendered and built over Parquet shards in a temporary data dir and
every core column is compared: equal NULL/NaN patterns, values to 1e-9 relative (absolute floor
1e-12), the recursive Wilder indicators to 1e-6 relative after 300 hourly bars of warm-up.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_config
from mscale.resample import hours_from_minutes
from mscale.schema import klines_from_arrays
from mscale.store import write_klines
from mscale.warehouse.build import compute_features
from mscale.warehouse.render import params_from_config
from reference_features import (
    HOURLY_COLUMNS,
    MIN_MS,
    MINUTE_COLUMNS,
    RECURSIVE_COLUMNS,
    Column,
    compare,
    from_arrow,
    hourly_reference,
    minute_reference,
    read_bars,
)

HOUR_MS = 3_600_000
WARMUP_BARS = 300
SYMBOL = "TESTUSDT"


def _ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


# --- building the mart ---------------------------------------------------------------------------


def _mart(cfg) -> pa.Table:
    return compute_features(cfg.sql_dir, params_from_config(cfg))


def _ts_ms(table: pa.Table) -> np.ndarray:
    return table.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()


def _check_market(cfg, mart: pa.Table, *, columns=MINUTE_COLUMNS + HOURLY_COLUMNS) -> list[dict]:
    """Compare every requested core column of `mart` with the reference computed from the shards."""
    minutes = read_bars(cfg.minute_dir)
    hours = read_bars(cfg.hourly_dir)
    stats = []
    symbols = mart.column("symbol").to_pylist()
    assert sorted(set(symbols)) == sorted(hours), "one mart row per hourly bar of every symbol"
    for symbol, bars in sorted(hours.items()):
        rows = mart.filter(pc.equal(mart.column("symbol"), symbol))
        ts = _ts_ms(rows)
        # one row per klines_1h row, at ts = open_time + 1 h, in order
        np.testing.assert_array_equal(ts, bars["open_time"] + HOUR_MS)
        minute_cols = [c for c in columns if c in MINUTE_COLUMNS]
        hourly_cols = [c for c in columns if c in HOURLY_COLUMNS]
        want = {}
        if minute_cols:
            assert symbol in minutes, f"{symbol}: hourly bars without any minute shard"
            want.update(minute_reference(minutes[symbol], ts))
        if hourly_cols:
            want.update(hourly_reference(bars))
        for name in minute_cols:
            stats.append({"symbol": symbol, **compare(name, from_arrow(rows.column(name)), want[name], ts, rel=1e-9)})
        for name in hourly_cols:
            got, ref, at = from_arrow(rows.column(name)), want[name], ts
            if name in RECURSIVE_COLUMNS:
                keep = slice(WARMUP_BARS, None)
                got = Column(got.values[keep], got.valid[keep])
                ref = Column(ref.values[keep], ref.valid[keep])
                at = ts[keep]
                assert len(at) > 0, f"{symbol}: no hourly bars after the {WARMUP_BARS}-bar warm-up"
                stats.append({"symbol": symbol, **compare(name, got, ref, at, rel=1e-6)})
            else:
                stats.append({"symbol": symbol, **compare(name, got, ref, at, rel=1e-9)})
    return stats


def _print_stats(title: str, stats: list[dict]) -> None:
    worst: dict[str, dict] = {}
    for s in stats:
        w = worst.setdefault(s["column"], {"compared": 0, "null": 0, "max_rel": 0.0, "max_abs": 0.0})
        w["compared"] += s["compared"]
        w["null"] += s["null"]
        w["max_rel"] = max(w["max_rel"], s["max_rel"])
        w["max_abs"] = max(w["max_abs"], s["max_abs"])
    print(f"\n{title}")
    for name, w in worst.items():
        print(f"  {name:16s} compared={w['compared']:6d} null={w['null']:5d} max_rel={w['max_rel']:.3g} max_abs={w['max_abs']:.3g}")


# --- hand-made gapped market ----------------------------------------------------------------------


def _random_walk_minutes(
    rng: np.random.Generator,
    start_ms: int,
    n: int,
    *,
    keep: np.ndarray | None = None,
    zero_volume: np.ndarray | None = None,
    flat: np.ndarray | None = None,
    sigma: float | np.ndarray = 1e-3,
) -> pa.Table:
    """A random-walk minute series on the UTC minute grid from `start_ms`; `keep` drops minutes (absent
    rows); `flat` minutes are flat bars at the previous close (zero return), `zero_volume` minutes are
    flat too and trade nothing (volume 0), like a quiet minute on Binance."""
    r = rng.normal(0.0, 1.0, n) * sigma
    flat = np.zeros(n, dtype=bool) if flat is None else flat.copy()
    if zero_volume is not None:
        flat |= zero_volume
    r[flat] = 0.0
    close = 100.0 * np.exp(np.cumsum(r))
    open_ = np.empty(n)
    open_[0] = 100.0
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0.0, 1.0, (2, n))) * sigma / 2
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = rng.lognormal(2.0, 0.7, n)
    vwap = low * (high / low) ** rng.uniform(0.1, 0.9, n)
    high[flat] = low[flat] = close[flat]
    vwap[flat] = close[flat]
    if zero_volume is not None:
        volume[zero_volume] = 0.0
    keep = np.ones(n, dtype=bool) if keep is None else keep
    return klines_from_arrays(
        SYMBOL,
        start_ms + MIN_MS * np.arange(n, dtype=np.int64)[keep],
        "1m",
        open=open_[keep],
        high=high[keep],
        low=low[keep],
        close=close[keep],
        volume=volume[keep],
        quote_volume=(volume * vwap)[keep],
        trades=np.where(volume > 0, 5, 0)[keep],
        taker_buy_base=(volume / 2)[keep],
        taker_buy_quote=(volume * vwap / 2)[keep],
    )


def _write(cfg, minutes: pa.Table, hours: pa.Table | None = None) -> None:
    write_klines(cfg.market_dir, "1m", minutes)
    write_klines(cfg.market_dir, "1h", hours_from_minutes(minutes) if hours is None else hours)


GAPPED_START = _ms(2024, 1, 22)  # 20 days: crosses 2024-02-01, 480 hourly grid slots
GAPPED_HOURS = 480


def _gapped_minutes(*, zero_volume_stretch: bool) -> pa.Table:
    rng = np.random.default_rng(20240201)
    n = GAPPED_HOURS * 60
    keep = rng.random(n) >= 0.01  # ~1% single missing minutes
    keep[:3] = True

    def at(day: int, hour: int, minute: int = 0) -> int:  # minute index of a January (day >= 22) or February time
        return int((_ms(2024, 1 if day >= 22 else 2, day, hour, minute) - GAPPED_START) // MIN_MS)

    keep[at(23, 5, 30) : at(23, 5, 30) + 25] = False  # a 25-minute run: 60m window still covered, 5/15m not
    keep[at(24, 9, 50) : at(24, 9, 50) + 40] = False  # a 40-minute run across an hour boundary
    keep[at(25, 14) : at(25, 15)] = False  # a whole hour: minutes and (so) the hourly bar absent
    keep[at(27, 3) : at(27, 4)] = np.arange(60) < 31  # exactly 31 bars left: 60m covered at the edge (2 n >= w)
    keep[at(27, 7) : at(27, 8)] = np.arange(60) < 29  # exactly 29 bars left: 60m NULL
    keep[at(31, 23, 58) : at(1, 0, 2)] = False  # around the month boundary: the previous bar is in the January shard
    flat = np.zeros(n, dtype=bool)
    flat[at(29, 10, 40) : at(29, 12, 10)] = True  # 90 flat minutes: one whole hour of zero returns
    if zero_volume_stretch:
        return _random_walk_minutes(rng, GAPPED_START, n, keep=keep, zero_volume=flat)
    return _random_walk_minutes(rng, GAPPED_START, n, keep=keep, flat=flat)


GAPPED_VARIANTS = [
    pytest.param("gaps", id="gaps"),
    pytest.param("gaps_and_zero_volume", id="gaps_and_zero_volume"),
]


@pytest.fixture(scope="module")
def gapped_market(tmp_path_factory):
    """variant -> (cfg, mart), each written and built once; building happens inside the test, so a
    failing build is that test's failure."""
    built: dict[str, tuple] = {}

    def get(variant: str):
        if variant not in built:
            cfg = make_config(tmp_path_factory.mktemp(variant))
            _write(cfg, _gapped_minutes(zero_volume_stretch=variant == "gaps_and_zero_volume"))
            built[variant] = (cfg, _mart(cfg))
        return built[variant]

    return get


@pytest.fixture(scope="module")
def demo_mart(demo_market):
    return _mart(demo_market)


# --- tests -------------------------------------------------------------------------------------------


def test_demo_market_core_columns_match_reference(demo_market, demo_mart):
    stats = _check_market(demo_market, demo_mart)
    _print_stats("demo market: max errors per column", stats)


@pytest.mark.parametrize("variant", GAPPED_VARIANTS)
def test_gapped_market_core_columns_match_reference(gapped_market, variant):
    cfg, mart = gapped_market(variant)
    stats = _check_market(cfg, mart)
    _print_stats(f"gapped market ({variant}): max errors per column", stats)


@pytest.mark.parametrize("variant", GAPPED_VARIANTS)
def test_gapped_market_exercises_the_edge_cases(gapped_market, variant):
    """The hand-made gaps really produce the situations the comparison is meant to cover."""
    cfg, mart = gapped_market(variant)
    ts = _ts_ms(mart)
    assert len(ts) == GAPPED_HOURS - 1  # one whole hour absent
    assert (np.diff(ts) == 2 * HOUR_MS).sum() == 1
    assert len(ts) - WARMUP_BARS >= 100  # recursive indicators compared on >= 100 rows
    col = {name: from_arrow(mart.column(name)) for name in MINUTE_COLUMNS}
    n60 = col["m_n_60m"].values
    assert not col["m_ret_5m"].valid.all() and not col["m_ret_15m"].valid.all()  # 5/15m coverage NULLs
    assert ((n60 == 31) & col["m_ret_60m"].valid).any()  # 2 n >= w at the edge: covered
    assert ((n60 == 29) & ~col["m_ret_60m"].valid).any()  # 2 n < w: NULL
    flat_hour = col["m_range_60m"].valid & (col["m_range_60m"].values == 0)
    assert flat_hour.sum() == 1
    # skewness/kurtosis of a constant sample have no value (DuckDB: NaN / NULL; the comparison pins which)
    skew = col["m_skew_60m"]
    assert not (skew.valid & np.isfinite(skew.values))[flat_hour].any()
    assert not col["m_kurt_60m"].valid[flat_hour].any()
    if variant == "gaps_and_zero_volume":
        assert not col["m_vwap_div_60m"].valid[flat_hour].any() and col["m_vol_sum_60m"].values[flat_hour] == 0


def test_recursive_indicators_start_at_the_standard_bar(gapped_market):
    """Warm-up: RSI and DI± are NULL until the 15th hourly bar (14 changes), ADX until the 28th
    (14 DX values), the Bollinger width until the 20th; defined on every later bar."""
    cfg, mart = gapped_market("gaps")
    first = {"rsi_14": 14, "di_plus_14": 14, "di_minus_14": 14, "adx_14": 27, "bb_width_20": 19}
    for name, k in first.items():
        valid = from_arrow(mart.column(name)).valid
        assert not valid[:k].any() and valid[k:].all(), f"{name}: first non-NULL at bar {np.argmax(valid) + 1}, want {k + 1}"


def test_recursive_indicators_after_a_volatility_regime_change(tmp_path):
    """A truncated Wilder recursion errs by (13/14)^(K - 14) times its seed's distance from the true
    value; after a volatile month turns calm that distance is many times the (now small) value, so
    this is where too short a truncation shows. Contract: 1e-6 relative after 300 bars."""
    cfg = make_config(tmp_path)
    hours = 640
    sigma = np.repeat(np.where(np.arange(hours) < 340, 3e-3, 1e-4), 60)  # 30x calmer from bar 341 on
    _write(cfg, _random_walk_minutes(np.random.default_rng(17), _ms(2024, 4, 1), hours * 60, sigma=sigma))
    stats = _check_market(cfg, _mart(cfg), columns=RECURSIVE_COLUMNS)
    _print_stats("volatility regime change: max errors per column", stats)


def test_hourly_bar_without_minutes_has_zero_minute_count(tmp_path):
    """An hourly bar whose minutes are all missing: m_n_60m is 0 (CONTRACT §5: the number of minute bars
    in W_60), every other minute aggregate NULL."""
    cfg = make_config(tmp_path)
    rng = np.random.default_rng(5)
    full = _random_walk_minutes(rng, _ms(2024, 3, 1), 4 * 60)
    keep = np.ones(4 * 60, dtype=bool)
    keep[120:180] = False  # the third hour's minutes are lost, its hourly bar is not
    _write(cfg, full.filter(pa.array(keep)), hours=hours_from_minutes(full))
    mart = _mart(cfg)
    assert mart.num_rows == 4
    row = mart.slice(2, 1).to_pylist()[0]
    assert all(row[c] is None for c in MINUTE_COLUMNS if c != "m_n_60m")
    assert row["m_n_60m"] == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    start_minute=st.integers(0, 59),
    drop_p=st.sampled_from([0.0, 0.05, 0.3, 0.6]),
    runs=st.lists(st.tuples(st.integers(0, 299), st.integers(1, 70)), max_size=3),
    flat=st.one_of(st.none(), st.tuples(st.integers(0, 299), st.integers(1, 40))),
)
def test_random_gaps_minute_columns_match_reference(seed, start_minute, drop_p, runs, flat):
    """Whatever minutes are missing (and wherever a flat stretch of zero returns is), every core minute
    column equals the reference at every decision time; on odd seeds the flat stretch also has zero
    volume, as in an exchange halt."""
    n = 300
    rng = np.random.default_rng(seed)
    keep = rng.random(n) >= drop_p
    for a, length in runs:
        keep[a : a + length] = False
    if not keep.any():
        keep[rng.integers(n)] = True
    flat_mask = np.zeros(n, dtype=bool)
    if flat is not None:
        flat_mask[flat[0] : flat[0] + flat[1]] = True
    start = _ms(2024, 2, 29, 22) + start_minute * MIN_MS  # 5 hours across the Feb/Mar month boundary
    halt = flat_mask if seed % 2 else np.zeros(n, dtype=bool)
    minutes = _random_walk_minutes(rng, start, n, keep=keep, flat=flat_mask & ~halt, zero_volume=halt)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(Path(tmp))
        _write(cfg, minutes)
        _check_market(cfg, _mart(cfg), columns=MINUTE_COLUMNS)
