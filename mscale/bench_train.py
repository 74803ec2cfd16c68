"""Benchmark of `python -m mscale.train`: `mscale bench train [--quick]` (part of `make bench`).

Walk-forward with 5 splits on the demo market, 3 symbols x 2 years of hourly rows, LightGBM, three
models per fold (direction + two auxiliary), both feature sets (`--compare`), on this machine's
cores. Reports the wall time (target < 60 s), the time per fold, and the shares spent pulling
features, labels and prices from DuckDB (target < 10%) and tuning thresholds. Each figure is the
median of `repeats` runs. The market and its warehouse are generated once and cached in the
bench's work folder (`<work dir>/train`; they depend only on the symbols, start, months and seed).
Quick: 4 months, 2 splits, 1 run, against a target scaled by the training work (below).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from datetime import date
from pathlib import Path

from mscale.config import load_config

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
START = date(2022, 1, 1)
SEED = 7
TARGET_S = 60.0
TARGET_PULL_SHARE = 0.10


def _work_units(months: int, n_splits: int) -> float:
    """Training rows summed over the folds, in months: fold k of n trains on k / (n + 1) of them."""
    return months * sum(range(1, n_splits + 1)) / (n_splits + 1)


# quick mode's wall-time target: the full target scaled by the training work, plus the fixed cost
# of a run (reading the warehouse, building the models, the backtest and its tables)
TARGET_QUICK_S = 8.0 + TARGET_S * _work_units(4, 2) / _work_units(24, 5)


def _market(months: int, base: Path, report) -> Path:
    """The cached demo market and its built warehouse for `months` months, under `base`."""
    from mscale.demo import write_demo
    from mscale.warehouse.build import build_features

    from mscale.warehouse import render as r

    root = base / f"{START:%Y%m%d}-{months}m-{SEED}"
    cfg = load_config(data_dir=root / "data", warehouse=root / "w.duckdb", quiet=True)
    if not (root / "data" / "ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        report.step(f"generating {len(SYMBOLS)} symbols x {months} months of demo market under {root} (once)")
        write_demo(cfg, symbols=SYMBOLS, start=START, months=months, seed=SEED)
        (root / "data" / "ready").touch()
    sql = r.sql_fingerprint(cfg.sql_dir, r.params_from_config(cfg))
    if not (root / f"warehouse-{sql}").exists():  # the SQL changed since the warehouse was built
        report.step(f"building its warehouse (SQL {sql})")
        build_features(cfg)
        (root / f"warehouse-{sql}").touch()
    return root


def run(*, quick: bool = False, repeats: int = 3, work_dir: Path | None = None, report=None) -> list[dict]:
    """Time `repeats` training runs (quick: one short one), printing each figure; returns the rows."""
    from mscale.bench import Report, default_work_dir
    from mscale.research.pipeline import run_training

    report = report or Report()
    start = len(report.rows)
    base = Path(work_dir) if work_dir else default_work_dir(load_config()) / "train"
    base.mkdir(parents=True, exist_ok=True)
    months, repeats, n_splits = (4, 1, 2) if quick else (24, repeats, 5)
    root = _market(months, base, report)
    results = []
    for i in range(repeats):
        report.step(f"training run {i + 1}/{repeats}: lgbm --compare, {n_splits} folds")
        with tempfile.TemporaryDirectory(dir=base) as runs:
            cfg = load_config(data_dir=root / "data", warehouse=root / "w.duckdb", quiet=True, exp_dir=runs,
                              train={"model": "lgbm", "compare": True, "n_splits": n_splits})
            result = run_training(cfg)
            results.append((result.timings, len(result.arms["multiscale"].columns)))
    total = statistics.median(t["total_s"] for t, _ in results)
    pull = statistics.median(t["pull_s"] / t["total_s"] for t, _ in results)
    tuning = statistics.median(t["tuning_s"] / t["total_s"] for t, _ in results)
    folds = results[0][0]["folds"]
    target = TARGET_QUICK_S if quick else TARGET_S
    report.row(f"train --compare, lgbm, {folds} folds, {len(SYMBOLS)} symbols x {months} months "
               f"({results[0][1]} features)", f"{total:.1f} s", f"< {target:.0f} s", total < target)
    report.row("  per fold (both arms, all tokens)", f"{total / folds:.1f} s")
    report.row("  pulling features, labels, prices from DuckDB", f"{pull:.1%}", f"< {TARGET_PULL_SHARE:.0%}",
               pull < TARGET_PULL_SHARE)
    report.row("  tuning thresholds", f"{tuning:.1%}")
    return report.rows[start:]
