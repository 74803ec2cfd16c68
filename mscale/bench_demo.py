"""Benchmark of `make demo` and `mscale backtest --run`: `mscale bench demo` (part of `make bench`).

1. `mscale demo` in a fresh folder (a new process, nothing built: the demo market, features,
   training with `--compare`, backtest and report all from scratch), each step's seconds.
   Target: < 3 minutes on 2 cores after set-up (creating .venv is not counted).
2. `mscale backtest --run` on that run, a new process each time, report included, median of 3.
   Target: < 3 s.
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

TARGET_DEMO_S = 180.0
TARGET_RERUN_S = 3.0


def run(*, quick: bool = False) -> list[dict]:
    months = 3 if quick else 6
    rows = []
    with tempfile.TemporaryDirectory(prefix="mscale-bench-demo-") as tmp:
        flags = ["--data-dir", f"{tmp}/data", "--warehouse", f"{tmp}/w.duckdb", "--quiet"]
        script = textwrap.dedent(f"""
            import json, sys
            from mscale.config import load_config
            from mscale.demo_run import run_demo
            cfg = load_config(data_dir="{tmp}/data", warehouse="{tmp}/w.duckdb", exp_dir="{tmp}/_exp", quiet=True)
            out = run_demo(cfg, months={months}, echo=lambda line: None)
            print(json.dumps({{"steps": out["steps"], "run": str(out["run"])}}))
        """)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        total = time.perf_counter() - started
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"benchmark": f"mscale demo (make demo after set-up), fresh, 3 symbols x {months} months",
                     "value": f"{total:.1f} s", "target": f"< {TARGET_DEMO_S:.0f} s", "ok": total < TARGET_DEMO_S})
        for step, seconds in result["steps"].items():
            rows.append({"benchmark": f"  {step}", "value": f"{seconds:.1f} s", "target": "", "ok": True})
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mscale", "backtest", "--run", result["run"], *flags],
                           capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - started)
        rerun = statistics.median(times)
        rows.append({"benchmark": "mscale backtest --run on the demo run (new process, report included)",
                     "value": f"{rerun:.2f} s", "target": f"< {TARGET_RERUN_S:.0f} s", "ok": rerun < TARGET_RERUN_S})
    from mscale.bench import _print

    _print(rows)
    return rows
