"""Where the feature cache's tasks run: threads of this process (`local`) or a Dask cluster.

A task (`Block`) is a feature block of one symbol x quarter, or the minute buckets of one
symbol's quarter. Guarantees:
- every task, whichever executor runs it, goes through `build_block`: its DuckDB queries on one
  thread over its shards (on a connection its worker thread keeps from task to task), then one
  Parquet file per output month written into the staging folder through an atomic replace. The
  query text is rendered by the caller, so a task's bytes depend only on its inputs, never on the
  executor, the worker, what ran before it on the connection or the order tasks finish in;
- tasks run in phases, a phase once the one before it finished (the minute buckets, then the
  feature blocks that read them), on one thread pool or one cluster, and are yielded as they
  finish (for a progress bar). The first task that fails stops the build with a one-line
  MscaleError naming the symbol and the block, and the tasks still queued are cancelled;
- nothing here publishes anything: the caller moves the staged files into the caches and writes
  the manifest once every task succeeded;
- dask: a task reads the shards and writes the staging folder itself, so both must sit on a
  filesystem every worker sees under the same path. A worker that dies mid-task leaves at most a
  temp file in the staging folder (the caller removes the folder), and the scheduler runs the task
  again on another worker (`distributed.scheduler.allowed-failures`, Dask's own retry of lost
  tasks); a task that fails for its data is not retried. Queued tasks are cancelled when a build
  stops, but a task already running on a remote worker runs to its end: it writes into its
  build's own staging folder, which no later build reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mscale.errors import MscaleError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class Block:
    """One unit of work, e.g. a (symbol x quarter) block of features or a quarter's minute buckets:
    its rendered queries and where each output month is staged."""

    symbol: str
    label: str  # e.g. "2024-Q1" or "2024-04..06 minute buckets", for messages
    macros_sql: str
    queries: tuple[str, ...]  # run in order on one connection; their rows, ordered by ts, make the output
    months: tuple[int, ...]  # month indexes (year * 12 + month - 1) of the output files
    staged: tuple[str, ...]  # staging path of each month's file, same order
    memory_limit: str | None = None


@dataclass(frozen=True)
class BlockDone:
    symbol: str
    label: str
    rows: tuple[int, ...]  # rows written per month of Block.months


BlockTask = Callable[[Block], BlockDone]


# The caches' partition key: the month index (year * 12 + month - 1) of a row's hourly bar, which
# opens at ts - 1 h, in UTC whatever the session's time zone (make_timestamp: a zone-less timestamp).
_BAR_OPEN = "make_timestamp((epoch_ms(ts) - 3600000) * 1000)"
MONTH_OF_BAR = f"year({_BAR_OPEN}) * 12 + month({_BAR_OPEN}) - 1"


def task_connection(macros_sql: str, memory_limit: str | None = None, threads: int = 1):
    """A new in-memory connection with the project's macros, on one thread: DuckDB's parallel
    sums could add in any order, and the bits must not depend on it. (`threads` > 1: for
    measurements only.)"""
    import duckdb

    from mscale.warehouse.render import sql_string

    con = duckdb.connect()
    con.execute(f"set threads = {int(threads)}")
    # no cached file contents: a connection reused across tasks (`_reused_connection`) must read a
    # shard replaced since, within the same second, afresh
    con.execute("set enable_external_file_cache = false")
    if memory_limit:
        con.execute(f"set memory_limit = {sql_string(memory_limit)}")
    if macros_sql:
        con.execute(macros_sql)
    return con


def run_queries(macros_sql: str, queries: tuple[str, ...] | list[str], memory_limit: str | None = None) -> list[pa.Table]:
    """Each query's rows, run in order on one `task_connection`."""
    con = task_connection(macros_sql, memory_limit)
    try:
        return [con.execute(query).to_arrow_table() for query in queries]
    finally:
        con.close()


def stage_rows(con, queries: tuple[str, ...] | list[str]) -> None:
    """Run `queries` in order on `con` into one temp table, `task_rows`."""
    con.execute(f"create or replace temp table task_rows as\n{queries[0]}")
    for query in queries[1:]:
        con.execute(f"insert into task_rows by name\n{query}")


def split_rows(con, months: tuple[int, ...] | list[int]) -> list[pa.Table]:
    """`task_rows` split by MONTH_OF_BAR: one table per month of `months`, in (symbol, ts) order.
    One query in (month, symbol, ts) order, cut into zero-copy slices: a query per month costs a
    DuckDB-to-Arrow conversion of every column per month. (Done in DuckDB: making Arrow arrays or
    scalars from Python or numpy values, as a pyarrow filter by month would, imports pandas, about
    0.3 s the first time in a process.)"""
    wanted = ", ".join(str(int(m)) for m in months) or "null"
    # the month expression spelled out, not an alias: a task's own column could take the alias's name
    counts = dict(con.execute(f"select {MONTH_OF_BAR}, count(*) from task_rows where {MONTH_OF_BAR} in ({wanted}) "
                              "group by 1").fetchall())
    rows = con.execute(f"select * from task_rows where {MONTH_OF_BAR} in ({wanted}) "
                       f"order by {MONTH_OF_BAR}, symbol, ts").to_arrow_table()
    offsets, start = {}, 0
    for m in sorted(counts):
        offsets[m] = start
        start += counts[m]
    return [rows.slice(offsets[m], counts[m]) if m in counts else rows.slice(0, 0) for m in months]


def build_block(block: Block) -> BlockDone:
    """Compute `block`'s queries (`stage_rows`) and stage one file per output month (`split_rows`;
    an atomic replace each), on this thread's task connection (`_reused_connection`).

    Raises MscaleError naming the symbol and block when a query fails (bad or unreadable data)."""
    import duckdb

    try:
        con = _reused_connection(block.macros_sql, block.memory_limit)
        stage_rows(con, block.queries)
        parts = split_rows(con, block.months)
        con.execute("drop table task_rows")
    except duckdb.Error as e:
        _forget_connection()
        raise MscaleError(f"features {block.symbol} {block.label}: {str(e).splitlines()[0]}") from None
    for part, path in zip(parts, block.staged):
        write_month(part, Path(path))
    return BlockDone(block.symbol, block.label, tuple(part.num_rows for part in parts))


def write_month(rows: pa.Table, path: Path) -> None:
    """One month's cache file, through an atomic replace. Only the columns that repeat (symbols,
    times, counts) are dictionary-encoded: a feature's floats rarely do, and without a dictionary
    their files are about 13% smaller and written about twice as fast."""
    from mscale.store import write_atomic

    write_atomic(rows, path, dictionary=[f.name for f in rows.schema if not pa.types.is_floating(f.type)])


# A worker thread's task connection, kept from one task to the next: a fresh DuckDB database costs
# each task 20-50 ms on top of its connection (first-use set-up, fresh memory), 10-20% of a task.
# A task's result does not depend on what the connection ran before: it is one thread, every
# task creates and drops its own table, and file contents are never cached (`task_connection`).
# The connection lives as long as its thread: a build's local pool ends with the build; a Dask
# worker's thread keeps it, and the memory DuckDB holds, until the worker stops.
_thread = threading.local()


def _reused_connection(macros_sql: str, memory_limit: str | None):
    key = (macros_sql, memory_limit)
    held = getattr(_thread, "held", None)
    if held is None or held[0] != key:
        _forget_connection()
        _thread.held = (key, task_connection(macros_sql, memory_limit))
    return _thread.held[1]


def _forget_connection() -> None:
    """Close this thread's task connection, e.g. after a failed task left it in an unknown state."""
    held = getattr(_thread, "held", None)
    _thread.held = None
    if held is not None:
        held[1].close()


def run_blocks(phases: list[list[Block]], *, executor: str = "local", threads: int = 2, scheduler: str | None = None,
               task: BlockTask = build_block) -> Iterator[BlockDone]:
    """Run every block of every phase with `task`, a phase only once the one before it finished
    (a block may read what the previous phase wrote), on one pool or cluster; yield each result as
    its block finishes."""
    if executor == "local":
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for blocks in phases:
                yield from _finish_all({pool.submit(task, b) for b in blocks})
    elif executor == "dask":
        from mscale.cluster import dask_client

        with dask_client(scheduler, threads) as client:
            log.info("dask: %s blocks on %s", " then ".join(str(len(p)) for p in phases), client.scheduler.address)
            for blocks in phases:
                yield from _finish_all_dask(client, blocks, task)
    else:
        raise MscaleError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")


def _finish_all(pending: set) -> Iterator[BlockDone]:
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()


def _finish_all_dask(client, blocks: list[Block], task: BlockTask) -> Iterator[BlockDone]:
    from distributed import as_completed

    # pure=False: a task is an action (it writes files), so it gets a fresh random key, never the
    # result of an identical task another client (another build) submitted to the same scheduler
    futures = [client.submit(task, b, pure=False) for b in blocks]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])
