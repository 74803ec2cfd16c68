"""`mscale bench` / `make bench`: the ingest benchmarks, the backtest engine, training, then the feature build.

Figures are medians of several runs measured in one process; targets from the issues are printed
beside them. Nothing here is asserted: machines are shared and noisy, so read the ratios.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import tempfile
import time
import zipfile
from datetime import date
from pathlib import Path

import numpy as np

from mscale.config import Config


def _median_of(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def _archive_month_csv(n: int = 44_640, start_ms: int = 1_690_848_000_000, seed: int = 0) -> bytes:
    """One month of 1m klines as a spot archive CSV (no header, ms timestamps)."""
    rng = np.random.default_rng(seed)
    open_ms = start_ms + 60_000 * np.arange(n, dtype=np.int64)
    close = 30_000 * np.exp(np.cumsum(rng.standard_normal(n) * 1e-3))
    vol = rng.lognormal(0, 1, n)
    lines = [
        f"{o},{c:.2f},{c * 1.001:.2f},{c * 0.999:.2f},{c:.2f},{v:.6f},{o + 59_999},{v * c:.4f},{int(v * 50)},{v / 2:.6f},{v * c / 2:.4f},0"
        for o, c, v in zip(open_ms, close, vol)
    ]
    return ("\n".join(lines) + "\n").encode()


def _rest_page(n: int = 1000, start_ms: int = 1_690_848_000_000) -> bytes:
    rows = [
        [start_ms + 60_000 * i, "29000.01", "29010.50", "28990.00", "29005.12", "12.345", start_ms + 60_000 * i + 59_999,
         "358000.12", 321, "6.1", "176000.3", "0"]
        for i in range(n)
    ]
    return json.dumps(rows, separators=(",", ":")).encode()


def bench_ingest(*, repeats: int = 5, demo: bool = True) -> list[dict]:
    """CSV->Parquet for one month, REST page parsing, and demo-data generation."""
    from mscale.ingest.archive import read_archive_zip
    from mscale.ingest.rest import parse_klines_page
    from mscale.store import write_atomic

    rows = []
    csv = _archive_month_csv()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("BTCUSDT-1m-2023-08.csv", csv)
    data = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "shard.parquet"
        cpu = _median_of(lambda: write_atomic(read_archive_zip(data, "BTCUSDT", "1m"), target), repeats, time.process_time)
    rows.append({"benchmark": "bulk zip CSV -> Parquet, 44,640 rows", "value": f"{cpu:.3f} s CPU", "target": "< 0.5 s CPU",
                 "ok": cpu < 0.5})

    page = _rest_page()
    pages = 200
    secs = _median_of(lambda: [parse_klines_page(page, "BTCUSDT", "1m") for _ in range(pages)], repeats)
    rate = pages * 1000 / secs
    rows.append({"benchmark": "REST page parsing", "value": f"{rate:,.0f} rows/s", "target": ">= 200,000 rows/s",
                 "ok": rate >= 200_000})

    if demo:
        from mscale.config import load_config
        from mscale.demo import write_demo

        def one():
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(data_dir=Path(tmp) / "data", warehouse=Path(tmp) / "w.duckdb")
                write_demo(cfg, start=date(2024, 1, 1), months=6)

        secs = _median_of(one, max(1, repeats // 2))
        rows.append({"benchmark": "demo-data, 3 symbols x 6 months", "value": f"{secs:.1f} s", "target": "< 20 s",
                     "ok": secs < 20})
    return rows


def _print(rows: list[dict]) -> None:
    width = max(len(r["benchmark"]) for r in rows)
    for r in rows:
        print(f"  {r['benchmark']:<{width}}  {r['value']:>20}   target {r['target']:<18} {'ok' if r['ok'] else 'MISSED'}")


def run_bench(cfg: Config, what: str = "all", *, quick: bool = False) -> None:
    print(f"machine: {os.cpu_count()} cores")
    if what in ("all", "ingest"):
        print("ingest:")
        _print(bench_ingest(repeats=3 if quick else 5))
    if what in ("all", "backtest"):
        from mscale import bench_backtest

        print("backtest:")
        bench_backtest.run(quick=quick)
    if what in ("all", "train"):
        from mscale import bench_train

        print("train:")
        bench_train.run(quick=quick)
    if what in ("all", "demo"):
        from mscale import bench_demo

        print("demo:")
        bench_demo.run(quick=quick)
    if what in ("all", "features"):
        from mscale import bench_features

        print("features:")
        if quick:
            bench_features.run(quick=True)
        else:
            bench_features.run()
