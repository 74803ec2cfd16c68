"""The backtest's output tables, built from the kernels' arrays (columns: doc/backtest.md, "Outputs").

Nothing here decides or books anything: it lays out what `engine.run_backtest` computed, pools the
tokens hour by hour and summarises every series with `metrics.summarise`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mscale.backtest import kernels, metrics
from mscale.backtest.inputs import Bars
from mscale.backtest.metrics import HOUR_MS
from mscale.backtest.portfolio import equal_weight

if TYPE_CHECKING:
    from mscale.backtest.engine import Series

TS_TYPE = pa.timestamp("us", tz="UTC")


def _timestamps(ms: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(ms, dtype=np.int64) * 1000, pa.int64()).cast(TS_TYPE)


def _symbols(bars: Bars, code: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), pa.array(list(bars.symbols), pa.string()))


def _reasons(codes: np.ndarray) -> pa.Array:
    codes = np.asarray(codes, dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes == kernels.NONE), pa.array(list(kernels.EXIT_REASONS)))


def _compound(bars: Bars, returns: np.ndarray) -> np.ndarray:
    out = np.empty(bars.n)
    kernels.compound(returns, bars.first, out)
    return out


def _fill_at_changes(bars: Bars, pos: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """The price each change of position was filled at (NaN where the position did not change),
    as the kernels book it: the fill price, else the next hourly close; at a row with no next
    hour, the row's own close."""
    next_close = np.r_[bars.close[1:], np.nan]
    price = np.where(bars.has_next, np.where(np.isfinite(fill), fill, next_close), bars.close)
    return np.where(pos != bars.previous(pos), price, np.nan)


def pnl_table(bars: Bars, model: "Series", buy_hold: "Series", tiers: dict[str, float]) -> pa.Table:
    """One row per token and decision time: the position, its fill, returns and equity per tier."""
    fill = _fill_at_changes(bars, model.pos, model.fill)
    columns: dict[str, Any] = {
        "symbol": _symbols(bars, bars.code),
        "ts": _timestamps(bars.ts_ms),
        "period_end": _timestamps(bars.ts_ms + HOUR_MS),
        "position": pa.array(model.pos),
        "fill_price": pa.array(fill, mask=~np.isfinite(fill)),
        "exit_reason": _reasons(model.reason),
        "ret_gross": pa.array(model.booked.gross),
    }
    for j, tier in enumerate(tiers):
        columns[f"ret_net_{tier}"] = pa.array(model.booked.net[j])
    for j, tier in enumerate(tiers):
        columns[f"equity_{tier}"] = pa.array(_compound(bars, model.booked.net[j]))
    columns["ret_bh"] = pa.array(buy_hold.booked.gross)
    columns["equity_bh"] = pa.array(_compound(bars, buy_hold.booked.gross))
    return pa.table(columns)


def trades_table(bars: Bars, deals: tuple, tiers: dict[str, float]) -> pa.Table:
    """One row per trade: entry and exit decision times, side, bars held, prices, returns, reason."""
    entry, exit_, side, gross, net, entry_price, exit_price, exit_reason = deals
    columns: dict[str, Any] = {
        "symbol": _symbols(bars, bars.code[entry]),
        "entry_ts": _timestamps(bars.ts_ms[entry]),
        "exit_ts": _timestamps(bars.ts_ms[exit_]),
        "side": pa.array(side),
        "bars_held": pa.array(exit_ - entry),
        "entry_price": pa.array(entry_price),
        "exit_price": pa.array(exit_price),
        "exit_reason": _reasons(exit_reason),
        "ret_gross": pa.array(gross),
    }
    for j, tier in enumerate(tiers):
        columns[f"ret_net_{tier}"] = pa.array(net[j])
    return pa.table(columns)


# --- the pool ------------------------------------------------------------------------------------


@dataclass
class PooledSeries:
    """One strategy's pooled hourly arrays (means over the tokens in the pool each hour)."""

    gross: np.ndarray
    net: np.ndarray  # (tier, hour)
    exposure: np.ndarray
    turnover: np.ndarray
    net_position: np.ndarray
    latency: tuple[np.ndarray, np.ndarray] | None


@dataclass
class Pool:
    hours: np.ndarray  # decision hours (epoch hours), ascending
    members: np.ndarray  # tokens with a bar in the hour after each decision
    series: dict[str, PooledSeries]


def pool(bars: Bars, series: list["Series"]) -> Pool:
    """The equal-weight pool of every strategy, hour by hour (CONTRACT §9)."""
    hour = bars.ts_ms // HOUR_MS
    pooled = {}
    hours = members = np.empty(0)
    for s in series:
        k = s.booked.net.shape[0]
        pos = s.pos.astype(float)
        values = [s.booked.gross, np.abs(pos), np.abs(pos - bars.previous(s.pos)), pos, *s.booked.net]
        if s.latency is not None:
            values += [*s.latency[0], *s.latency[1]]
        hours, members, means = equal_weight(hour, bars.has_next, values)
        pooled[s.strategy] = PooledSeries(
            gross=means[0], exposure=means[1], turnover=means[2], net_position=means[3], net=means[4:4 + k],
            latency=(means[4 + k:4 + 2 * k], means[4 + 2 * k:]) if s.latency is not None else None,
        )
    return Pool(hours, members, pooled)


def pooled_table(p: Pool, tiers: dict[str, float]) -> pa.Table:
    """One row per decision hour: tokens in the pool, exposure, turnover, returns and equity."""
    model, buy_hold = p.series["model"], p.series["buy_hold"]
    columns: dict[str, Any] = {
        "ts": _timestamps(p.hours * HOUR_MS),
        "period_end": _timestamps(p.hours * HOUR_MS + HOUR_MS),
        "n_tokens": pa.array(p.members),
        "exposure": pa.array(model.exposure),
        "net_position": pa.array(model.net_position),
        "turnover": pa.array(model.turnover),
        "ret_gross": pa.array(model.gross),
    }
    for j, tier in enumerate(tiers):
        columns[f"ret_net_{tier}"] = pa.array(model.net[j])
    for j, tier in enumerate(tiers):
        columns[f"equity_{tier}"] = pa.array(np.cumprod(1.0 + model.net[j]))
    columns["ret_bh"] = pa.array(buy_hold.gross)
    columns["equity_bh"] = pa.array(np.cumprod(1.0 + buy_hold.gross))
    return pa.table(columns)


# --- metrics -------------------------------------------------------------------------------------


def metrics_table(bars: Bars, series: list["Series"], p: Pool, tiers: dict[str, float],
                  trials: int, trials_sharpe_var: float) -> pa.Table:
    """Every metric per (symbol, strategy, tier), then per (pooled, strategy, tier)."""
    rows = []
    starts = np.flatnonzero(bars.first)
    stops = np.r_[starts[1:], bars.n]
    for s in series:
        entry, exit_, _side, _gross, trade_net, *_ = s.trades
        turnover = np.abs(s.pos - bars.previous(s.pos)).astype(float)
        for code, (a, b) in enumerate(zip(starts, stops)):
            t0, t1 = np.searchsorted(entry, [a, b])
            for j, (tier, bps) in enumerate(tiers.items()):
                row = {"symbol": bars.symbols[code], "strategy": s.strategy, "tier": tier, "fee_bps": bps}
                row.update(metrics.summarise(
                    net=s.booked.net[j, a:b], gross=s.booked.gross[a:b], exposure=np.abs(s.pos[a:b]),
                    turnover=turnover[a:b], end_ms=bars.ts_ms[a:b] + HOUR_MS, start_ms=int(bars.ts_ms[a]),
                    trade_net=trade_net[j, t0:t1], trade_bars=(exit_ - entry)[t0:t1],
                    trials=trials, trials_sharpe_var=trials_sharpe_var,
                ))
                row.update(_latency(s.latency, j, slice(a, b)))
                row["fill_fallbacks"] = int(s.fallbacks[code])
                rows.append(row)
        pooled = p.series[s.strategy]
        for j, (tier, bps) in enumerate(tiers.items()):
            row = {"symbol": "pooled", "strategy": s.strategy, "tier": tier, "fee_bps": bps}
            row.update(metrics.summarise(
                net=pooled.net[j], gross=pooled.gross, exposure=pooled.exposure, turnover=pooled.turnover,
                end_ms=p.hours * HOUR_MS + HOUR_MS, start_ms=int(p.hours[0] * HOUR_MS),
                trade_net=trade_net[j], trade_bars=exit_ - entry,
                trials=trials, trials_sharpe_var=trials_sharpe_var,
            ))
            row.update(_latency(pooled.latency, j, slice(None)))
            row["fill_fallbacks"] = int(s.fallbacks.sum())
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
