"""The backtest step of a run: out-of-sample predictions with their tuned thresholds in; per-bar
PnL, trades, metrics, the fee-drag curve and the hourly vs multiscale comparison out.

Training calls it once per run; `mscale backtest --run` calls it again on the stored predictions
with other knobs, so both write the same files (CONTRACT §10) and the report reads only files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscale.backtest import BacktestResult, Bars, Rules, prepare_bars, run_backtest
from mscale.backtest.costs import slippage_rates
from mscale.backtest.engine import simulate
from mscale.backtest.inputs import fill_prices
from mscale.backtest.metrics import HOUR_MS, sharpe
from mscale.backtest.portfolio import equal_weight
from mscale.research import compare

FEE_CURVE_BPS = tuple(x / 2 for x in range(21))  # 0 to 10 bps in half-bps steps


@dataclass(frozen=True)
class BacktestSettings:
    """Everything the backtest step needs besides predictions and prices."""

    tiers: dict[str, float]
    rules: Rules  # knobs; thresholds None = the per-row tuned thresholds in the predictions
    fill: str = "close"
    slippage: Any = None
    tune_fee: str = "VIP9"
    trials: int = 1
    trials_sharpe_var: float = 0.0
    block_h: int = compare.DEFAULT_BLOCK_H
    seed: int = 0

    def as_dict(self) -> dict:
        return {"tiers": self.tiers, "rules": self.rules.as_dict(), "fill": self.fill, "slippage": self.slippage,
                "tune_fee": self.tune_fee, "trials": self.trials, "trials_sharpe_var": self.trials_sharpe_var,
                "block_h": self.block_h, "seed": self.seed}


@dataclass
class Evaluation:
    backtests: dict[str, BacktestResult]  # per arm (feature set)
    fee_curve: pa.Table  # arm, symbol, fee_bps, net_sharpe, net_total_return
    comparison: dict | None  # multiscale − hourly, when both arms ran
    seconds: float = 0.0


def main_arm(arms) -> str:
    """The arm a run is summed up by: multiscale when it ran, else the only one (any iterable of names)."""
    names = list(arms)
    return "multiscale" if "multiscale" in names else names[0]


def evaluate(oos: dict[str, pa.Table], prices: pa.Table, settings: BacktestSettings) -> Evaluation:
    """Backtest every arm's OOS predictions (per-row tuned thresholds) at every tier, the fee
    curve from 0 to 10 bps on the same positions, and the comparison of the two arms."""
    backtests, curves = {}, []
    for arm, predictions in oos.items():
        bars = prepare_bars(predictions, prices)
        backtests[arm] = run_backtest(bars, rules=settings.rules, fees=settings.tiers, fill=settings.fill,
                                      slippage=settings.slippage, trials=settings.trials,
                                      trials_sharpe_var=settings.trials_sharpe_var)
        curves.append(fee_curve(bars, settings, arm))
    comparison = _compare(backtests, settings) if {"hourly", "multiscale"} <= set(backtests) else None
    return Evaluation(backtests, pa.concat_tables(curves), comparison)


def fee_curve(bars: Bars, settings: BacktestSettings, arm: str) -> pa.Table:
    """Net Sharpe and net total return at every fee of FEE_CURVE_BPS, per token and pooled, from
    one pass of the engine over the same positions (the same booking and pool as run_backtest)."""
    slip, step = slippage_rates(settings.slippage, bars.spreads, bars.first)
    rates = np.array(FEE_CURVE_BPS) / 1e4
    _, _, booked = simulate(bars, settings.rules, fill_prices(bars, settings.fill), slip, step, rates)
    starts = np.flatnonzero(bars.first)
    stops = np.r_[starts[1:], bars.n]
    series = {bars.symbols[code]: booked.net[:, a:b] for code, (a, b) in enumerate(zip(starts, stops))}
    series["pooled"] = equal_weight(bars.ts_ms // HOUR_MS, bars.has_next, list(booked.net))[2]
    rows = [(symbol, bps, sharpe(net[j]), float(np.prod(1 + net[j]) - 1))
            for symbol, net in series.items() for j, bps in enumerate(FEE_CURVE_BPS)]
    return pa.table({"arm": [arm] * len(rows), "symbol": [r[0] for r in rows], "fee_bps": [r[1] for r in rows],
                     "net_sharpe": [r[2] for r in rows], "net_total_return": [r[3] for r in rows]})


def _compare(backtests: dict[str, BacktestResult], settings: BacktestSettings) -> dict:
    """multiscale − hourly, per token and pooled, at the tuning tier, with paired block-bootstrap intervals."""
    tier = settings.tune_fee
    a, b = backtests["multiscale"], backtests["hourly"]
    out: dict[str, Any] = {"tier": tier, "block_h": settings.block_h, "difference": "multiscale - hourly", "tokens": {}}
    sym_a, sym_b = a.pnl.column("symbol").cast(pa.string()), b.pnl.column("symbol").cast(pa.string())
    for symbol in sorted(set(sym_a.to_pylist())):
        ra = a.pnl.filter(pc.equal(sym_a, symbol)).column(f"ret_net_{tier}").to_numpy()
        rb = b.pnl.filter(pc.equal(sym_b, symbol)).column(f"ret_net_{tier}").to_numpy()
        out["tokens"][symbol] = compare.paired_block_bootstrap(ra, rb, block_h=settings.block_h, seed=settings.seed).as_dict()
    out["pooled"] = compare.paired_block_bootstrap(a.pooled.column(f"ret_net_{tier}").to_numpy(),
                                                   b.pooled.column(f"ret_net_{tier}").to_numpy(),
                                                   block_h=settings.block_h, seed=settings.seed).as_dict()
    return out


def write_evaluation(folder, ev: Evaluation) -> None:
    """pnl/<arm>/tokens.parquet, pooled.parquet, one CSV per token and pooled; trades.parquet;
    fee_curve.parquet. `folder` is a runs.RunFolder."""
    for arm, bt in ev.backtests.items():
        folder.parquet(f"pnl/{arm}/tokens.parquet", bt.pnl)
        folder.parquet(f"pnl/{arm}/pooled.parquet", bt.pooled)
        symbols = bt.pnl.column("symbol").cast(pa.string())
        for symbol in sorted(set(symbols.to_pylist())):
            folder.csv(f"pnl/{arm}/{symbol}.csv", _plain(bt.pnl.filter(pc.equal(symbols, symbol))))
        folder.csv(f"pnl/{arm}/pooled.csv", bt.pooled)
    folder.parquet("trades.parquet", pa.concat_tables([
        bt.trades.append_column("feature_set", pa.array([arm] * bt.trades.num_rows)) for arm, bt in ev.backtests.items()]))
    folder.parquet("fee_curve.parquet", ev.fee_curve)


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns as plain strings, for CSV."""
    return pa.table({name: (col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col)
                     for name, col in zip(table.column_names, table.columns)})


def backtest_metrics(ev: Evaluation) -> dict[str, list[dict]]:
    """metrics.json's backtest part: the engine's metrics rows per arm."""
    return {arm: bt.metrics.to_pylist() for arm, bt in ev.backtests.items()}


def headline(bt: BacktestResult, tier: str) -> dict[str, float]:
    """The pooled numbers a run is known by (the `runs` view)."""
    m = bt.metric
    return {"pooled_net_sharpe": m("sharpe", tier=tier), "pooled_net_return": m("total_return", tier=tier),
            "pooled_gross_sharpe": m("sharpe", tier=tier) + m("fee_drag_sharpe", tier=tier),
            "pooled_bh_sharpe": m("sharpe", strategy="buy_hold", tier=tier), "pooled_psr": m("psr", tier=tier),
            "pooled_dsr": m("dsr", tier=tier), "pooled_trades_per_day": m("trades_per_day", tier=tier)}


def verdict_line(ev: Evaluation, tune_fee: str) -> str:
    """The run's plain-language verdict, from its numbers: the comparison's when both feature sets
    ran, else whether the pooled net Sharpe at the tuning tier is evidence of an edge (PSR > 0.95)."""
    if ev.comparison:
        return verdict(ev.comparison)
    arm = main_arm(ev.backtests)
    m = ev.backtests[arm].metric
    sharpe, psr, dsr = m("sharpe", tier=tune_fee), m("psr", tier=tune_fee), m("dsr", tier=tune_fee)
    edge = "evidence of an edge after fees" if sharpe > 0 and psr > 0.95 else "no evidence of an edge after fees"
    return (f"{arm}: pooled net Sharpe at {tune_fee} {sharpe:+.2f} (PSR {psr:.2f}, DSR {dsr:.2f}), "
            f"{m('trades_per_day', tier=tune_fee):.1f} trades a day: {edge}")


def verdict(comparison: dict) -> str:
    """A plain-language line from the comparison's numbers."""
    tokens = comparison["tokens"]
    better = sum(1 for c in tokens.values() if c["difference"] > 0)
    p = comparison["pooled"]
    interval = "no interval (too few hours)" if _missing(p["low"]) else f"95% interval {p['low']:+.2f}..{p['high']:+.2f}"
    status = "significant" if p["significant"] else "not significant"
    return (f"multiscale beats hourly on {better} of {len(tokens)} tokens; pooled difference {p['difference']:+.2f} Sharpe, "
            f"{interval}: {status}")


def _missing(value: float | None) -> bool:
    """NaN in memory, null once stored as JSON."""
    return value is None or math.isnan(value)


def summary_table(ev: Evaluation, tune_fee: str) -> str:
    """What `mscale train` and `make demo` print: per arm, token and pooled, net Sharpe at every
    tier beside buy-and-hold, trades per day and the deflated Sharpe; then the comparison."""
    tiers = list(next(iter(ev.backtests.values())).fees)
    lines = [f"out-of-sample net Sharpe per fee tier (annualised), buy-and-hold, trades/day, DSR at {tune_fee}:"]
    lines.append(f"  {'arm':<11} {'symbol':<10} " + " ".join(f"{t:>8}" for t in tiers) + f" {'B&H':>7} {'trades/d':>9} {'DSR':>6}")
    for name, bt in ev.backtests.items():
        m = bt.metric
        symbols = sorted({row["symbol"] for row in bt.metrics.to_pylist()} - {"pooled"}) + ["pooled"]
        for sym in symbols:
            sharpes = " ".join(f"{m('sharpe', symbol=sym, tier=t):>8.2f}" for t in tiers)
            lines.append(f"  {name:<11} {sym:<10} {sharpes} {m('sharpe', symbol=sym, strategy='buy_hold', tier=tune_fee):>7.2f} "
                         f"{m('trades_per_day', symbol=sym, tier=tune_fee):>9.2f} {m('dsr', symbol=sym, tier=tune_fee):>6.2f}")
    comparison = ev.comparison
    if comparison:
        lines.append(f"multiscale - hourly, net Sharpe at {comparison['tier']}, paired block bootstrap "
                     f"({comparison['block_h']} h blocks):")
        for symbol, c in [*comparison["tokens"].items(), ("pooled", comparison["pooled"])]:
            interval = "no interval" if _missing(c["low"]) else f"95% interval {c['low']:+.2f}..{c['high']:+.2f}"
            lines.append(f"  {symbol:<10} {c['difference']:+.2f}  {interval}{'  significant' if c['significant'] else ''}")
        lines.append(verdict(comparison))
    return "\n".join(lines)
