"""`mscale demo` (`make demo`): the product's main job on the embedded synthetic market, offline.

demo market → ingestion report → warehouse features → `train --compare` (walk-forward, which
backtests and writes the report) → a summary table and the absolute path of report.html. What is
already built is reused: the demo market is written only when its shards are missing, and the
feature cache only recomputes what changed, so a second `make demo` is faster.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import date

from mscale.config import Config
from mscale.demo import DEFAULT_SYMBOLS

DEMO_START = date(2024, 1, 1)
DEMO_MONTHS = 6


def default_splits(months: int) -> int:
    """5 walk-forward folds, fewer on a short market: the first training block (1 / (folds + 1) of
    the hours) must leave a fold at least 200 labelled fit rows after its validation slice (20%),
    the 24 h purge and the labels' one-week warm-up, i.e. about 420 hours."""
    return max(1, min(5, int(months * 730 / 420) - 1))


def demo_market_present(cfg: Config, symbols: tuple[str, ...], start: date, months: int) -> bool:
    """Every minute and hourly shard of the demo market is already there."""
    from mscale.demo import month_list
    from mscale.store import list_shards

    wanted = {(s, y, m) for s in symbols for y, m in month_list(start, months)}
    return all(wanted <= {(s.symbol, s.year, s.month) for s in list_shards(cfg.market_dir, interval)} for interval in ("1m", "1h"))


def run_demo(cfg: Config, *, symbols: tuple[str, ...] = DEFAULT_SYMBOLS, start: date = DEMO_START,
             months: int = DEMO_MONTHS, seed: int = 7, n_splits: int | None = None, echo=print) -> dict:
    """Run every step, print what each did and took; returns the steps' seconds and the report path.
    `n_splits`: walk-forward folds, default `default_splits(months)`."""
    from mscale.demo import write_demo
    from mscale.report import build_report, write_report
    from mscale.research.pipeline import run_training
    from mscale.warehouse.build import build_features

    steps: dict[str, float] = {}

    def step(name: str, fn):
        started = time.perf_counter()
        out = fn()
        steps[name] = time.perf_counter() - started
        return out

    if demo_market_present(cfg, symbols, start, months):
        echo(f"demo market: reusing {len(symbols)} symbols x {months} months under {cfg.market_dir}")
        steps["demo market"] = 0.0
    else:
        summary = step("demo market", lambda: write_demo(cfg, symbols=symbols, start=start, months=months, seed=seed))
        echo(f"demo market: {summary['minute_rows']:,} minute and {summary['hourly_rows']:,} hourly bars "
             f"under {cfg.market_dir} ({steps['demo market']:.1f} s)")
    def ingestion_report():
        reports = build_report(cfg, list(symbols))
        return reports, write_report(cfg, reports)

    reports, paths = step("ingestion report", ingestion_report)
    echo(f"ingestion report: {paths[0]} ({steps['ingestion report']:.1f} s)")
    built = step("features", lambda: build_features(cfg))
    echo(f"features: {built.months_computed} symbol-months computed, {built.months_skipped} reused "
         f"({steps['features']:.1f} s)")
    train_cfg = replace(cfg, train=replace(cfg.train, compare=True, split_mode="walk_forward",
                                           n_splits=n_splits or default_splits(months), symbols=tuple(symbols)))
    result = step("train, backtest, report", lambda: run_training(train_cfg, ingestion=reports))
    timings = result.timings
    echo(f"train --compare: {timings['folds']} walk-forward folds x 2 feature sets, backtest {timings['backtest_s']:.1f} s, "
         f"report {timings['report_s']:.1f} s ({steps['train, backtest, report']:.1f} s in all)")
    echo("")
    echo(result.summary)
    report = (result.path / "report.html").resolve()
    echo(f"report: {report}")
    echo(f"next: open the report; mscale features --list shows every feature; python -m mscale.train --help "
         f"for other models and splits; mscale backtest --run {result.path} re-runs the backtest with other knobs")
    return {"steps": steps, "report": report, "run": result.path}
