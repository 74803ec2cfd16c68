"""Build the warehouse: views in `warehouse/mscale.duckdb`, the derived feature cache, and the checks.

Layers are created in folder order (see render.LAYERS). The `features` mart is materialised under
`derived/features/symbol=S/YYYYMM.parquet`, one file per symbol and month of its hourly bars, and
the published `features` view reads that cache. The unit of work is a fixed block of BLOCK_MONTHS
calendar months per symbol, computed from its months plus the WARMUP before them (longer
than any feature looks back), single-threaded. A block is recomputed only when one of those input
shards or the SQL and its parameters changed; since a block always sees the same inputs in the
same order, a refresh is bit-identical to a rebuild from scratch.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
from tqdm import tqdm

from mscale.config import DEFAULT_WAREHOUSE, Config, with_market
from mscale.errors import CheckFailedError, MscaleError
from mscale.store import list_shards, month_bounds, write_text_atomic
from mscale.warehouse import render as r
from mscale.warehouse.executors import Block, BlockTask, build_block, run_blocks, run_queries

log = logging.getLogger(__name__)

# Longer than the deepest bounded lookback (the 30-day range percentile: 720 h + 1 h) and long
# enough that a recursion's seed weighs (13/14)^768 < 1e-24 by the block's first bar.
WARMUP = timedelta(days=32)
BLOCK_MONTHS = 3  # calendar quarters: the unit of computation and of recomputation
# The minute buckets (feat_min__buckets: the hourly aggregates of the minutes) are cached per
# symbol-month and read by the blocks, so a block's warm-up is not recomputed from its minutes.
BUCKETS = "feat_min__buckets"
BUCKET_LOOKBACK = timedelta(hours=168 + 1)  # the volume reference's trailing week, and the minutes before it
# How the cache is computed and written; a manifest entry from another layout is stale even when
# the SQL and the shards are unchanged, so a refresh never mixes files of two layouts (2: blocks
# over cached minute buckets; 3: floats written without a Parquet dictionary, the same values).
CACHE_LAYOUT = 3


# --- connections and views -------------------------------------------------------------------


def connect(database: str | Path = ":memory:", *, cfg: Config | None = None, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the project's threads / memory limit; the file's folder is created."""
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(database), read_only=read_only)
    except duckdb.IOException as e:
        raise MscaleError(
            f"cannot open warehouse {database} ({str(e).splitlines()[0]}); close the other session holding it (a "
            "duckdb shell, a notebook, another mscale) and retry; while browsing, `duckdb -readonly` lets other "
            "readers in, but a build waits until every session has closed"
        ) from None
    if cfg is not None:
        con.execute(f"set threads = {int(cfg.features.threads)}")
        con.execute(f"set memory_limit = {r.sql_string(cfg.features.memory_limit)}")
    return con


def install_macros(con: duckdb.DuckDBPyConnection, sql_dir: Path) -> None:
    con.execute((Path(sql_dir) / r.MACROS_FILE).read_text())


def create_views(
    con: duckdb.DuckDBPyConnection,
    sql_dir: Path,
    params: r.RenderParams,
    *,
    mart_cache: str | None = None,
    layers: tuple[str, ...] = tuple(layer for layer in r.LAYERS if layer != "checks"),
    extra_dirs: tuple[Path, ...] = (),
    temp_tables: bool = False,
) -> list[r.Model]:
    """Create every model of `layers` as a view, in build order; the mart reads `mart_cache` if given.
    `extra_dirs`: a research folder's own feature files (Config.extra_feature_dirs). `temp_tables`:
    each layer from staging on computed once into a temp table instead (the shards and the mart over
    the cache stay views), for a connection that reads each layer several times."""
    env = r.environment(sql_dir)
    models = r.discover(sql_dir, extra_dirs)
    params = _with_extras(params, models)
    install_macros(con, sql_dir)
    created = []
    for model in models:
        if model.layer not in layers:
            continue
        if model.layer == "marts" and mart_cache is not None:
            sql = _cache_view(mart_cache, params)
        else:
            sql = r.render(env, model, params)
        computed = model.layer != "sources" and not (model.layer == "marts" and mart_cache is not None)
        kind = "temp table" if temp_tables and computed else "view"
        try:
            con.execute(f"create or replace {kind} {model.name} as\n{sql}")
        except duckdb.Error as e:
            raise MscaleError(f"{model.path}: {str(e).splitlines()[0]}") from None
        created.append(model)
        if model.layer == "features/extra":
            _check_extra_columns(con, model)
    return created


def _cache_view(glob: str, params: r.RenderParams) -> str:
    """The published mart: the cached Parquet, restricted to the configured symbols and date range."""
    sql = f"select * from read_parquet({r.sql_paths(glob)}, union_by_name = true) where true"
    if params.symbols:
        sql += f" and symbol in ({r.sql_values(params.symbols)})"
    if params.out_from:
        sql += f" and ts > {r.sql_ts(params.out_from)}"
    if params.out_to:
        sql += f" and ts <= {r.sql_ts(params.out_to)}"
    return sql


def _check_extra_columns(con: duckdb.DuckDBPyConnection, model: r.Model) -> None:
    """A user's feature may not reuse a name the mart already has (DuckDB would silently rename it)."""
    columns = {row[0] for row in con.execute(f"describe {model.name}").fetchall()}
    if not {"symbol", "ts"} <= columns:
        raise MscaleError(f"{model.path}: a feature file must return symbol and ts columns, got {sorted(columns)}")
    taken = {row[0] for row in con.execute("describe feat_norm").fetchall()} - {"symbol", "ts"}
    for other in con.execute(
        f"select view_name from duckdb_views() where view_name like 'feat_extra%' and view_name <> {r.sql_string(model.name)}"
    ).fetchall():
        taken |= {row[0] for row in con.execute(f"describe {other[0]}").fetchall()} - {"symbol", "ts"}
    clash = sorted((columns - {"symbol", "ts"}) & taken)
    if clash:
        raise MscaleError(f"{model.path}: column names {clash} already exist in the features mart; rename them")


def _with_extras(params: r.RenderParams, models: list[r.Model]) -> r.RenderParams:
    extras = tuple(m.name for m in models if m.layer == "features/extra")
    return replace(params, extra_models=extras)


def feature_query(sql_dir: Path, params: r.RenderParams, *, extra_dirs: tuple[Path, ...] = (),
                  bucket_files: list[Path] | None = None) -> str:
    """The one statement computing the `features` mart from the shards named in `params`, ordered
    by (symbol, ts). The layers are rendered as its CTEs, bound once (a view per layer would re-read
    the Parquet metadata for every view); it needs the macros of `install_macros`. With
    `bucket_files` (cached minute buckets, see `bucket_query`), `feat_min__buckets` reads those
    instead of computing them from the minutes: the rows with ts in (minute_from, minute_to], the
    ones the minutes of the window would give."""
    env = r.environment(sql_dir)
    models = r.discover(sql_dir, extra_dirs)
    params = _with_extras(params, models)
    layers = ("sources", "staging") + r.FEATURE_LAYERS
    ctes = []
    for m in models:
        if m.layer not in layers:
            continue
        if m.name == BUCKETS and bucket_files:
            body = cached_buckets_sql(bucket_files, params)
        else:
            body = r.render(env, m, params)
        ctes.append(f"{m.name} as (\n{body}\n)")
    return "with\n" + ",\n".join(ctes) + "\nselect * from features order by symbol, ts"


def cached_buckets_sql(bucket_files: list[Path], params: r.RenderParams) -> str:
    """The cached minute buckets a block reads in place of `feat_min__buckets`: ts in
    (minute_from, minute_to], the rows the minutes of that window would give."""
    return (f"select * from read_parquet({r.sql_paths([str(f) for f in bucket_files])})\n"
            f"where epoch_ms(ts) > {_ms(params.minute_from)} and epoch_ms(ts) <= {_ms(params.minute_to)}")


def months_bounds(first: int, last: int) -> tuple[datetime, datetime]:
    """[start of month `first`, end of month `last`) of two month indexes."""
    return month_bounds(*_month_of(first))[0], month_bounds(*_month_of(last))[1]


def buckets_of_months_sql(first: int, last: int) -> str:
    """The rows of `feat_min__buckets` that belong to the cache files of months first..last: bars
    opened in them."""
    start, end = months_bounds(first, last)
    return (f"select * from {BUCKETS}\n"
            f"where epoch_ms(ts) > {_ms(start)} and epoch_ms(ts) <= {_ms(end)}\norder by symbol, ts")


def bucket_inputs(minutes: dict[int, list[Path]], first: int, last: int) -> tuple[list[Path], list[Path]]:
    """(window, before) minute shards of one symbol's minute buckets of months first..last: those
    months' own and the previous month's (the BUCKET_LOOKBACK window),
    and the shards the two minutes before that window come from: the previous month's and the
    latest earlier one's (after a gap the first returns lag on the last minutes before it, however
    old: CONTRACT §5's previous available bar)."""
    earlier = [k for k in minutes if k < first - 1]
    previous = minutes.get(first - 1, [])
    window = previous + [p for k in range(first, last + 1) for p in minutes.get(k, [])]
    return window, (minutes[max(earlier)] if earlier else []) + previous


def bucket_params(base: r.RenderParams, symbol: str, first: int, last: int, minute_files: list[Path]) -> r.RenderParams:
    """Parameters of one symbol's minute buckets of months first..last: `minute_files` from the
    BUCKET_LOOKBACK before the first month to the end of the last."""
    start, end = months_bounds(first, last)
    return replace(base, minute_files=minute_files, hourly_files=(), symbols=(symbol,),
                   minute_from=start - BUCKET_LOOKBACK, minute_to=end, sort_staged=False)


def bucket_query(sql_dir: Path, base: r.RenderParams, symbol: str, first: int, last: int,
                 inputs: tuple[list[Path], list[Path]]) -> str:
    """`feat_min__buckets` of one symbol's months first..last, the rows of their monthly cache files:
    the hours whose bar opens in them (ts in (first's start, last's end]), over `inputs`
    (`bucket_inputs`): the staged minutes of the BUCKET_LOOKBACK window and the two minutes before
    it (read from the shards without staging, newest first).

    A month's rows are the same bits whichever run of months computes them (a quarter in a full
    build, the changed months in a refresh): each hour's aggregates read only its own minutes, in
    time order, and the only sums across hours, the trailing week's, add in fixed point. And the
    same values as the live view."""
    window, before = inputs
    params = bucket_params(base, symbol, first, last, window)
    env = r.environment(sql_dir)
    model = {m.name: m for m in r.discover(sql_dir) if m.name in ("src_klines_1m", "klines_1m", BUCKETS)}
    steps = [("src_klines_1m", r.render(env, model["src_klines_1m"], params)),
             ("klines_1m_window", r.render(env, model["klines_1m"], params))]
    if before:
        steps += [("src_klines_1m_before", r.render(env, model["src_klines_1m"], replace(params, minute_files=before))),
                  ("klines_1m_before", f"select * exclude (filename) from src_klines_1m_before\n"
                                       f"where symbol = {r.sql_string(symbol)} and open_time < {r.sql_ts(params.minute_from)}\n"
                                       f"order by open_time desc limit 2"),
                  ("klines_1m", "select * from klines_1m_window union all by name select * from klines_1m_before")]
    else:
        steps += [("klines_1m", "select * from klines_1m_window")]
    steps.append((BUCKETS, r.render(env, model[BUCKETS], params)))
    ctes = [f"{name} as (\n{sql}\n)" for name, sql in steps]
    return "with\n" + ",\n".join(ctes) + "\n" + buckets_of_months_sql(first, last)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def compute_features(sql_dir: Path, params: r.RenderParams, *, memory_limit: str | None = None,
                     extra_dirs: tuple[Path, ...] = ()) -> pa.Table:
    """The `features` mart computed live from the shards named in `params`, sorted by (symbol, ts),
    single-threaded as a block is (`executors.run_queries`)."""
    query = feature_query(sql_dir, params, extra_dirs=extra_dirs)
    try:
        (table,) = run_queries((Path(sql_dir) / r.MACROS_FILE).read_text(), [query], memory_limit)
    except duckdb.Error as e:
        raise MscaleError(f"feature query failed: {str(e).splitlines()[0]}") from None
    return table


# --- checks ------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    failing_rows: int
    sample: list[dict] = field(default_factory=list)


def run_checks(con: duckdb.DuckDBPyConnection, sql_dir: Path, params: r.RenderParams,
               only: set[str] | None = None, skip: frozenset[str] = frozenset()) -> list[CheckResult]:
    """Run every template in `checks/` (or those named in `only`, less those in `skip`): each
    returns offending rows; empty means pass."""
    env = r.environment(sql_dir)
    results = []
    for model in r.discover(sql_dir):
        if model.layer != "checks" or (only is not None and model.name not in only) or model.name in skip:
            continue
        cursor = con.execute(r.render(env, model, params))  # offending rows: few, or none
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        results.append(CheckResult(model.name, len(rows), [dict(zip(columns, row)) for row in rows[:10]]))
    return results


# Checks of the live layers under the mart (each recomputes its layer from the minutes): run by
# `mscale features` on a sample of blocks, each over its last month and the hours before it whose
# minutes feed that month (`check_sample`), not over the whole history. They still catch a
# duplicated key: every block runs the same SQL, so a key the SQL duplicates (a join that fans
# out, a lost dedupe) shows in any block; and whatever duplicate reaches the published features,
# from any layer or block, is caught over every cached row by chk_features__unique_key, which runs
# on the cache (as do the grid and order checks). The alignment check compares the sampled blocks'
# cached rows with their minutes.
BLOCK_CHECKS = frozenset({"chk_features__alignment", "chk_features_hourly__unique_key", "chk_features_minute__unique_key",
                          "chk_fills__unique_key", "chk_klines_1m__unique_key", "chk_labels__unique_key"})
# the layers those checks read (the mart is a view over the block's cached files): a sampled block
# computes only these
BLOCK_CHECK_LAYERS = ("sources", "staging", "features/hourly", "features/minute", "marts", "labels", "fills")


def sample_blocks(result: BuildResult) -> list[tuple[r.RenderParams, list[Path]]]:
    """The blocks the live-layer checks run on (their `check_sample`): the latest computed block of
    the first and of the last symbol, or with nothing computed, the latest block of the build."""
    latest: dict[str, tuple[r.RenderParams, list[Path]]] = {}
    for block in result.computed or [b for b in [result.latest] if b]:
        latest[block[0].symbols[0]] = block  # plan order: months ascend within a symbol
    symbols = list(latest)
    return [latest[s] for s in dict.fromkeys(symbols[:1] + symbols[-1:])]


def check_blocks(cfg: Config, blocks: list[tuple[r.RenderParams, list[Path]]], models: list[r.Model]) -> list[CheckResult]:
    """BLOCK_CHECKS over each block's views: its layers live over its own shards, its mart the
    block's cached files; the results of one check over all blocks are added up, samples kept from
    the first block that failed it."""
    merged = {name: CheckResult(name, 0) for name in sorted(BLOCK_CHECKS)}
    for params, files in blocks:
        con = connect(cfg=cfg)  # the build's threads (key counts do not depend on order) and memory limit
        try:
            create_views(con, cfg.sql_dir, params, mart_cache=[str(f) for f in files], layers=BLOCK_CHECK_LAYERS,
                         extra_dirs=cfg.extra_feature_dirs, temp_tables=True)
            for c in run_checks(con, cfg.sql_dir, _with_extras(params, models), only=set(BLOCK_CHECKS)):
                merged[c.name].failing_rows += c.failing_rows
                merged[c.name].sample = merged[c.name].sample or c.sample
        finally:
            con.close()
    return list(merged.values())


def check_stored_order(con: duckdb.DuckDBPyConnection, cache_glob: str) -> CheckResult:
    """chk_features__increasing: inside every cached file, ts strictly increases row by row, so
    readers get (symbol, ts) in order without sorting. (File order is not visible to a view, so
    this check reads the files themselves.)"""
    cursor = con.execute(
        f"""
        with stored as (
            select filename, file_row_number, symbol, ts,
                lag(ts) over (partition by filename order by file_row_number) as previous_ts,
            from read_parquet({r.sql_paths(cache_glob)}, filename = true, file_row_number = true)
        )
        select filename, file_row_number, symbol, ts, previous_ts from stored where previous_ts >= ts
        """
    )
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    return CheckResult("chk_features__increasing", len(rows), [dict(zip(columns, row)) for row in rows[:10]])


def label_settings(cfg: Config) -> dict:
    """The [labels] settings as plain JSON values (what the labels view was rendered with)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.labels.__dict__.items()}


def store_build_info(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    """`build_info`: the settings the views were rendered with, so training can refuse a stale
    warehouse, and the market its views describe (one warehouse file holds one market)."""
    con.execute("create or replace table build_info (labels varchar, built_at timestamptz, market varchar)")
    labels = json.dumps(label_settings(cfg), sort_keys=True)
    con.execute(f"insert into build_info values ({r.sql_string(labels)}, {_now_literal()}, {r.sql_string(cfg.market)})")


def _now_literal() -> str:
    """The current UTC time to the microsecond, as a timestamptz literal. (Literals, not Python
    parameters, in what `mscale features` stores: DuckDB imports pandas, about 0.3 s, to convert
    the first Python parameter of a process.)"""
    return f"timestamptz {r.sql_string(datetime.now(timezone.utc).isoformat(sep=' '))}"


def warehouse_market(con: duckdb.DuckDBPyConnection) -> str | None:
    """The market a warehouse was built for; None before its first build ("spot" for a warehouse
    built before build_info recorded it: spot was the only market featurised then)."""
    tables = {t for (t,) in con.execute("select table_name from duckdb_tables() where schema_name = 'main'").fetchall()}
    if "build_info" not in tables:
        return None
    columns = {c for (c,) in con.execute("select column_name from duckdb_columns() where table_name = 'build_info'").fetchall()}
    if "market" not in columns:
        return "spot"
    row = con.execute("select market from build_info").fetchone()
    return row[0] if row else None


def check_market(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    """MscaleError when the warehouse holds another market's views than `cfg.market`."""
    held = warehouse_market(con)
    if held is not None and held != cfg.market:
        raise MscaleError(
            f"warehouse {cfg.warehouse} holds the {held} market's views, not {cfg.market}'s: give --market {cfg.market} "
            f"its own --warehouse (the default is {DEFAULT_WAREHOUSE[cfg.market]} in the project folder)"
        )


def store_check_results(con: duckdb.DuckDBPyConnection, results: list[CheckResult]) -> None:
    con.execute(
        "create or replace table check_results (check_name varchar, failing_rows bigint, sample varchar, checked_at timestamptz)"
    )
    if not results:
        return
    now = _now_literal()
    rows = [f"({r.sql_string(c.name)}, {int(c.failing_rows)}, {r.sql_string(json.dumps(c.sample, default=str))}, {now})"
            for c in results]
    con.execute("insert into check_results values\n" + ",\n".join(rows))


# --- materialisation ---------------------------------------------------------------------------


def _month_index(year: int, month: int) -> int:
    return year * 12 + month - 1


def _month_of(index: int) -> tuple[int, int]:
    return index // 12, index % 12 + 1


class _Fingerprints:
    """A build's fingerprints of input files (name, size, modification time), each file stat'ed
    once per build: a shard is an input of several blocks and minute-bucket months."""

    def __init__(self) -> None:
        self._of: dict[Path, str] = {}

    def __call__(self, paths: list[Path]) -> str:
        return "|".join(self._one(p) for p in sorted(paths))

    def _one(self, path: Path) -> str:
        if path not in self._of:
            st = path.stat()
            self._of[path] = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
        return self._of[path]


def shards_by_month(market_dir: Path, interval: str) -> dict[str, dict[int, list[Path]]]:
    """{symbol: {month index: shard paths}} of one interval's shards."""
    out: dict[str, dict[int, list[Path]]] = {}
    for s in list_shards(market_dir, interval):
        out.setdefault(s.symbol, {}).setdefault(_month_index(s.year, s.month), []).append(s.path)
    return out


# the two caches under the derived folder: the feature mart, and the minute buckets its blocks read
FEATURE_CACHE, BUCKET_CACHE = "features", "minute_buckets"


def _cached_month(cfg: Config, cache: str, symbol: str, month_index: int) -> Path:
    y, m = _month_of(month_index)
    return cfg.derived_dir / cache / f"symbol={symbol}" / f"{y:04d}{m:02d}.parquet"


def cache_path(cfg: Config, symbol: str, month_index: int) -> Path:
    """The cached features of one symbol-month."""
    return _cached_month(cfg, FEATURE_CACHE, symbol, month_index)


def bucket_path(cfg: Config, symbol: str, month_index: int) -> Path:
    """The cached minute buckets of one symbol-month (see bucket_query)."""
    return _cached_month(cfg, BUCKET_CACHE, symbol, month_index)


@dataclass
class BuildResult:
    months_computed: int = 0
    months_skipped: int = 0
    months_removed: int = 0  # cached months whose hourly shards are gone
    rows_written: int = 0
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)
    # the check sample (`check_sample`) of each block computed, in plan order, and of the build's last block
    computed: list[tuple[r.RenderParams, list[Path]]] = field(default_factory=list)
    latest: tuple[r.RenderParams, list[Path]] | None = None

    def summary(self) -> str:
        failing = [f"{c.name}: {c.failing_rows} FAILING" for c in self.checks if c.failing_rows]
        checks = ", ".join(failing) if failing else f"all {len(self.checks)} passed"
        if self.months_computed == 0 and self.months_removed == 0:
            done = (f"features: nothing changed since the last build ({self.months_skipped} symbol-months up to date; "
                    f"views, catalog and checks refreshed), {self.seconds:.1f}s")
        else:
            removed = f", {self.months_removed} removed" if self.months_removed else ""
            done = (f"features: {self.months_computed} symbol-months computed ({self.rows_written:,} rows), "
                    f"{self.months_skipped} unchanged{removed}, {self.seconds:.1f}s")
        return f"{done}\nchecks: {checks}"


def warmup_start(first: int) -> datetime:
    """Where a block starting at month index `first` begins reading."""
    return month_bounds(*_month_of(first))[0] - WARMUP


def block_params(
    base: r.RenderParams, symbol: str, first: int, last: int, minute_files: list[Path], hourly_files: list[Path]
) -> r.RenderParams:
    """Parameters of one block: months first..last (month indexes) of `symbol`, read from WARMUP
    before them on, publishing decision times of bars opened in those months."""
    window_start = warmup_start(first)
    out_to = month_bounds(*_month_of(last))[1]
    return replace(
        base,
        minute_files=minute_files,
        hourly_files=hourly_files,
        symbols=(symbol,),
        minute_from=window_start,
        minute_to=out_to,
        hourly_from=window_start,
        hourly_to=out_to,
        out_from=month_bounds(*_month_of(first))[0],
        out_to=out_to,
    )


def check_sample(cfg: Config, base: r.RenderParams, symbol: str, month: int, minutes: dict[int, list[Path]],
                 hours: dict[int, list[Path]]) -> tuple[r.RenderParams, list[Path]]:
    """What the live-layer checks read of a block (BLOCK_CHECKS): the cached file of `month` (the
    block's last month), and the block's parameters over that month's bars and the few hours
    before it whose minutes feed its first hours (minute_lag_hours + 1, and an hour's margin), read
    from the shards of that month and the one before. No warm-up: the checks look at keys and at
    which minutes feed which hour, not at values."""
    months = (month - 1, month)
    params = block_params(base, symbol, month, month, [p for k in months for p in minutes.get(k, [])],
                          [p for k in months for p in hours.get(k, [])])
    start = params.out_from - timedelta(hours=base.minute_lag_hours + 2)
    return replace(params, minute_from=start, hourly_from=start), [cache_path(cfg, symbol, month)]


def materialise(cfg: Config, *, full: bool = False, executor: str | None = None, scheduler: str | None = None,
                task: BlockTask = build_block) -> BuildResult:
    """Bring the derived feature cache up to date with the shards; returns what was done.

    Work is split into fixed blocks of BLOCK_MONTHS calendar months per symbol. A block is always
    computed from the same inputs (its months plus the WARMUP before them), single-threaded,
    so its output bits do not depend on when, where or how often it was computed. The minute side
    of a block's months and warm-up comes from the minute-bucket cache (`bucket_query`, one unit per
    symbol-month, computed first where its minutes changed). Tasks run in parallel on `executor`
    ("local" threads or "dask" tasks, default `[features] executor`; `scheduler` a Dask scheduler's
    address, default a local cluster; `task` runs one task).
    """
    started = time.perf_counter()
    executor = executor or cfg.features.executor
    scheduler = scheduler if scheduler is not None else cfg.features.scheduler
    base = r.params_from_config(cfg)
    sql_hash = r.sql_fingerprint(cfg.sql_dir, base, cfg.extra_feature_dirs)
    cache_dir = cfg.derived_dir / FEATURE_CACHE
    manifest_path = cache_dir / "_manifest.json"
    # a full rebuild reuses nothing; the earlier build's files go when the new one is published
    manifest = {} if full or not manifest_path.exists() else json.loads(manifest_path.read_text())
    result = BuildResult()

    minute_shards = shards_by_month(cfg.market_dir, "1m")
    hourly_shards = shards_by_month(cfg.market_dir, "1h")
    symbols = sorted(hourly_shards)
    if cfg.features.symbols:
        symbols = [s for s in symbols if s in cfg.features.symbols]
    lo = _month_index(base.out_from.year, base.out_from.month) if base.out_from else None
    hi = _month_index(base.out_to.year, base.out_to.month) if base.out_to else None

    def in_range(m: int) -> bool:
        return (lo is None or m >= lo) and (hi is None or m <= hi)

    # Plan, execute, publish: the minute buckets of the months the blocks read, then the blocks,
    # are written to a staging folder (outside the caches' globs) and moved into the caches only once
    # all succeeded, so an interrupted or failed build leaves them exactly as they were.
    # one staging folder per build: a task a remote worker still runs after a failed build writes
    # into its own build's folder, never into the next build's
    staging_root = cfg.derived_dir / ".staging"
    staging = staging_root / uuid.uuid4().hex
    macros_sql = (Path(cfg.sql_dir) / r.MACROS_FILE).read_text()
    # the symbol-months of minute buckets to compute, and the manifest entry each brings up to date
    unit_manifest: dict[tuple[str, int], tuple[str, dict]] = {}
    blocks: list[Block] = []
    wanted_of: dict[tuple[str, str], list[tuple[str, dict]]] = {}  # manifest entries a task brings up to date
    fingerprint = _Fingerprints()
    for symbol in symbols:
        hours = hourly_shards[symbol]
        minutes = minute_shards.get(symbol, {})
        # each month's minute buckets: the shards they read, and (for the blocks to compute) the
        # manifest entry they need
        unit_inputs = {k: bucket_inputs(minutes, k, k) for k in minutes}

        def unit_wanted(k: int) -> dict:
            window, before = unit_inputs[k]
            return {"sql": sql_hash, "layout": CACHE_LAYOUT, "inputs": fingerprint(sorted(set(window + before)))}

        for block in sorted({m // BLOCK_MONTHS for m in hours if in_range(m)}):
            first, last = block * BLOCK_MONTHS, block * BLOCK_MONTHS + BLOCK_MONTHS - 1
            start = warmup_start(first)
            span = range(_month_index(start.year, start.month), last + 1)
            out_months = [m for m in range(first, last + 1) if m in hours and in_range(m)]
            if not out_months:
                continue
            minute_files = [p for k in span for p in minutes.get(k, [])]
            hourly_files = [p for k in span for p in hours.get(k, [])]
            # the minute shards the block's buckets read (its own minutes are among them)
            read = sorted({p for k in span if k in minutes for p in unit_inputs[k][0] + unit_inputs[k][1]})
            wanted = {"sql": sql_hash, "layout": CACHE_LAYOUT, "inputs": fingerprint(read + hourly_files)}
            key = f"{symbol}/{block}"
            files = [cache_path(cfg, symbol, m) for m in out_months]
            result.latest = check_sample(cfg, base, symbol, out_months[-1], minutes, hours)
            if manifest.get(key) == wanted and all(f.exists() for f in files):
                result.months_skipped += len(out_months)
                continue
            result.computed.append(result.latest)
            params = block_params(base, symbol, first, last, minute_files, hourly_files)
            bucket_files = []
            for k in (k for k in span if k in minutes):
                unit_key = f"{symbol}/m{k}"
                if (symbol, k) not in unit_manifest:
                    needed = unit_wanted(k)
                    if manifest.get(unit_key) != needed or not bucket_path(cfg, symbol, k).exists():
                        unit_manifest[(symbol, k)] = (unit_key, needed)
                staged_unit = staging / bucket_path(cfg, symbol, k).relative_to(cfg.derived_dir)
                bucket_files.append(staged_unit if (symbol, k) in unit_manifest else bucket_path(cfg, symbol, k))
            year, month = _month_of(first)
            label = f"{year:04d}-Q{(month - 1) // 3 + 1}"
            staged = tuple(str(staging / f.relative_to(cfg.derived_dir)) for f in files)
            query = feature_query(cfg.sql_dir, params, extra_dirs=cfg.extra_feature_dirs, bucket_files=bucket_files)
            blocks.append(Block(symbol, label, macros_sql, (query,), tuple(out_months), staged, cfg.features.memory_limit))
            wanted_of[(symbol, label)] = [(key, wanted)]
    bucket_blocks = _bucket_tasks(cfg, base, unit_manifest, minute_shards, staging, macros_sql, wanted_of)

    from mscale.interrupts import check_interrupted, deferred_interrupt

    shutil.rmtree(staging_root, ignore_errors=True)  # what killed builds left
    written: list[Path] = []
    show = not cfg.quiet and sys.stderr.isatty()
    phases = [(bucket_blocks, bucket_path), (blocks, cache_path)]
    try:
        with tqdm(total=len(bucket_blocks) + len(blocks), desc="features", unit="block", disable=not show or not blocks,
                  file=sys.stderr, leave=False) as bar:
            by_id = {(b.symbol, b.label): (b, final_path) for todo, final_path in phases for b in todo}
            # the minute buckets first: the blocks read them
            for done in run_blocks([todo for todo, _ in phases], executor=executor, threads=cfg.features.threads,
                                   scheduler=scheduler, task=task):
                block, final_path = by_id[(done.symbol, done.label)]
                log.info("features %s %s: %d rows", done.symbol, done.label, sum(done.rows))
                for m, rows in zip(block.months, done.rows):
                    written.append(final_path(cfg, done.symbol, m))
                    if final_path is cache_path:
                        result.months_computed += 1
                        result.rows_written += rows
                manifest.update(wanted_of[(done.symbol, done.label)])
                bar.update(1)
                check_interrupted()  # a Ctrl-C a library swallowed
        check_interrupted()
        with deferred_interrupt():  # Ctrl-C waits for the renames (quick): all or nothing
            result.months_removed = _publish(cfg, staging, written, manifest, hourly_shards, minute_shards, full=full)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging_root.rmdir()  # unless a task of a failed build still runs on a remote worker
    result.seconds = time.perf_counter() - started
    return result


def month_runs(months: list[int]) -> list[list[int]]:
    """Sorted month indexes cut into runs of consecutive months."""
    return [[k for _, k in run] for _, run in itertools.groupby(enumerate(months), key=lambda ik: ik[1] - ik[0])]


def _bucket_tasks(cfg: Config, base: r.RenderParams, unit_manifest: dict[tuple[str, int], tuple[str, dict]],
                  minute_shards: dict[str, dict[int, list[Path]]], staging: Path, macros_sql: str, wanted_of: dict[tuple[str, str], list[tuple[str, dict]]]) -> list[Block]:
    """The minute buckets to compute (the symbol-months of `unit_manifest`) as tasks, one per symbol
    and quarter, one query per run of consecutive months in it (`bucket_query`); `wanted_of` gets
    the manifest entries each task brings up to date."""
    tasks = []
    for (symbol, _), group in itertools.groupby(sorted(unit_manifest), key=lambda u: (u[0], u[1] // BLOCK_MONTHS)):
        months = [k for _, k in group]
        queries = tuple(bucket_query(cfg.sql_dir, base, symbol, run[0], run[-1],
                                     bucket_inputs(minute_shards[symbol], run[0], run[-1])) for run in month_runs(months))
        first, last = ("%04d-%02d" % _month_of(k) for k in (months[0], months[-1]))
        label = f"{first}..{last[-2:]} minute buckets" if len(months) > 1 else f"{first} minute buckets"
        tasks.append(Block(
            symbol, label, macros_sql, queries, tuple(months),
            tuple(str(staging / bucket_path(cfg, symbol, k).relative_to(cfg.derived_dir)) for k in months),
            cfg.features.memory_limit))
        wanted_of[(symbol, label)] = [unit_manifest[(symbol, k)] for k in months]
    return tasks


def _publish(cfg: Config, staging: Path, written: list[Path], manifest: dict,
             hourly_shards: dict[str, dict[int, list[Path]]], minute_shards: dict[str, dict[int, list[Path]]], *,
             full: bool) -> int:
    """Move the staged files into the caches, remove the months (or whole symbols) whose shards are
    gone (hourly for features, minute for minute buckets; on a full rebuild every file it did not
    write), then write the manifest. Returns the feature months removed."""
    derived = cfg.derived_dir
    for final in written:
        final.parent.mkdir(parents=True, exist_ok=True)
        (staging / final.relative_to(derived)).replace(final)
    fresh = set(written)
    removed = 0
    for cache, shards in ((FEATURE_CACHE, hourly_shards), (BUCKET_CACHE, minute_shards)):
        for old in (derived / cache).glob("symbol=*/*.parquet"):
            symbol = old.parent.name.removeprefix("symbol=")
            gone = _month_index(int(old.stem[:4]), int(old.stem[4:6])) not in shards.get(symbol, {})
            if gone or (full and old not in fresh):
                old.unlink()
                removed += cache == "features"
    if written or full or removed:
        _write_manifest(derived / FEATURE_CACHE / "_manifest.json", manifest)
    return removed


def _write_manifest(path: Path, manifest: dict) -> None:
    write_text_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))


# --- the whole build ----------------------------------------------------------------------------


def build_features(cfg: Config, *, full: bool = False) -> BuildResult:
    """`mscale features`: refresh the cache, (re)create every view in the warehouse, run the checks.

    The warehouse's write lock is taken first and held to the end, so a file another process holds
    (a duckdb shell, another build) fails the command before anything is computed; so do templates
    that cannot be discovered and a warehouse built for the other market.
    Raises CheckFailedError (after storing the results) when any check returns rows.
    """
    if not list_shards(cfg.market_dir, "1h"):
        raise MscaleError(with_market(
            f"no hourly shards under {cfg.hourly_dir}: run `mscale demo-data`, `mscale ingest --interval 1h` "
            "or `mscale resample-hourly` first", cfg.market))
    models = r.discover(cfg.sql_dir, cfg.extra_feature_dirs)
    con = connect(cfg.warehouse, cfg=cfg)
    try:
        check_market(con, cfg)
        result = materialise(cfg, full=full)
        params = r.params_from_config(cfg)
        if not list_shards(cfg.market_dir, "1m"):
            params = r.RenderParams(**{**params.__dict__, "minute_files": ()})
        cache = str(cfg.derived_dir / FEATURE_CACHE / "symbol=*" / "*.parquet")
        con.begin()  # the views, tables and check results change together or not at all (Ctrl-C)
        create_views(con, cfg.sql_dir, params, mart_cache=cache, extra_dirs=cfg.extra_feature_dirs)
        store_build_info(con, cfg)
        from mscale.warehouse.catalog import store_catalog

        store_catalog(con, cfg)  # feature_catalog; warns about symbols without minute bars
        from mscale.research.runs import create_run_views

        create_run_views(con, cfg.runs_dir)
        checks_started = time.perf_counter()
        result.checks = run_checks(con, cfg.sql_dir, _with_extras(params, models), skip=BLOCK_CHECKS)
        result.checks.append(check_stored_order(con, cache))
        result.checks += check_blocks(cfg, sample_blocks(result), models)
        store_check_results(con, result.checks)
        con.commit()
        log.info("checks took %.1fs", time.perf_counter() - checks_started)
    finally:
        con.close()
    failing = [c for c in result.checks if c.failing_rows]
    if failing:
        lines = [f"{c.name}: {c.failing_rows} offending rows, e.g. {c.sample[:3]}" for c in failing]
        raise CheckFailedError("warehouse checks failed:\n  " + "\n  ".join(lines))
    return result

