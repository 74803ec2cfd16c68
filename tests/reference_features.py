"""An independent numpy reference for the CONTRACT §5 core feature columns, and the comparison helper.

Written straight from the contract's definitions, one decision time at a time, with no SQL and
nothing from mscale.warehouse, so that a mistake in the warehouse shows up as a disagreement.

Values are returned as `Column(values, valid)`: `valid` False is SQL NULL; a valid NaN is a real
NaN (DuckDB's skewness() of a constant sample is NaN, not NULL, and the reference mirrors that).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MIN_MS = 60_000
HOUR_MS = 3_600_000

MINUTE_COLUMNS = (
    "m_n_60m",
    "m_ret_5m",
    "m_ret_15m",
    "m_ret_60m",
    "m_rv_15m",
    "m_rv_60m",
    "m_bpv_60m",
    "m_skew_15m",
    "m_kurt_15m",
    "m_skew_60m",
    "m_kurt_60m",
    "m_vol_sum_5m",
    "m_vol_mean_5m",
    "m_vol_sum_15m",
    "m_vol_mean_15m",
    "m_vol_sum_60m",
    "m_vol_mean_60m",
    "m_range_60m",
    "m_vwap_div_60m",
)
RECURSIVE_COLUMNS = ("rsi_14", "adx_14", "di_plus_14", "di_minus_14")
HOURLY_COLUMNS = RECURSIVE_COLUMNS + ("bb_width_20",)


@dataclass
class Column:
    values: np.ndarray  # float64; meaningless where not valid
    valid: np.ndarray  # bool; False = NULL


def _empty(n: int) -> Column:
    return Column(np.zeros(n), np.zeros(n, dtype=bool))


def _set(col: Column, i: int, value: float | None) -> None:
    if value is not None:
        col.values[i] = value
        col.valid[i] = True


# --- DuckDB's skewness() / kurtosis(), from their documented formulas --------------------------


def duckdb_skewness(x: np.ndarray) -> float | None:
    """Sample skewness with the n-adjustment: sqrt(n(n-1))/(n-2) * m3 / m2^1.5 (m_k central moments /n).

    NULL for n <= 2. For a constant sample DuckDB 1.5.6 returns NaN (0/0), not NULL.
    """
    n = len(x)
    if n <= 2:
        return None
    d = x - x.mean()
    m2 = np.mean(d * d)
    if np.all(x == x[0]):
        return float("nan")
    m3 = np.mean(d * d * d)
    return float(np.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5)


def duckdb_kurtosis(x: np.ndarray) -> float | None:
    """Excess kurtosis with the small-sample correction:
    (n-1) / ((n-2)(n-3)) * ((n+1) m4/m2^2 - 3(n-1)). NULL for n <= 3 or zero variance."""
    n = len(x)
    if n <= 3 or np.all(x == x[0]):
        return None
    d = x - x.mean()
    m2 = np.mean(d * d)
    m4 = np.mean(d**4)
    return float((n - 1) * ((n + 1) * m4 / (m2 * m2) - 3 * (n - 1)) / ((n - 2) * (n - 3)))


# --- inputs ----------------------------------------------------------------------------------------


def read_bars(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every shard under `folder`, per symbol (from the file name), sorted by open_time, as numpy arrays."""
    out: dict[str, list[pa.Table]] = {}
    for path in sorted(glob.glob(str(Path(folder) / "binance_*.parquet"))):
        symbol = Path(path).name.split("_")[1]
        out.setdefault(symbol, []).append(pq.read_table(path))
    bars = {}
    for symbol, tables in out.items():
        t = pa.concat_tables(tables, promote_options="default")
        ot = t.column("open_time").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
        order = np.argsort(ot, kind="stable")
        cols = {"open_time": ot[order]}
        for name in ("open", "high", "low", "close", "volume", "quote_volume"):
            cols[name] = t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)[order]
        assert np.all(np.diff(cols["open_time"]) > 0), f"{symbol}: repeated open_time in {folder}"
        bars[symbol] = cols
    return bars


# --- minute block --------------------------------------------------------------------------------


def minute_reference(minutes: dict[str, np.ndarray], ts_ms: np.ndarray) -> dict[str, Column]:
    """The §5 minute columns at each decision time in `ts_ms` (epoch ms), from one symbol's minutes.

    A window of w minutes at ts holds the bars with close_time in (ts - w min, ts]; an aggregate is
    NULL when its window holds fewer than half its bars (2 n < w); m_n_60m is never NULL.
    """
    close_time = minutes["open_time"] + MIN_MS
    close, high, low = minutes["close"], minutes["high"], minutes["low"]
    volume, quote_volume = minutes["volume"], minutes["quote_volume"]
    n_bars = len(close)
    r = np.full(n_bars, np.nan)  # NaN here = NULL: the first minute has no previous bar
    r[1:] = np.log(close[1:] / close[:-1])
    r_prev = np.full(n_bars, np.nan)
    r_prev[1:] = r[:-1]

    out = {name: _empty(len(ts_ms)) for name in MINUTE_COLUMNS}
    for k, ts in enumerate(ts_ms.tolist()):
        end = int(np.searchsorted(close_time, ts, side="right"))

        def window(w: int) -> slice | None:
            start = int(np.searchsorted(close_time, ts - w * MIN_MS, side="right"))
            return slice(start, end) if 2 * (end - start) >= w else None

        start60 = int(np.searchsorted(close_time, ts - 60 * MIN_MS, side="right"))
        _set(out["m_n_60m"], k, float(end - start60))

        for w in (5, 15, 60):
            s = window(w)
            if s is None:
                continue
            rr = r[s][~np.isnan(r[s])]
            if len(rr):
                _set(out[f"m_ret_{w}m"], k, float(np.sum(rr)))
                if w >= 15:
                    _set(out[f"m_rv_{w}m"], k, float(np.sqrt(np.sum(rr * rr))))
            if w >= 15:
                _set(out[f"m_skew_{w}m"], k, duckdb_skewness(rr))
                _set(out[f"m_kurt_{w}m"], k, duckdb_kurtosis(rr))
            _set(out[f"m_vol_sum_{w}m"], k, float(np.sum(volume[s])))
            _set(out[f"m_vol_mean_{w}m"], k, float(np.mean(volume[s])))

        s = window(60)
        if s is None:
            continue
        both = ~np.isnan(r[s]) & ~np.isnan(r_prev[s])
        if both.any():
            _set(out["m_bpv_60m"], k, float(np.pi / 2 * np.sum(np.abs(r[s][both]) * np.abs(r_prev[s][both]))))
        _set(out["m_range_60m"], k, float(np.log(np.max(high[s]) / np.min(low[s]))))
        total_volume = np.sum(volume[s])
        if total_volume != 0:
            vwap = np.sum(quote_volume[s]) / total_volume
            _set(out["m_vwap_div_60m"], k, float(np.log(close[s][-1] / vwap)))
    return out


# --- hourly block ----------------------------------------------------------------------------------


def _wilder(x: np.ndarray, first: int, n: int = 14) -> np.ndarray:
    """Wilder's smoothing of x[first:], NaN before it is defined: seed = mean of the first n values,
    then s = (s (n-1) + x) / n. NaN inputs (undefined values) are skipped."""
    out = np.full(len(x), np.nan)
    seen: list[float] = []
    s = np.nan
    for i in range(first, len(x)):
        if np.isnan(x[i]):
            continue
        if len(seen) < n:
            seen.append(x[i])
            if len(seen) == n:
                s = float(np.mean(seen))
                out[i] = s
        else:
            s = (s * (n - 1) + x[i]) / n
            out[i] = s
    return out


def hourly_reference(hours: dict[str, np.ndarray]) -> dict[str, Column]:
    """RSI(14), ADX(14), DI±(14) (Wilder, on the bars in order, gaps skipped) and the Bollinger width
    of the last 20 bars, at each hourly bar of one symbol (full recursion from the first bar).

    The first bar has no change; RSI and DI± start at the 15th bar (14 changes), ADX at the 28th
    (14 DX values), the Bollinger width at the 20th."""
    h, l, c = hours["high"], hours["low"], hours["close"]
    n = len(c)
    nan = np.full(n, np.nan)
    gain, loss, tr, dm_plus, dm_minus = nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy()
    for i in range(1, n):
        change = c[i] - c[i - 1]
        gain[i], loss[i] = max(change, 0.0), max(-change, 0.0)
        tr[i] = max(h[i] - l[i], abs(h[i] - c[i - 1]), abs(l[i] - c[i - 1]))
        up, down = h[i] - h[i - 1], l[i - 1] - l[i]
        dm_plus[i] = up if (up > down and up > 0) else 0.0
        dm_minus[i] = down if (down > up and down > 0) else 0.0

    avg_gain, avg_loss = _wilder(gain, 1), _wilder(loss, 1)
    atr, sm_plus, sm_minus = _wilder(tr, 1), _wilder(dm_plus, 1), _wilder(dm_minus, 1)
    out = {name: _empty(n) for name in HOURLY_COLUMNS}
    dx = nan.copy()
    for i in range(n):
        if not np.isnan(avg_gain[i]) and avg_gain[i] + avg_loss[i] != 0:
            _set(out["rsi_14"], i, 100 * avg_gain[i] / (avg_gain[i] + avg_loss[i]))
        if not np.isnan(atr[i]):
            # DX = 0 when it is 0/0 (no directional movement at all), as TA-Lib does
            dx[i] = 0.0
            if atr[i] != 0:
                di_p, di_m = 100 * sm_plus[i] / atr[i], 100 * sm_minus[i] / atr[i]
                _set(out["di_plus_14"], i, di_p)
                _set(out["di_minus_14"], i, di_m)
                if di_p + di_m != 0:
                    dx[i] = 100 * abs(di_p - di_m) / (di_p + di_m)
        if i >= 19:
            last = c[i - 19 : i + 1]
            _set(out["bb_width_20"], i, float((4 * np.std(last)) / np.mean(last)))
    adx = _wilder(dx, 0)
    for i in range(n):
        if not np.isnan(adx[i]):
            _set(out["adx_14"], i, float(adx[i]))
    return out


# --- comparison ------------------------------------------------------------------------------------


def from_arrow(column: pa.ChunkedArray) -> Column:
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    return Column(values, valid)


def compare(name: str, got: Column, want: Column, ts_ms: np.ndarray, *, rel: float, abs_floor: float = 1e-12) -> dict:
    """Assert equal NULL and NaN patterns and |got - want| <= max(rel |want|, abs_floor); return error stats."""

    def where(mask: np.ndarray) -> str:
        idx = np.flatnonzero(mask)[:5]
        stamps = [str(np.datetime64(int(ts_ms[i]), "ms")) for i in idx]
        return f"{mask.sum()} rows, first at {stamps}: got {got.values[idx].tolist()} valid={got.valid[idx].tolist()}, want {want.values[idx].tolist()} valid={want.valid[idx].tolist()}"

    bad = got.valid != want.valid
    assert not bad.any(), f"{name}: NULL pattern differs: {where(bad)}"
    both = got.valid
    bad = both & (np.isnan(got.values) != np.isnan(want.values))
    assert not bad.any(), f"{name}: NaN pattern differs: {where(bad)}"
    finite = both & ~np.isnan(want.values)
    g, w = got.values[finite], want.values[finite]
    err = np.abs(g - w)
    tol = np.maximum(rel * np.abs(w), abs_floor)
    bad_rows = np.zeros(len(ts_ms), dtype=bool)
    bad_rows[np.flatnonzero(finite)[err > tol]] = True
    assert not bad_rows.any(), f"{name}: values differ beyond rel {rel:g} / abs {abs_floor:g}: {where(bad_rows)}"
    nonzero = np.abs(w) > 0
    return {
        "column": name,
        "compared": int(finite.sum()),
        "null": int((~got.valid).sum()),
        "max_rel": float(np.max(err[nonzero] / np.abs(w[nonzero]))) if nonzero.any() else 0.0,
        "max_abs": float(np.max(err)) if len(err) else 0.0,
    }
