"""The `labels` view (CONTRACT §7, doc/labels.md): every column against a hand or numpy computation.

Tiny hourly series are written as shards and the real sql/ is built into an in-memory DuckDB.
Bar i opens at T0 + i h and closes at ts = T0 + (i + 1) h; a missing bar is NaN in the numpy arrays
and absent from the shards.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import REPO, make_config
from mscale.config import LabelSettings, load_config
from mscale.errors import MscaleError
from mscale.schema import klines_from_arrays
from mscale.store import write_klines
from mscale.warehouse import render as r
from mscale.warehouse.audit import POISON_FACTOR, _cut_tables, audit
from mscale.warehouse.build import connect, create_views

HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
COLUMNS = ["symbol", "ts", "fwd_ret_1h", "fwd_ret_4h", "fwd_ret_24h", "epsilon", "y_dir", "fwd_rv_24h",
           "volm_threshold", "y_volm_up", "y_range_exp", "y_big_move", "label_end"]
DEFAULTS = {f: getattr(LabelSettings, f) for f in LabelSettings.__dataclass_fields__}


# --- building series and the view ----------------------------------------------------------------

def bars(symbol: str, close, *, volume=None, high=None, low=None) -> pa.Table:
    """Hourly klines of bar i = 0..n-1 (open T0 + i h); bars whose close is NaN are left out."""
    close = np.asarray(close, dtype=float)
    n = len(close)
    volume = np.ones(n) if volume is None else np.asarray(volume, dtype=float)
    high = close if high is None else np.asarray(high, dtype=float)
    low = close if low is None else np.asarray(low, dtype=float)
    keep = ~np.isnan(close)
    open_ = np.r_[close[0], close[:-1]]
    return klines_from_arrays(
        symbol, (T0 + HOUR * np.arange(n, dtype=np.int64))[keep], "1h",
        open=np.nan_to_num(open_, nan=1.0)[keep], high=high[keep], low=low[keep], close=close[keep],
        volume=volume[keep], quote_volume=(volume * close)[keep],
    )


def random_market(n: int, *, seed: int, missing=()) -> dict[str, np.ndarray]:
    """A random walk of n hourly bars with highs, lows and volumes; `missing` bar indexes are NaN."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.standard_normal(n) * 4e-3 * (1 + (np.arange(n) % 24 < 6))))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.standard_normal(n)) * 2e-3)
    low = np.minimum(open_, close) * (1 - np.abs(rng.standard_normal(n)) * 2e-3)
    volume = rng.lognormal(3, 0.6, n) * (1 + (np.arange(n) % 24 == 13))
    market = {"close": close, "high": high, "low": low, "volume": volume}
    for a in market.values():
        a[list(missing)] = np.nan
    return market


def labels_of(tmp_path: Path, tables: list[pa.Table], **params) -> pd.DataFrame:
    """The labels view over `tables`, indexed by (symbol, bar index i); params override LabelSettings."""
    cfg = make_config(tmp_path)
    for t in tables:
        write_klines(cfg.market_dir, "1h", t)
    con = connect()
    create_views(con, cfg.sql_dir, r.params_from_config(cfg, minute_files=(), **params))  # hourly bars only
    df = con.execute("select * from labels order by symbol, ts").to_arrow_table().to_pandas()
    con.close()
    ts_ms = df["ts"].map(lambda t: int(t.timestamp() * 1000))
    df["i"] = (ts_ms - T0) // HOUR - 1
    return df.set_index(["symbol", "i"])


def one(df: pd.DataFrame, symbol: str) -> pd.DataFrame:
    return df.xs(symbol, level="symbol")


def values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats with NaN for NULL."""
    return frame[column].astype("Float64").to_numpy(dtype=float, na_value=np.nan)


# --- an independent numpy computation of every label -------------------------------------------

def reference(m: dict[str, np.ndarray], **params) -> pd.DataFrame:
    """Every label column from the definitions in doc/labels.md, one row per present bar."""
    p = {**DEFAULTS, **params}
    close, high, low, volume = m["close"], m["high"], m["low"], m["volume"]
    n = len(close)
    present = ~np.isnan(close)

    def ahead(a: np.ndarray, k: int) -> np.ndarray:
        return np.r_[a[k:], np.full(k, np.nan)]

    ret = np.r_[np.nan, np.log(close[1:] / close[:-1])]
    log_range = np.log(high / low)
    out = {f"fwd_ret_{h}h": np.log(ahead(close, h) / close) for h in p["horizons"]}
    sd = np.full(n, np.nan)
    for i in range(n):
        window = ret[max(0, i - p["epsilon_window"] + 1): i + 1]
        window = window[~np.isnan(window)]
        if 2 * len(window) >= p["epsilon_window"] and len(window) >= 2:
            sd[i] = np.std(window, ddof=1)
    out["epsilon"] = p["epsilon_vol_mult"] * math.sqrt(p["horizon"]) * sd
    fwd = out[f"fwd_ret_{p['horizon']}h"]
    with np.errstate(invalid="ignore"):
        y_dir = np.where(fwd > out["epsilon"], 1.0, np.where(fwd < -out["epsilon"], -1.0, 0.0))
    out["y_dir"] = np.where(np.isnan(fwd) | np.isnan(out["epsilon"]), np.nan, y_dir)
    wv = p["vol_window"]
    rv = np.full(n, np.nan)
    for i in range(n - wv):
        future = ret[i + 1: i + 1 + wv]
        if not np.isnan(future).any():
            rv[i] = math.sqrt(np.sum(future ** 2))
    out[f"fwd_rv_{wv}h"] = rv
    threshold = np.full(n, np.nan)
    for i in range(n - 1):
        j = i + 1
        same_hour = [j - 24 * k for k in range(1, p["volm_days"] + 1) if j - 24 * k >= 0]
        history = volume[same_hour][~np.isnan(volume[same_hour])]
        if present[j] and len(history) >= p["volm_min_days"]:
            threshold[i] = np.quantile(history, p["volm_quantile"], method="linear")
    out["volm_threshold"] = threshold
    next_volume = ahead(volume, 1)
    out["y_volm_up"] = np.where(np.isnan(threshold) | np.isnan(next_volume), np.nan, next_volume > threshold)
    range_mean = np.full(n, np.nan)
    for i in range(n):
        window = log_range[max(0, i - 23): i + 1]
        window = window[~np.isnan(window)]
        if len(window) >= 12:
            range_mean[i] = window.mean()
    next_range = ahead(log_range, 1)
    out["y_range_exp"] = np.where(np.isnan(range_mean) | np.isnan(next_range), np.nan,
                                  next_range > p["range_factor"] * range_mean)
    big = p["big_move_mult"] * math.sqrt(p["horizon"]) * sd
    out["y_big_move"] = np.where(np.isnan(fwd) | np.isnan(big), np.nan, np.abs(fwd) > big)
    return pd.DataFrame(out).loc[present]


def assert_matches(view: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(view.index) == list(want.index)
    for column in want.columns:
        got, expected = values(view, column), want[column].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{column}: NULLs differ")
        if column.startswith("y_"):
            np.testing.assert_array_equal(got, expected, err_msg=column)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0, equal_nan=True, err_msg=column)


# --- forward returns ------------------------------------------------------------------------------

def test_columns_grain_and_forward_returns_with_null_tails(tmp_path):
    close = 100.0 + np.arange(30)  # bar i closes at 100 + i
    df = labels_of(tmp_path, [bars("AAUSDT", close)])
    assert ["symbol", "ts", *df.columns.drop("ts")] == COLUMNS
    a = one(df, "AAUSDT")
    assert list(a.index) == list(range(30))  # one row per hourly bar
    assert a.loc[0, "fwd_ret_1h"] == pytest.approx(math.log(101 / 100), rel=1e-15)
    assert a.loc[0, "fwd_ret_4h"] == pytest.approx(math.log(104 / 100), rel=1e-15)
    assert a.loc[5, "fwd_ret_24h"] == pytest.approx(math.log(129 / 105), rel=1e-15)
    for h in (1, 4, 24):
        got = values(a, f"fwd_ret_{h}h")
        assert np.isnan(got[30 - h:]).all() and not np.isnan(got[:30 - h]).any()  # NULL past the data's end
        np.testing.assert_allclose(got[:30 - h], np.log(close[h:] / close[:-h]), rtol=1e-14)


def test_a_missing_bar_nulls_exactly_the_labels_that_reach_it(tmp_path):
    m = random_market(40, seed=1, missing=[10])
    df = one(labels_of(tmp_path, [bars("GAPUSDT", **m)], vol_window=3), "GAPUSDT")
    assert 10 not in df.index  # no row for the missing bar, and nothing filled
    fwd1, fwd4, rv = values(df, "fwd_ret_1h"), values(df, "fwd_ret_4h"), values(df, "fwd_rv_3h")
    i = {k: n for n, k in enumerate(df.index)}
    assert np.isnan(fwd1[i[9]]) and not np.isnan(fwd1[i[8]]) and not np.isnan(fwd1[i[11]])
    assert [k for k in df.index if k < 30 and np.isnan(fwd4[i[k]])] == [6]  # only ts + 4 h = bar 10
    # bar 10 is in (ts, ts + 3 h] for rows 7..9, and the return of bar 11 needs bar 10 (row 8..9)
    assert [k for k in df.index if k < 36 and np.isnan(rv[i[k]])] == [7, 8, 9]
    assert not np.isnan(fwd1[[i[7], i[8]]]).any()  # while their one-hour returns are fine
    assert_matches(df, reference(m, vol_window=3))


# --- the epsilon band and y_dir ---------------------------------------------------------------------

def test_epsilon_is_the_trailing_stddev_band_and_null_in_the_warm_up(tmp_path):
    m = random_market(300, seed=2, missing=[40, 41, 200])
    df = one(labels_of(tmp_path, [bars("EPSUSDT", **m)]), "EPSUSDT")
    eps = values(df, "epsilon")
    # returns exist from bar 1, but not for bars 40-42 (40 and 41 are missing): 84 returns at bar 87
    assert np.isnan(eps[df.index < 87]).all() and not np.isnan(eps[df.index >= 87]).any()
    r = np.r_[np.nan, np.diff(np.log(m["close"]))]
    window = r[250 - 167: 251]
    assert df.loc[250, "epsilon"] == pytest.approx(DEFAULTS["epsilon_vol_mult"] * np.nanstd(window, ddof=1), rel=1e-12)
    assert_matches(df, reference(m))


@pytest.mark.parametrize("mult", [0.25, 0.175])
def test_y_dir_just_inside_and_just_outside_the_band(tmp_path, mult):
    """Each forward return is set from the numpy epsilon of its row: +-eps (1 +- 1e-6) and 0."""
    window, warm = 24, 30
    rng = np.random.default_rng(3)
    close = list(100 * np.exp(np.cumsum(rng.standard_normal(warm) * 5e-3)))
    pattern = [(1 + 1e-6, 1), (1 - 1e-6, 0), (-(1 + 1e-6), -1), (-(1 - 1e-6), 0), (0.0, 0), (3.0, 1), (-0.5, 0)]
    expected = {}
    for k in range(3 * len(pattern)):
        i = len(close) - 1
        r = np.diff(np.log(close))[-window:]  # the returns of the bars closing in (ts - 24 h, ts]: i - 23 .. i
        eps = mult * np.std(r, ddof=1)
        factor, y = pattern[k % len(pattern)]
        close.append(close[-1] * math.exp(factor * eps))
        expected[i] = (y, eps)
    df = one(labels_of(tmp_path, [bars("DIRUSDT", np.array(close))], epsilon_window=window, epsilon_vol_mult=mult), "DIRUSDT")
    for i, (y, eps) in expected.items():
        assert df.loc[i, "epsilon"] == pytest.approx(eps, rel=1e-12)
        assert df.loc[i, "y_dir"] == y, (i, df.loc[i, "fwd_ret_1h"] / eps)
    assert pd.isna(df.loc[len(close) - 1, "y_dir"])  # no next bar


def test_ties_are_never_a_positive_label(tmp_path):
    """Flat prices, ranges and volumes: every return, log range and epsilon is exactly 0.0 and every
    volume threshold exactly 1.0, so every strict comparison is false; the last bar moves by 1e-12."""
    n = 24 * 22
    up = np.r_[np.full(n - 1, 50.0), 50.0 * (1 + 1e-12)]
    down = np.r_[np.full(n - 1, 50.0), 50.0 * (1 - 1e-12)]
    df = labels_of(tmp_path, [bars("UPUSDT", up), bars("DOWNUSDT", down)], epsilon_window=8)
    for symbol, sign in (("UPUSDT", 1), ("DOWNUSDT", -1)):
        d, last = one(df, symbol), n - 2
        flat = d.loc[4:last - 1]
        assert (flat["epsilon"] == 0.0).all() and (flat["fwd_ret_1h"] == 0.0).all()
        assert (flat["y_dir"] == 0).all() and (flat["y_big_move"] == 0).all()
        assert d.loc[:3, "y_dir"].isna().all() and d.loc[:3, "epsilon"].isna().all()  # fewer than 4 returns
        assert (d.loc[11:last, "y_range_exp"] == 0).all() and d.loc[:10, "y_range_exp"].isna().all()
        history = d.loc[24 * 20 - 1:last]  # the next bar has 20 same-hour bars before it from bar 480 on
        assert (history["volm_threshold"] == 1.0).all() and (history["y_volm_up"] == 0).all()
        assert d.loc[:24 * 20 - 2, "volm_threshold"].isna().all()
        assert d.loc[last, "epsilon"] == 0.0 and d.loc[last, "y_dir"] == sign  # any move beats a zero band
        assert d.loc[last, "y_big_move"] == 1


@pytest.mark.parametrize("direction", [1, -1])
def test_a_return_exactly_at_plus_or_minus_epsilon_is_flat(tmp_path, direction):
    """epsilon_vol_mult is tuned (to the last bit) so that epsilon equals |fwd_ret_1h| exactly at
    row 30: that row is 0; one ulp less of the multiplier and it is +-1."""
    rng = np.random.default_rng(4)
    close, i = 100 * np.exp(np.cumsum(rng.standard_normal(32) * 5e-3)), 30
    base = one(labels_of(tmp_path / "sd", [bars("EDGEUSDT", close)], epsilon_window=24, epsilon_vol_mult=1.0), "EDGEUSDT")
    sd = float(base.loc[i, "epsilon"])  # with a multiplier of 1, epsilon is the stddev itself (past-only: bar 31 is free)
    con = duckdb.connect()
    for step in range(200):  # a next close whose return some double multiplier of sd hits exactly
        close[i + 1] = close[i] * (1.003 + 1e-6 * step) ** direction
        ret = con.execute("select ln(?::double / ?::double)", [close[i + 1], close[i]]).fetchone()[0]
        mult = next((m for m in _neighbours(abs(ret) / sd) if m * sd == abs(ret)), None)
        if mult is not None:
            break
    assert mult is not None
    table = bars("EDGEUSDT", close)
    at = one(labels_of(tmp_path / "at", [table], epsilon_window=24, epsilon_vol_mult=float(mult)), "EDGEUSDT")
    assert at.loc[i, "fwd_ret_1h"] == ret and at.loc[i, "epsilon"] == abs(ret)  # bit for bit
    assert at.loc[i, "y_dir"] == 0
    below = float(np.nextafter(mult, 0))
    inside = one(labels_of(tmp_path / "below", [table], epsilon_window=24, epsilon_vol_mult=below), "EDGEUSDT")
    assert inside.loc[i, "epsilon"] < abs(ret) and inside.loc[i, "y_dir"] == direction


def _neighbours(x: float, k: int = 64) -> list[np.float64]:
    """x and the k doubles on either side of it, nearest first."""
    out, lo, hi = [np.float64(x)], np.float64(x), np.float64(x)
    for _ in range(k):
        lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)
        out += [lo, hi]
    return out


# --- forward volatility -----------------------------------------------------------------------------

def test_forward_realised_volatility_matches_numpy_and_needs_every_bar(tmp_path):
    m = random_market(120, seed=5, missing=[60])
    df = one(labels_of(tmp_path, [bars("RVUSDT", **m)]), "RVUSDT")
    r = np.r_[np.nan, np.diff(np.log(m["close"]))]
    assert df.loc[10, "fwd_rv_24h"] == pytest.approx(math.sqrt(np.sum(r[11:35] ** 2)), rel=1e-12)
    rv = values(df, "fwd_rv_24h")
    null_rows = [k for k, v in zip(df.index, rv) if np.isnan(v)]
    # bar 60 is missing: rows 36..59 need it (the window's returns need bars i .. i + 24); the last 24 run past the end
    assert null_rows == list(range(36, 60)) + list(range(96, 120))
    assert_matches(df, reference(m))


# --- same-hour volume ---------------------------------------------------------------------------------

def test_volume_threshold_is_the_quantile_of_exactly_the_right_thirty_bars(tmp_path):
    n = 24 * 40
    m = random_market(n, seed=6)
    i = 24 * 35 + 7  # the next bar is j = i + 1, at the same UTC hour as j - 24 k
    j = i + 1
    right = [j - 24 * k for k in range(1, 31)]
    # outliers just outside the window: the next bar itself, day 31, and the hour before each right bar
    m["volume"][[j, j - 24 * 31, *(b - 1 for b in right)]] = 1e6
    df = one(labels_of(tmp_path, [bars("VOLUSDT", **m)]), "VOLUSDT")
    want = np.quantile(m["volume"][right], 0.8, method="linear")
    assert want < 1e3 and df.loc[i, "volm_threshold"] == pytest.approx(want, rel=1e-13)
    assert df.loc[i, "y_volm_up"] == 1  # the bar at ts + 1 h against it
    assert df.loc[i - 1, "volm_threshold"] == 1e6 and df.loc[i - 1, "y_volm_up"] == 0  # its history is all outliers
    assert 0.1 < np.nanmean(values(df, "y_volm_up")) < 0.3
    assert_matches(df, reference(m))


@pytest.mark.parametrize("dropped, null", [(11, True), (10, False)])
def test_volume_threshold_needs_twenty_of_the_thirty_days(tmp_path, dropped, null):
    n = 24 * 33
    j = 24 * 32 + 5
    missing = [j - 24 * k for k in range(1, 31, 2)][:dropped]
    m = random_market(n, seed=7, missing=missing)
    df = one(labels_of(tmp_path, [bars("MINUSDT", **m)]), "MINUSDT")
    history = m["volume"][[j - 24 * k for k in range(1, 31)]]
    assert np.count_nonzero(~np.isnan(history)) == 30 - dropped
    if null:
        assert pd.isna(df.loc[j - 1, "volm_threshold"]) and pd.isna(df.loc[j - 1, "y_volm_up"])
    else:
        want = np.quantile(history[~np.isnan(history)], 0.8, method="linear")
        assert df.loc[j - 1, "volm_threshold"] == pytest.approx(want, rel=1e-13)
    assert_matches(df, reference(m))


def test_volume_threshold_and_y_volm_up_are_null_when_the_next_bar_is_missing(tmp_path):
    n = 24 * 33
    m = random_market(n, seed=8, missing=[24 * 32 + 5])
    df = one(labels_of(tmp_path, [bars("NXTUSDT", **m)]), "NXTUSDT")
    assert pd.isna(df.loc[24 * 32 + 4, "y_volm_up"]) and pd.notna(df.loc[24 * 32 + 3, "y_volm_up"])
    assert pd.isna(df.loc[n - 1, "y_volm_up"])


# --- range expansion and big moves -------------------------------------------------------------------

def test_range_expansion_and_big_moves_match_numpy(tmp_path):
    m = random_market(400, seed=9, missing=[100, 250, 251])
    m2 = random_market(400, seed=10)
    m2["high"][200] = m2["close"][200] * 1.05  # one wide bar: row 199 expands
    df = labels_of(tmp_path, [bars("RNGUSDT", **m), bars("BIGUSDT", **m2)])
    a, b = one(df, "RNGUSDT"), one(df, "BIGUSDT")
    assert b.loc[199, "y_range_exp"] == 1
    assert a.loc[:10, "y_range_exp"].isna().all() and a.loc[11:98, "y_range_exp"].notna().all()  # 12 bars
    assert pd.isna(a.loc[99, "y_range_exp"]) and pd.isna(a.loc[249, "y_range_exp"])  # the next bar is missing
    r_next = a.loc[150, "fwd_ret_1h"]
    assert a.loc[150, "y_big_move"] == int(abs(r_next) > 2.0 * a.loc[150, "epsilon"] / DEFAULTS["epsilon_vol_mult"])
    for frame, market in ((a, m), (b, m2)):
        assert_matches(frame, reference(market))
        shares = values(frame, "y_big_move")
        assert 0 < np.nanmean(shares) < 0.2 and 0 < np.nanmean(values(frame, "y_range_exp")) < 0.5


def test_other_settings_reach_the_view(tmp_path):
    m = random_market(24 * 12, seed=11, missing=[77])
    params = dict(horizons=(2, 1, 6), horizon=2, epsilon_vol_mult=0.3, epsilon_window=48, vol_window=12,
                  volm_quantile=0.5, volm_days=7, volm_min_days=5, range_factor=1.2, big_move_mult=1.5)
    df = one(labels_of(tmp_path, [bars("SETUSDT", **m)], **params), "SETUSDT")
    assert list(df.columns) == ["ts", "fwd_ret_1h", "fwd_ret_2h", "fwd_ret_6h", "epsilon", "y_dir", "fwd_rv_12h",
                                "volm_threshold", "y_volm_up", "y_range_exp", "y_big_move", "label_end"]
    assert_matches(df, reference(m, **params))
    assert (df["label_end"] - df["ts"] == pd.Timedelta(hours=12)).all()


# --- label_end --------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, hours", [({}, 24), ({"horizons": (1, 4), "vol_window": 6}, 6),
                                           ({"horizons": (1, 48)}, 48), ({"horizons": (1,), "vol_window": 1}, 1)])
def test_label_end_is_ts_plus_the_longest_horizon(tmp_path, params, hours):
    m = random_market(60, seed=12, missing=[30])
    df = one(labels_of(tmp_path, [bars("ENDUSDT", **m)], **params), "ENDUSDT")
    assert df["label_end"].notna().all() and str(df["label_end"].dtype).startswith("datetime64")
    assert (df["label_end"] - df["ts"] == pd.Timedelta(hours=hours)).all()
    assert df.loc[0, "label_end"] == pd.Timestamp(T0 + (1 + hours) * HOUR, unit="ms", tz="UTC")


# --- direction of time ------------------------------------------------------------------------------

def _poisoned_and_truncated(tmp_path: Path, m: dict, cut: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    table = bars("LEAKUSDT", **m)
    cut_ms = T0 + (cut + 1) * HOUR  # the close of bar `cut`
    return tuple(
        one(labels_of(tmp_path / name, [t]), "LEAKUSDT")
        for name, t in (("original", table), ("poisoned", _cut_tables(table, cut_ms, "poisoned")),
                        ("truncated", _cut_tables(table, cut_ms, "truncated")))
    )


@settings(max_examples=6, deadline=None, phases=(Phase.generate,), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), cut=st.integers(24 * 31, 24 * 38))
def test_past_only_thresholds_do_not_see_bars_after_ts(tmp_path_factory, seed, cut):
    """Poisoning (x10 prices and volumes) or dropping every bar after the cut leaves epsilon at
    ts <= cut and volm_threshold at ts < cut unchanged, while the forward return at the cut moves."""
    m = random_market(24 * 40, seed=seed, missing=[seed % 700 + 30])
    original, poisoned, truncated = _poisoned_and_truncated(tmp_path_factory.mktemp("leak"), m, cut)
    upto = original.index[original.index <= cut]
    for other in (poisoned, truncated):
        pd.testing.assert_series_equal(original.loc[upto, "epsilon"], other.loc[upto, "epsilon"])
    before = original.index[original.index < cut]  # the row at the cut needs the next bar to exist
    pd.testing.assert_series_equal(original.loc[before, "volm_threshold"], poisoned.loc[before, "volm_threshold"])
    pd.testing.assert_series_equal(original.loc[before, "volm_threshold"], truncated.loc[before, "volm_threshold"])
    # labels do look forward: the return from the cut to the next (poisoned) bar grows by ln 10
    if cut + 1 in original.index and cut in original.index:
        assert original.loc[cut, "volm_threshold"] == poisoned.loc[cut, "volm_threshold"]
        assert poisoned.loc[cut, "fwd_ret_1h"] == pytest.approx(original.loc[cut, "fwd_ret_1h"] + math.log(POISON_FACTOR))
        assert pd.isna(truncated.loc[cut, "fwd_ret_1h"])


def test_the_audit_never_treats_labels_as_a_feature(tmp_path):
    cfg = make_config(tmp_path)
    write_klines(cfg.market_dir, "1h", bars("AUDUSDT", **random_market(24 * 40, seed=13)))
    result = audit(cfg, cuts=1, seed=1)
    assert result.ok and result.columns
    assert {rel for rel, _ in result.columns} & {"labels", "fills"} == set()
    assert not any(column.startswith(("fwd_", "y_")) or column == "label_end" for _, column in result.columns)


# --- settings -----------------------------------------------------------------------------------------

def test_labels_section_of_mscale_toml(tmp_path):
    (tmp_path / "mscale.toml").write_text("[labels]\nhorizons = [1, 12]\nhorizon = 12\nepsilon_vol_mult = 0.3\n")
    cfg = load_config(project_root=tmp_path)
    assert cfg.labels == LabelSettings(horizons=(1, 12), horizon=12, epsilon_vol_mult=0.3)
    params = r.params_from_config(cfg)
    assert (params.horizons, params.horizon, params.epsilon_vol_mult, params.vol_window) == ((1, 12), 12, 0.3, 24)
    assert r.sql_fingerprint(REPO / "sql", params) == r.sql_fingerprint(REPO / "sql", r.RenderParams())  # not cached


@pytest.mark.parametrize("text, message", [
    ("horizon = 2", "horizon must be one of horizons"),
    ("horizons = []", "horizons must be a non-empty list"),
    ("horizons = [0, 1]", "horizons must be a whole number >= 1"),
    ("epsilon_vol_mult = 0", "epsilon_vol_mult must be a positive number"),
    ("epsilon_window = 1", "epsilon_window must be a whole number >= 2"),
    ("volm_quantile = 1.5", "volm_quantile must be a number in"),
    ("volm_min_days = 40", "volm_min_days \\(40\\) must be <= volm_days"),
    ("range_factor = -1", "range_factor must be a positive number"),
    ("vol_window = 2.5", "vol_window must be a whole number"),
    ("epsilon = 0.1", "unknown keys"),
])
def test_bad_label_settings_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "mscale.toml").write_text(f"[labels]\n{text}\n")
    with pytest.raises(MscaleError, match=message) as e:
        load_config(project_root=tmp_path)
    assert "\n" not in str(e.value)


def test_render_params_validate_the_label_settings_too():
    with pytest.raises(MscaleError, match="horizon must be one of"):
        r.RenderParams(horizons=(4, 24)).context()
    with pytest.raises(MscaleError, match="big_move_mult"):
        r.RenderParams(big_move_mult=float("nan")).context()
    assert r.RenderParams(horizons=(24, 1, 4, 4)).context()["horizons"] == [1, 4, 24]
    assert r.sql_float(0.175) == "0.175e0" and r.sql_float(1e-7) == "1e-07"
    assert duckdb.sql(f"select {r.sql_float(0.1)} = 0.1::double, typeof({r.sql_float(0.175)})").fetchone() == (True, "DOUBLE")
