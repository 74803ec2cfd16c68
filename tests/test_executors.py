"""What a feature task does on its worker thread (mscale.warehouse.executors): its rows split into
one table per month, and its DuckDB connection kept from one task to the next without the
results depending on what ran on it before."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import on_a_new_thread
from mscale.errors import MscaleError
from mscale.warehouse.executors import Block, build_block, split_rows, stage_rows, task_connection


def month_index(year: int, month: int) -> int:
    return year * 12 + month - 1


def rows_sql(rows: list[tuple[str, str, float]]) -> str:
    values = ", ".join(f"('{s}', timestamptz '{ts}', {x})" for s, ts, x in rows)
    return f"select * from (values {values}) as t(symbol, ts, x)"


ROWS = [  # unsorted, two symbols; ts is a decision time: the bar opened an hour before
    ("ETHUSDT", "2024-02-01 01:00:00+00", 3.0),  # February's first bar
    ("BTCUSDT", "2024-02-01 00:00:00+00", 2.0),  # January's last bar (opened 2024-01-31 23:00)
    ("BTCUSDT", "2024-01-15 12:00:00+00", 1.0),
    ("BTCUSDT", "2024-03-01 01:00:00+00", 4.0),  # March: not asked for
    ("BTCUSDT", "2024-02-01 01:00:00+00", 5.0),
]


def test_split_rows_gives_each_month_its_bars_in_symbol_ts_order():
    con = task_connection("")
    try:
        con.execute("set timezone = 'America/New_York'")  # months are UTC whatever the session's zone
        stage_rows(con, [rows_sql(ROWS)])
        feb, jan, apr = split_rows(con, [month_index(2024, 2), month_index(2024, 1), month_index(2024, 4)])
    finally:
        con.close()
    assert jan.column("x").to_pylist() == [1.0, 2.0]
    assert list(zip(feb.column("symbol").to_pylist(), feb.column("x").to_pylist())) == [("BTCUSDT", 5.0), ("ETHUSDT", 3.0)]
    assert apr.num_rows == 0 and apr.schema == jan.schema


def block(tmp_path: Path, queries: tuple[str, ...], name: str) -> Block:
    months = (month_index(2024, 1), month_index(2024, 2))
    staged = tuple(str(tmp_path / name / f"{m}.parquet") for m in months)
    return Block("BTCUSDT", name, "", queries, months, staged)


def thread_connection():
    """This thread's kept task connection (None before its first task)."""
    from mscale.warehouse import executors

    held = getattr(executors._thread, "held", None)
    return held[1] if held else None


def test_a_thread_keeps_its_connection_and_a_failed_task_replaces_it(tmp_path):
    build_block(block(tmp_path, (rows_sql(ROWS),), "first"))
    kept = thread_connection()
    build_block(block(tmp_path, (rows_sql(ROWS),), "second"))
    assert thread_connection() is kept  # kept from task to task
    # a task that fails after its rows are staged (its rows have no ts to split by month)
    with pytest.raises(MscaleError, match=r"^features BTCUSDT bad: "):
        build_block(block(tmp_path, ("select 'BTCUSDT' as symbol, 1.0 as x",), "bad"))
    done = build_block(block(tmp_path, (rows_sql(ROWS),), "good"))
    assert thread_connection() is not kept  # the failed task's connection was closed
    assert done.rows == (2, 2)
    january = pq.read_table(tmp_path / "good" / f"{month_index(2024, 1)}.parquet")
    assert january.column("x").to_pylist() == [1.0, 2.0]
    assert january.column("ts").to_pylist()[0] == datetime(2024, 1, 15, 12, tzinfo=timezone.utc)


def test_a_feature_column_may_have_any_name(tmp_path):
    """A research folder's feature may call a column anything, e.g. `m`."""
    done = build_block(block(tmp_path, (f"select *, x * 2 as m from ({rows_sql(ROWS)})",), "named"))
    assert done.rows == (2, 2)
    feb = pq.read_table(tmp_path / "named" / f"{month_index(2024, 2)}.parquet")
    assert feb.column("m").to_pylist() == [10.0, 6.0]


def test_a_tasks_files_do_not_depend_on_what_its_connection_ran_before(tmp_path):
    """The same block alone on a fresh thread's connection, and after other tasks (one that failed,
    one with other rows) on the same connection: byte-identical files."""
    on_a_new_thread(block(tmp_path, (rows_sql(ROWS),), "alone"))
    with pytest.raises(MscaleError):
        build_block(block(tmp_path, ("select * from no_such_table",), "bad"))
    build_block(block(tmp_path, (rows_sql([("BTCUSDT", "2024-01-02 00:00:00+00", 9.0)]),), "other"))
    build_block(block(tmp_path, (rows_sql(ROWS),), "after"))
    for m in (month_index(2024, 1), month_index(2024, 2)):
        assert (tmp_path / "alone" / f"{m}.parquet").read_bytes() == (tmp_path / "after" / f"{m}.parquet").read_bytes()
