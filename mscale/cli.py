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

from mscale.config import Config, load_config, with_market
from mscale.errors import MscaleError
from mscale.names import MARKETS

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
    p.add_argument("--warehouse", help="DuckDB file (default warehouse/mscale.duckdb, with --market um "
                   "warehouse/mscale_um.duckdb; env MSCALE_WAREHOUSE)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _market(p: argparse.ArgumentParser) -> None:
    p.add_argument("--market", default=None, choices=MARKETS,
                   help="spot (default) or um (USDⓈ-M futures: data under <data dir>/um/, warehouse/mscale_um.duckdb)")


_DESCRIPTION = """\
mscale: a research warehouse for multi-scale crypto features. It stores Binance spot and USDⓈ-M
futures klines (1-minute and 1-hour) as Parquet, builds leak-free hourly features from both scales
in DuckDB (queryable with `mscale sql` or the duckdb shell), and trains and backtests models on them
with purged walk-forward splits, fees and a self-contained HTML report."""

_EPILOG = """\
a first session (offline, on a synthetic market):
  mscale demo-data                 write 6 months of demo klines under data/
  mscale features                  build the warehouse: views, feature cache, checks
  mscale features --list           every feature column: block, window, warm-up, NULL share
  mscale sql "select * from features limit 5"
  python -m mscale.train --compare walk-forward training, backtest and report under _exp/
or all of it at once: mscale demo. Real data: mscale ingest --symbols BTCUSDT --start 2024-01-01.
`mscale COMMAND --help` lists a command's options."""


def build_parser() -> argparse.ArgumentParser:
    from mscale import __version__

    parser = argparse.ArgumentParser(prog="mscale", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mscale {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write the synthetic demo market (offline, deterministic)")
    _common(p)
    _market(p)
    p.add_argument("--symbols", nargs="+", help="symbols (default BTCUSDT ETHUSDT SOLUSDT)")
    p.add_argument("--start", type=_date, default=date(2024, 1, 1), help="first UTC day (YYYY-MM-DD)")
    p.add_argument("--months", type=int, default=6, help="calendar months to generate (default 6)")
    p.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives the same market (default 7)")

    p = sub.add_parser("ingest", help="download Binance klines (bulk archive, REST or both)")
    _common(p)
    p.add_argument("--symbols", nargs="+", required=True, help="Binance symbols, e.g. BTCUSDT ETHUSDT (or comma-separated)")
    p.add_argument("--start", type=_date, required=True, help="first UTC day to fetch (YYYY-MM-DD)")
    p.add_argument("--end", type=_date, help="last UTC day, inclusive (default today)")
    p.add_argument("--interval", default="1m", help="1m or 1h (default 1m)")
    p.add_argument("--source", default="bulk", choices=["bulk", "rest", "auto"],
                   help="bulk: the monthly/daily archive files (default); rest: the klines REST API; auto: the archive, then REST for what it lacks")
    p.add_argument("--market", default=None, choices=MARKETS, help="spot (default) or USDⓈ-M futures")
    p.add_argument("--base-url", help="REST base URL (default [ingest] base_url, https://data-api.binance.vision)")
    p.add_argument("--archive-url", help="bulk archive base URL (default [ingest] archive_url, https://data.binance.vision)")
    p.add_argument("--pace-ms", type=int, help="pause between REST calls in milliseconds (default [ingest] pace_ms, 250)")
    p.add_argument("--force", action="store_true", help="re-download months already complete")

    p = sub.add_parser("import", help="import local archive zips/CSVs or freqtrade JSON")
    _common(p)
    p.add_argument("paths", nargs="+", type=Path,
                   help="Binance archive zips or CSVs (files or folders) and freqtrade-style JSON files")
    p.add_argument("--market", default=None, choices=MARKETS,
                   help="spot or um (USDⓈ-M futures); default: what the path says (spot/, futures/um/, a *-futures.json), "
                   "else the config's market; a value the path contradicts is an error")
    p.add_argument("--symbol", help="symbol, when file names do not say it")
    p.add_argument("--rename-symbol", action="store_true",
                   help="store the bars under --symbol even where the file name says another symbol")
    p.add_argument("--interval", help="1m or 1h, when file names do not say it")

    p = sub.add_parser("resample-hourly", help="derive the hourly bars missing from minute shards")
    _common(p)
    p.add_argument("--symbols", nargs="+", help="symbols to resample (default: every symbol with minute shards)")
    p.add_argument("--force", action="store_true",
                   help="also replace exchange and imported hourly bars with minute-derived ones (warns with the count)")
    _market(p)

    p = sub.add_parser("report", help="ingestion / data-quality report (table + JSON + CSV)")
    _common(p)
    p.add_argument("--symbols", nargs="+", help="symbols to report on (default: every symbol with shards)")
    _market(p)

    p = sub.add_parser("features", help="build or refresh the warehouse views, derived cache and checks")
    _common(p)
    _market(p)
    p.add_argument("--full", action="store_true", help="recompute every month instead of refreshing")
    p.add_argument("--list", action="store_true",
                   help="print the feature catalog of the last build (column, block, window, warm-up, NULL share, "
                   "definition) and build nothing")
    p.add_argument("--out", help="runs folder the runs / run_predictions views read (default _exp/)")
    p.add_argument("--threads", type=int, help="DuckDB threads, and feature blocks computed at once (default 2)")
    p.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 4GB or 512MB (default 4GB)")
    p.add_argument("--executor", choices=["local", "dask"],
                   help="where the (symbol x quarter) blocks run: local threads, or tasks on a Dask cluster "
                   "(default [features] executor, local; doc/scale-out.md)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: the scheduler, e.g. tcp://head:8786 (default: a local cluster of "
                   "--threads worker processes)")

    p = sub.add_parser("train", help="purged walk-forward training, tuned thresholds, OOS backtest, run folder")
    _common(p)
    _market(p)
    from mscale.train import add_arguments

    add_arguments(p)

    p = sub.add_parser("backtest", help="re-run a training run's backtest and report with other knobs, no retraining")
    _common(p)
    _market(p)
    p.add_argument("--run", required=True, help="the run folder, _exp/<run_id>")
    p.add_argument("--fees", help="fee tiers, e.g. gross,VIP9,VIP4 or taker=10")
    p.add_argument("--fill", help="close | next_minute | twap_<N>m")
    p.add_argument("--slippage", help="bps per side, cs or ar")
    p.add_argument("--filter", choices=["none", "vol", "volm", "both"],
                   help="trade only when the auxiliary models expect high volatility (vol), a volume surge (volm) or both")
    p.add_argument("--filter-exit", action=argparse.BooleanOptionalAction, default=None,
                   help="also close an open position when its filter stops passing (default: the run's setting)")
    p.add_argument("--long-only", action=argparse.BooleanOptionalAction, default=None,
                   help="take long positions only, flat instead of short (default: the run's setting)")
    p.add_argument("--min-hold", type=int, help="hourly bars a position is held at least before it may change (0 or 1: no constraint)")
    p.add_argument("--cooldown", type=int, help="hourly bars that stay flat after every exit")
    p.add_argument("--max-trades-per-day", type=int, help="entries (flips included) per UTC day at most")
    p.add_argument("--theta-vol", type=float,
                   help="override the tuned P(vol_high) threshold, a probability in [0, 1]")
    p.add_argument("--theta-volm", type=float,
                   help="override the tuned P(volm_up) threshold, a probability in [0, 1]")

    p = sub.add_parser("demo", help="the main job on the synthetic market: data, features, train --compare, report")
    _common(p)
    p.add_argument("--symbols", nargs="+", help="symbols (default BTCUSDT ETHUSDT SOLUSDT)")
    p.add_argument("--months", type=int, default=6, help="months of demo market from 2024-01-01")
    p.add_argument("--n-splits", type=int, help="walk-forward test folds (default 5, fewer on markets under 5 months)")
    p.add_argument("--out", help="runs folder (default _exp/ in the project root)")

    p = sub.add_parser("sql", help="run SQL against the warehouse: print each result, or write it to a file")
    _common(p)
    _market(p)
    p.add_argument("query", help="one or more SQL statements separated by ';' (run in order, each result printed); "
                   "'-' reads them from stdin")
    p.add_argument("--max-rows", type=int, default=None,
                   help="rows to show per result, 0 = every row (default 40 rows for a table, every row for "
                   "csv/json/parquet and --out); the row count is always the true one")
    p.add_argument("--format", dest="fmt", default=None, choices=["table", "csv", "json", "parquet"],
                   help="table, csv (with header), json (an array of row objects) or parquet (needs --out); default: "
                   "from the --out file's extension (.csv, .json, .parquet), else table")
    p.add_argument("--out", dest="out_file",
                   help="write the result to this file instead (atomically: a complete file or none)")

    p = sub.add_parser("audit", help="leak test: rebuild features on truncated and poisoned copies of the data")
    _common(p)
    _market(p)
    p.add_argument("--cuts", type=int, default=3, help="random cut times K, at least 1 (default 3)")
    p.add_argument("--symbols", nargs="+", help="symbols to sample (default: up to 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the cut times and symbols (default 0)")

    p = sub.add_parser("bench", help="benchmarks (ingest, backtest, train, demo, features)")
    _common(p)
    p.add_argument("what", nargs="?", default="all", choices=["all", "ingest", "backtest", "train", "demo", "features"],
                   help="which benchmark to run (default all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--profile", action="store_true",
                   help="features only: print where one block's time goes, per step (DuckDB's profiler), and nothing else")
    p.add_argument("--work-dir", type=Path,
                   help="folder for the scratch data (generated markets, warehouses, runs); default "
                        "bench-work beside the data dir; removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the work folder (a later run reuses its cached markets)")

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
    if args.command == "features":
        for key in ("executor", "scheduler"):
            if getattr(args, key, None) is not None:
                features[key] = getattr(args, key)
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


# Commands that write several shards or report files: on Ctrl-C the files under these folders of
# either market's data dir are put back as they were (ingest undoes the month in flight itself, the
# feature build publishes its cache all at once, runs are published whole).
_UNDONE_ON_INTERRUPT = {
    "demo-data": ("minute", "hourly", "reports"),
    "import": ("minute", "hourly", "reports"),
    "resample-hourly": ("hourly", "reports"),
    "report": ("reports",),
    "demo": ("minute", "hourly", "reports", "derived"),
}


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        folders = _UNDONE_ON_INTERRUPT.get(args.command)
        if folders:
            from mscale.interrupts import rollback_on_interrupt

            # both markets' folders: an import goes where its path says (futures/um/ -> um)
            with rollback_on_interrupt(cfg.data_dir, [*folders, *(f"um/{f}" for f in folders)]):
                return _dispatch(cfg, args)
        return _dispatch(cfg, args)
    except MscaleError as e:
        # the commands an error's hint names, for the market in use: a `--market um` user who
        # copies one stays in um (a hint that already says --market is left as it is)
        if len(e.args) == 1:
            e.args = (with_market(str(e), cfg.market),)
        raise


def _dispatch(cfg: Config, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "demo-data":
        from mscale.demo import DEFAULT_SYMBOLS, format_summary, write_demo

        if args.months < 1:
            raise MscaleError(f"--months must be at least 1, got {args.months}")
        summary = write_demo(cfg, symbols=tuple(_symbols(args.symbols) or DEFAULT_SYMBOLS), start=args.start, months=args.months, seed=args.seed)
        print(with_market(format_summary(summary), cfg.market))
    elif cmd == "ingest":
        from mscale.ingest.runner import ingest

        summary = ingest(cfg, symbols=_symbols(args.symbols), start=args.start, end=args.end, interval=args.interval, source=args.source, force=args.force)
        print(summary)
        if summary.rows_written == 0 and not any(r.rows_replaced for r in summary.symbols.values()):
            print("nothing new was written (months already complete are skipped; --force fetches them again)")
        print(f"shards under {cfg.market_dir}")
        print(with_market("next: mscale report (data quality), then mscale features", cfg.market))
    elif cmd == "import":
        from mscale.ingest.local import import_paths

        summary = import_paths(cfg, args.paths, symbol=args.symbol, interval=args.interval, market=args.market,
                               rename_symbol=args.rename_symbol)
        print(summary)
        markets = {f.market for f in summary.files} or {cfg.market}
        print(with_market("next: mscale report (data quality), then mscale features",
                          markets.pop() if len(markets) == 1 else cfg.market))
    elif cmd == "resample-hourly":
        from mscale.resample import resample_hourly

        for result in resample_hourly(cfg, _symbols(args.symbols), force=args.force).values():
            print(result)
        print(f"hourly shards under {cfg.hourly_dir}")
        print(with_market("next: mscale report (hourly reconciliation), then mscale features", cfg.market))
    elif cmd == "report":
        from mscale.report import build_report, format_report, write_report

        from mscale.store import list_shards

        symbols = _symbols(args.symbols)
        stored = {s.symbol for s in list_shards(cfg.market_dir, "1m")} | {s.symbol for s in list_shards(cfg.market_dir, "1h")}
        if not stored:
            raise MscaleError(with_market(f"no shards under {cfg.market_dir}: run `mscale demo-data` or `mscale ingest` first",
                                          cfg.market))
        unknown = sorted(set(symbols or ()) - stored)
        if unknown:
            raise MscaleError(f"no shards of {', '.join(unknown)} under {cfg.market_dir} (stored: {', '.join(sorted(stored))}); "
                              "the saved report is left as it was")
        reports = build_report(cfg, symbols)
        json_path, csv_path = write_report(cfg, reports)
        print(format_report(reports))
        print(f"report saved to {json_path} and {csv_path}")
        if list_shards(cfg.market_dir, "1h"):
            print(with_market("next: mscale features (build the warehouse)", cfg.market))
        else:
            print(with_market("next: mscale resample-hourly (hourly bars from the minutes), then mscale features",
                              cfg.market))
    elif cmd == "features" and args.list:
        from mscale.warehouse.catalog import format_catalog, read_catalog

        print(format_catalog(read_catalog(cfg)), end="")
    elif cmd == "features":
        from mscale.warehouse.build import build_features

        result = build_features(cfg, full=args.full)
        print(result.summary())
        print(f"wrote: {cfg.warehouse} (views, feature_catalog, check results), "
              f"cache {cfg.derived_dir / 'features'}")
        print(with_market('next: mscale sql "select * from features limit 5" (mscale features --list shows every '
                          "column), or mscale train", cfg.market))
    elif cmd == "train":
        from mscale.research.pipeline import run_training

        result = run_training(cfg)
        print(result.summary)
        print(f"run written to {result.path}")
        print(with_market(f"next: open {result.path / 'report.html'}; mscale backtest --run {result.path} --fees ... "
                          "re-runs the backtest with other knobs; mscale sql \"select * from runs\" compares runs", cfg.market))
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
        print(f"re-run written to {path}")
        print(f"report: {path / 'report.html'}")
    elif cmd == "demo":
        from mscale.demo import DEFAULT_SYMBOLS
        from mscale.demo_run import run_demo

        if args.months < 3:
            raise MscaleError(f"--months must be at least 3 for walk-forward folds, got {args.months}")
        run_demo(cfg, symbols=tuple(_symbols(args.symbols) or DEFAULT_SYMBOLS), months=args.months, n_splits=args.n_splits)
    elif cmd == "sql":
        from mscale.warehouse.sqlcmd import check_options, resolve_format, run_sql

        fmt = resolve_format(args.fmt, args.out_file)
        check_options(fmt, args.max_rows, args.out_file)
        query = sys.stdin.read() if args.query == "-" else args.query
        results = run_sql(cfg, query, max_rows=args.max_rows, fmt=fmt, out=args.out_file)
        if args.out_file:
            (written,) = [r for r in results if r.columns is not None]
            rows, columns = written.shown, len(written.columns)
            print(f"wrote {rows:,} row{'s' * (rows != 1)} x {columns} column{'s' * (columns != 1)} ({fmt}) "
                  f"to {Path(args.out_file).absolute()}")
    elif cmd == "audit":
        from mscale.warehouse.audit import audit, format_audit

        result = audit(cfg, cuts=args.cuts, symbols=_symbols(args.symbols), seed=args.seed)
        print(format_audit(result))
        return 0 if result.ok else 1
    elif cmd == "bench":
        from mscale.bench import run_bench

        run_bench(cfg, args.what, quick=args.quick, work_dir=args.work_dir, keep=args.keep, profile=args.profile)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. It never ends in a traceback: bad input is one `error: ...` line and its
    exit code; Ctrl-C says so and exits 130 (ingest puts the month in flight back, the feature
    build publishes all or nothing, the other writing commands put their files back); any other
    exception is one line (`-v` adds the traceback), exit 1; a reader that closed the pipe
    (`mscale report | head -1`) ends the command quietly, exit 1."""
    from mscale.interrupts import honour_ctrl_c

    with honour_ctrl_c():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from mscale.interrupts import check_interrupted, interrupt_requested

    verbose = False
    try:
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        quiet = args.quiet or args.command == "demo"  # the demo prints one line per step itself
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
            format="%(levelname)s %(name)s: %(message)s",
        )
        code = _run(args)
        check_interrupted()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        return code
    except MscaleError as e:
        if interrupt_requested():  # e.g. a query cancelled by the Ctrl-C
            return _interrupted(e, verbose)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted(None, verbose)
    except BrokenPipeError as e:
        if not _stdout_gone():
            return _unexpected(e, verbose)
        # the Python docs' recipe: later writes (and the flush at exit) go to devnull
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 - the last resort: one line instead of a traceback
        if interrupt_requested():  # e.g. a library left half-imported by the Ctrl-C
            return _interrupted(e, verbose)
        return _unexpected(e, verbose)


def _interrupted(cause: BaseException | None, verbose: bool) -> int:
    """Ctrl-C: what was in flight was put back (ingest's month, the other writers' files) or never
    published (the feature cache, a run folder); also when the interrupt surfaced as another error."""
    if verbose and cause is not None:
        log.debug("the interrupt surfaced as %s: %s", type(cause).__name__, cause)
    print("interrupted; nothing partial was written", file=sys.stderr)
    return 130


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (so a BrokenPipeError came from there)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no poll(), or stdout is not a real file
        return True


def _unexpected(e: BaseException, verbose: bool) -> int:
    """An exception mscale did not anticipate: one line, the traceback only with -v."""
    message = (str(e).strip().splitlines() or [""])[0]
    what = f"{type(e).__name__}: {message}" if message else type(e).__name__
    if verbose:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
        print(f"error: {what}", file=sys.stderr)
    else:
        print(f"error: {what} (run with -v for the traceback)", file=sys.stderr)
    return 1
