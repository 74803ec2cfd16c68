"""The command line end to end: the demo pipeline, and bad input ending in one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_DATA, REPO, requires_real_data
from fakebinance import FakeBinance, synthetic_rows

AUG1 = 1_690_848_000_000  # 2023-08-01 00:00 UTC


def mscale(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscale", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("INFO", "WARNING", "DEBUG"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_demo_pipeline_from_the_command_line(tmp_path):
    data, wh = tmp_path / "data", tmp_path / "wh.duckdb"
    common = ["--data-dir", str(data), "--warehouse", str(wh), "--quiet"]
    assert mscale("demo-data", *common, "--symbols", "BTCUSDT", "ETHUSDT", "--months", "3").returncode == 0
    report = mscale("report", *common)
    assert report.returncode == 0 and "BTCUSDT" in report.stdout
    saved = json.loads((data / "reports" / "ingestion_report.json").read_text())
    reports = saved["symbols"] if isinstance(saved, dict) else saved
    assert {r["symbol"] for r in reports} == {"BTCUSDT", "ETHUSDT"}
    assert all(r["synthetic"] for r in reports)
    built = mscale("features", *common)
    assert built.returncode == 0, built.stderr
    out = mscale("sql", "select count(*) as n, count(distinct symbol) as s from features", *common, cwd=tmp_path)
    assert out.returncode == 0 and "2" in out.stdout
    # environment variables work like the flags
    env_out = mscale("sql", "select count(*) from klines_1h", cwd=tmp_path, env={"MSCALE_WAREHOUSE": str(wh)})
    assert env_out.returncode == 0, env_out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "--symbols", "BTCUSDT", "--start", "2023-08-10", "--end", "2023-08-01"], "after"),
        (["ingest", "--symbols", "BTCUSDT", "--start", "2023-08-01", "--interval", "5m"], "interval"),
        (["ingest", "--symbols", "btc-usd", "--start", "2023-08-01"], "invalid symbol"),
        (["demo-data", "--months", "0"], "--months"),
        (["sql", "select 1"], "no warehouse"),
        (["features"], "no hourly shards"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path, args, message):
    result = mscale(*args, "--data-dir", str(tmp_path / "data"), "--warehouse", str(tmp_path / "none.duckdb"))
    assert message in one_line_error(result)


def test_unknown_symbol_names_it_and_writes_nothing(tmp_path):
    with FakeBinance({("BTCUSDT", "1m"): synthetic_rows(AUG1, 120)}) as fb:
        result = mscale("ingest", "--symbols", "NOSUCHCOIN", "--start", "2023-08-01", "--end", "2023-08-01",
                        "--source", "rest", "--base-url", fb.url, "--pace-ms", "0", "--data-dir", str(tmp_path / "data"))
    assert "NOSUCHCOIN" in one_line_error(result)
    assert not (tmp_path / "data" / "minute").exists() or not any((tmp_path / "data" / "minute").iterdir())


def test_rest_ingest_from_the_command_line(tmp_path):
    with FakeBinance({("BTCUSDT", "1m"): synthetic_rows(AUG1, 1500)}) as fb:
        result = mscale("ingest", "--symbols", "BTCUSDT", "--start", "2023-08-01", "--end", "2023-08-01",
                        "--source", "rest", "--base-url", fb.url, "--pace-ms", "0", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    from mscale.store import read_klines

    assert read_klines(tmp_path / "data", "1m", "BTCUSDT").num_rows == 1440


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    result = mscale("demo-data", "--months", "1", "--data-dir", str(blocker))
    assert "not writable" in one_line_error(result) or "data" in one_line_error(result)


def test_corrupt_shard_is_named_and_kept(tmp_path):
    data = tmp_path / "data"
    assert mscale("demo-data", "--symbols", "BTCUSDT", "--months", "1", "--data-dir", str(data), "--quiet").returncode == 0
    shard = next((data / "minute").glob("*.parquet"))
    shard.write_bytes(b"PAR1 not really")
    jan2 = 1_704_153_600_000  # 2024-01-02 00:00 UTC: inside the damaged month
    src = tmp_path / "BTC_USDT-1m.json"
    src.write_text(json.dumps([[jan2 + 60_000 * i, 1, 2, 0.5, 1.5, 3] for i in range(3)]))
    result = mscale("import", str(src), "--data-dir", str(data))
    assert shard.name in one_line_error(result)
    assert shard.read_bytes() == b"PAR1 not really"


def test_a_non_finite_volume_is_refused_and_nothing_is_written(tmp_path):
    """freqtrade JSON may carry NaN (Python's json reads it): refused with one line naming the
    file, the column and the first bar; the stored shard of that month is left as it was."""
    data = tmp_path / "data"
    assert mscale("demo-data", "--symbols", "BTCUSDT", "--months", "1", "--data-dir", str(data), "--quiet").returncode == 0
    shard = next((data / "minute").glob("*.parquet"))
    before = shard.read_bytes()
    jan2 = 1_704_153_600_000  # 2024-01-02 00:00 UTC
    src = tmp_path / "BTC_USDT-1m.json"
    src.write_text("[" + ", ".join(f"[{jan2 + 60_000 * i}, 1, 2, 0.5, 1.5, {'NaN' if i == 2 else 3}]" for i in range(4)) + "]")
    error = one_line_error(mscale("import", str(src), "--data-dir", str(data)))
    assert "BTC_USDT-1m.json" in error and "1 bar with a non-finite volume" in error and "2024-01-02 00:02" in error
    assert shard.read_bytes() == before


@requires_real_data()
def test_import_real_spot_json_into_um_market_keeps_markets_apart(tmp_path):
    data = tmp_path / "data"
    src = REAL_DATA / "spot-freqtrade-json" / "BTC_USDT-1h.json"
    assert mscale("import", str(src), "--market", "um", "--data-dir", str(data), "--quiet").returncode == 0
    assert list((data / "um" / "hourly").glob("binance_BTCUSDT_1h_*.parquet"))
    assert not (data / "hourly").exists()
