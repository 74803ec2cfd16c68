"""The engine's input: predictions and prices validated and aligned into `Bars`.

Every check of the inputs lives here (one-line errors naming the value and what is allowed), so
the kernels can trust their arrays. Time: a row is a decision time ts (an hourly bar's close);
the probabilities and thresholds on it are known at ts, the fill prices come after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscale.backtest.costs import SPREAD_COLUMNS
from mscale.backtest.market import fill_columns
from mscale.names import is_fill_mode
from mscale.backtest.metrics import DAY_MS, HOUR_MS
from mscale.backtest.rules import THRESHOLD_DEFAULTS, Rules, check_thresholds
from mscale.errors import MscaleError

PROB_TOLERANCE = 1e-6
_NO_AUX = np.zeros(1)


@dataclass(frozen=True)
class Bars:
    """The engine's input: every token's decision rows end to end, sorted by (symbol, ts).

    Built by `prepare_bars`; arrays are aligned row by row. `has_next[i]` is True when row i + 1 is
    the same token one hour later; `first` / `is_last` mark each token's first and last row.
    """

    symbols: tuple[str, ...]  # sorted; `code` indexes it
    code: np.ndarray
    ts_ms: np.ndarray
    close: np.ndarray
    fills: dict[str, np.ndarray]  # fill mode -> price a change at the row is filled at (NaN: none)
    spreads: dict[str, np.ndarray]
    score: np.ndarray  # P(+1) - P(-1)
    aux: dict[str, np.ndarray]  # p_vol_high, p_volm_up when the predictions have them
    thresholds: dict[str, np.ndarray]  # per-row columns given with the predictions
    first: np.ndarray
    is_last: np.ndarray
    has_next: np.ndarray
    day: np.ndarray  # UTC day number of ts (a decision at 00:00 belongs to the day it opens)

    @property
    def n(self) -> int:
        return len(self.ts_ms)

    def aux_arrays(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(P(vol_high), P(volm_up), step) for the kernels: per-row arrays (step 1), or 1-value
        stand-ins (step 0) when the predictions have neither. A filter on a missing probability
        is refused before it reaches a kernel."""
        if not self.aux:
            return _NO_AUX, _NO_AUX, 0
        zeros = np.zeros(self.n)
        return self.aux.get("p_vol_high", zeros), self.aux.get("p_volm_up", zeros), 1

    def previous(self, pos: np.ndarray) -> np.ndarray:
        """The position held into each row: the row before's, 0 at a token's first row."""
        prev = np.empty_like(pos)
        prev[1:] = pos[:-1]
        prev[self.first] = 0
        return prev

    def slice(self, start: int, stop: int) -> "Bars":
        """Rows start..stop-1 as a backtest of their own (the first row starts flat, the last ends it)."""
        cut = {name: value[start:stop] for name, value in self.__dict__.items() if isinstance(value, np.ndarray)}
        first = cut["first"].copy()
        is_last = cut["is_last"].copy()
        has_next = cut["has_next"].copy()
        if stop > start:
            first[0] = True
            is_last[-1] = True
            has_next[-1] = False
        cut.update(first=first, is_last=is_last, has_next=has_next)
        return Bars(
            symbols=self.symbols,
            fills={k: v[start:stop] for k, v in self.fills.items()},
            aux={k: v[start:stop] for k, v in self.aux.items()},
            spreads={k: v[start:stop] for k, v in self.spreads.items()},
            thresholds={k: v[start:stop] for k, v in self.thresholds.items()},
            **cut,
        )


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _ts_ms(table: pa.Table, what: str) -> np.ndarray:
    """Decision times as epoch ms; each must sit exactly on an hour (in its own unit)."""
    column = table.column("ts")
    if not pa.types.is_timestamp(column.type):
        raise MscaleError(f"{what}.ts must be a timestamp column, got {column.type}")
    if column.null_count:
        raise MscaleError(f"{what}.ts has {column.null_count} NULL decision times; drop those rows")
    per_second = _PER_SECOND[column.type.unit]
    raw = column.cast(pa.int64()).to_numpy()
    off = np.flatnonzero(raw % (3600 * per_second))
    if len(off):
        i = int(off[0])
        stamp = np.datetime64(int(raw[i]), column.type.unit).astype(str).replace("T", " ")
        raise MscaleError(f"{what}: decision time {stamp}Z is not on the hour; ts is an hourly bar's close")
    return raw // per_second * 1000


def _float(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)


def _require(table: pa.Table, names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise MscaleError(f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}")


def _fmt(ms: int) -> str:
    return np.datetime64(int(ms), "ms").astype(str).replace("T", " ")[:16] + "Z"


def _group(table: pa.Table, what: str) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """(row order grouping symbols, or None when they already are; sorted unique symbols; symbol
    code per ordered row; ts_ms per ordered row). Checks that decision times strictly increase
    within each symbol and sit on the hour."""
    column = table.column("symbol")
    if column.null_count:
        raise MscaleError(f"{what}.symbol has {column.null_count} NULL values; every row needs its symbol")
    encoded = pc.dictionary_encode(column.cast(pa.string())).combine_chunks()
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    rank = np.argsort(names)
    symbols = names[rank].astype(str)
    code = np.argsort(rank)[encoded.indices.to_numpy()]
    ts = _ts_ms(table, what)
    order = None
    if np.any(code[1:] < code[:-1]):
        order = np.argsort(code, kind="stable")
        code, ts = code[order], ts[order]
    same = code[1:] == code[:-1]
    bad = np.flatnonzero(same & (ts[1:] <= ts[:-1]))
    if len(bad):
        i = int(bad[0]) + 1
        kind = "duplicate" if ts[i] == ts[i - 1] else "unsorted"
        raise MscaleError(
            f"{what}: {kind} decision time for {symbols[code[i]]} at {_fmt(ts[i])} (after {_fmt(ts[i - 1])}); "
            "give each (symbol, ts) once, in increasing ts"
        )
    return order, symbols, code, ts


def _check_probabilities(p: dict[str, np.ndarray], symbols, code, ts) -> None:
    for name, values in p.items():
        bad = np.flatnonzero(~np.isfinite(values) | (values < -PROB_TOLERANCE) | (values > 1 + PROB_TOLERANCE))
        if len(bad):
            i = int(bad[0])
            raise MscaleError(f"predictions.{name} is {float(values[i])!r} for {symbols[code[i]]} at {_fmt(ts[i])}: probabilities must be numbers in [0, 1]")


def prepare_bars(predictions: pa.Table, prices: pa.Table) -> Bars:
    """Validate and align predictions with prices into `Bars`.

    predictions: symbol, ts, p_up, p_down[, p_flat][, p_vol_high][, p_volm_up][, theta_long,
    theta_short, theta_vol, theta_volm] — the direction probabilities at ts must sum to 1.
    prices: symbol, ts, close[, fill_next_minute][, fill_twap_{N}m ...][, spread_cs_60m,
    spread_ar_60m] — the warehouse's `fills` view; every prediction needs its hourly bar.
    """
    _require(predictions, ("symbol", "ts", "p_up", "p_down"), "predictions")
    _require(prices, ("symbol", "ts", "close"), "prices")
    if predictions.num_rows == 0:
        raise MscaleError("predictions are empty: nothing to backtest")
    if prices.num_rows == 0:
        raise MscaleError("prices are empty: load the fills view over the predictions' symbols and hours")
    order, symbols, code, ts = _group(predictions, "predictions")
    pred = predictions if order is None else predictions.take(pa.array(order))

    direction = {name: _float(pred, name) for name in ("p_up", "p_down", "p_flat") if name in pred.column_names}
    aux = {name: _float(pred, name) for name in ("p_vol_high", "p_volm_up") if name in pred.column_names}
    _check_probabilities({**direction, **aux}, symbols, code, ts)
    total = sum(direction.values())
    bad = np.flatnonzero(np.abs(total - 1.0) > PROB_TOLERANCE)
    if len(bad):
        i = int(bad[0])
        raise MscaleError(
            f"direction probabilities ({' + '.join(direction)}) sum to {total[i]:.9g} for {symbols[code[i]]} at {_fmt(ts[i])}; "
            f"they must sum to 1 within {PROB_TOLERANCE:g}"
        )
    thresholds = {}
    for name in THRESHOLD_DEFAULTS:
        if name in pred.column_names:
            thresholds[name] = check_thresholds(name, _float(pred, name), f"predictions.{name}")

    p_order, p_symbols, p_code, p_ts = _group(prices, "prices")
    price = prices if p_order is None else prices.take(pa.array(p_order))
    # join on (symbol, ts): price rows of the predictions' symbols, keyed like the predictions
    sym_index = np.searchsorted(symbols, p_symbols)
    known = symbols[np.minimum(sym_index, len(symbols) - 1)] == p_symbols
    rows = np.flatnonzero(known[p_code])
    p_key = sym_index[p_code[rows]].astype(np.int64) * (1 << 40) + p_ts[rows] // HOUR_MS
    key = code.astype(np.int64) * (1 << 40) + ts // HOUR_MS
    at = np.searchsorted(p_key, key)
    found = np.zeros(len(key), bool)
    if len(p_key):
        found = (at < len(p_key)) & (p_key[np.minimum(at, len(p_key) - 1)] == key)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise MscaleError(f"no price (hourly bar) for {symbols[code[i]]} at {_fmt(ts[i])}; load prices covering every prediction")
    at = rows[at]

    def priced(name: str) -> np.ndarray:
        return _float(price, name)[at]

    close = priced("close")
    bad = np.flatnonzero(~np.isfinite(close) | (close <= 0))
    if len(bad):
        i = int(bad[0])
        raise MscaleError(f"close price {close[i]!r} for {symbols[code[i]]} at {_fmt(ts[i])} is not a positive number")
    fills = {"close": close}
    for mode, name in fill_columns(price.column_names).items():
        values = priced(name)
        if np.isfinite(values).any():  # an all-NULL column (no minute data) offers no fill
            fills[mode] = values
    spreads = {c: priced(c) for c in SPREAD_COLUMNS.values() if c in price.column_names}

    n = len(ts)
    first = np.ones(n, bool)
    first[1:] = code[1:] != code[:-1]
    is_last = np.ones(n, bool)
    is_last[:-1] = first[1:]
    has_next = np.zeros(n, bool)
    has_next[:-1] = ~is_last[:-1] & (ts[1:] - ts[:-1] == HOUR_MS)
    return Bars(
        symbols=tuple(str(s) for s in symbols),
        code=code,
        ts_ms=ts,
        close=close,
        fills=fills,
        spreads=spreads,
        score=direction["p_up"] - direction["p_down"],
        aux=aux,
        thresholds=thresholds,
        first=first,
        is_last=is_last,
        has_next=has_next,
        day=ts // DAY_MS,
    )


def fill_prices(bars: Bars, fill: str) -> np.ndarray:
    """Prices a change of position at each row is filled at, for fill mode `fill`."""
    if fill not in bars.fills:
        if not is_fill_mode(fill):
            raise MscaleError(f"unknown fill mode {fill!r}: use close, next_minute or twap_<N>m (these prices offer {', '.join(bars.fills)})")
        raise MscaleError(f"fill mode {fill!r} needs minute fill prices the prices lack; they offer {', '.join(bars.fills)}")
    return bars.fills[fill]


def threshold_arrays(bars: Bars, rules: Rules) -> tuple[dict[str, np.ndarray], int]:
    """Thresholds per row as 1-value arrays (step 0) or per-row arrays (step 1): a number in
    `rules` wins, then the predictions' column, then the default."""
    per_row = any(getattr(rules, name) is None and name in bars.thresholds for name in THRESHOLD_DEFAULTS)
    out = {}
    for name, default in THRESHOLD_DEFAULTS.items():
        value = getattr(rules, name)
        if value is not None:
            out[name] = np.full(bars.n if per_row else 1, float(value))
        elif name in bars.thresholds:
            out[name] = bars.thresholds[name]
        else:
            out[name] = np.full(bars.n if per_row else 1, default)
    for used, name, model in ((rules.use_vol, "p_vol_high", "vol_high"), (rules.use_volm, "p_volm_up", "volm_up")):
        if used and name not in bars.aux:
            raise MscaleError(f"filter {rules.filter!r} needs {name} in the predictions (the {model} model's probability)")
    return out, int(per_row)
