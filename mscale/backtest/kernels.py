"""The compiled core of the backtest: one O(n) pass per job, over plain numpy arrays.

All tokens are laid end to end in one array (sorted by symbol, then ts); `first[i]` marks a
token's first bar and `has_next[i]` says whether the bar one hour later is the next row (False
at a gap and at a token's last bar). Nothing here allocates per bar or calls back into Python.

numba compiles these loops: the position pass is path dependent (holding periods, cooldowns and
daily caps depend on earlier decisions), so it cannot be written as array expressions, and tuning
calls it for thousands of threshold sets per fold. `mscale.backtest.reference` is the
plain-Python twin that tests compare every kernel with.

Time alignment: the decision at row i uses only row i's inputs (probabilities and thresholds at
ts_i) and the state left by rows before i; the bar return of row i is earned over (ts_i, ts_i + 1 h].
"""

from __future__ import annotations

import numpy as np
from numba import njit

# exit reasons, stored per row where a position is closed (also when it flips)
NONE, SIGNAL, FILTER, GAP, END = 0, 1, 2, 3, 4
EXIT_REASONS = ("", "signal", "filter", "gap", "end")


@njit(cache=True, inline="always")
def _desired(score, th_long, th_short, long_only):
    """+1 when P(+1) - P(-1) > θ_long, -1 when < -θ_short (unless long-only), else 0.
    Written without branches: noisy scores would mispredict them (measured 1.7x faster)."""
    return np.int64(score > th_long) - np.int64((score < -th_short) & (not long_only))


@njit(cache=True, inline="always")
def _new_row(first, day, prev, held, cool, n_day, today):
    """The state at the start of a row: fresh (flat, no counters) at a token's first row; the
    count of the day's entries restarts when the UTC day changes."""
    if first:
        return 0, 0, 0, 0, day
    if day != today:
        return prev, held, cool, 0, day
    return prev, held, cool, n_day, today


@njit(cache=True, inline="always")
def _decide(prev, held, cool, n_day, desired, filter_ok, has_next, is_last,
            filter_exit, min_hold, cooldown, max_per_day):
    """One step of the position state machine.

    State: `prev` (position held into this row), `held` (rows it has been held), `cool` (rows
    that must still stay flat), `n_day` (entries so far on this row's UTC day).
    Returns (position, exit_reason, held, cool, n_day) after the decision at this row.
    """
    blocked = cool > 0  # this row is inside a cooldown
    if cool > 0:
        cool -= 1
    reason = NONE
    if not has_next:
        # the hour after this row is missing (gap) or does not exist (end): close at the last price
        target = 0
        reason = END if is_last else GAP
    elif prev != 0 and held < min_hold:
        target = prev
    elif prev != 0 and desired != prev:
        target = desired
        reason = SIGNAL
    elif prev != 0 and filter_exit and not filter_ok:
        target = 0
        reason = FILTER
    else:
        target = desired if prev == 0 else prev
    if target != 0 and target != prev:
        # a new position (from flat or a flip) needs the filter, no cooldown, and room in the day's cap
        capped = max_per_day >= 0 and n_day >= max_per_day
        flip_in_cooldown = prev != 0 and cooldown > 0
        if blocked or flip_in_cooldown or not filter_ok or capped:
            target = 0
    if prev != 0 and target != prev:
        cool = cooldown
    else:
        reason = NONE
    if target != 0 and target != prev:
        n_day += 1
        held = 0
    if target != 0:
        held += 1
    return target, reason, held, cool, n_day


@njit(cache=True, inline="always")
def _filter_ok(p_vol, p_volm, th_vol, th_volm, use_vol, use_volm):
    """Each filter that is on passes when its probability exceeds its threshold (no branches)."""
    return ((not use_vol) | (p_vol > th_vol)) & ((not use_volm) | (p_volm > th_volm))


@njit(cache=True, inline="always")
def _bar_parts(prev, p, close, next_close, fill, has_next):
    """(exit part, hold part, fill price) of one row's return.

    Unchanged position: it earns close -> next close. A change at this row is filled at `fill`
    (the close itself for close fills; NaN = no minute bar, then the next hourly close): the old
    position earns close -> fill, the new one fill -> next close. With no next bar the old
    position is closed at this row's close (the last known price) and nothing more is earned.
    A leg loses at most everything (-1: a short whose price more than doubles is ruined).
    """
    if p == prev:
        if has_next and p != 0:
            return 0.0, max(p * (next_close / close - 1.0), -1.0), np.nan
        return 0.0, 0.0, np.nan
    if not has_next:
        return 0.0, 0.0, close
    f = fill if np.isfinite(fill) else next_close
    exit_part = max(prev * (f / close - 1.0), -1.0) if prev != 0 else 0.0
    hold_part = max(p * (next_close / f - 1.0), -1.0) if p != 0 else 0.0
    return exit_part, hold_part, f


@njit(cache=True)
def positions(score, p_vol, p_volm, aux_step, th_long, th_short, th_vol, th_volm, th_step,
              first, has_next, is_last, day,
              long_only, use_vol, use_volm, filter_exit, min_hold, cooldown, max_per_day,
              pos, reason):
    """The path-dependent pass: writes the position (-1, 0, +1) decided at every row into `pos`
    and the exit reason where one is closed into `reason`.

    Threshold arrays are read at `i * th_step` and the auxiliary probabilities at
    `i * aux_step` (step 0: one value for every row, e.g. a stand-in for probabilities no filter
    uses). Every token starts flat with fresh counters. Outputs
    are passed in: numpy allocates large arrays several times faster than compiled code does.
    (Fusing this loop with `returns` measured 2x slower than running the two loops.)
    """
    prev = 0
    held = 0
    cool = 0
    n_day = 0
    today = 0
    for i in range(score.shape[0]):
        prev, held, cool, n_day, today = _new_row(first[i], day[i], prev, held, cool, n_day, today)
        k = i * th_step
        a = i * aux_step
        desired = _desired(score[i], th_long[k], th_short[k], long_only)
        ok = _filter_ok(p_vol[a], p_volm[a], th_vol[k], th_volm[k], use_vol, use_volm)
        p, r, held, cool, n_day = _decide(prev, held, cool, n_day, desired, ok, has_next[i], is_last[i],
                                          filter_exit, min_hold, cooldown, max_per_day)
        pos[i] = p
        reason[i] = r
        prev = p


@njit(cache=True)
def returns(pos, close, fill, slip, slip_step, first, has_next, rates, gross, net):
    """Books the positions `pos`: writes each row's `gross` return and `net[tier, row]` = gross -
    (fee rate + slippage) x |Δposition|. Equity curves are derived from `net` by `compound`.
    """
    prev = 0
    for i in range(pos.shape[0]):
        if first[i]:
            prev = 0
        p = pos[i]
        more = has_next[i]
        next_close = close[i + 1] if more else np.nan
        a, b, _ = _bar_parts(prev, p, close[i], next_close, fill[i], more)
        g = (1.0 + a) * (1.0 + b) - 1.0
        gross[i] = g
        dp = abs(p - prev)
        s = slip[i * slip_step]
        for j in range(rates.shape[0]):
            net[j, i] = max(g - (rates[j] + s) * dp, -1.0)  # ruin: equity stops at 0
        prev = p


@njit(cache=True)
def compound(returns, first, out):
    """Writes the equity after each row into `out`: returns compounded from 1 at every token's
    first row (so the value at the end of the row's hour)."""
    running = 1.0
    for i in range(returns.shape[0]):
        if first[i]:
            running = 1.0
        running *= 1.0 + returns[i]
        out[i] = running


@njit(cache=True)
def trades(pos, reason, close, fill, slip, slip_step, first, has_next, rates):
    """One record per trade (a run of one non-zero position): entry row, exit row, side, gross
    return, net return per tier, entry and exit price, exit reason.

    A trade's gross return compounds its legs from the entry row to the exit row (the same legs
    `simulate` books); net also pays its entry and exit side (fee rate + slippage) once each.
    Every token ends flat (its last row is forced flat), so every trade has an exit.
    """
    n = pos.shape[0]
    n_trades = 0
    prev = 0
    for i in range(n):
        if first[i]:
            prev = 0
        if pos[i] != 0 and pos[i] != prev:
            n_trades += 1
        prev = pos[i]
    k = rates.shape[0]
    entry = np.empty(n_trades, np.int64)
    exit_ = np.empty(n_trades, np.int64)
    side = np.empty(n_trades, np.int8)
    gross = np.empty(n_trades)
    net = np.empty((k, n_trades))
    entry_price = np.empty(n_trades)
    exit_price = np.empty(n_trades)
    exit_reason = np.empty(n_trades, np.int8)
    t = -1
    growth = 1.0
    entry_cost = 0.0
    prev = 0
    for i in range(n):
        if first[i]:
            prev = 0
        p = pos[i]
        if p == 0 and prev == 0:
            continue
        next_close = close[i + 1] if has_next[i] else np.nan
        a, b, f = _bar_parts(prev, p, close[i], next_close, fill[i], has_next[i])
        if prev != 0 and p != prev:  # the open trade ends at this row
            growth *= 1.0 + a
            exit_[t] = i
            exit_price[t] = f
            exit_reason[t] = reason[i]
            gross[t] = growth - 1.0
            exit_cost = slip[i * slip_step]
            for j in range(k):
                net[j, t] = max(growth * (1.0 - rates[j] - entry_cost) * (1.0 - rates[j] - exit_cost) - 1.0, -1.0)
        if p != 0 and p != prev:  # a new trade starts at this row
            t += 1
            entry[t] = i
            side[t] = p
            entry_price[t] = f
            entry_cost = slip[i * slip_step]
            growth = 1.0
        if p != 0:
            growth *= 1.0 + b
        prev = p
    return entry, exit_, side, gross, net, entry_price, exit_price, exit_reason


@njit(cache=True)
def sweep(score, p_vol, p_volm, aux_step, combos, close, fill, slip, slip_step,
          first, has_next, is_last, day,
          long_only, use_vol, use_volm, filter_exit, min_hold, cooldown, max_per_day, rate):
    """Tuning's hot path: for each row of `combos` (θ_long, θ_short, θ_vol, θ_volm) run the
    position pass and the net returns at one fee `rate`, keeping only running sums.

    Returns (sum of net returns, sum of squares, sum of log growth, entries, rows in the market)
    per combination; `mscale.backtest.sweep` turns them into Sharpe ratios. Same state machine and
    bar arithmetic as `positions` and `returns`.
    """
    m = combos.shape[0]
    n = score.shape[0]
    s1 = np.zeros(m)
    s2 = np.zeros(m)
    log_growth = np.zeros(m)
    entries = np.zeros(m, np.int64)
    in_market = np.zeros(m, np.int64)
    for c in range(m):
        th_long = combos[c, 0]
        th_short = combos[c, 1]
        th_vol = combos[c, 2]
        th_volm = combos[c, 3]
        prev = 0
        held = 0
        cool = 0
        n_day = 0
        today = 0
        for i in range(n):
            prev, held, cool, n_day, today = _new_row(first[i], day[i], prev, held, cool, n_day, today)
            desired = _desired(score[i], th_long, th_short, long_only)
            ok = _filter_ok(p_vol[i * aux_step], p_volm[i * aux_step], th_vol, th_volm, use_vol, use_volm)
            p, _, held, cool, n_day = _decide(prev, held, cool, n_day, desired, ok, has_next[i], is_last[i],
                                              filter_exit, min_hold, cooldown, max_per_day)
            next_close = close[i + 1] if has_next[i] else np.nan
            a, b, _f = _bar_parts(prev, p, close[i], next_close, fill[i], has_next[i])
            r = max((1.0 + a) * (1.0 + b) - 1.0 - (rate + slip[i * slip_step]) * abs(p - prev), -1.0)
            s1[c] += r
            s2[c] += r * r
            log_growth[c] += np.log1p(r)
            if p != 0 and p != prev:
                entries[c] += 1
            if p != 0:
                in_market[c] += 1
            prev = p
    return s1, s2, log_growth, entries, in_market
