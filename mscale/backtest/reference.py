"""Plain-Python twin of the compiled kernels, written for reading, kept for tests.

It follows doc/backtest.md rule by rule, one token at a time, with no shared code with
`mscale.backtest.kernels`; tests/test_backtest_property.py checks that both agree on random
inputs. Far too slow for real use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@dataclass
class Bar:
    """One decision row of one token."""

    ts_ms: int
    p_up: float
    p_down: float
    close: float
    fill: float = math.nan  # price a change at this row is filled at; NaN = none (next close is used)
    p_vol: float = 0.0
    p_volm: float = 0.0
    th_long: float = 0.0
    th_short: float = 0.0
    th_vol: float = 0.5
    th_volm: float = 0.5
    slip: float = 0.0  # slippage rate per unit of |Δposition|


@dataclass
class Knobs:
    long_only: bool = False
    use_vol: bool = False
    use_volm: bool = False
    filter_exit: bool = False
    min_hold: int = 0
    cooldown: int = 0
    max_per_day: int | None = None


def reference_positions(bars: list[Bar], knobs: Knobs) -> tuple[list[int], list[str]]:
    """Position decided at each bar and the exit reason ('' where nothing was closed)."""
    positions: list[int] = []
    reasons: list[str] = []
    position = 0
    bars_held = 0
    last_exit_row: int | None = None
    entries_per_day: dict[int, int] = {}
    for row, bar in enumerate(bars):
        is_last = row == len(bars) - 1
        next_hour_present = not is_last and bars[row + 1].ts_ms == bar.ts_ms + HOUR_MS

        score = bar.p_up - bar.p_down
        wanted = 0
        if score > bar.th_long:
            wanted = 1
        elif score < -bar.th_short and not knobs.long_only:
            wanted = -1
        filter_passes = True
        if knobs.use_vol and not bar.p_vol > bar.th_vol:
            filter_passes = False
        if knobs.use_volm and not bar.p_volm > bar.th_volm:
            filter_passes = False

        new = position
        reason = ""
        if not next_hour_present:
            new, reason = 0, ("end" if is_last else "gap")
        elif position != 0:
            if bars_held < knobs.min_hold:
                pass  # locked by the minimum holding period
            elif wanted != position:
                new, reason = wanted, "signal"
            elif knobs.filter_exit and not filter_passes:
                new, reason = 0, "filter"
        else:
            new = wanted

        opening = new != 0 and new != position
        if opening:
            day = bar.ts_ms // DAY_MS
            in_cooldown = last_exit_row is not None and row - last_exit_row <= knobs.cooldown
            flip_with_cooldown = position != 0 and knobs.cooldown > 0
            over_cap = knobs.max_per_day is not None and entries_per_day.get(day, 0) >= knobs.max_per_day
            if in_cooldown or flip_with_cooldown or not filter_passes or over_cap:
                new = 0
            else:
                entries_per_day[day] = entries_per_day.get(day, 0) + 1

        if position != 0 and new != position:
            last_exit_row = row
        else:
            reason = ""
        if new != 0 and new != position:
            bars_held = 0
        if new != 0:
            bars_held += 1
        positions.append(new)
        reasons.append(reason)
        position = new
    return positions, reasons


def _legs(bars: list[Bar], row: int, previous: int, position: int) -> tuple[float, float, float]:
    """(old position's leg, new position's leg, fill price) of one row, as doc/backtest.md states them."""
    bar = bars[row]
    has_next = row + 1 < len(bars) and bars[row + 1].ts_ms == bar.ts_ms + HOUR_MS
    if not has_next:
        assert position == 0, "the engine closes every position before a gap or the end"
        return 0.0, 0.0, bar.close  # closed at this bar's close: nothing earned
    if position == previous:
        return 0.0, max(position * (bars[row + 1].close / bar.close - 1), -1.0), math.nan
    fill = bar.fill if math.isfinite(bar.fill) else bars[row + 1].close
    old_leg = max(previous * (fill / bar.close - 1), -1.0)  # no leg loses more than everything
    new_leg = max(position * (bars[row + 1].close / fill - 1), -1.0)
    return old_leg, new_leg, fill


def reference_returns(bars: list[Bar], positions: list[int], fee_rates: list[float]) -> tuple[list[float], list[list[float]]]:
    """Gross return of each bar and net return per fee rate, for the given positions."""
    gross: list[float] = []
    net: list[list[float]] = [[] for _ in fee_rates]
    previous = 0
    for row, (bar, position) in enumerate(zip(bars, positions)):
        old_leg, new_leg, _ = _legs(bars, row, previous, position)
        value = (1 + old_leg) * (1 + new_leg) - 1
        gross.append(value)
        for j, rate in enumerate(fee_rates):
            net[j].append(max(value - (rate + bar.slip) * abs(position - previous), -1.0))
        previous = position
    return gross, net


def reference_trades(bars: list[Bar], positions: list[int], reasons: list[str], fee_rates: list[float]) -> list[dict]:
    """Each trade: entry and exit rows, side, prices, gross return, net per fee rate, exit reason."""
    trades: list[dict] = []
    open_trade: dict | None = None
    previous = 0
    for row, position in enumerate(positions):
        old_leg, new_leg, fill = _legs(bars, row, previous, position)
        if open_trade is not None and position != previous:
            growth = open_trade.pop("growth") * (1 + old_leg)
            entry_side = open_trade.pop("entry_slip")
            open_trade.update(exit=row, exit_price=fill, reason=reasons[row], gross=growth - 1, net=[
                max(growth * (1 - rate - entry_side) * (1 - rate - bars[row].slip) - 1, -1.0) for rate in fee_rates])
            trades.append(open_trade)
            open_trade = None
        if position != 0 and position != previous:
            open_trade = {"entry": row, "side": position, "entry_price": fill, "growth": 1.0, "entry_slip": bars[row].slip}
        if open_trade is not None:
            open_trade["growth"] *= 1 + new_leg
        previous = position
    return trades
