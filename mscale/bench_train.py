"""Benchmark of `python -m mscale.train`: `mscale bench train [--quick]` (part of `make bench`).

Walk-forward with 5 splits on the demo market, 3 symbols x 2 years of hourly rows, LightGBM, three
models per fold (direction + two auxiliary), both feature sets (`--compare`), on this machine's
cores. Reports the wall time (target < 60 s), the time per fold, and the shares spent pulling
features, labels and prices from DuckDB (target < 10%) and tuning thresholds. Each figure is the
median of `repeats` runs. The market and its warehouse are generated once and cached under
/tmp/mscale-bench/train (they depend only on the symbols, start, months and seed).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from datetime import date
from pathlib import Path

from mscale.config import load_config

BASE = Path("/tmp/mscale-bench/train")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
START = date(2022, 1, 1)
SEED = 7
TARGET_S = 60.0
TARGET_PULL_SHARE = 0.10


def _market(months: int) -> Path:
    """The cached demo market and its built warehouse for `months` months."""
    from mscale.demo import write_demo
    from mscale.warehouse.build import build_features

    from mscale.warehouse import render as r

    root = BASE / f"{START:%Y%m%d}-{months}m-{SEED}"
    cfg = load_config(data_dir=root / "data", warehouse=root / "w.duckdb", quiet=True)
    if not (root / "data" / "ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"  generating {len(SYMBOLS)} symbols x {months} months of demo market under {root} (once)")
        write_demo(cfg, symbols=SYMBOLS, start=START, months=months, seed=SEED)
        (root / "data" / "ready").touch()
    sql = r.sql_fingerprint(cfg.sql_dir, r.params_from_config(cfg))
    if not (root / f"warehouse-{sql}").exists():  # the SQL changed since the warehouse was built
        print(f"  building its warehouse (SQL {sql})")
        build_features(cfg)
        (root / f"warehouse-{sql}").touch()
    return root


def run(*, quick: bool = False, repeats: int = 3) -> list[dict]:
    from mscale.research.pipeline import run_training

    months, repeats, n_splits = (4, 1, 2) if quick else (24, repeats, 5)
    root = _market(months)
    results = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as runs:
            cfg = load_config(data_dir=root / "data", warehouse=root / "w.duckdb", quiet=True, exp_dir=runs,
                              train={"model": "lgbm", "compare": True, "n_splits": n_splits})
            result = run_training(cfg)
            results.append((result.timings, len(result.arms["multiscale"].columns)))
    total = statistics.median(t["total_s"] for t, _ in results)
    pull = statistics.median(t["pull_s"] / t["total_s"] for t, _ in results)
    tuning = statistics.median(t["tuning_s"] / t["total_s"] for t, _ in results)
    folds = results[0][0]["folds"]
    rows = [
        {"benchmark": f"train --compare, lgbm, {folds} folds, {len(SYMBOLS)} symbols x {months} months "
                      f"({results[0][1]} features)", "value": f"{total:.1f} s", "target": f"< {TARGET_S:.0f} s",
         "ok": total < TARGET_S or quick},
        {"benchmark": "  per fold (both arms, all tokens)", "value": f"{total / folds:.1f} s", "target": "", "ok": True},
        {"benchmark": "  pulling features, labels, prices from DuckDB", "value": f"{pull:.1%}",
         "target": f"< {TARGET_PULL_SHARE:.0%}", "ok": pull < TARGET_PULL_SHARE},
        {"benchmark": "  tuning thresholds", "value": f"{tuning:.1%}", "target": "", "ok": True},
    ]
    from mscale.bench import _print

    _print(rows)
    return rows
