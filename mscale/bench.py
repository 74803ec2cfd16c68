"""`mscale bench` / `make bench`: the ingest benchmarks, the backtest engine, training, `make demo`,
then the feature build.

It says up front how long it should take, prints each figure as soon as it is measured, marked
`ok` or `MISSED` against its target (quick mode has its own targets for the figures whose size it
shrinks; `-` marks a figure that is only informative), and keeps its scratch data (generated
markets, warehouses, runs) in one work folder, `<data dir>/../bench-work` unless `--work-dir`,
removed at the end unless `--keep` (a kept folder is reused: the generated markets are cached
there). Figures are medians of several runs; nothing here is asserted, since machines are shared
and noisy: read the ratios.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from mscale.config import Config
from mscale.errors import MscaleError

SECTIONS = ("ingest", "backtest", "train", "demo", "features")
MARKER = ".mscale-bench"  # a work folder holding it was made by `mscale bench`, and may be removed

# Seconds each section takes on 2 cores: (full, quick), measured with `mscale bench <section>
# [--quick]` on a shared 2-core machine; each run prints its actual times beside them.
EXPECTED_S = {
    "ingest": (10, 3),
    "backtest": (25, 8),
    "train": (200, 15),  # full: the 24-month market and its warehouse are made once (~1 min) unless kept
    "demo": (45, 25),
    "features": (270, 10),  # full: 10 symbols x 2 years generated once (~30 s) unless kept
}


def _median_of(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def duration(seconds: float) -> str:
    """'45 s', '6 min', '1 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


# --- printing ------------------------------------------------------------------------------------


@dataclass
class Report:
    """Prints each figure as it is measured: name, value, target, and `ok` / `MISSED` (or `-` for a
    figure without a target); keeps them for the summary."""

    rows: list[dict] = field(default_factory=list)
    out: object = None

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def step(self, text: str) -> None:
        """A progress line: what is being measured now."""
        self._print(f"  .. {text}")

    def row(self, benchmark: str, value: str, target: str = "", ok: bool | None = None) -> dict:
        mark = "-" if ok is None else ("ok" if ok else "MISSED")
        shown = f"target {target}" if target else ""
        self._print(f"  {benchmark:<72} {value:>18}   {shown:<27} {mark}")
        row = {"benchmark": benchmark, "value": value, "target": target, "ok": ok}
        self.rows.append(row)
        return row

    def summary(self) -> str:
        marked = [r for r in self.rows if r["ok"] is not None]
        missed = [r["benchmark"].strip() for r in marked if not r["ok"]]
        text = f"{len(marked)} figures against a target: {len(marked) - len(missed)} ok, {len(missed)} MISSED"
        return text + (f" ({'; '.join(missed)})" if missed else "")


# --- the ingest benchmarks -------------------------------------------------------------------------


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


TARGET_DEMO_DATA_S = 20.0  # 3 symbols x 6 months


def bench_ingest(*, work_dir: Path, report: Report | None = None, repeats: int = 5, demo: bool = True,
                 quick: bool = False) -> list[dict]:
    """CSV->Parquet for one month, REST page parsing, and demo-data generation (3 symbols x 6
    months; quick: x 1 month, its target scaled by the months)."""
    from mscale.ingest.archive import read_archive_zip
    from mscale.ingest.rest import parse_klines_page
    from mscale.store import write_atomic

    report = report or Report()
    start = len(report.rows)
    report.step("bulk archive: one month of 1m klines, zip -> Arrow -> Parquet")
    csv = _archive_month_csv()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("BTCUSDT-1m-2023-08.csv", csv)
    data = buf.getvalue()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        target = Path(tmp) / "shard.parquet"
        cpu = _median_of(lambda: write_atomic(read_archive_zip(data, "BTCUSDT", "1m"), target), repeats, time.process_time)
    report.row("bulk zip CSV -> Parquet, 44,640 rows", f"{cpu:.3f} s CPU", "< 0.5 s CPU", cpu < 0.5)

    report.step("REST: parsing 200 pages of 1,000 klines")
    page = _rest_page()
    pages = 200
    secs = _median_of(lambda: [parse_klines_page(page, "BTCUSDT", "1m") for _ in range(pages)], repeats)
    rate = pages * 1000 / secs
    report.row("REST page parsing", f"{rate:,.0f} rows/s", ">= 200,000 rows/s", rate >= 200_000)

    if demo:
        from mscale.config import load_config
        from mscale.demo import write_demo

        months = 1 if quick else 6
        report.step(f"demo-data: 3 symbols x {months} month{'s' * (months > 1)}")

        def one():
            with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
                cfg = load_config(data_dir=Path(tmp) / "data", warehouse=Path(tmp) / "w.duckdb", quiet=True)
                write_demo(cfg, start=date(2024, 1, 1), months=months)

        secs = _median_of(one, max(1, repeats // 2))
        limit = TARGET_DEMO_DATA_S * months / 6
        report.row(f"demo-data, 3 symbols x {months} month{'s' * (months > 1)}", f"{secs:.1f} s", f"< {limit:.1f} s",
                   secs < limit)
    return report.rows[start:]


# --- the whole run -----------------------------------------------------------------------------------


def default_work_dir(cfg: Config) -> Path:
    """`bench-work` beside the data dir: on the data's disk, not in /tmp."""
    return cfg.data_dir.parent / "bench-work"


def _claim(work_dir: Path) -> None:
    """Create the work folder (or take back one a kept run left); refuse a folder of other files."""
    if work_dir.exists() and not work_dir.is_dir():
        raise MscaleError(f"--work-dir {work_dir} is a file; give a folder (it is created if missing)")
    if work_dir.is_dir() and any(work_dir.iterdir()) and not (work_dir / MARKER).exists():
        raise MscaleError(f"--work-dir {work_dir} holds files mscale bench did not make, and is removed after a run: "
                          "give a new or empty folder")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / MARKER).write_text("scratch data of `mscale bench`; safe to delete\n")
    except OSError as e:
        raise MscaleError(f"--work-dir {work_dir} is not writable ({e.strerror or e}); choose another") from None


def run_bench(cfg: Config, what: str = "all", *, quick: bool = False, work_dir: Path | None = None,
              keep: bool = False, profile: bool = False) -> Report:
    """Run the benchmarks of `what` (a section of SECTIONS, or "all"); see the module docstring.
    `profile` (features only): just the feature build's per-step profile."""
    sections = SECTIONS if what == "all" else (what,)
    if any(s not in SECTIONS for s in sections):
        raise MscaleError(f"unknown benchmark {what!r}: use all or one of {', '.join(SECTIONS)}")
    if profile and what != "features":
        raise MscaleError("--profile profiles the feature build: use `mscale bench features --profile`")
    work_dir = Path(work_dir).resolve() if work_dir else default_work_dir(cfg)
    _claim(work_dir)
    if profile:
        from mscale import bench_features

        try:
            print(bench_features.format_profile(bench_features.profile_market(work_dir / "features", quick=quick)))
        finally:
            if not keep:
                shutil.rmtree(work_dir, ignore_errors=True)
        return Report()
    expected = {s: EXPECTED_S[s][1 if quick else 0] for s in sections}
    total = sum(expected.values())
    report = Report()
    print(f"mscale bench {what}{' --quick' if quick else ''}: expected to take about {duration(total)} on 2 cores "
          f"({', '.join(f'{s} ~{duration(v)}' for s, v in expected.items())}); this machine has {os.cpu_count()} cores",
          flush=True)
    print(f"scratch data in {work_dir}, {'kept at the end (--keep)' if keep else 'removed at the end (--keep keeps it)'}",
          flush=True)
    started = time.perf_counter()
    library_log = logging.getLogger("mscale")
    level = library_log.level
    if not library_log.isEnabledFor(logging.DEBUG):
        library_log.setLevel(logging.WARNING)  # the progress lines say what runs; -v shows the library's own
    try:
        for i, section in enumerate(sections, 1):
            print(f"[{i}/{len(sections)}] {section} (expected ~{duration(expected[section])}):", flush=True)
            t = time.perf_counter()
            _SECTION_RUNNERS[section](quick=quick, work_dir=work_dir / section, report=report)
            print(f"  ({section} took {duration(time.perf_counter() - t)})", flush=True)
    finally:
        library_log.setLevel(level)
        if keep:
            print(f"kept {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(f"{report.summary()}; took {duration(time.perf_counter() - started)}", flush=True)
    return report


def _ingest(*, quick: bool, work_dir: Path, report: Report) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    bench_ingest(work_dir=work_dir, report=report, repeats=3 if quick else 5, quick=quick)


def _backtest(*, quick: bool, work_dir: Path, report: Report) -> None:
    from mscale import bench_backtest

    bench_backtest.run(quick=quick, work_dir=work_dir, report=report)


def _train(*, quick: bool, work_dir: Path, report: Report) -> None:
    from mscale import bench_train

    bench_train.run(quick=quick, work_dir=work_dir, report=report)


def _demo(*, quick: bool, work_dir: Path, report: Report) -> None:
    from mscale import bench_demo

    bench_demo.run(quick=quick, work_dir=work_dir, report=report)


def _features(*, quick: bool, work_dir: Path, report: Report) -> None:
    from mscale import bench_features

    bench_features.run(work_dir, quick=quick, report=report)


_SECTION_RUNNERS = {"ingest": _ingest, "backtest": _backtest, "train": _train, "demo": _demo, "features": _features}
