"""Imports are labelled by what they are (issue 9, deliverable 2): the market from archive paths,
the symbol from file names (renamed only on request), and the source anomalies normalisation
removes counted per shard and shown by `mscale report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import REAL_DATA, REPO, requires_real_data
from mscale.config import Config
from mscale.errors import MscaleError
from mscale.ingest.local import import_paths
from mscale.store import list_shards, read_klines
from test_import import T0, MIN, kline_lines, write_zip

FUTURES_FIL = REAL_DATA / "binance-archive" / "data" / "futures" / "um" / "monthly" / "klines" / "FILUSDT" / "1m"
REST_CSV = REAL_DATA / "spot-rest-csv" / "BTCUSDT_1m.csv"


def mscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscale", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("INFO", "WARNING", "DEBUG"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def cfg_of(tmp_path: Path, market: str = "spot") -> Config:
    return Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "wh.duckdb", market=market)


def parquet_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def archive_zip(root: Path, market_path: str, symbol: str = "BTCUSDT", n: int = 10, **kw) -> Path:
    """An archive zip at `<root>/data/<market_path>/monthly/klines/<symbol>/1m/<symbol>-1m-2023-08.zip`."""
    folder = root / "data" / market_path / "monthly" / "klines" / symbol / "1m"
    folder.mkdir(parents=True, exist_ok=True)
    return write_zip(folder / f"{symbol}-1m-2023-08.zip", kline_lines(T0, n), **kw)


# --- the market, read from archive paths -------------------------------------------------------


@requires_real_data()
def test_real_futures_archive_path_imports_as_um(tmp_path):
    data = tmp_path / "data"
    out = mscale("import", str(FUTURES_FIL), "--data-dir", str(data))  # no --market
    assert out.returncode == 0, out.stderr
    assert [s.path.name for s in list_shards(data / "um", "1m")] == [
        f"binance_FILUSDT_1m_2023{m:02d}.parquet" for m in (8, 9, 10)
    ]
    assert not (data / "minute").exists()  # never stored as spot
    assert "um" in out.stdout
    # the same with the market named, agreeing with the path
    again = mscale("import", str(FUTURES_FIL), "--market", "um", "--data-dir", str(data))
    assert again.returncode == 0, again.stderr


def test_spot_archive_path_imports_as_spot_even_when_the_config_says_um(tmp_path):
    src = archive_zip(tmp_path, "spot")
    s = import_paths(cfg_of(tmp_path, market="um"), [src])
    assert [(f.symbol, f.market) for f in s.files] == [("BTCUSDT", "spot")]
    assert [sh.path.name for sh in list_shards(tmp_path / "data", "1m")] == ["binance_BTCUSDT_1m_202308.parquet"]
    assert not (tmp_path / "data" / "um").exists()


def test_futures_path_in_a_mixed_folder_goes_to_its_own_market(tmp_path):
    archive_zip(tmp_path, "spot")
    archive_zip(tmp_path, "futures/um", symbol="FILUSDT", header=True)
    s = import_paths(cfg_of(tmp_path), [tmp_path / "data"])
    assert sorted((f.symbol, f.market) for f in s.files) == [("BTCUSDT", "spot"), ("FILUSDT", "um")]
    assert [sh.symbol for sh in list_shards(tmp_path / "data", "1m")] == ["BTCUSDT"]
    assert [sh.symbol for sh in list_shards(tmp_path / "data" / "um", "1m")] == ["FILUSDT"]


def test_coin_m_paths_are_refused(tmp_path):
    src = archive_zip(tmp_path / "in", "futures/cm", symbol="BTCUSD")
    out = mscale("import", str(src), "--data-dir", str(tmp_path / "data"))
    assert "coin-M" in one_line_error(out)
    assert not (tmp_path / "data").exists()


def test_freqtrade_futures_names_import_as_um_and_coin_m_ones_are_refused(tmp_path):
    rows = json.dumps([[T0 + i * MIN, 1.0, 2.0, 0.5, 1.5, 3.0] for i in range(5)])
    um = tmp_path / "BTC_USDT_USDT-1m-futures.json"
    um.write_text(rows)
    s = import_paths(cfg_of(tmp_path), [um])
    assert [(f.symbol, f.market) for f in s.files] == [("BTCUSDT", "um")]
    assert [sh.symbol for sh in list_shards(tmp_path / "data" / "um", "1m")] == ["BTCUSDT"]
    cm = tmp_path / "BTC_USD_BTC-1m-futures.json"
    cm.write_text(rows)
    with pytest.raises(MscaleError, match="coin-M"):
        import_paths(cfg_of(tmp_path / "cm"), [cm])


def test_a_market_that_contradicts_the_path_is_refused_and_nothing_is_lost(tmp_path):
    data = tmp_path / "data"
    good = archive_zip(tmp_path / "in", "spot", symbol="ETHUSDT")
    assert mscale("import", str(good), "--data-dir", str(data)).returncode == 0
    before = parquet_bytes(data)
    futures = archive_zip(tmp_path / "in", "futures/um", symbol="FILUSDT", header=True)
    out = mscale("import", str(good), str(futures), "--market", "spot", "--data-dir", str(data))
    line = one_line_error(out)
    assert "futures/um" in line and "--market spot" in line, line
    assert parquet_bytes(data) == before  # nothing written, nothing lost


@requires_real_data()
def test_real_futures_path_with_market_spot_is_refused(tmp_path):
    out = mscale("import", str(FUTURES_FIL), "--market", "spot", "--data-dir", str(tmp_path / "data"))
    assert "--market spot" in one_line_error(out)
    assert not (tmp_path / "data").exists()


# --- the symbol, read from file names -----------------------------------------------------------


@pytest.mark.parametrize("name", ["BTC_USDT-1m.json", "BTCUSDT-1m-2023-08.zip"])
def test_a_symbol_that_contradicts_the_file_name_is_refused_unless_renamed(tmp_path, name):
    src = tmp_path / name
    if name.endswith(".json"):
        src.write_text(json.dumps([[T0 + i * MIN, 1.0, 2.0, 0.5, 1.5, 3.0] for i in range(5)]))
    else:
        write_zip(src, kline_lines(T0, 5))
    data = tmp_path / "data"
    out = mscale("import", str(src), "--symbol", "ETHUSDT", "--data-dir", str(data))
    line = one_line_error(out)
    assert "BTCUSDT" in line and "ETHUSDT" in line and "--rename-symbol" in line, line
    assert not data.exists()
    assert mscale("import", str(src), "--symbol", "btcusdt", "--data-dir", str(data)).returncode == 0  # agrees
    renamed = mscale("import", str(src), "--symbol", "ETHUSDT", "--rename-symbol", "--data-dir", str(data))
    assert renamed.returncode == 0, renamed.stderr
    assert {s.symbol for s in list_shards(data, "1m")} == {"BTCUSDT", "ETHUSDT"}
    assert read_klines(data, "1m", "ETHUSDT").num_rows == 5


def test_rename_symbol_needs_a_symbol(tmp_path):
    src = write_zip(tmp_path / "BTCUSDT-1m-2023-08.zip", kline_lines(T0, 5))
    with pytest.raises(MscaleError, match="--rename-symbol needs --symbol"):
        import_paths(cfg_of(tmp_path), [src], rename_symbol=True)


# --- source anomalies, counted per shard --------------------------------------------------------


def test_microsecond_timestamps_close_times_and_duplicates_are_counted_per_shard(tmp_path):
    from mscale.store import shard_anomalies

    lines = kline_lines(T0 - 5 * MIN, 10, micros=True)  # July 31 23:55 .. August 1 00:04, in µs
    parts = lines[7].split(",")
    parts[6] = str(int(parts[6]) - 1_000_000)  # a close time one second short
    lines[7] = ",".join(parts)
    lines.append(lines[2])  # July: one repeated row
    src = write_zip(tmp_path / "BTCUSDT-1m-2023-08.zip", lines)
    cfg = cfg_of(tmp_path)
    s = import_paths(cfg, [src])
    july, august = (sh.path for sh in list_shards(cfg.market_dir, "1m"))
    assert shard_anomalies(july) == {"BTCUSDT-1m-2023-08.zip": {
        "close_time_not_open_plus_interval_minus_1ms": 0, "timestamps_in_us": 6, "duplicates_dropped": 1}}
    assert shard_anomalies(august) == {"BTCUSDT-1m-2023-08.zip": {
        "close_time_not_open_plus_interval_minus_1ms": 1, "timestamps_in_us": 5, "duplicates_dropped": 0}}
    assert s.files[0].anomalies == {"close_time_not_open_plus_interval_minus_1ms": 1, "timestamps_in_us": 11}
    before = parquet_bytes(cfg.market_dir)
    import_paths(cfg, [src])  # counts describe the source, so importing it again changes nothing
    assert parquet_bytes(cfg.market_dir) == before


@requires_real_data()
def test_real_rest_csv_truncated_close_time_is_counted_and_reported(tmp_path):
    from mscale.store import shard_anomalies

    data = tmp_path / "data"
    out = mscale("import", str(REST_CSV), "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    assert "1 close time" in out.stdout, out.stdout
    (shard,) = [s.path for s in list_shards(data, "1m") if (s.year, s.month) == (2021, 4)]
    assert shard_anomalies(shard)["BTCUSDT_1m.csv"]["close_time_not_open_plus_interval_minus_1ms"] == 1
    rep = mscale("report", "--data-dir", str(data))
    assert rep.returncode == 0, rep.stderr
    assert "1 close time not open + interval - 1 ms" in rep.stdout, rep.stdout
    saved = json.loads((data / "reports" / "ingestion_report.json").read_text())["symbols"][0]
    anomalies = saved["source_anomalies"]
    assert anomalies["close_time_not_open_plus_interval_minus_1ms"] == 1
    assert anomalies["timestamps_in_us"] == 0 and anomalies["duplicates_dropped"] == 0
    assert anomalies["by_shard"] == {shard.name: {"close_time_not_open_plus_interval_minus_1ms": 1,
                                                  "timestamps_in_us": 0, "duplicates_dropped": 0}}
    # the stored bar itself is normalised (CONTRACT §2)
    t = read_klines(data, "1m", "BTCUSDT")
    i = t.column("open_time").cast(pa.int64()).to_pylist().index(1619323200000)
    assert t.column("close_time")[i].cast(pa.int64()).as_py() == 1619323200000 + MIN
