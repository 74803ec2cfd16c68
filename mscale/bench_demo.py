"""Benchmark of `make demo` and `mscale backtest --run`: `mscale bench demo` (part of `make bench`).

1. `mscale demo` in a fresh folder (a new process, nothing built: the demo market, features,
   training with `--compare`, backtest and report all from scratch), each step's seconds.
   Target: < 3 minutes on 2 cores after set-up (creating .venv is not counted).
2. `mscale backtest --run` on that run, a new process each time, report included, median of 3.
   Target: < 3 s.
Quick: a 3-month market, the demo's target scaled by the months. Everything is written in the
bench's work folder.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TARGET_DEMO_S = 180.0  # 6 months
TARGET_RERUN_S = 3.0


def run(*, quick: bool = False, work_dir: Path | None = None, report=None) -> list[dict]:
    """Time `mscale demo` from scratch and `mscale backtest --run` on its run, printing each figure."""
    from mscale.bench import Report, default_work_dir
    from mscale.config import load_config

    report = report or Report()
    start = len(report.rows)
    months, n_splits = (3, 2) if quick else (6, 5)  # 3 months hold too few rows for 5 folds
    base = Path(work_dir) if work_dir else default_work_dir(load_config()) / "demo"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-", dir=base) as tmp:
        flags = ["--data-dir", f"{tmp}/data", "--warehouse", f"{tmp}/w.duckdb", "--quiet"]
        script = textwrap.dedent(f"""
            import json, sys
            from mscale.config import load_config
            from mscale.demo_run import run_demo
            cfg = load_config(data_dir="{tmp}/data", warehouse="{tmp}/w.duckdb", exp_dir="{tmp}/_exp", quiet=True)
            out = run_demo(cfg, months={months}, n_splits={n_splits}, echo=lambda line: None)
            print(json.dumps({{"steps": out["steps"], "run": str(out["run"])}}))
        """)
        report.step(f"mscale demo in a fresh folder: 3 symbols x {months} months, features, train --compare "
                    f"({n_splits} folds), report")
        started = time.perf_counter()
        done = _run_checked([sys.executable, "-c", script], "mscale demo")
        total = time.perf_counter() - started
        result = json.loads(done.stdout.strip().splitlines()[-1])
        target = TARGET_DEMO_S * months / 6
        report.row(f"mscale demo (make demo after set-up), fresh, 3 symbols x {months} months, {n_splits} folds",
                   f"{total:.1f} s", f"< {target:.0f} s", total < target)
        for step, seconds in result["steps"].items():
            report.row(f"  {step}", f"{seconds:.1f} s")
        report.step("mscale backtest --run on that run, 3 times")
        times = []
        for _ in range(3):
            started = time.perf_counter()
            _run_checked([sys.executable, "-m", "mscale", "backtest", "--run", result["run"], *flags],
                         "mscale backtest --run")
            times.append(time.perf_counter() - started)
        rerun = statistics.median(times)
        report.row("mscale backtest --run on the demo run (new process, report included)",
                   f"{rerun:.2f} s", f"< {TARGET_RERUN_S:.0f} s", rerun < TARGET_RERUN_S)
    return report.rows[start:]


def _run_checked(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    """Run `cmd`; a failure is one line naming the step and the child's last error line."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        from mscale.errors import MscaleError

        last = ([line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"])[-1]
        raise MscaleError(f"bench demo: {what} failed (exit {done.returncode}): {last}")
    return done
