"""A run's charts (matplotlib on the Agg canvas, PNG), drawn from the files the run stored.

Each function takes columns already read from the run folder (a `Frame`: column name -> numpy
array, timestamps as naive-UTC datetime64) and returns a matplotlib Figure; `save` writes it.
Frames are plain numpy so figures can be drawn in forked workers without touching pyarrow.
Nothing here recomputes a metric: equity, drawdown, trade counts and the fee curve are the
backtest step's outputs laid out over time. Times on the x axis are UTC.
"""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 90
TIER_COLORS = ("#1f77b4", "#d62728", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b")
Frame = dict[str, np.ndarray]


def frame(table: pa.Table, symbol: str | None = None) -> Frame:
    """The rows of `symbol` (all when None) as numpy columns; timestamps become naive-UTC
    datetime64[us], strings and dictionaries object arrays."""
    if symbol is not None:
        table = table.filter(pc.equal(table.column("symbol").cast(pa.string()), symbol))
    out: Frame = {}
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_timestamp(column.type):
            out[name] = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy().astype("datetime64[us]")
        elif pa.types.is_dictionary(column.type) or pa.types.is_string(column.type):
            out[name] = np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
        else:
            out[name] = np.asarray(column.to_numpy(zero_copy_only=False), dtype=float)
    return out


def _instant(value) -> np.datetime64:
    """A UTC instant given as a datetime (aware or naive UTC) or text like '2024-01-31 09:00Z'."""
    if isinstance(value, str):
        return np.datetime64(value.replace("Z", "").replace(" ", "T"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(value)


def _time_axis(ax) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)


def _figure(rows: int, cols: int, figsize: tuple[float, float], **kwargs):
    """A figure on the Agg canvas, without pyplot's global state (safe in workers and threads)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kwargs)


def warm_up() -> None:
    """Draw a small labelled figure: loads the fonts and matplotlib's caches (inherited by forked workers)."""
    fig, ax = _figure(1, 1, figsize=(2, 1))
    ax.set_title("warm up")
    ax.plot([0, 1], [0, 1], label="x")
    ax.legend()
    fig.canvas.draw()


def save(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG at `path` (folders created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def two_panel(pnl: Frame, trades: Frame, tiers: list[str], test_spans: list[tuple], *, title: str,
              fee_drag: dict[str, float]) -> Figure:
    """Top: equity per fee tier and buy-and-hold, the OOS test blocks shaded; bottom: trades per day.

    `pnl` is one token's per-bar columns or the pooled ones (equity at period_end); `trades` the
    trades behind it; `fee_drag` the total return lost to each tier's costs, annotated on top."""
    fig, (top, bottom) = _figure(2, 1, figsize=(10, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.08, hspace=0.25)
    when = pnl["period_end"]
    for j, tier in enumerate(tiers):
        top.plot(when, pnl[f"equity_{tier}"], lw=1.1, color=TIER_COLORS[j % len(TIER_COLORS)], label=f"net of {tier}")
    top.plot(when, pnl["equity_bh"], lw=1.0, color="0.45", ls="--", label="buy and hold")
    for k, (start, end) in enumerate(test_spans):  # alternate shades, so the folds' blocks are told apart
        top.axvspan(_instant(start), _instant(end), color="0.80" if k % 2 == 0 else "0.90", alpha=0.6, lw=0,
                    label="OOS test blocks (folds)" if k == 0 else None)
        top.text(_instant(start), 1.0, f" fold {k}", transform=top.get_xaxis_transform(), fontsize=7, va="top", color="0.35")
    top.set_title(f"{title}: equity per fee tier")
    top.set_ylabel("equity (start = 1)")
    top.legend(loc="lower left", fontsize=8, ncol=2, framealpha=0.85)
    drag = ", ".join(f"{tier} {value:.1%}" for tier, value in fee_drag.items())
    top.text(0.99, 0.02, f"total return lost to costs: {drag}", transform=top.transAxes, ha="right", va="bottom",
             fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    _time_axis(top)
    days = trades["entry_ts"].astype("datetime64[D]")
    if len(days):  # one step artist, not a patch per day
        unique, counts = np.unique(days, return_counts=True)
        every = np.arange(unique.min(), unique.max() + np.timedelta64(2, "D"), dtype="datetime64[D]")
        per_day = np.zeros(len(every) - 1)
        per_day[(unique - unique.min()).astype(int)] = counts
        bottom.stairs(per_day, every.astype("datetime64[us]"), fill=True, color="#1f77b4")
    bottom.set_title("trades per day (entries, UTC days)")
    bottom.set_ylabel("trades")
    _time_axis(bottom)
    return fig


def fee_curve(curve: Frame, *, title: str, marked: dict[str, float]) -> Figure:
    """Net Sharpe and net total return against the fee per side (0-10 bps), per token and pooled,
    with the run's fee tiers (`marked`: name -> bps) marked."""
    fig, (left, right) = _figure(1, 2, figsize=(10, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14, wspace=0.25)
    symbols = sorted(set(curve["symbol"]) - {"pooled"}) + ["pooled"]
    for symbol in symbols:
        mine = curve["symbol"] == symbol
        style = {"lw": 2.2, "color": "black"} if symbol == "pooled" else {"lw": 1.0}
        left.plot(curve["fee_bps"][mine], curve["net_sharpe"][mine], label=symbol, **style)
        right.plot(curve["fee_bps"][mine], 100 * curve["net_total_return"][mine], label=symbol, **style)
    for ax, label in ((left, "net Sharpe (annualised)"), (right, "net total return (%)")):
        for tier, bps in marked.items():
            ax.axvline(bps, color="0.5", ls=":", lw=1)
            ax.text(bps, 0.98, f" {tier}", transform=ax.get_xaxis_transform(), fontsize=8, va="top", color="0.35")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("fee per side (bps)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.set_title(f"{title}: net Sharpe against fee")
    right.set_title("net total return against fee")
    right.legend(fontsize=8)
    return fig


def vol_high_rate(predictions: Frame, *, title: str, window_h: int = 168) -> Figure:
    """The predicted and the realised rate of y_vol_high over time: trailing `window_h`-hour means
    of P(vol_high) and of the realised label, pooled over tokens."""
    ts = predictions["ts"].astype("datetime64[h]").astype(np.int64)
    hours, inverse = np.unique(ts, return_inverse=True)
    p = np.bincount(inverse, weights=predictions["p_vol_high"]) / np.bincount(inverse)
    y = predictions["y_vol_high"]
    known = np.isfinite(y)
    realised = np.bincount(inverse[known], weights=y[known], minlength=len(hours)) / np.maximum(
        np.bincount(inverse[known], minlength=len(hours)), 1)
    when = (hours * 3600).astype("datetime64[s]")
    fig, ax = _figure(1, 1, figsize=(10, 3.4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.12)
    ax.plot(when, _trailing_mean(p, window_h), label="predicted: mean P(vol_high)", color="#d62728")
    ax.plot(when, _trailing_mean(realised, window_h), label="realised: share of vol_high hours", color="0.3")
    ax.set_title(f"{title}: rate of vol_high, trailing {window_h // 24}-day mean over tokens")
    ax.set_ylabel("rate")
    ax.legend(fontsize=8)
    _time_axis(ax)
    return fig


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the window - 1 before it (fewer at the start): past-only smoothing."""
    total = np.cumsum(np.r_[0.0, values])
    n = np.arange(1, len(values) + 1)
    start = np.maximum(n - window, 0)
    return (total[n] - total[start]) / (n - start)


def comparison(comparison: dict, sharpes: dict[str, dict[str, float]]) -> Figure:
    """Per token and pooled: each arm's OOS net Sharpe, and their difference with its bootstrap interval."""
    names = [*comparison["tokens"], "pooled"]
    stats = [*comparison["tokens"].values(), comparison["pooled"]]
    x = np.arange(len(names))
    fig, (left, right) = _figure(1, 2, figsize=(10, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.1, wspace=0.25)
    for offset, arm, color in ((-0.15, "hourly", "#7f7f7f"), (0.15, "multiscale", "#1f77b4")):
        left.bar(x + offset, [sharpes[arm][n] for n in names], width=0.3, label=arm, color=color)
    left.axhline(0, color="0.5", lw=0.8)
    left.set_xticks(x, names)
    left.set_ylabel(f"net Sharpe at {comparison['tier']}")
    left.set_title("OOS net Sharpe per arm")
    left.legend(fontsize=8)
    diff = np.array([s["difference"] for s in stats])
    low = np.array([s["low"] for s in stats])
    high = np.array([s["high"] for s in stats])
    err = np.vstack([diff - np.where(np.isfinite(low), low, diff), np.where(np.isfinite(high), high, diff) - diff])
    right.errorbar(x, diff, yerr=err, fmt="o", capsize=4, color="black")
    right.axhline(0, color="#d62728", lw=1)
    right.set_xticks(x, names)
    right.set_ylabel("Sharpe difference")
    right.set_title(f"multiscale - hourly, 95% interval ({comparison['block_h']} h blocks)")
    for ax in (left, right):
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def drawdown(pooled: Frame, tiers: list[str], *, title: str) -> Figure:
    """The pooled portfolio's drawdown from its running peak, per fee tier."""
    fig, ax = _figure(1, 1, figsize=(10, 3.2))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.12)
    when = pooled["period_end"]
    for j, tier in enumerate(tiers):
        equity = np.r_[1.0, pooled[f"equity_{tier}"]]
        dd = equity / np.maximum.accumulate(equity) - 1
        ax.fill_between(when, 100 * dd[1:], 0, alpha=0.25, color=TIER_COLORS[j % len(TIER_COLORS)], label=f"net of {tier}")
    ax.set_title(f"{title}: drawdown of the pooled portfolio")
    ax.set_ylabel("drawdown (%)")
    ax.legend(fontsize=8, loc="lower left")
    _time_axis(ax)
    return fig


def equity_at_tier(pnl: Frame, pooled: Frame, tier: str, *, title: str) -> Figure:
    """Every token's and the pool's equity at one fee tier (the per-tier artifact)."""
    fig, ax = _figure(1, 1, figsize=(10, 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.12)
    for symbol in sorted(set(pnl["symbol"])):
        mine = pnl["symbol"] == symbol
        ax.plot(pnl["period_end"][mine], pnl[f"equity_{tier}"][mine], lw=0.9, label=symbol)
    ax.plot(pooled["period_end"], pooled[f"equity_{tier}"], lw=2.0, color="black", label="pooled")
    ax.set_title(f"{title}: equity net of {tier}")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(fontsize=8, ncol=4)
    _time_axis(ax)
    return fig
