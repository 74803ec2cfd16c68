"""The one Parquet writer: layout, schema, merge semantics, atomicity, corrupt shards."""

from __future__ import annotations

import os
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_minutes
from mscale.errors import CorruptShardError, MscaleError
from mscale.schema import KLINE_SCHEMA, klines_from_arrays
from mscale.store import (
    is_complete,
    list_shards,
    read_klines,
    read_shard,
    write_atomic,
    write_klines,
)

JUL31 = 1_690_848_000_000 - 3 * 60_000  # 2023-07-31 23:57 UTC


def test_shards_are_per_month_typed_sorted_unique_and_snappy(tmp_path):
    t = random_minutes("BTCUSDT", JUL31, 10, seed=1)
    shuffled = t.take(pa.array(np.random.default_rng(0).permutation(10)))
    write_klines(tmp_path, "1m", pa.concat_tables([shuffled, shuffled.slice(0, 4)]))
    names = [s.path.name for s in list_shards(tmp_path, "1m")]
    assert names == ["binance_BTCUSDT_1m_202307.parquet", "binance_BTCUSDT_1m_202308.parquet"]
    for s in list_shards(tmp_path, "1m"):
        meta = pq.read_metadata(s.path)
        assert meta.row_group(0).column(1).compression == "SNAPPY"
        table = pq.read_table(s.path)
        assert table.schema.field("open_time").type == pa.timestamp("ms", tz="UTC")
        assert table.schema.field("trades").type == pa.int64()
        ot = table.column("open_time").cast(pa.int64()).to_numpy()
        assert (np.diff(ot) > 0).all()
    assert read_klines(tmp_path, "1m", "BTCUSDT").equals(t)


def test_hourly_shards_are_named_by_first_and_last_day_and_renamed_as_they_grow(tmp_path):
    ot = 1_690_848_000_000 + 3_600_000 * np.arange(30)  # 2023-08-01 00:00 .. 08-02 05:00
    ones = np.ones(30)
    t = klines_from_arrays("ETHUSDT", ot, "1h", open=ones, high=ones, low=ones, close=ones, volume=ones)
    write_klines(tmp_path, "1h", t.slice(0, 10))
    assert [s.path.name for s in list_shards(tmp_path, "1h")] == ["binance_ETHUSDT_1h_20230801_20230801.parquet"]
    write_klines(tmp_path, "1h", t)
    assert [s.path.name for s in list_shards(tmp_path, "1h")] == ["binance_ETHUSDT_1h_20230801_20230802.parquet"]
    assert read_klines(tmp_path, "1h", "ETHUSDT").num_rows == 30


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 120)), min_size=1, max_size=6))
def test_any_sequence_of_overlapping_writes_leaves_each_bar_once(tmp_path_factory, chunks):
    root = tmp_path_factory.mktemp("merge")
    full = random_minutes("BTCUSDT", JUL31, 420, seed=2)
    covered = np.zeros(420, dtype=bool)
    for start, length in chunks:
        write_klines(root, "1m", full.slice(start, length))
        covered[start : start + length] = True
    stored = read_klines(root, "1m", "BTCUSDT")
    assert stored.equals(full.filter(pa.array(covered)))


def test_incoming_rows_win_and_the_complete_mark_sticks(tmp_path):
    t = random_minutes("BTCUSDT", 1_690_848_000_000, 5, seed=3)
    write_klines(tmp_path, "1m", t, complete_months=[(2023, 8)])
    newer = t.set_column(t.schema.get_field_index("close"), "close", pa.array(np.full(5, 7.0)))
    write_klines(tmp_path, "1m", newer.slice(0, 2))
    stored = read_klines(tmp_path, "1m", "BTCUSDT")
    assert stored.column("close").to_pylist()[:3] == [7.0, 7.0, t.column("close")[2].as_py()]
    assert is_complete(list_shards(tmp_path, "1m")[0].path)


def test_a_crash_mid_write_leaves_the_old_shard_whole(tmp_path, monkeypatch):
    t = random_minutes("BTCUSDT", 1_690_848_000_000, 50, seed=4)
    write_klines(tmp_path, "1m", t.slice(0, 20))
    path = list_shards(tmp_path, "1m")[0].path
    before = path.read_bytes()

    def explode(table, where, **kw):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(OSError, match="disk full"):
        write_klines(tmp_path, "1m", t)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_a_corrupt_shard_is_named_and_never_overwritten(tmp_path):
    t = random_minutes("BTCUSDT", 1_690_848_000_000, 50, seed=5)
    write_klines(tmp_path, "1m", t)
    path = list_shards(tmp_path, "1m")[0].path
    path.write_bytes(path.read_bytes()[:200])  # truncated, as a crash without atomic writes would leave it
    damaged = path.read_bytes()
    with pytest.raises(CorruptShardError, match=str(path.name)):
        write_klines(tmp_path, "1m", t.slice(0, 5))
    assert path.read_bytes() == damaged


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(MscaleError, match="not writable"):
            write_atomic(KLINE_SCHEMA.empty_table(), tmp_path / "minute" / "x.parquet")
    finally:
        tmp_path.chmod(stat.S_IRWXU)


def test_unwritable_file_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "minute"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(MscaleError, match="not writable"):
        write_klines(tmp_path, "1m", random_minutes("BTCUSDT", 1_690_848_000_000, 3))


def test_read_shard_fills_the_symbol_from_the_file_name(tmp_path):
    t = random_minutes("SOLUSDT", 1_690_848_000_000, 3).drop(["symbol"])
    path = tmp_path / "binance_SOLUSDT_1m_202308.parquet"
    pq.write_table(t, path)
    assert read_shard(path).column("symbol").to_pylist() == ["SOLUSDT"] * 3
