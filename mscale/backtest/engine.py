"""`run_backtest`: predictions and prices in; per-bar PnL, trades, metrics and the pooled portfolio out.

The timing (CONTRACT §3, §9; doc/backtest.md): the position decided at decision time ts comes from
the probabilities at ts only and is held over (ts, ts + 1 h]; it earns close(ts) -> close(ts + 1 h),
or from its fill price when it changed at ts. A row whose next hour is missing is closed at its own
close, so nothing is earned across a gap. Costs are charged on every change of position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
import pyarrow as pa

from mscale.backtest import kernels, tables
from mscale.backtest.costs import parse_fees, slippage_rates
from mscale.backtest.inputs import Bars, fill_prices, prepare_bars, threshold_arrays
from mscale.backtest.rules import Rules
from mscale.errors import MscaleError


@dataclass
class Booked:
    """Returns booked for one position series at one fill mode (arrays over rows)."""

    gross: np.ndarray
    net: np.ndarray  # (tier, row)

    @classmethod
    def empty(cls, n: int, tiers: int) -> "Booked":
        return cls(np.empty(n), np.empty((tiers, n)))


@dataclass
class Series:
    """One strategy's positions over the bars and everything booked from them."""

    strategy: str  # "model" or "buy_hold"
    pos: np.ndarray
    reason: np.ndarray
    booked: Booked
    fill: np.ndarray  # the prices a change at each row is filled at (NaN: none, the next close is used)
    trades: tuple  # kernels.trades output
    fallbacks: np.ndarray  # per symbol: changes filled at the next close for want of a fill price
    latency: tuple[np.ndarray, np.ndarray] | None  # net (tier, row) with close fills, with next-minute fills


def simulate(bars: Bars, rules: Rules, fill: np.ndarray, slip: np.ndarray, slip_step: int,
             rates: np.ndarray) -> tuple[np.ndarray, np.ndarray, Booked]:
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


def book(bars: Bars, pos: np.ndarray, fill: np.ndarray, slip: np.ndarray, slip_step: int, rates: np.ndarray) -> Booked:
    """Gross and net returns per fee rate of given positions `pos`, filled at `fill`."""
    out = Booked.empty(bars.n, len(rates))
    kernels.returns(pos, bars.close, fill, slip, slip_step, bars.first, bars.has_next, rates, out.gross, out.net)
    return out


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
    if isinstance(trials, bool) or not isinstance(trials, Integral) or trials < 1:
        raise MscaleError(f"trials must be a whole number >= 1, got {trials!r}")
    if isinstance(trials_sharpe_var, bool) or not isinstance(trials_sharpe_var, Real) or not math.isfinite(trials_sharpe_var) \
            or trials_sharpe_var < 0:
        raise MscaleError(f"trials_sharpe_var must be a number >= 0, got {trials_sharpe_var!r}")
    fill_main = fill_prices(bars, fill)
    slip, slip_step = slippage_rates(slippage, bars.spreads, bars.first)
    rates = np.array([bps / 1e4 for bps in tiers.values()])

    pos, reason, booked = simulate(bars, rules, fill_main, slip, slip_step, rates)
    bh_pos = bars.has_next.astype(np.int8)  # long on every row that has a next hour
    bh_reason = np.where(bars.has_next, kernels.NONE, np.where(bars.is_last, kernels.END, kernels.GAP)).astype(np.int8)
    series = []
    for strategy, p, why in (("model", pos, reason), ("buy_hold", bh_pos, bh_reason)):
        main = booked if strategy == "model" else book(bars, p, fill_main, slip, slip_step, rates)
        latency = None
        if "next_minute" in bars.fills:
            by_close = main if fill == "close" else book(bars, p, bars.fills["close"], slip, slip_step, rates)
            by_minute = main if fill == "next_minute" else book(bars, p, bars.fills["next_minute"], slip, slip_step, rates)
            latency = (by_close.net, by_minute.net)
        deals = kernels.trades(p, why, bars.close, fill_main, slip, slip_step, bars.first, bars.has_next, rates)
        series.append(Series(strategy, p, why, main, fill_main, deals, _fallbacks(bars, p, fill_main), latency))

    model, buy_hold = series
    pool = tables.pool(bars, series)
    return BacktestResult(
        pnl=tables.pnl_table(bars, model, buy_hold, tiers),
        pooled=tables.pooled_table(pool, tiers),
        trades=tables.trades_table(bars, model.trades, tiers),
        metrics=tables.metrics_table(bars, series, pool, tiers, trials, trials_sharpe_var),
        fees=tiers,
        settings={"rules": rules.as_dict(), "fees": tiers, "fill": fill, "slippage": slippage, "trials": trials,
                  "trials_sharpe_var": trials_sharpe_var},
    )


def _fallbacks(bars: Bars, pos: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Per symbol: changes of position filled at the next close because no fill price existed."""
    missing = (pos != bars.previous(pos)) & bars.has_next & ~np.isfinite(fill)
    return np.bincount(bars.code, weights=missing, minlength=len(bars.symbols)).astype(np.int64)
