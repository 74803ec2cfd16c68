"""`run_backtest`: predictions and prices in, per-bar PnL, trades, metrics and the pooled portfolio out.

The timing (CONTRACT §3, §9; doc/backtest.md): the position decided at decision time ts comes from
the probabilities at ts only and is held over (ts, ts + 1 h]; it earns close(ts) -> close(ts + 1 h),
or from its fill price when it changed at ts. A row whose next hour is missing is closed at its own
close, so nothing is earned across a gap. Costs are charged on every change of position.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscale.backtest import kernels, metrics
from mscale.backtest.costs import SPREAD_COLUMNS, parse_fees, slippage_rates
from mscale.backtest.portfolio import equal_weight
from mscale.backtest.rules import Rules
from mscale.errors import MscaleError

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
PROB_TOLERANCE = 1e-6
TS_TYPE = pa.timestamp("us", tz="UTC")
_TWAP = re.compile(r"^twap_(\d+)m$")
_NO_AUX = np.zeros(1)
_THRESHOLD_DEFAULTS = {"theta_long": 0.0, "theta_short": 0.0, "theta_vol": 0.5, "theta_volm": 0.5}


# --- inputs ------------------------------------------------------------------------------------


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

    def fill_modes(self) -> list[str]:
        return list(self.fills)

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


def _ts_ms(table: pa.Table, what: str) -> np.ndarray:
    column = table.column("ts")
    if not pa.types.is_timestamp(column.type):
        raise MscaleError(f"{what}.ts must be a timestamp column, got {column.type}")
    if column.null_count:
        raise MscaleError(f"{what}.ts has {column.null_count} NULL decision times; drop those rows")
    unit = pa.timestamp("ms", tz=column.type.tz or "UTC")
    return pc.cast(column, unit).cast(pa.int64()).to_numpy()


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
    off = np.flatnonzero(ts % HOUR_MS)
    if len(off):
        raise MscaleError(f"{what}: decision time {_fmt(ts[off[0]])} of {symbols[code[off[0]]]} is not on the hour; ts is an hourly bar's close")
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
    for name in _THRESHOLD_DEFAULTS:
        if name in pred.column_names:
            values = _float(pred, name)
            if not np.isfinite(values).all():
                raise MscaleError(f"predictions.{name} has NULL or NaN values; give a threshold on every row")
            thresholds[name] = values

    p_order, p_symbols, p_code, p_ts = _group(prices, "prices")
    price = prices if p_order is None else prices.take(pa.array(p_order))
    # join on (symbol, ts): both sides sorted by symbol code, then ts
    sym_index = np.searchsorted(symbols, p_symbols)
    known = (sym_index < len(symbols)) & (symbols[np.minimum(sym_index, len(symbols) - 1)] == p_symbols)
    p_key_code = np.where(known[p_code], sym_index[p_code], -1)
    p_key = p_key_code.astype(np.int64) * (1 << 40) + p_ts // HOUR_MS
    key = code.astype(np.int64) * (1 << 40) + ts // HOUR_MS
    at = np.searchsorted(p_key, key)
    found = (at < len(p_key)) & (p_key[np.minimum(at, len(p_key) - 1)] == key)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise MscaleError(f"no price (hourly bar) for {symbols[code[i]]} at {_fmt(ts[i])}; load prices covering every prediction")
    def priced(name: str) -> np.ndarray:
        return _float(price, name)[at]

    close = priced("close")
    bad = np.flatnonzero(~np.isfinite(close) | (close <= 0))
    if len(bad):
        i = int(bad[0])
        raise MscaleError(f"close price {close[i]!r} for {symbols[code[i]]} at {_fmt(ts[i])} is not a positive number")
    fills = {"close": close}
    for name in price.column_names:
        if name == "fill_next_minute":
            fills["next_minute"] = priced(name)
        elif (m := re.fullmatch(r"fill_twap_(\d+)m", name)):
            fills[f"twap_{m.group(1)}m"] = priced(name)
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
        if not (fill in ("close", "next_minute") or _TWAP.match(str(fill))):
            raise MscaleError(f"unknown fill mode {fill!r}: use close, next_minute or twap_<N>m (these prices offer {', '.join(bars.fills)})")
        raise MscaleError(f"fill mode {fill!r} needs a price column the prices lack; they offer {', '.join(bars.fills)}")
    return bars.fills[fill]


def threshold_arrays(bars: Bars, rules: Rules) -> tuple[dict[str, np.ndarray], int]:
    """Thresholds per row as 1-value arrays (step 0) or per-row arrays (step 1): a number in
    `rules` wins, then the predictions' column, then the default."""
    per_row = any(getattr(rules, name) is None and name in bars.thresholds for name in _THRESHOLD_DEFAULTS)
    out = {}
    for name, default in _THRESHOLD_DEFAULTS.items():
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


def simulate(bars: Bars, rules: Rules, fill: np.ndarray, slip: np.ndarray, slip_step: int,
             rates: np.ndarray) -> tuple[np.ndarray, np.ndarray, "Booked"]:
    """The engine's pass: positions decided at every row (int8 -1/0/+1), exit reason codes
    (kernels.EXIT_REASONS), and their booked returns at each fee rate."""
    th, step = threshold_arrays(bars, rules)
    cap = -1 if rules.max_trades_per_day is None else rules.max_trades_per_day
    pos, reason = np.empty(bars.n, np.int8), np.empty(bars.n, np.int8)
    kernels.positions(
        bars.score, *bars.aux_arrays(),
        th["theta_long"], th["theta_short"], th["theta_vol"], th["theta_volm"], step,
        bars.first, bars.has_next, bars.is_last, bars.day,
        rules.long_only, rules.use_vol, rules.use_volm, rules.filter_exit, rules.min_hold, rules.cooldown, cap,
        pos, reason,
    )
    return pos, reason, book(bars, pos, fill, slip, slip_step, rates)


def book(bars: Bars, pos: np.ndarray, fill: np.ndarray, slip: np.ndarray, slip_step: int, rates: np.ndarray) -> "Booked":
    """Gross and net returns per fee rate of given positions `pos`, filled at `fill`."""
    out = Booked.empty(bars.n, len(rates))
    kernels.returns(pos, bars.close, fill, slip, slip_step, bars.first, bars.has_next, rates, out.gross, out.net, out.fill_price)
    return out


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestResult:
    """What a backtest produced; columns are documented in doc/backtest.md ("Outputs").

    pnl: one row per token and decision time; pooled: one row per hour; trades: one row per
    trade; metrics: one row per (symbol or "pooled", strategy "model" / "buy_hold", fee tier).
    """

    pnl: pa.Table
    pooled: pa.Table
    trades: pa.Table
    metrics: pa.Table
    fees: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str, *, symbol: str = "pooled", strategy: str = "model", tier: str | None = None) -> float:
        """One number from the metrics table (tier: the first fee tier when not given)."""
        tier = tier or next(iter(self.fees))
        for row in self.metrics.to_pylist():
            if (row["symbol"], row["strategy"], row["tier"]) == (symbol, strategy, tier):
                return row[name]
        raise KeyError((symbol, strategy, tier))


@dataclass
class Booked:
    """Returns booked for one position series at one fill mode (arrays over rows)."""

    gross: np.ndarray
    net: np.ndarray  # (tier, row)
    fill_price: np.ndarray  # where the position changed, else NaN

    @classmethod
    def empty(cls, n: int, tiers: int) -> "Booked":
        return cls(np.empty(n), np.empty((tiers, n)), np.empty(n))


def run_backtest(
    predictions: pa.Table | Bars,
    prices: pa.Table | None = None,
    *,
    rules: Rules | None = None,
    fees: Any = None,
    fill: str = "close",
    slippage: float | str | None = None,
    trials: int = 1,
    trials_sharpe_var: float = 0.0,
) -> BacktestResult:
    """Backtest direction predictions on hourly bars, per token and pooled, at every fee tier.

    - predictions, prices: see `prepare_bars`; or already prepared `Bars` and no prices;
    - rules: thresholds, filters, risk knobs (`Rules`);
    - fees: tiers as {name: bps} or "gross,VIP9,taker=10" (default gross 0, VIP9 2.0, VIP4 5.4);
    - fill: close | next_minute | twap_<N>m; slippage: None, bps per side, "cs" or "ar";
    - trials, trials_sharpe_var: how many configurations were tried to find these rules and the
      variance of their annualised Sharpe ratios, for the deflated Sharpe ratio.

    Guarantees: a position decided at ts earns nothing before ts; nothing is earned across a
    missing hour; fees are charged on every change of position (twice on a flip).
    """
    if isinstance(predictions, Bars):
        if prices is not None:
            raise MscaleError("give either prepared bars or predictions with prices, not both")
        bars = predictions
    elif prices is None:
        raise MscaleError("run_backtest needs prices (the warehouse's fills view, see mscale.backtest.market.load_prices)")
    else:
        bars = prepare_bars(predictions, prices)
    rules = rules or Rules()
    tiers = parse_fees(fees)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise MscaleError(f"trials must be a whole number >= 1, got {trials!r}")
    if not isinstance(trials_sharpe_var, (int, float)) or not math.isfinite(trials_sharpe_var) or trials_sharpe_var < 0:
        raise MscaleError(f"trials_sharpe_var must be a number >= 0, got {trials_sharpe_var!r}")
    fill_main = fill_prices(bars, fill)
    slip, slip_step = slippage_rates(slippage, bars.spreads, bars.first)
    rates = np.array([bps / 1e4 for bps in tiers.values()])

    pos, reason, booked = simulate(bars, rules, fill_main, slip, slip_step, rates)
    bh_pos = bars.has_next.astype(np.int8)  # long every bar that has a next hour
    bh_reason = np.where(bars.has_next, kernels.NONE, np.where(bars.is_last, kernels.END, kernels.GAP)).astype(np.int8)

    series: dict[str, dict[str, Any]] = {}
    for strategy, p, why in (("model", pos, reason), ("buy_hold", bh_pos, bh_reason)):
        main = booked if strategy == "model" else book(bars, p, fill_main, slip, slip_step, rates)
        latency = None
        if "next_minute" in bars.fills:
            by_close = main if fill == "close" else book(bars, p, bars.fills["close"], slip, slip_step, rates)
            by_minute = main if fill == "next_minute" else book(bars, p, bars.fills["next_minute"], slip, slip_step, rates)
            latency = (by_close.net, by_minute.net)
        deals = kernels.trades(p, why, bars.close, fill_main, slip, slip_step, bars.first, bars.has_next, rates)
        series[strategy] = {"pos": p, "reason": why, "pass": main, "latency": latency, "trades": deals}

    fallbacks = _fallbacks(bars, pos, fill_main)
    settings = {"rules": rules.as_dict(), "fees": tiers, "fill": fill, "slippage": slippage, "trials": trials,
                "trials_sharpe_var": trials_sharpe_var}
    pooled, pooled_series = _pooled_table(bars, series, tiers)
    return BacktestResult(
        pnl=_pnl_table(bars, series, tiers),
        pooled=pooled,
        trades=_trades_table(bars, series["model"]["trades"], tiers),
        metrics=_metrics_table(bars, series, pooled_series, tiers, fallbacks, trials, trials_sharpe_var),
        fees=tiers,
        settings=settings,
    )


def _previous(bars: Bars, pos: np.ndarray) -> np.ndarray:
    prev = np.empty_like(pos)
    prev[1:] = pos[:-1]
    prev[bars.first] = 0
    return prev


def _fallbacks(bars: Bars, pos: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Per symbol: changes of position filled at the next close because no fill price existed."""
    missing = (pos != _previous(bars, pos)) & bars.has_next & ~np.isfinite(fill)
    return np.bincount(bars.code, weights=missing, minlength=len(bars.symbols)).astype(np.int64)


# --- output tables -----------------------------------------------------------------------------


def _timestamps(ms: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(ms, dtype=np.int64) * 1000, pa.int64()).cast(TS_TYPE)


def _symbol_column(bars: Bars, code: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), pa.array(list(bars.symbols), pa.string()))


def _reason_column(codes: np.ndarray) -> pa.Array:
    codes = np.asarray(codes, dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes == kernels.NONE), pa.array(list(kernels.EXIT_REASONS)))


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=~np.isfinite(values))


def _compound(bars: Bars, returns: np.ndarray) -> np.ndarray:
    out = np.empty(bars.n)
    kernels.compound(returns, bars.first, out)
    return out


def _pnl_table(bars: Bars, series: dict, tiers: dict[str, float]) -> pa.Table:
    model, bh = series["model"], series["buy_hold"]
    main: Booked = model["pass"]
    columns: dict[str, Any] = {
        "symbol": _symbol_column(bars, bars.code),
        "ts": _timestamps(bars.ts_ms),
        "period_end": _timestamps(bars.ts_ms + HOUR_MS),
        "position": pa.array(model["pos"]),
        "fill_price": _nullable(main.fill_price),
        "exit_reason": _reason_column(model["reason"]),
        "ret_gross": pa.array(main.gross),
    }
    for j, tier in enumerate(tiers):
        columns[f"ret_net_{tier}"] = pa.array(main.net[j])
    for j, tier in enumerate(tiers):
        columns[f"equity_{tier}"] = pa.array(_compound(bars, main.net[j]))
    columns["ret_bh"] = pa.array(bh["pass"].gross)
    columns["equity_bh"] = pa.array(_compound(bars, bh["pass"].gross))
    return pa.table(columns)


def _trades_table(bars: Bars, deals: tuple, tiers: dict[str, float]) -> pa.Table:
    entry, exit_, side, gross, net, entry_price, exit_price, exit_reason = deals
    columns: dict[str, Any] = {
        "symbol": _symbol_column(bars, bars.code[entry]),
        "entry_ts": _timestamps(bars.ts_ms[entry]),
        "exit_ts": _timestamps(bars.ts_ms[exit_]),
        "side": pa.array(side),
        "bars_held": pa.array(exit_ - entry),
        "entry_price": pa.array(entry_price),
        "exit_price": pa.array(exit_price),
        "exit_reason": _reason_column(exit_reason),
        "ret_gross": pa.array(gross),
    }
    for j, tier in enumerate(tiers):
        columns[f"ret_net_{tier}"] = pa.array(net[j])
    return pa.table(columns)


def _pooled_table(bars: Bars, series: dict, tiers: dict[str, float]) -> tuple[pa.Table, dict]:
    """The equal-weight pool per hour, and the per-hour arrays its metrics need."""
    hour = bars.ts_ms // HOUR_MS
    pooled: dict[str, Any] = {}
    for strategy, s in series.items():
        pos = s["pos"].astype(float)
        stacked = [s["pass"].gross, np.abs(pos), np.abs(pos - _previous(bars, s["pos"])), pos, *s["pass"].net]
        if s["latency"] is not None:
            stacked += [*s["latency"][0], *s["latency"][1]]
        hours, counts, means = equal_weight(hour, stacked)
        k = len(tiers)
        pooled[strategy] = {
            "gross": means[0], "exposure": means[1], "turnover": means[2], "net_position": means[3],
            "net": means[4 : 4 + k],
            "latency": (means[4 + k : 4 + 2 * k], means[4 + 2 * k :]) if s["latency"] is not None else None,
            "hours": hours, "counts": counts,
        }
    m = pooled["model"]
    columns: dict[str, Any] = {
        "ts": _timestamps(m["hours"] * HOUR_MS),
        "period_end": _timestamps(m["hours"] * HOUR_MS + HOUR_MS),
        "n_tokens": pa.array(m["counts"]),
        "exposure": pa.array(m["exposure"]),
        "net_position": pa.array(m["net_position"]),
        "turnover": pa.array(m["turnover"]),
        "ret_gross": pa.array(m["gross"]),
    }
    for j, tier in enumerate(tiers):
        columns[f"ret_net_{tier}"] = pa.array(m["net"][j])
    for j, tier in enumerate(tiers):
        columns[f"equity_{tier}"] = pa.array(np.cumprod(1.0 + m["net"][j]))
    columns["ret_bh"] = pa.array(pooled["buy_hold"]["gross"])
    columns["equity_bh"] = pa.array(np.cumprod(1.0 + pooled["buy_hold"]["gross"]))
    return pa.table(columns), pooled


def _metrics_table(bars: Bars, series: dict, pooled: dict, tiers: dict[str, float], fallbacks: np.ndarray,
                   trials: int, trials_sharpe_var: float) -> pa.Table:
    rows = []
    starts = np.flatnonzero(bars.first)
    stops = np.r_[starts[1:], bars.n]
    for strategy, s in series.items():
        main: Booked = s["pass"]
        entry, exit_, _side, _gross, trade_net, *_ = s["trades"]
        pos = s["pos"]
        turnover = np.abs(pos - _previous(bars, pos)).astype(float)
        for code, (a, b) in enumerate(zip(starts, stops)):
            t0, t1 = np.searchsorted(entry, [a, b])
            for j, (tier, bps) in enumerate(tiers.items()):
                row = {"symbol": bars.symbols[code], "strategy": strategy, "tier": tier, "fee_bps": bps}
                row.update(metrics.summarise(
                    net=main.net[j, a:b], gross=main.gross[a:b], exposure=np.abs(pos[a:b]), turnover=turnover[a:b],
                    end_ms=bars.ts_ms[a:b] + HOUR_MS, start_ms=int(bars.ts_ms[a]),
                    trade_net=trade_net[j, t0:t1], trade_bars=(exit_ - entry)[t0:t1],
                    trials=trials, trials_sharpe_var=trials_sharpe_var,
                ))
                row.update(_latency(s["latency"], j, slice(a, b)))
                row["fill_fallbacks"] = int(fallbacks[code]) if strategy == "model" else 0
                rows.append(row)
        p = pooled[strategy]
        hours = p["hours"]
        for j, (tier, bps) in enumerate(tiers.items()):
            row = {"symbol": "pooled", "strategy": strategy, "tier": tier, "fee_bps": bps}
            row.update(metrics.summarise(
                net=p["net"][j], gross=p["gross"], exposure=p["exposure"], turnover=p["turnover"],
                end_ms=hours * HOUR_MS + HOUR_MS, start_ms=int(hours[0] * HOUR_MS),
                trade_net=trade_net[j], trade_bars=exit_ - entry,
                trials=trials, trials_sharpe_var=trials_sharpe_var,
            ))
            row.update(_latency(p["latency"], j, slice(None)))
            row["fill_fallbacks"] = int(fallbacks.sum()) if strategy == "model" else 0
            rows.append(row)
    return pa.Table.from_pylist(rows)


def _latency(latency: tuple | None, tier: int, rows: slice) -> dict[str, float]:
    """Latency drag: the result with close fills minus the result with next-minute fills."""
    if latency is None:
        return {"latency_drag_return": math.nan, "latency_drag_sharpe": math.nan}
    by_close, by_minute = latency[0][tier][rows], latency[1][tier][rows]
    return {
        "latency_drag_return": float(np.prod(1 + by_close) - np.prod(1 + by_minute)),
        "latency_drag_sharpe": metrics.sharpe(by_close) - metrics.sharpe(by_minute),
    }
