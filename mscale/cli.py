"""The `mscale` command line. Parses flags into one Config, calls the library, maps errors to exit codes.

Every command takes --data-dir and --warehouse (flag > env > mscale.toml > default); bad input
ends with a one-line `error: ...` on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date, datetime
from pathlib import Path

from mscale.config import Config, load_config
from mscale.errors import MscaleError

log = logging.getLogger("mscale")


def _date(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from None


def _symbols(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(s.strip().upper() for s in v.split(",") if s.strip())
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder (default data/, env MSCALE_DATA_DIR)")
    p.add_argument("--warehouse", help="DuckDB file (default warehouse/mscale.duckdb, env MSCALE_WAREHOUSE)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write the synthetic demo market (offline, deterministic)")
    _common(p)
    p.add_argument("--symbols", nargs="+", help="symbols (default BTCUSDT ETHUSDT SOLUSDT)")
    p.add_argument("--start", type=_date, default=date(2024, 1, 1), help="first UTC day (YYYY-MM-DD)")
    p.add_argument("--months", type=int, default=6, help="calendar months to generate")
    p.add_argument("--seed", type=int, default=7)

    p = sub.add_parser("ingest", help="download Binance klines (bulk archive, REST or both)")
    _common(p)
    p.add_argument("--symbols", nargs="+", required=True)
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, help="last UTC day, inclusive (default today)")
    p.add_argument("--interval", default="1m", help="1m or 1h")
    p.add_argument("--source", default="bulk", choices=["bulk", "rest", "auto"])
    p.add_argument("--market", default=None, choices=["spot", "um"], help="spot (default) or USDⓈ-M futures")
    p.add_argument("--base-url", help="REST base URL")
    p.add_argument("--archive-url", help="bulk archive base URL")
    p.add_argument("--pace-ms", type=int, help="pause between REST calls in ms")
    p.add_argument("--force", action="store_true", help="re-download months already complete")

    p = sub.add_parser("import", help="import local archive zips/CSVs or freqtrade JSON")
    _common(p)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--market", default=None, choices=["spot", "um"])
    p.add_argument("--symbol", help="symbol, when file names do not say it")
    p.add_argument("--interval", help="1m or 1h, when file names do not say it")

    p = sub.add_parser("resample-hourly", help="derive hourly bars from minute shards")
    _common(p)
    p.add_argument("--symbols", nargs="+")
    p.add_argument("--market", default=None, choices=["spot", "um"])

    p = sub.add_parser("report", help="ingestion / data-quality report (table + JSON + CSV)")
    _common(p)
    p.add_argument("--symbols", nargs="+")
    p.add_argument("--market", default=None, choices=["spot", "um"])

    p = sub.add_parser("features", help="build or refresh the warehouse views, derived cache and checks")
    _common(p)
    p.add_argument("--full", action="store_true", help="recompute every month instead of refreshing")
    p.add_argument("--out", help="runs folder the runs / run_predictions views read (default _exp/)")
    p.add_argument("--threads", type=int)
    p.add_argument("--memory-limit")

    p = sub.add_parser("train", help="purged walk-forward training, tuned thresholds, OOS backtest, run folder")
    _common(p)
    from mscale.train import add_arguments

    add_arguments(p)

    p = sub.add_parser("backtest", help="re-run a training run's backtest and report with other knobs, no retraining")
    _common(p)
    p.add_argument("--run", required=True, help="the run folder, _exp/<run_id>")
    p.add_argument("--fees", help="fee tiers, e.g. gross,VIP9,VIP4 or taker=10")
    p.add_argument("--fill", help="close | next_minute | twap_<N>m")
    p.add_argument("--slippage", help="bps per side, cs or ar")
    p.add_argument("--filter", choices=["none", "vol", "volm", "both"])
    p.add_argument("--filter-exit", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--long-only", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--min-hold", type=int)
    p.add_argument("--cooldown", type=int)
    p.add_argument("--max-trades-per-day", type=int)
    p.add_argument("--theta-vol", type=float, help="override the tuned P(vol_high) threshold")
    p.add_argument("--theta-volm", type=float, help="override the tuned P(volm_up) threshold")

    p = sub.add_parser("demo", help="the main job on the synthetic market: data, features, train --compare, report")
    _common(p)
    p.add_argument("--symbols", nargs="+", help="symbols (default BTCUSDT ETHUSDT SOLUSDT)")
    p.add_argument("--months", type=int, default=6, help="months of demo market from 2024-01-01")
    p.add_argument("--n-splits", type=int, default=5)
    p.add_argument("--out", help="runs folder (default _exp/ in the project root)")

    p = sub.add_parser("sql", help="run SQL against the warehouse and print the result")
    _common(p)
    p.add_argument("query")
    p.add_argument("--max-rows", type=int, default=40)

    p = sub.add_parser("audit", help="leak test: rebuild features on truncated and poisoned copies of the data")
    _common(p)
    p.add_argument("--cuts", type=int, default=3, help="random cut times K")
    p.add_argument("--symbols", nargs="+", help="symbols to sample (default: up to 2)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("bench", help="benchmarks (ingest, backtest, train, demo, features)")
    _common(p)
    p.add_argument("what", nargs="?", default="all", choices=["all", "ingest", "backtest", "train", "demo", "features"])
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")

    return parser


def _config(args: argparse.Namespace) -> Config:
    ingest = {}
    for key in ("base_url", "archive_url", "pace_ms"):
        if getattr(args, key, None) is not None:
            ingest[key] = getattr(args, key)
    features = {}
    if getattr(args, "threads", None) is not None:
        features["threads"] = args.threads
    if getattr(args, "memory_limit", None):
        features["memory_limit"] = args.memory_limit
    train = {}
    if args.command == "train":
        from mscale.train import train_overrides

        train = train_overrides(args)
    return load_config(
        data_dir=args.data_dir,
        warehouse=args.warehouse,
        market=getattr(args, "market", None),
        quiet=args.quiet,
        ingest=ingest,
        features=features,
        train=train,
        exp_dir=getattr(args, "out", None),
    )


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    cmd = args.command
    if cmd == "demo-data":
        from mscale.demo import DEFAULT_SYMBOLS, write_demo

        if args.months < 1:
            raise MscaleError(f"--months must be at least 1, got {args.months}")
        summary = write_demo(cfg, symbols=tuple(_symbols(args.symbols) or DEFAULT_SYMBOLS), start=args.start, months=args.months, seed=args.seed)
        print(f"demo market written under {cfg.market_dir}: {summary}")
    elif cmd == "ingest":
        from mscale.ingest.runner import ingest

        summary = ingest(cfg, symbols=_symbols(args.symbols), start=args.start, end=args.end, interval=args.interval, source=args.source, force=args.force)
        print(summary)
    elif cmd == "import":
        from mscale.ingest.local import import_paths

        summary = import_paths(cfg, args.paths, symbol=args.symbol, interval=args.interval)
        print(summary)
    elif cmd == "resample-hourly":
        from mscale.resample import resample_hourly

        for sym, rows in resample_hourly(cfg, _symbols(args.symbols)).items():
            print(f"{sym}: {rows} hourly bars")
    elif cmd == "report":
        from mscale.report import build_report, format_report, write_report

        reports = build_report(cfg, _symbols(args.symbols))
        if not reports:
            raise MscaleError(f"no shards under {cfg.market_dir}: run `mscale demo-data` or `mscale ingest` first")
        json_path, csv_path = write_report(cfg, reports)
        print(format_report(reports))
        print(f"report saved to {json_path} and {csv_path}")
    elif cmd == "features":
        from mscale.warehouse.build import build_features

        result = build_features(cfg, full=args.full)
        print(result.summary())
    elif cmd == "train":
        from mscale.research.pipeline import run_training

        result = run_training(cfg)
        print(result.summary)
        print(f"run written to {result.path}")
    elif cmd == "backtest":
        from mscale.research.evaluate import summary_table
        from mscale.research.rerun import backtest_run

        fees = [f.strip() for f in args.fees.split(",") if f.strip()] if args.fees else None
        slippage = args.slippage
        if slippage not in (None, "cs", "ar"):
            try:
                slippage = float(slippage)
            except ValueError:
                raise MscaleError(f"unknown slippage {slippage!r}: use a number of bps, cs or ar") from None
        path, evaluation = backtest_run(
            cfg, Path(args.run), fees=fees, fill=args.fill, slippage=slippage, filter=args.filter,
            filter_exit=args.filter_exit, long_only=args.long_only, min_hold=args.min_hold, cooldown=args.cooldown,
            max_trades_per_day=args.max_trades_per_day, theta_vol=args.theta_vol, theta_volm=args.theta_volm,
        )
        tune_fee = json.loads((path / "metrics.json").read_text())["tune_fee"]
        print(summary_table(evaluation, tune_fee))
        print(f"report: {path / 'report.html'}")
    elif cmd == "demo":
        from mscale.demo import DEFAULT_SYMBOLS
        from mscale.demo_run import run_demo

        if args.months < 3:
            raise MscaleError(f"--months must be at least 3 for walk-forward folds, got {args.months}")
        run_demo(cfg, symbols=tuple(_symbols(args.symbols) or DEFAULT_SYMBOLS), months=args.months, n_splits=args.n_splits)
    elif cmd == "sql":
        from mscale.warehouse.build import run_sql

        print(run_sql(cfg, args.query, max_rows=args.max_rows))
    elif cmd == "audit":
        from mscale.warehouse.audit import audit, format_audit

        result = audit(cfg, cuts=args.cuts, symbols=_symbols(args.symbols), seed=args.seed)
        print(format_audit(result))
        return 0 if result.ok else 1
    elif cmd == "bench":
        from mscale.bench import run_bench

        run_bench(cfg, args.what, quick=args.quick)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = args.quiet or args.command == "demo"  # the demo prints one line per step itself
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except MscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
