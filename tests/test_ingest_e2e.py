"""`mscale ingest` end to end from the command line, against a local archive server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)

from conftest import REAL_DATA, REPO, requires_real_data
from fakebinance import FakeBinance, make_archive_zip, synthetic_rows
from mscale.store import is_complete, list_shards, read_klines, shard_anomalies

AUG1 = 1_690_848_000_000  # 2023-08-01 00:00 UTC
SEP1 = 1_693_526_400_000


def mscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscale", *args, "--quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


@requires_real_data()
def test_real_futures_archive_through_the_ingest_command(tmp_path):
    data = tmp_path / "data"
    with FakeBinance(archive_root=REAL_DATA / "binance-archive") as fb:
        args = ["ingest", "--symbols", "FILUSDT", "NEARUSDT", "--start", "2023-08-01", "--end", "2023-10-31",
                "--market", "um", "--archive-url", fb.url, "--data-dir", str(data)]
        first = mscale(*args)
        assert first.returncode == 0, first.stderr
        n_requests = len(fb.requests)
        again = mscale(*args)
        assert again.returncode == 0, again.stderr
        assert len(fb.requests) == n_requests  # complete past months are not fetched again
    market = data / "um"
    assert not (data / "minute").exists()  # futures never mix with spot shards
    for symbol in ("FILUSDT", "NEARUSDT"):
        shards = list_shards(market, "1m", symbol)
        assert [pa.parquet.read_metadata(s.path).num_rows for s in shards] == [44_640, 43_200, 44_640]
        assert all(is_complete(s.path) for s in shards)
        ot = read_klines(market, "1m", symbol).column("open_time").cast(pa.int64()).to_numpy()
        assert ot[0] == AUG1 and ((ot[1:] - ot[:-1]) == 60_000).all()


def test_hourly_bars_from_the_bulk_archive(tmp_path):
    archive = tmp_path / "archive"
    aug = synthetic_rows(AUG1, 744, interval="1h", seed=3)
    sep = synthetic_rows(SEP1, 720, interval="1h", seed=4)
    make_archive_zip(archive, "spot", "BTCUSDT", "1h", 2023, 8, aug)
    make_archive_zip(archive, "spot", "BTCUSDT", "1h", 2023, 9, sep, micros=True)
    with FakeBinance(archive_root=archive) as fb:
        out = mscale("ingest", "--symbols", "BTCUSDT", "--start", "2023-08-01", "--end", "2023-09-30",
                     "--interval", "1h", "--archive-url", fb.url, "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 0, out.stderr
    names = [s.path.name for s in list_shards(tmp_path / "data", "1h", "BTCUSDT")]
    assert names == ["binance_BTCUSDT_1h_20230801_20230831.parquet", "binance_BTCUSDT_1h_20230901_20230930.parquet"]
    hours = read_klines(tmp_path / "data", "1h", "BTCUSDT")
    assert hours.num_rows == 744 + 720
    assert hours.column("close").to_pylist()[:3] == [float(r[4]) for r in aug[:3]]
    # September's file had µs timestamps: normalised away, but recorded under the file's name and reported
    aug_shard, sep_shard = (s.path for s in list_shards(tmp_path / "data", "1h", "BTCUSDT"))
    assert shard_anomalies(aug_shard)["BTCUSDT-1h-2023-08.zip"]["timestamps_in_us"] == 0
    assert shard_anomalies(sep_shard)["BTCUSDT-1h-2023-09.zip"]["timestamps_in_us"] == 720
    assert mscale("report", "--data-dir", str(tmp_path / "data")).returncode == 0
    report = json.loads((tmp_path / "data" / "reports" / "ingestion_report.json").read_text())["symbols"][0]
    assert report["source_anomalies"]["timestamps_in_us"] == 720


@requires_real_data()
def test_import_then_report_finds_the_real_halt_and_reconciles_exactly(tmp_path):
    data = tmp_path / "data"
    src = REAL_DATA / "spot-freqtrade-json"
    assert mscale("import", str(src / "BTC_USDT-1m.json"), str(src / "BTC_USDT-1h.json"), "--data-dir", str(data)).returncode == 0
    assert mscale("report", "--data-dir", str(data)).returncode == 0
    report = json.loads((data / "reports" / "ingestion_report.json").read_text())["symbols"][0]
    minutes = report["minutes"]
    assert (minutes["rows"], minutes["missing"]) == (66_087, 80)
    gap = minutes["largest_gaps"][0]
    assert (gap["start"], gap["end"]) == ("2023-03-24T12:40:00Z", "2023-03-24T13:59:00Z")
    halt = minutes["longest_zero_volume_runs"][0]
    assert (halt["start"], halt["end"]) == ("2023-03-24T11:28:00Z", "2023-03-24T12:39:00Z")
    rec = report["reconciliation"]
    assert rec["hours_compared"] == 719 and rec["mismatching_hours"] == 0
