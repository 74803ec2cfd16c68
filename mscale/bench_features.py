"""Benchmark of the feature build: `python -m mscale.bench_features [--quick] [--symbols 1 4 10]`.

For each symbol count, on the synthetic market (`mscale.demo`, `years` of 1m bars per symbol), it
measures in the same run (median of `repeats`, each measurement in a fresh spawned process so peak
RSS is that measurement's own):

1. full build: `materialise(cfg, full=True)`: wall seconds, minute rows per second, peak RSS;
2. scan floor: one plain DuckDB group-by pass (symbol x hour) over the same minute Parquet files;
   and what the SQL itself costs: the whole `features` mart in one statement over all the history
   (no blocks, no warm-up read twice, `threads` threads: not reproducible bits, so a floor for the
   build, not a way to run it);
3. pandas: a straightforward pandas version of the CONTRACT §5 minute->hour core columns, checked
   against the mart so the comparison is like for like (1 to `pandas_max_symbols` symbols), and
   the same columns through the project's minute-bucket template, up to its hour buckets
   (`core_query`; the trailing week's volume reference there feeds only burst and pressure);
4. incremental: after a full build over all months but the last, add the last month's shards and
   time `materialise(cfg)` (not full), as a share of the full rebuild.

Targets, each figure marked against its own: full/scan <= 5x, speedup vs pandas >= 3x, incremental
<= 10% of full for 2 years of history (a refresh recomputes one block whatever the history's
length, so a shorter history gets a proportionally larger share: `incremental_target`). Quick: 1
symbol x 4 months, 1 repeat.

Generated shards are cached under `<base>/data/` (default `<data dir>/../bench-work/features`; `mscale
bench` passes its work folder), one set of shards per (start, months, seed), symbols added as
needed (a symbol's data does not depend on which other symbols are generated, so the 1-symbol set is
a subset of the 10-symbol one). Each measurement works in `<base>/work/...` on hard links to those
shards, so the cache is never modified.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START = date(2022, 1, 1)
SEED = 7
THREADS = 2
_NAMED = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT", "DOTUSDT", "LINKUSDT")

TARGET_SCAN_RATIO = 5.0
TARGET_PANDAS_SPEEDUP = 3.0  # the core minute columns (--core-only: the same template, those columns only)
TARGET_INCREMENTAL_PCT = 10.0  # for 24 months of history
TARGET_CHECKS_RATIO = 1.3  # `mscale features` (build, views, catalog, checks) over the build alone
TARGET_RSS_MB = 2048.0
QUICK_MONTHS = 4


def incremental_target(months: int) -> float:
    """The incremental refresh's budget in % of a full build, for `months` of history."""
    return min(100.0, TARGET_INCREMENTAL_PCT * 24 / months)


def default_base() -> Path:
    """`features` in the bench work folder beside the data dir (`<data dir>/../bench-work`)."""
    from mscale.bench import default_work_dir
    from mscale.config import load_config

    return default_work_dir(load_config()) / "features"

# CONTRACT §5 minute->hour core columns (the ones the pandas version computes)
CORE_COLUMNS = (
    "m_n_60m",
    "m_ret_5m", "m_ret_15m", "m_ret_60m",
    "m_rv_15m", "m_rv_60m",
    "m_bpv_60m",
    "m_skew_15m", "m_kurt_15m", "m_skew_60m", "m_kurt_60m",
    "m_vol_sum_5m", "m_vol_mean_5m", "m_vol_sum_15m", "m_vol_mean_15m", "m_vol_sum_60m", "m_vol_mean_60m",
    "m_range_60m",
    "m_vwap_div_60m",
)  # fmt: skip


def bench_symbols(n: int) -> tuple[str, ...]:
    return tuple(_NAMED[i] if i < len(_NAMED) else f"SYN{i:03d}USDT" for i in range(n))


def _months_after(start: date, n: int) -> list[tuple[int, int]]:
    out = []
    for i in range(n):
        y, m = divmod(start.month - 1 + i, 12)
        out.append((start.year + y, m + 1))
    return out


# --- data --------------------------------------------------------------------------------------


def ensure_data(base: Path, symbols: tuple[str, ...], months: int, *, seed: int = SEED, start: date = START) -> Path:
    """The cached market dir holding `symbols` x `months` of synthetic shards; generates what is missing."""
    from mscale.demo import SOURCE, generate_minutes
    from mscale.store import write_klines

    try:  # the demo market's own minute->hour aggregation, wherever it lives
        from mscale.demo import minutes_to_hours
    except ImportError:
        from mscale.resample import hours_from_minutes as minutes_to_hours

    market = base / "data" / f"{start:%Y%m}-m{months}-seed{seed}"
    month_list = _months_after(start, months)
    for sym in symbols:
        marker = market / f".done-{sym}"
        if marker.exists():
            continue
        t0 = time.perf_counter()
        for p in [*(market / "minute").glob(f"binance_{sym}_1m_*.parquet"), *(market / "hourly").glob(f"binance_{sym}_1h_*.parquet")]:
            p.unlink()  # a half-written earlier attempt
        minutes = generate_minutes([sym], start=start, months=months, seed=seed)
        write_klines(market, "1m", minutes, source=SOURCE, complete_months=month_list)
        write_klines(market, "1h", minutes_to_hours(minutes), source=SOURCE, complete_months=month_list)
        marker.write_text(str(minutes.num_rows))
        print(f"  generated {sym}: {minutes.num_rows:,} minute rows in {time.perf_counter() - t0:.1f}s", flush=True)
        del minutes
    return market


def link_market(src: Path, dest: Path, symbols: tuple[str, ...], months: list[tuple[int, int]], *, fresh: bool = True) -> None:
    """Hard-link the minute and hourly shards of `symbols` x `months` from `src` into `dest`."""
    from mscale.store import list_shards

    if fresh and dest.exists():
        shutil.rmtree(dest)
    wanted = set(months)
    for interval in ("1m", "1h"):
        for s in list_shards(src, interval):
            if s.symbol in symbols and (s.year, s.month) in wanted:
                target = dest / s.path.parent.name / s.path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    continue
                try:
                    os.link(s.path, target)
                except OSError:
                    shutil.copy2(s.path, target)


def unlink_months(dest: Path, months: list[tuple[int, int]]) -> None:
    from mscale.store import list_shards

    wanted = set(months)
    for interval in ("1m", "1h"):
        for s in list_shards(dest, interval):
            if (s.year, s.month) in wanted:
                s.path.unlink()


def minute_files(market: Path) -> list[Path]:
    from mscale.store import list_shards

    return [s.path for s in list_shards(market, "1m")]


def count_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def snapshot_sql(base: Path, sql_dir: Path | None = None) -> tuple[Path, str]:
    """Copy `sql_dir` (default: the project's sql/) to `<base>/sql-snapshots/<hash>/sql`, so one run
    measures one version of the templates even while they are being edited; returns (root, hash)."""
    import hashlib

    src = Path(sql_dir) if sql_dir else PROJECT_ROOT / "sql"
    h = hashlib.sha256()
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(src).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    digest = h.hexdigest()[:12]
    root = base / "sql-snapshots" / digest
    if not (root / "sql").is_dir():
        tmp = base / "sql-snapshots" / f".{digest}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp / "sql")
        tmp.rename(root)
    return root, digest


def _git_head() -> str:
    """The project's commit (read only), '+dirty' when tracked files differ from it; '?' without git."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "?"


def make_config(market: Path, threads: int = THREADS, project_root: Path = PROJECT_ROOT):
    from mscale.config import load_config

    return load_config(
        data_dir=market,
        warehouse=market / "warehouse" / "mscale.duckdb",
        project_root=project_root,
        features={"threads": threads},
    )


# --- measurements, each run in a spawned child ---------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _child_materialise(cfg, full: bool) -> dict:
    from mscale.warehouse.build import materialise

    return _measured(lambda: materialise(cfg, full=full))


def _child_build_features(cfg) -> dict:
    """What `mscale features --full` does: the build, then views, catalog and checks."""
    from mscale.warehouse.build import build_features

    out = _measured(lambda: build_features(cfg, full=True))
    return {**out, "total_s": out["seconds"], "seconds": out["build_s"]}


def _measured(build: Callable[[], Any]) -> dict:
    """Wall seconds and peak RSS of one build (a BuildResult); `build_s` is the build's own time."""
    base_rss = _peak_rss_mb()
    t0 = time.perf_counter()
    res = build()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "build_s": res.seconds, "rss_mb": _peak_rss_mb(), "rss_base_mb": base_rss,
            "months": res.months_computed, "rows": res.rows_written}


def core_query(cfg, files: list[Path], *, core_only: bool = True) -> str:
    """The CONTRACT §5 core minute columns through the project's own templates (sources, staging,
    feat_min__buckets) over `files`, those columns only, as one statement. `core_only`: the
    template stops at its hour buckets (RenderParams.buckets_core_only), as the pandas baseline
    does; the columns are the same either way."""
    from dataclasses import replace

    from mscale.warehouse import render as r

    params = replace(r.params_from_config(cfg), minute_files=[str(f) for f in files], hourly_files=(), sort_staged=False,
                     buckets_core_only=core_only)
    env = r.environment(cfg.sql_dir)
    models = [m for m in r.discover(cfg.sql_dir) if m.name in ("src_klines_1m", "klines_1m", "feat_min__buckets")]
    ctes = [f"{m.name} as (\n{r.render(env, m, params)}\n)" for m in models]
    return "with\n" + ",\n".join(ctes) + f"\nselect symbol, ts, {', '.join(CORE_COLUMNS)} from feat_min__buckets order by symbol, ts"


def _child_query(query: str, threads: int, macros_sql: str) -> dict:
    """One query timed on a fresh `task_connection` of `threads` threads (with `macros_sql`, if
    any, run before the clock starts): wall seconds, peak RSS."""
    from mscale.warehouse.executors import task_connection

    base_rss = _peak_rss_mb()
    con = task_connection(macros_sql, threads=threads)
    t0 = time.perf_counter()
    table = con.execute(query).to_arrow_table()
    seconds = time.perf_counter() - t0
    con.close()
    return {"seconds": seconds, "rss_mb": _peak_rss_mb(), "rss_base_mb": base_rss, "rows": table.num_rows}


def scan_floor_sql(files: list[Path]) -> str:
    from mscale.warehouse.render import sql_paths

    return f"""
        select
            symbol,
            (epoch_ms(close_time) + 3599999) // 3600000 as bucket,
            count(*) as n,
            sum(ln(close)) as s_log_close,
            sum(volume) as s_volume,
            sum(quote_volume) as s_quote_volume,
            min(low) as min_low,
            max(high) as max_high,
            max(close) as max_close,
            max(close_time) as last_close_time,
        from read_parquet({sql_paths(files)})
        group by all
    """


def one_statement_query(cfg) -> str:
    """The whole mart in one statement over every shard (the live views' query)."""
    from mscale.warehouse import build as b
    from mscale.warehouse import render as r

    return b.feature_query(cfg.sql_dir, r.params_from_config(cfg), extra_dirs=cfg.extra_feature_dirs)


def pandas_core_features(files: list[Path]):
    """The §5 minute->hour core columns, written the way a researcher would in pandas."""
    import numpy as np
    import pandas as pd

    cols = ["symbol", "open_time", "close_time", "high", "low", "close", "volume", "quote_volume"]
    df = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    df = df.sort_values(["symbol", "open_time"], ignore_index=True)

    df["r"] = np.log(df["close"]).groupby(df["symbol"]).diff()
    df["r_prev"] = df.groupby("symbol")["r"].shift(1)
    df["bucket"] = df["close_time"].dt.ceil("h")
    df["bp"] = df["r"].abs() * df["r_prev"].abs()
    df["r2"] = df["r"] ** 2
    for w in (5, 15):
        inside = df["close_time"] > df["bucket"] - pd.Timedelta(minutes=w)
        df[f"in_{w}"] = inside
        df[f"r_{w}"] = df["r"].where(inside)
        df[f"r2_{w}"] = df["r2"].where(inside)
        df[f"vol_{w}"] = df["volume"].where(inside)

    g = df.groupby(["symbol", "bucket"], sort=True)
    out = g.agg(
        m_n_60m=("r", "size"),
        n_5=("in_5", "sum"),
        n_15=("in_15", "sum"),
        m_ret_5m=("r_5", "sum"),
        m_ret_15m=("r_15", "sum"),
        m_ret_60m=("r", "sum"),
        rv2_15=("r2_15", "sum"),
        rv2_60=("r2", "sum"),
        bp=("bp", "sum"),
        m_vol_sum_5m=("vol_5", "sum"),
        m_vol_mean_5m=("vol_5", "mean"),
        m_vol_sum_15m=("vol_15", "sum"),
        m_vol_mean_15m=("vol_15", "mean"),
        m_vol_sum_60m=("volume", "sum"),
        m_vol_mean_60m=("volume", "mean"),
        max_high=("high", "max"),
        min_low=("low", "min"),
        close_last=("close", "last"),
        qv=("quote_volume", "sum"),
    )
    out["m_rv_15m"] = np.sqrt(out.pop("rv2_15"))
    out["m_rv_60m"] = np.sqrt(out.pop("rv2_60"))
    out["m_bpv_60m"] = np.pi / 2 * out.pop("bp")
    kurt = getattr(g["r_15"], "kurt", None)
    for w, col in ((15, "r_15"), (60, "r")):
        out[f"m_skew_{w}m"] = g[col].skew()
        out[f"m_kurt_{w}m"] = g[col].kurt() if kurt is not None else g[col].apply(lambda s: s.kurt())
    out["m_range_60m"] = np.log(out.pop("max_high") / out.pop("min_low"))
    vwap = out.pop("qv") / out["m_vol_sum_60m"].replace(0, np.nan)
    out["m_vwap_div_60m"] = np.log(out.pop("close_last") / vwap)
    # a window with fewer than half its bars gives NULL, as in the SQL
    n = {5: out.pop("n_5"), 15: out.pop("n_15"), 60: out["m_n_60m"]}
    for c in out.columns:
        if c == "m_n_60m":
            continue
        w = int(c.rsplit("_", 1)[1].rstrip("m"))
        out[c] = out[c].where(2 * n[w] >= w)
    out = out.reset_index().rename(columns={"bucket": "ts"})
    return out[["symbol", "ts", *CORE_COLUMNS]]


def _child_pandas(files: list[Path], return_frame: bool) -> dict:
    base_rss = _peak_rss_mb()
    t0 = time.perf_counter()
    out = pandas_core_features(files)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_mb": _peak_rss_mb(), "rss_base_mb": base_rss, "rows": len(out), "frame": out if return_frame else None}


def _in_child(fn: Callable[..., dict], *args: Any) -> dict:
    """Run fn(*args) in a fresh spawned interpreter, so its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def _median(results: list[dict], key: str = "seconds") -> float:
    return statistics.median(r[key] for r in results)


# --- comparison of the pandas version with the mart ----------------------------------------------


def compare_with_mart(cfg, frame) -> float:
    """Largest relative difference between the pandas columns and the materialised mart (NULLs must agree)."""
    import numpy as np
    import pandas as pd

    files = sorted((cfg.derived_dir / "features").glob("symbol=*/*.parquet"))
    mart = pd.concat([pd.read_parquet(f, columns=["symbol", "ts", *CORE_COLUMNS]) for f in files], ignore_index=True)
    mart["symbol"] = mart["symbol"].astype(str)
    frame = frame.copy()
    frame["symbol"] = frame["symbol"].astype(str)
    mart["ts"] = mart["ts"].dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    frame["ts"] = frame["ts"].dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    both = mart.merge(frame, on=["symbol", "ts"], suffixes=("_sql", "_pd"), how="inner")
    if len(both) != len(mart):
        raise AssertionError(f"pandas version has {len(frame)} buckets, mart {len(mart)}, in common {len(both)}")
    worst = 0.0
    for c in CORE_COLUMNS:
        a = both[f"{c}_sql"].to_numpy(dtype=float, na_value=np.nan)
        b = both[f"{c}_pd"].to_numpy(dtype=float, na_value=np.nan)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            raise AssertionError(f"{c}: NULL pattern differs ({np.isnan(a).sum()} vs {np.isnan(b).sum()})")
        ok = ~np.isnan(a)
        # bpv/skew/kurt of near-constant windows are ill-conditioned: compare relative to column scale
        scale = max(float(np.nanmax(np.abs(a))), 1e-300)
        rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(a[ok]), 1e-9 * scale)
        worst = max(worst, float(rel.max(initial=0.0)))
    return worst


# --- the benchmark --------------------------------------------------------------------------------


def _bench_one(
    base: Path, n_symbols: int, months: int, repeats: int, pandas_max_symbols: int, threads: int, sql_root: Path
) -> dict:
    symbols = bench_symbols(n_symbols)
    month_list = _months_after(START, months)
    print(f"[{n_symbols} symbol(s) x {months} months]", flush=True)
    source = ensure_data(base, symbols, months)

    full_dir = base / "work" / f"full-s{n_symbols}-m{months}"
    link_market(source, full_dir, symbols, month_list)
    cfg = make_config(full_dir, threads, sql_root)
    files = minute_files(full_dir)
    rows = count_rows(files)
    from mscale.warehouse.render import MACROS_FILE

    macros_sql = (Path(cfg.sql_dir) / MACROS_FILE).read_text()

    full = []
    for i in range(repeats):
        full.append(_in_child(_child_build_features, cfg))
        print(f"  full build {i + 1}/{repeats}: {full[-1]['seconds']:.2f}s (mscale features in all: {full[-1]['total_s']:.2f}s), "
              f"peak RSS {full[-1]['rss_mb']:.0f} MB", flush=True)

    scan = []
    for i in range(repeats):
        scan.append(_in_child(_child_query, scan_floor_sql(files), threads, ""))  # needs no macros: its process's first statement
        print(f"  scan floor {i + 1}/{repeats}: {scan[-1]['seconds']:.2f}s", flush=True)

    one = []
    for i in range(repeats):
        one.append(_in_child(_child_query, one_statement_query(cfg), threads, macros_sql))
        print(f"  whole mart in one statement {i + 1}/{repeats}: {one[-1]['seconds']:.2f}s", flush=True)

    pandas_runs: list[dict] = []
    core_runs: list[dict] = []
    pandas_diff = None
    if n_symbols <= pandas_max_symbols:
        for i in range(repeats):
            core_runs.append(_in_child(_child_query, core_query(cfg, files), threads, macros_sql))
            print(f"  core minute columns only (same template), {core_runs[-1]['seconds']:.2f}s", flush=True)
        for i in range(repeats):
            pandas_runs.append(_in_child(_child_pandas, files, i == 0))
            print(f"  pandas {i + 1}/{repeats}: {pandas_runs[-1]['seconds']:.2f}s, peak RSS {pandas_runs[-1]['rss_mb']:.0f} MB", flush=True)
        pandas_diff = compare_with_mart(cfg, pandas_runs[0]["frame"])
        print(f"  pandas vs mart, core columns: max relative difference {pandas_diff:.1e}", flush=True)

    incr = []
    if months >= 2:
        incr_dir = base / "work" / f"incr-s{n_symbols}-m{months}"
        link_market(source, incr_dir, symbols, month_list[:-1])
        icfg = make_config(incr_dir, threads, sql_root)
        prep = _in_child(_child_materialise, icfg, True)
        print(f"  incremental: base build over {months - 1} months {prep['seconds']:.2f}s", flush=True)
        derived = icfg.derived_dir
        snapshot = incr_dir.parent / f"{incr_dir.name}-derived-snapshot"
        if snapshot.exists():
            shutil.rmtree(snapshot)
        shutil.copytree(derived, snapshot)
        for i in range(repeats):
            if i:
                shutil.rmtree(derived)
                shutil.copytree(snapshot, derived)
                unlink_months(incr_dir, month_list[-1:])
            link_market(source, incr_dir, symbols, month_list[-1:], fresh=False)
            incr.append(_in_child(_child_materialise, icfg, False))
            print(
                f"  incremental {i + 1}/{repeats}: {incr[-1]['seconds']:.2f}s "
                f"({incr[-1]['months']} symbol-months computed)",
                flush=True,
            )
        shutil.rmtree(snapshot)

    full_s = _median(full)
    scan_s = _median(scan)
    pandas_s = _median(pandas_runs) if pandas_runs else None
    core_s = _median(core_runs) if core_runs else None
    incr_s = _median(incr) if incr else None
    return {
        "symbols": n_symbols,
        "months": months,
        "minute_rows": rows,
        "full_s": full_s,
        "rows_per_s": rows / full_s,
        "peak_rss_mb": _median(full, "rss_mb"),
        "scan_s": scan_s,
        "full_over_scan": full_s / scan_s,
        "one_statement_s": _median(one),
        "one_statement_over_scan": _median(one) / scan_s,
        "pandas_s": pandas_s,
        "pandas_rss_mb": _median(pandas_runs, "rss_mb") if pandas_runs else None,
        "speedup_vs_pandas": pandas_s / full_s if pandas_s else None,
        "core_s": core_s,
        "core_vs_pandas": pandas_s / core_s if pandas_s and core_s else None,
        "total_over_build": statistics.median(r["total_s"] / r["seconds"] for r in full),
        "pandas_max_rel_diff": pandas_diff,
        "incremental_s": incr_s,
        "incremental_pct": 100.0 * incr_s / full_s if incr_s is not None else None,
        "repeats": repeats,
        "threads": threads,
    }


def format_table(rows: list[dict]) -> str:
    def f(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = (
        f"{'symbols':>7} {'minute rows':>12} {'full s':>8} {'rows/s':>10} {'RSS MB':>7} {'scan s':>7} "
        f"{'full/scan':>9} {'1-stmt/scan':>11} {'pandas s':>8} {'vs pandas':>9} {'core s':>7} {'core/pd':>7} {'incr s':>7} {'incr %':>7} "
        f"{'total/build':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['symbols']:>7} {r['minute_rows']:>12,} {r['full_s']:>8.2f} {r['rows_per_s']:>10,.0f} {r['peak_rss_mb']:>7.0f} "
            f"{r['scan_s']:>7.2f} {f(r['full_over_scan'], '.1f') + 'x':>9} {f(r.get('one_statement_over_scan'), '.1f') + 'x':>11} "
            f"{f(r['pandas_s'], '.2f'):>8} "
            f"{f(r['speedup_vs_pandas'], '.2f') + ('x' if r['speedup_vs_pandas'] else ''):>9} "
            f"{f(r['core_s'], '.2f'):>7} {f(r['core_vs_pandas'], '.2f') + ('x' if r['core_vs_pandas'] else ''):>7} "
            f"{f(r['incremental_s'], '.2f'):>7} {f(r['incremental_pct'], '.1f') + ('%' if r['incremental_pct'] is not None else ''):>7} "
            f"{f(r['total_over_build'], '.2f') + 'x':>11}"
        )
    lines.append(
        f"targets: full/scan <= {TARGET_SCAN_RATIO:g}x, core minute columns vs pandas >= {TARGET_PANDAS_SPEEDUP:g}x, "
        f"incremental <= {TARGET_INCREMENTAL_PCT:g}% of full for 24 months of history, mscale features <= "
        f"{TARGET_CHECKS_RATIO:g}x the build, peak RSS <= {TARGET_RSS_MB / 1024:g} GB"
    )
    return "\n".join(lines)


def run(
    cfg_base_dir: Path | None = None,
    *,
    symbol_counts: tuple[int, ...] = (1, 4, 10),
    years: float = 2.0,
    repeats: int = 3,
    quick: bool = False,
    pandas_max_symbols: int = 4,
    threads: int = THREADS,
    sql_dir: Path | None = None,
    report=None,
) -> list[dict]:
    """Run the benchmark, print the table and return its rows (one dict per symbol count); each
    ratio is also reported to `report` (a `mscale.bench.Report`), marked against its target.

    The SQL templates (`sql_dir`, default the project's `sql/`) are snapshotted once at the start."""
    base = Path(cfg_base_dir) if cfg_base_dir else default_base()
    base.mkdir(parents=True, exist_ok=True)
    sql_root, sql_hash = snapshot_sql(base, sql_dir)
    print(f"SQL templates: snapshot {sql_hash} of {sql_dir or PROJECT_ROOT / 'sql'} (project at {_git_head()})", flush=True)
    if quick:
        symbol_counts, months, repeats = (1,), QUICK_MONTHS, 1
    else:
        months = max(2, round(years * 12))
    rows = []
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    for n in symbol_counts:
        row = _bench_one(base, int(n), months, max(1, int(repeats)), pandas_max_symbols, threads, sql_root)
        row["sql_snapshot"] = sql_hash
        row["git_head"] = _git_head()
        rows.append(row)
    print()
    print(f"feature build benchmark: {months} months of 1m bars per symbol, threads={threads}, median of {repeats}, SQL {sql_hash}")
    print(format_table(rows))
    print(
        f"(benchmark took {time.perf_counter() - t0:.0f}s; load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs; data cached under {base / 'data'})"
    )
    print()
    print(format_profile(profile(base, months, sql_root, threads)))
    if report is not None:
        mark_rows(rows, report)
    return rows


def mark_rows(rows: list[dict], report) -> None:
    """Each ratio of the table as a figure marked against its target."""
    for r in rows:
        what = f"{r['symbols']} symbol(s) x {r['months']} months"
        report.row(f"full build / DuckDB scan floor, {what}", f"{r['full_over_scan']:.1f}x",
                   f"<= {TARGET_SCAN_RATIO:g}x", r["full_over_scan"] <= TARGET_SCAN_RATIO)
        if r.get("one_statement_over_scan") is not None:
            report.row(f"whole mart in one statement / scan floor, {what}",
                       f"{r['one_statement_over_scan']:.1f}x")
        if r.get("core_vs_pandas") is not None:
            report.row(f"core minute columns vs pandas (same template, those columns only), {what}",
                       f"{r['core_vs_pandas']:.2f}x", f">= {TARGET_PANDAS_SPEEDUP:g}x", r["core_vs_pandas"] >= TARGET_PANDAS_SPEEDUP)
        if r["speedup_vs_pandas"] is not None:
            report.row(f"whole build (every column) vs pandas core columns, {what}", f"{r['speedup_vs_pandas']:.2f}x")
        if r.get("total_over_build") is not None:
            report.row(f"mscale features (build + views + catalog + checks) / build, {what}", f"{r['total_over_build']:.2f}x",
                       f"<= {TARGET_CHECKS_RATIO:g}x", r["total_over_build"] <= TARGET_CHECKS_RATIO)
        if r["incremental_pct"] is not None:
            limit = incremental_target(r["months"])
            report.row(f"incremental refresh (one more month) / full build, {what}", f"{r['incremental_pct']:.1f}%",
                       f"<= {limit:g}%", r["incremental_pct"] <= limit)
        report.row(f"full build peak RSS, {what} ({r['rows_per_s']:,.0f} minute rows/s)", f"{r['peak_rss_mb']:.0f} MB",
                   f"<= {TARGET_RSS_MB:g} MB", r["peak_rss_mb"] <= TARGET_RSS_MB)


# --- profile ---------------------------------------------------------------------------------------

# The build's steps as the issue names them. Each operator of the build's own queries is charged to
# one (`_operator_layer`), by what DuckDB's profiler says it computes. Of a query's time outside its
# operators, the profiler names the planning (binding, optimising, physical planning); the rest is
# work it does not time per operator (a sort's merge phase, pipeline set-up).
PROFILE_LAYERS = (
    "klines read and warm-up",
    "minute returns / lag",
    "minute GROUP BY (hour buckets)",
    "trailing-week volume references",
    "long minute windows (30-day percentile, hour-of-day z)",
    "hourly block and recursions (+ cross, time)",
    "z-scores and percentiles",
    "mart join and sort",
    "query planning (bind, optimise)",
    "not timed per operator (sort merges, set-up)",
    "split by month and write (Parquet)",
)
READ, LAG, GROUP_BY, WEEK, LONG_MINUTE, HOURLY, Z_SCORES, MART, PLANNING, UNTIMED, WRITE = range(len(PROFILE_LAYERS))
_PLANNING_METRICS = ("planner", "all_optimizers", "physical_planner")  # of profiling_mode = 'detailed'
_SCANS = ("READ_PARQUET", "PARQUET_KV_METADATA", "TABLE_SCAN", "PARQUET_SCAN")


def _block_params(cfg, symbol: str, first: int, last: int):
    """RenderParams for months [first, last] (month indexes) of one symbol, as materialise renders a block."""
    from mscale.store import list_shards
    from mscale.warehouse import build as b
    from mscale.warehouse import render as r

    start = b.warmup_start(first)
    span = range(b._month_index(start.year, start.month), last + 1)
    minutes = [s.path for s in list_shards(cfg.market_dir, "1m", symbol) if b._month_index(s.year, s.month) in span]
    hours = [s.path for s in list_shards(cfg.market_dir, "1h", symbol) if b._month_index(s.year, s.month) in span]
    return b.block_params(r.params_from_config(cfg), symbol, first, last, minutes, hours)


def _operator_layer(op: dict, child_layers: list[int], minute_side: bool, z_frame: str) -> int:
    """The PROFILE_LAYERS step of one operator of a profiled query, given its inputs' steps:
    `minute_side` for a minute-bucket query, else the block's; `z_frame` the rolling z-scores'
    frame as DuckDB prints it. Scans, and whatever works on scanned rows only (filters, casts,
    the staging sort, the two minutes before the window), are reading; windows by what they compute;
    any other operator belongs to the step of its first input, except the block's join of its hourly
    and minute sides and its final sort."""
    name, text = op["operator"], op["detail"]
    if name in _SCANS or (child_layers and all(c == READ for c in child_layers) and name != "WINDOW"
                          and not (name == "HASH_GROUP_BY" and minute_side)):
        return READ
    if name == "WINDOW":
        if "LAG(" in text and minute_side:  # the block's hourly bars lag too: that is the hourly step
            return LAG
        if "n_traded" in text or "sum_log_volume" in text:
            return WEEK
        if "CUME_DIST" in text or "% 24)" in text:  # the 30-day percentile; the same UTC hour on earlier days
            return LONG_MINUTE
        if z_frame in text and "stddev_samp" in text:
            return Z_SCORES
        return HOURLY
    if name == "HASH_GROUP_BY":
        return GROUP_BY if minute_side else HOURLY
    if not minute_side and (not child_layers or name == "ORDER_BY" and op["root"]
                            or name == "HASH_JOIN" and "symbol = symbol" in text and "ts = ts" in text):
        return MART
    return child_layers[0] if child_layers else READ


def _charge_profile(path: Path, minute_side: bool, z_frame: str, seconds: list[float]) -> None:
    """Add one query's DuckDB JSON profile (at `path`) to `seconds`, step by step (`_operator_layer`)."""
    import json

    prof = json.loads(path.read_text())

    def walk(node: dict, root: bool) -> int:
        # the rows a task stages into its table (`stage_rows`): what feeds the insert is the query's
        # result, and the insert itself is the first half of splitting the rows by month
        stages = node.get("operator_name", "").strip() in ("CREATE_TABLE_AS", "INSERT")
        child_layers = [walk(child, root and stages) for child in node.get("children", [])]
        if stages:
            seconds[WRITE] += float(node.get("operator_timing", 0.0))
            return child_layers[0] if child_layers else WRITE
        extra = node.get("extra_info", {})
        detail = extra.get("Projections") or extra.get("Aggregates") or extra.get("Conditions") or extra.get("Order By") or ""
        op = {"operator": node.get("operator_name", "?").strip(), "root": root,
              "detail": "; ".join(map(str, detail)) if isinstance(detail, list) else str(detail)}
        layer = _operator_layer(op, child_layers, minute_side, z_frame)
        seconds[layer] += float(node.get("operator_timing", 0.0))
        return layer

    before = sum(seconds)
    for child in prof.get("children", []):
        walk(child, True)
    operators = sum(seconds) - before
    planning = sum(float(prof.get(k, 0.0)) for k in _PLANNING_METRICS)
    seconds[PLANNING] += planning
    seconds[UNTIMED] += max(0.0, float(prof.get("latency", 0.0)) - operators - planning)


def profile_block(cfg, symbol: str, first: int, last: int) -> dict:
    """Where one block's time goes, from DuckDB's profiler over the build's own queries for it: the
    minute buckets of the quarter's months (`bucket_query`, from their minutes and the week before),
    then the block (`feature_query` over the cached buckets and its hourly bars), on one
    thread as the build runs them, each profiled on its second run. Every operator's own time is
    charged to its step of PROFILE_LAYERS (`_operator_layer`). The write is the quarter's bucket
    and feature files, split and written as the build writes them."""
    import tempfile

    from mscale.warehouse import build as b
    from mscale.warehouse import render as r
    from mscale.warehouse.executors import split_rows, stage_rows, task_connection, write_month

    base = r.params_from_config(cfg)
    params = _block_params(cfg, symbol, first, last)
    start = b.warmup_start(first)
    span = range(b._month_index(start.year, start.month), last + 1)
    shards = b.shards_by_month(cfg.market_dir, "1m").get(symbol, {})
    z_frame = f"ROWS BETWEEN {params.z_window} PRECEDING AND 1 PRECEDING"
    seconds = [0.0] * len(PROFILE_LAYERS)
    con = task_connection((Path(cfg.sql_dir) / r.MACROS_FILE).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"

        def profiled(sql: str, minute_side: bool) -> None:
            stage_rows(con, [sql])  # the first run pays the process's one-off set-up
            con.execute("pragma enable_profiling = 'json'")
            con.execute("set profiling_mode = 'detailed'")  # with the planner's and optimisers' times
            con.execute(f"pragma profiling_output = {r.sql_string(str(out))}")
            stage_rows(con, [sql])
            con.execute("pragma disable_profiling")
            _charge_profile(out, minute_side, z_frame, seconds)

        bucket_files, bucket_tables = [], {}
        months = [k for k in span if k in shards]
        for run in b.month_runs(months):  # as a full build runs them: one query per run of months in a quarter
            quarter = [k for k in run if k >= first]
            for part in ([k for k in run if k < first], quarter):
                if not part:
                    continue
                query = b.bucket_query(cfg.sql_dir, base, symbol, part[0], part[-1], b.bucket_inputs(shards, part[0], part[-1]))
                # the warm-up months' buckets are earlier quarters' work: computed, not charged
                profiled(query, True) if part is quarter else stage_rows(con, [query])
                for k, table in zip(part, split_rows(con, part)):
                    bucket_files.append(Path(tmp) / f"buckets-{k}.parquet")
                    write_month(table, bucket_files[-1])
                    if part is quarter:
                        bucket_tables[k] = table
        profiled(b.feature_query(cfg.sql_dir, params, extra_dirs=cfg.extra_feature_dirs, bucket_files=bucket_files), False)
        for _ in range(2):  # the second time: without the first Parquet write's one-off set-up
            t0 = time.perf_counter()
            for m, table in zip(range(first, last + 1), split_rows(con, range(first, last + 1))):
                write_month(table, Path(tmp) / f"{m}.parquet")
                if m in bucket_tables:
                    write_month(bucket_tables[m], Path(tmp) / f"again-{m}.parquet")
            split_and_write = time.perf_counter() - t0
        seconds[WRITE] += split_and_write  # after the staging inserts `_charge_profile` charged there
        con.close()
    total = sum(seconds)
    return {"symbol": symbol, "first": first, "last": last, "total_s": total, "months": len(bucket_tables),
            "layers": [{"layer": name, "seconds": sec, "share": sec / total} for name, sec in zip(PROFILE_LAYERS, seconds)]}


def format_profile(prof: dict) -> str:
    y0, m0 = divmod(prof["first"], 12)
    y1, m1 = divmod(prof["last"], 12)
    lines = [f"where a block's time goes: {prof['symbol']} {y0:04d}-{m0 + 1:02d}..{y1:04d}-{m1 + 1:02d} plus "
             f"its warm-up, 1 thread: DuckDB's profiler over the build's own queries for it ({prof['months']} months "
             f"of minute buckets, then the block), each operator charged to its step; {prof['total_s']:.2f}s in all"]
    for row in prof["layers"]:
        lines.append(f"  {row['layer']:<56} {row['seconds']:6.3f}s {100 * row['share']:5.1f}%  "
                     f"{'#' * round(40 * row['share'])}")
    return "\n".join(lines)


def profile_market(base: Path, *, quick: bool = False, years: float = 2.0, sql_dir: Path | None = None) -> dict:
    """The layer profile of the benchmark's 1-symbol market (generated under `base` if needed)."""
    sql_root, _ = snapshot_sql(base, sql_dir)
    return profile(base, QUICK_MONTHS if quick else max(2, round(years * 12)), sql_root)


def profile(base: Path, months: int, sql_root: Path, threads: int = THREADS) -> dict:
    """The layer profile of the last full quarter of the 1-symbol benchmark market."""
    from mscale.warehouse import build as b

    source = ensure_data(base, bench_symbols(1), months)
    cfg = make_config(source, threads, sql_root)
    end = b._month_index(START.year, START.month) + months - 1
    last = (end + 1) // 3 * 3 - 1  # the last month that ends a calendar quarter
    return profile_block(cfg, bench_symbols(1)[0], last - 2, last)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mscale.bench_features", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-dir", type=Path, default=None,
                   help="cache and work folder, kept between runs (default <data dir>/../bench-work/features)")
    p.add_argument("--symbols", type=int, nargs="+", default=[1, 4, 10], help="symbol counts (default 1 4 10)")
    p.add_argument("--years", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pandas-max-symbols", type=int, default=4)
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--quick", action="store_true", help=f"1 symbol x {QUICK_MONTHS} months, 1 repeat (smoke test)")
    p.add_argument("--sql-dir", type=Path, default=None, help="SQL templates to measure (default: the project's sql/)")
    p.add_argument("--profile", action="store_true", help="only the profile: where one block's time goes, per step")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.profile:
        print(format_profile(profile_market(args.base_dir or default_base(), quick=args.quick, years=args.years,
                                            sql_dir=args.sql_dir)))
        return 0
    run(
        args.base_dir,
        symbol_counts=tuple(args.symbols),
        years=args.years,
        repeats=args.repeats,
        quick=args.quick,
        pandas_max_symbols=args.pandas_max_symbols,
        threads=args.threads,
        sql_dir=args.sql_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
