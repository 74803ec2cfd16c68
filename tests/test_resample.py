"""Minute -> hour resampling: hand-checkable bars, UTC hour boundaries, the shard-writing job."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mscale.config import Config
from mscale.resample import hours_from_minutes, resample_hourly
from mscale.schema import KLINE_SCHEMA, klines_from_arrays
from mscale.store import list_shards, read_klines, shard_metadata, write_klines, META_SOURCE

T0 = int(datetime(2024, 1, 31, 22, 0, tzinfo=timezone.utc).timestamp() * 1000)  # crosses a month
MIN = 60_000
HOUR = 3_600_000


def _cfg(tmp_path: Path) -> Config:
    return Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "w.duckdb")


def _tiny() -> pa.Table:
    """Hour 22:00 has minutes 0, 1 and 59 (a gap inside); hour 23:00 none; hour 00:00 minute 30."""
    offsets = np.array([0, 1, 59, 150])
    return klines_from_arrays(
        "BTCUSDT",
        T0 + offsets * MIN,
        "1m",
        open=[10.0, 11.0, 12.0, 20.0],
        high=[11.5, 13.0, 12.5, 21.0],
        low=[9.5, 10.5, 11.0, 19.0],
        close=[11.0, 12.0, 12.2, 20.5],
        volume=[1.0, 2.0, 0.5, 4.0],
        quote_volume=[10.0, 22.0, 6.0, 80.0],
        trades=[3, 4, 1, 7],
        taker_buy_base=[0.5, 1.0, 0.0, 2.0],
        taker_buy_quote=[5.0, 11.0, 0.0, 40.0],
    )


def test_tiny_table_with_gap_is_hand_checkable():
    hours = hours_from_minutes(_tiny())
    assert hours.schema == KLINE_SCHEMA
    rows = hours.to_pylist()
    assert len(rows) == 2  # 23:00 has no minute -> no row, nothing imputed
    first, second = rows
    assert first["open_time"] == datetime(2024, 1, 31, 22, tzinfo=timezone.utc)
    assert first["close_time"] == datetime(2024, 1, 31, 23, tzinfo=timezone.utc)
    assert (first["open"], first["high"], first["low"], first["close"]) == (10.0, 13.0, 9.5, 12.2)
    assert first["volume"] == 3.5 and first["quote_volume"] == 38.0 and first["trades"] == 8
    assert first["taker_buy_base"] == 1.5 and first["taker_buy_quote"] == 16.0
    assert second["open_time"] == datetime(2024, 2, 1, 0, tzinfo=timezone.utc)
    assert second["close_time"] == datetime(2024, 2, 1, 1, tzinfo=timezone.utc)
    assert (second["open"], second["high"], second["low"], second["close"], second["volume"]) == (
        20.0, 21.0, 19.0, 20.5, 4.0,
    )  # fmt: skip


def test_first_and_last_follow_open_time_not_row_order():
    t = _tiny()
    shuffled = t.take(pa.array([2, 0, 3, 1]))
    assert hours_from_minutes(shuffled).equals(hours_from_minutes(t))


def test_missing_fields_stay_null_and_symbols_are_separate():
    ot = T0 + np.arange(3) * MIN
    a = klines_from_arrays("BTCUSDT", ot, "1m", open=[1, 2, 3], high=[2, 3, 4], low=[0.5, 1, 2], close=[2, 3, 4], volume=[1, 1, 1])
    b = klines_from_arrays("ETHUSDT", ot, "1m", open=[5, 6, 7], high=[6, 7, 8], low=[4, 5, 6], close=[6, 7, 8], volume=[2, 2, 2])
    hours = hours_from_minutes(pa.concat_tables([b, a])).to_pylist()
    assert [(h["symbol"], h["open"], h["close"], h["volume"]) for h in hours] == [
        ("BTCUSDT", 1.0, 4.0, 3.0),
        ("ETHUSDT", 5.0, 8.0, 6.0),
    ]
    assert all(h["quote_volume"] is None and h["trades"] is None for h in hours)


def test_empty_input():
    out = hours_from_minutes(KLINE_SCHEMA.empty_table())
    assert out.num_rows == 0 and out.schema == KLINE_SCHEMA


def test_hours_are_utc_whatever_the_local_time_zone():
    # DuckDB takes its default TimeZone from the process's zone once, at first use, so the check
    # runs in a fresh interpreter. At +05:30 a local-time truncation would land on HH:30 UTC.
    code = (
        "from tests.test_resample import _tiny;"
        "from mscale.resample import hours_from_minutes;"
        "import pyarrow as pa;"
        "print(hours_from_minutes(_tiny()).column('open_time').cast(pa.int64()).to_pylist())"
    )
    env = {**os.environ, "TZ": "Asia/Kolkata"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([T0, T0 + 2 * HOUR])


def _with_last_minute() -> pa.Table:
    """_tiny() plus the minute closing at 01:00, so the trailing hour 00:00 is complete."""
    last = klines_from_arrays("BTCUSDT", [T0 + 179 * MIN], "1m", open=[20.5], high=[20.6], low=[20.4], close=[20.5],
                              volume=[1.0], quote_volume=[20.5], trades=[1], taker_buy_base=[0.5], taker_buy_quote=[10.0])
    return pa.concat_tables([_tiny(), last])


def test_resample_hourly_writes_shards_idempotently(tmp_path):
    cfg = _cfg(tmp_path)
    write_klines(cfg.market_dir, "1m", _with_last_minute(), source="test")
    assert {s: r.derived for s, r in resample_hourly(cfg).items()} == {"BTCUSDT": 2}
    stored = read_klines(cfg.market_dir, "1h", "BTCUSDT")
    assert stored.equals(hours_from_minutes(_with_last_minute()))
    shards = list_shards(cfg.market_dir, "1h", "BTCUSDT")
    assert [s.path.name for s in shards] == [
        "binance_BTCUSDT_1h_20240131_20240131.parquet",
        "binance_BTCUSDT_1h_20240201_20240201.parquet",
    ]
    assert all(shard_metadata(s.path)[META_SOURCE] == b"resampled" for s in shards)
    again = resample_hourly(cfg, ["BTCUSDT"])["BTCUSDT"]
    assert (again.written, again.hourly_bars) == (0, 2)  # nothing to derive, nothing written
    assert read_klines(cfg.market_dir, "1h", "BTCUSDT").equals(stored)


def test_trailing_hour_without_its_last_minute_is_not_a_bar(tmp_path):
    cfg = _cfg(tmp_path)
    write_klines(cfg.market_dir, "1m", _tiny(), source="test")  # the 00:00 hour holds only 00:30
    assert resample_hourly(cfg)["BTCUSDT"].derived == 1
    assert read_klines(cfg.market_dir, "1h", "BTCUSDT").column("open_time").cast(pa.int64()).to_pylist() == [T0]


def test_default_leaves_symbols_with_exchange_hourly_bars_alone(tmp_path):
    cfg = _cfg(tmp_path)
    write_klines(cfg.market_dir, "1m", _with_last_minute(), source="test")
    exchange = hours_from_minutes(_with_last_minute()).slice(0, 1)
    exchange = exchange.set_column(exchange.schema.get_field_index("volume"), "volume", pa.array([99.0]))
    write_klines(cfg.market_dir, "1h", exchange, source="rest")
    r = resample_hourly(cfg)["BTCUSDT"]  # only the missing hour is derived
    assert (r.derived, r.left, r.replaced) == (1, {"exchange": 1}, {})
    volumes = read_klines(cfg.market_dir, "1h", "BTCUSDT").column("volume").to_pylist()
    assert volumes == [99.0, hours_from_minutes(_with_last_minute()).column("volume")[1].as_py()]


def test_resample_hourly_without_minutes_is_an_error_that_writes_nothing(tmp_path):
    """Nothing to resample is said, not silently "done": no minute shards at all, or a named symbol
    without any (the others are not resampled either)."""
    from mscale.errors import MscaleError

    cfg = _cfg(tmp_path)
    with pytest.raises(MscaleError, match=r"^no minute shards under .*nothing to resample"):
        resample_hourly(cfg)
    write_klines(cfg.market_dir, "1m", _tiny())
    with pytest.raises(MscaleError, match=r"^no minute shards of ETHUSDT under "):
        resample_hourly(cfg, ["BTCUSDT", "ETHUSDT"])
    assert not (cfg.market_dir / "hourly").exists() or not os.listdir(cfg.market_dir / "hourly")
    um = replace(cfg, market="um")
    with pytest.raises(MscaleError, match=r"mscale ingest --market um --interval 1m"):
        resample_hourly(um)
