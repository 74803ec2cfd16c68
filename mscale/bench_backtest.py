"""Benchmark of the backtest engine: `mscale bench backtest [--quick]` (part of `make bench`).

Measured in one run, on synthetic inputs (random probabilities, so positions change often and
branches are unpredictable: a hard case), every figure the median of several repeats:

1. compile: a fresh process with an empty numba cache compiles every kernel (seconds, once per
   machine: later processes load the cache);
2. engine: 100 tokens x 5 years of hourly bars (4.38M bars), every knob on (filters on both
   auxiliary probabilities with filter exits, min_hold, cooldown, daily cap, long and short),
   three fee tiers, next-minute fills: the path-dependent position pass plus the booking of gross
   and net returns per tier, output arrays allocated per run. Target >= 50M bars/s on one core;
3. the plain-Python reference on one token's 5 years, for the ratio the compiled pass buys;
4. full `run_backtest` on the same prepared bars (positions, buy-and-hold, latency passes, equity curves,
   trades, pooled portfolio, metrics per token and tier), for scale;
5. tuning's hot path: one token-fold validation slice (1,500 bars) x 1,000 threshold pairs
   through `sweep`. Target < 0.2 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HOUR_MS = 3_600_000
START_MS = 1_546_300_800_000  # 2019-01-01 00:00 UTC
TARGET_BARS_PER_S = 50e6
TARGET_SWEEP_S = 0.2


def synthetic_inputs(tokens: int, bars: int, *, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Predictions and prices for `tokens` x `bars` hourly rows, about 0.1% of hours missing."""
    rng = np.random.default_rng(seed)
    symbols = [f"T{i:03d}USDT" for i in range(tokens)]
    code = np.repeat(np.arange(tokens, dtype=np.int32), bars)
    ts = np.tile(START_MS + HOUR_MS * np.arange(bars, dtype=np.int64), tokens)
    keep = rng.random(len(ts)) > 0.001
    code, ts = code[keep], ts[keep]
    n = len(ts)
    p_up = rng.random(n) * 0.6
    p_down = rng.random(n) * 0.4
    symbol = pa.DictionaryArray.from_arrays(pa.array(code), pa.array(symbols)).cast(pa.string())
    stamp = pa.array(ts * 1000).cast(pa.timestamp("us", tz="UTC"))
    predictions = pa.table({
        "symbol": symbol, "ts": stamp, "p_up": p_up, "p_down": p_down, "p_flat": 1 - p_up - p_down,
        "p_vol_high": rng.random(n), "p_volm_up": rng.random(n),
    })
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    prices = pa.table({"symbol": symbol, "ts": stamp, "close": close,
                       "fill_next_minute": close * np.exp(rng.normal(0, 1e-3, n))})
    return predictions, prices


def _median(fn, repeats: int) -> float:
    fn()  # warm: compiled, caches loaded
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compile_seconds(work_dir: Path | None = None) -> float:
    """Seconds a fresh process with an empty numba cache (in `work_dir`) spends on its first
    backtest and sweep, minus the same work once compiled."""
    script = textwrap.dedent("""
        import time
        from mscale.bench_backtest import synthetic_inputs
        from mscale.backtest import Rules, prepare_bars, run_backtest, sweep, threshold_grid
        bars = prepare_bars(*synthetic_inputs(2, 200))
        rules = Rules(filter="both", min_hold=2, cooldown=1, max_trades_per_day=3, filter_exit=True)
        def work():
            run_backtest(bars, rules=rules, fill="next_minute")
            sweep(bars, threshold_grid([0.1, 0.2], [0.1]), rules=rules)
        t = time.perf_counter(); work(); first = time.perf_counter() - t
        t = time.perf_counter(); work(); again = time.perf_counter() - t
        print(first - again)
    """)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(*, quick: bool = False, work_dir: Path | None = None, report=None) -> list[dict]:
    """Run the backtest benchmarks, printing each figure as it is measured; returns the rows.
    Quick: 100 tokens x 1 year; the targets are rates and sizes that do not change."""
    from mscale.backtest import Rules, prepare_bars, run_backtest, sweep, threshold_grid
    from mscale.backtest.costs import slippage_rates
    from mscale.backtest.engine import simulate
    from mscale.backtest.reference import Bar, Knobs, reference_positions, reference_returns
    from mscale.bench import Report

    report = report or Report()
    start = len(report.rows)
    tokens, years, repeats = (100, 1, 3) if quick else (100, 5, 5)
    per_token = 8760 * years
    rules = Rules(theta_long=0.1, theta_short=0.1, filter="both", theta_vol=0.3, theta_volm=0.3, filter_exit=True,
                  min_hold=3, cooldown=2, max_trades_per_day=4)
    rates = np.array([0.0, 2.0e-4, 5.4e-4])

    report.step("compiling every kernel in a fresh process (empty numba cache)")
    report.row("numba compile, cold cache (once per machine)", f"{compile_seconds(work_dir):.1f} s")

    report.step(f"engine: {tokens} tokens x {years} year(s) of hourly bars, every knob on")
    predictions, prices = synthetic_inputs(tokens, per_token)
    t = time.perf_counter()
    bars = prepare_bars(predictions, prices)
    prepare_s = time.perf_counter() - t
    slip, step = slippage_rates(None, {}, bars.first)
    fill = bars.fills["next_minute"]
    seconds = _median(lambda: simulate(bars, rules, fill, slip, step, rates), repeats)
    rate = bars.n / seconds
    report.row(f"engine, {tokens} tokens x {years}y ({bars.n / 1e6:.2f}M bars), all knobs, 3 tiers",
               f"{rate / 1e6:.1f}M bars/s", ">= 50M bars/s", rate >= TARGET_BARS_PER_S)

    report.step("the plain-Python reference on one token, for the ratio")
    one = bars.slice(0, int(np.flatnonzero(bars.first)[1]) if tokens > 1 else bars.n)
    ref_bars = [Bar(ts_ms=int(one.ts_ms[i]), p_up=(1 + one.score[i]) / 2, p_down=(1 - one.score[i]) / 2,
                    close=float(one.close[i]), fill=float(one.fills["next_minute"][i]), p_vol=float(one.aux["p_vol_high"][i]),
                    p_volm=float(one.aux["p_volm_up"][i]), th_long=0.1, th_short=0.1, th_vol=0.3, th_volm=0.3)
                for i in range(one.n)]
    knobs = Knobs(use_vol=True, use_volm=True, filter_exit=True, min_hold=3, cooldown=2, max_per_day=4)
    t = time.perf_counter()
    reference_returns(ref_bars, reference_positions(ref_bars, knobs)[0], list(rates))
    reference_s = time.perf_counter() - t
    compiled_s = _median(lambda: simulate(one, rules, one.fills["next_minute"], slip, step, rates), repeats)
    report.row(f"compiled vs plain-Python reference, 1 token x {years}y", f"{reference_s / compiled_s:,.0f}x faster")

    report.step("the full run_backtest on the same bars")
    full_s = _median(lambda: run_backtest(bars, rules=rules, fill="next_minute"), max(1, repeats // 2))
    report.row(f"full backtest (tables, trades, pool, metrics), same {bars.n / 1e6:.2f}M bars", f"{full_s:.2f} s")
    report.row("  of which prepare_bars", f"{prepare_s:.2f} s")

    report.step("tuning: 1,000 threshold pairs on a 1,500-bar validation slice")
    fold = bars.slice(0, 1500)
    combos = threshold_grid(np.linspace(0.0, 0.5, 40), np.linspace(0.0, 0.5, 25), [0.3], [0.3])
    sweep_s = _median(lambda: sweep(fold, combos, rules=rules, fee_bps=2.0, fill="next_minute"), repeats)
    report.row("tuning sweep, 1,500 bars x 1,000 threshold pairs", f"{sweep_s:.3f} s", "< 0.2 s",
               sweep_s < TARGET_SWEEP_S)
    return report.rows[start:]
