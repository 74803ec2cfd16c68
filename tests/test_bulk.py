"""The archive client (mscale.ingest.bulk.ArchiveClient) against FakeBinance on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fakebinance import FakeBinance, day_ms, make_archive_zip, month_start_ms, rows_table, synthetic_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mscale.errors import ChecksumError, DownloadError, MscaleError
from mscale.ingest.bulk import ArchiveClient
from mscale.schema import KLINE_SCHEMA
from mscale.store import ANOMALY_FLAGS, list_shards, read_klines, write_klines

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real Binance data not found at {REAL} (../shared/data/real)")

AUG = month_start_ms(2023, 8)
N_AUG = 31 * 1440


def klines(table: pa.Table) -> pa.Table:
    """The kline columns of a client's table, without its anomaly flags."""
    return table.select(KLINE_SCHEMA.names)


def flagged(table: pa.Table) -> dict[str, int]:
    """Rows per anomaly flag column."""
    return {c: int(np.count_nonzero(table.column(c).to_numpy(zero_copy_only=False))) for c in ANOMALY_FLAGS}


class Sleeps(list):
    """An injectable `sleep` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(fb: FakeBinance, sleeps: Sleeps | None = None, **kw) -> ArchiveClient:
    kw.setdefault("timeout_s", 2)
    return ArchiveClient(fb.url, sleep=sleeps if sleeps is not None else Sleeps(), **kw)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, list[list]]:
    """A spot archive with August 2023 in ms (no header) and in µs, and a futures file with a header."""
    root = tmp_path_factory.mktemp("archive")
    rows = synthetic_rows(AUG, N_AUG, seed=1)
    make_archive_zip(root, "spot", "BTCUSDT", "1m", 2023, 8, rows)
    make_archive_zip(root, "spot", "ETHUSDT", "1m", 2023, 8, rows, micros=True)
    make_archive_zip(root, "um", "BTCUSDT", "1m", 2023, 8, rows, header=True)
    make_archive_zip(root, "spot", "BADUSDT", "1m", 2023, 8, rows[:100], bad_checksum=True)
    day = date(2023, 9, 2)
    make_archive_zip(root, "spot", "BTCUSDT", "1h", 2023, 9, synthetic_rows(day_ms(day), 24, "1h", seed=2), daily=day)
    return root, rows


def test_monthly_spot_gives_exact_rows(archive):
    root, rows = archive
    with FakeBinance(archive_root=root) as fb:
        t = client(fb).monthly("BTCUSDT", "1m", 2023, 8)
        assert fb.requests == [
            "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2023-08.zip",
            "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2023-08.zip.CHECKSUM",
        ]
    assert t.num_rows == N_AUG
    assert klines(t).equals(rows_table(rows, "BTCUSDT", "1m"))
    assert flagged(t) == {"anomaly_close_time": 0, "anomaly_us": 0}


def test_micros_spot_and_header_futures_give_the_same_rows(archive):
    root, rows = archive
    with FakeBinance(archive_root=root) as fb:
        spot_us = client(fb).monthly("ETHUSDT", "1m", 2023, 8)
        um = client(fb, market="um").monthly("BTCUSDT", "1m", 2023, 8)
        assert fb.requests[-2] == "/data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2023-08.zip"
    assert klines(spot_us).equals(rows_table(rows, "ETHUSDT", "1m"))
    assert klines(um).equals(rows_table(rows, "BTCUSDT", "1m"))
    # the µs timestamps are normalised away, and every such row is flagged for the shard's record
    assert flagged(spot_us) == {"anomaly_close_time": 0, "anomaly_us": N_AUG}
    assert flagged(um) == {"anomaly_close_time": 0, "anomaly_us": 0}


def test_daily(archive):
    root, _ = archive
    with FakeBinance(archive_root=root) as fb:
        t = client(fb).daily("BTCUSDT", "1h", date(2023, 9, 2))
        assert fb.requests[0] == "/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2023-09-02.zip"
    assert t.num_rows == 24
    assert t["open_time"][0].as_py().isoformat() == "2023-09-02T00:00:00+00:00"


def test_missing_month_is_none_after_one_request(archive):
    root, _ = archive
    with FakeBinance(archive_root=root) as fb:
        assert client(fb).monthly("BTCUSDT", "1m", 2017, 1) is None
        assert client(fb, market="um").daily("NOPEUSDT", "1m", date(2023, 8, 1)) is None
        assert len(fb.requests) == 2


def test_checksum_mismatch_raises_and_writes_nothing(archive, tmp_path):
    root, _ = archive
    sleeps = Sleeps()
    with FakeBinance(archive_root=root) as fb:
        c = client(fb, sleeps)
        with pytest.raises(ChecksumError, match="BADUSDT-1m-2023-08.zip: sha256"):
            write_klines(tmp_path, "1m", c.monthly("BADUSDT", "1m", 2023, 8), source="bulk")
        assert fb.count("BADUSDT-1m-2023-08.zip.CHECKSUM") == c.checksum_retries + 1  # downloaded again first
    assert len(sleeps) == c.checksum_retries
    assert not list(tmp_path.rglob("*.parquet"))


def test_corrupt_zip_with_matching_checksum_raises_and_writes_nothing(tmp_path):
    root = tmp_path / "archive"
    z = make_archive_zip(root, "spot", "BTCUSDT", "1m", 2023, 8, synthetic_rows(AUG, 100))
    broken = z.read_bytes()[:-40]  # cut off the zip's central directory
    z.write_bytes(broken)
    Path(str(z) + ".CHECKSUM").write_text(f"{hashlib.sha256(broken).hexdigest()}  {z.name}\n")
    out = tmp_path / "data"
    with FakeBinance(archive_root=root) as fb:
        with pytest.raises(ChecksumError, match="corrupt"):
            write_klines(out, "1m", client(fb).monthly("BTCUSDT", "1m", 2023, 8), source="bulk")
    assert not out.exists()


def test_missing_checksum_file_is_refused(tmp_path):
    root = tmp_path / "archive"
    z = make_archive_zip(root, "spot", "BTCUSDT", "1m", 2023, 8, synthetic_rows(AUG, 10))
    Path(str(z) + ".CHECKSUM").unlink()
    with FakeBinance(archive_root=root) as fb:
        with pytest.raises(ChecksumError, match="no BTCUSDT-1m-2023-08.zip.CHECKSUM"):
            client(fb).monthly("BTCUSDT", "1m", 2023, 8)


def test_rows_outside_the_month_are_refused(tmp_path):
    root = tmp_path / "archive"
    make_archive_zip(root, "spot", "BTCUSDT", "1m", 2023, 8, synthetic_rows(AUG - 60_000, 10))
    with FakeBinance(archive_root=root) as fb:
        with pytest.raises(MscaleError, match=r"1 rows lie outside \[2023-08-01, 2023-09-01\)"):
            client(fb).monthly("BTCUSDT", "1m", 2023, 8)


@pytest.mark.parametrize(
    "fault, kw, retries",
    [
        ("500", {}, 2),
        ("503", {}, 2),
        ("reset", {}, 2),
        ("reset", {"path_contains": ".CHECKSUM"}, 2),
        # a short but well-formed body (zip, then its checksum): caught by the checksum, both downloaded again
        ("truncated", {}, 1),
        ("slow", {"delay": 1.0}, 2),
        ("429", {"retry_after": 3}, 2),
        ("418", {"retry_after": 3}, 2),
    ],
)
def test_transient_faults_are_retried_to_the_exact_rows(archive, fault, kw, retries, caplog):
    root, rows = archive
    sleeps = Sleeps()
    with FakeBinance(archive_root=root) as fb:
        fb.add_fault(fault, times=2, **kw)
        with caplog.at_level(logging.WARNING, logger="mscale.ingest.bulk"):
            t = client(fb, sleeps, timeout_s=0.5).monthly("BTCUSDT", "1m", 2023, 8)
        assert fb.pending_faults == 0
    assert klines(t).equals(rows_table(rows, "BTCUSDT", "1m"))
    assert len(sleeps) == retries
    assert all(r.name == "mscale.ingest.bulk" for r in caplog.records) and len(caplog.records) == retries
    if fault in ("429", "418"):
        assert min(sleeps) >= 3  # Retry-After honoured


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    faults=st.lists(
        st.tuples(st.sampled_from(["500", "503", "reset", "truncated", "429"]), st.sampled_from(["", ".CHECKSUM"])),
        max_size=4,
    )
)
def test_any_burst_of_faults_ends_in_exactly_the_rows(archive, faults):
    """Nothing lost or duplicated: whatever transient faults hit the zip or its checksum, the day comes back whole."""
    root, _ = archive
    day = date(2023, 9, 2)
    rows = synthetic_rows(day_ms(day), 24, "1h", seed=2)
    with FakeBinance(archive_root=root) as fb:
        for kind, where in faults:
            fb.add_fault(kind, path_contains=where, **({"retry_after": 0} if kind == "429" else {}))
        t = client(fb, max_retries=len(faults), checksum_retries=len(faults)).daily("BTCUSDT", "1h", day)
    assert klines(t).equals(rows_table(rows, "BTCUSDT", "1h"))


def test_backoff_grows_exponentially_with_jitter(archive):
    root, rows = archive
    sleeps = Sleeps()
    with FakeBinance(archive_root=root) as fb:
        fb.add_fault("500", times=5)
        t = client(fb, sleeps, max_retries=5, backoff_base_s=1.0).monthly("BTCUSDT", "1m", 2023, 8)
    assert t.num_rows == N_AUG
    assert len(sleeps) == 5
    for i, s in enumerate(sleeps):  # step 2**i: half fixed, half random
        assert 2**i / 2 <= s <= 2**i


def test_gives_up_after_max_retries(archive):
    root, _ = archive
    sleeps = Sleeps()
    with FakeBinance(archive_root=root) as fb:
        fb.add_fault("503", times=10)
        with pytest.raises(DownloadError, match=r"failed after 3 retries \(last: HTTP 503\)"):
            client(fb, sleeps, max_retries=3).monthly("BTCUSDT", "1m", 2023, 8)
        assert len(fb.requests) == 4
    assert len(sleeps) == 3


def test_connection_refused_is_a_download_error():
    with FakeBinance() as fb:
        url = fb.url  # the port is closed once the server stops
    sleeps = Sleeps()
    port = url.rsplit(":", 1)[1]
    with pytest.raises(DownloadError, match=rf"^cannot connect to 127.0.0.1:{port} \(connection refused\)"):
        ArchiveClient(url, sleep=sleeps, max_retries=5).monthly("BTCUSDT", "1m", 2023, 8)
    assert len(sleeps) == 1  # never answered: one quick retry, not the backoff (tests/test_offline.py)


def test_bad_names_never_reach_a_url():
    c = ArchiveClient("http://127.0.0.1:9", sleep=Sleeps())
    with pytest.raises(MscaleError, match="invalid symbol"):
        c.monthly("../etc", "1m", 2023, 8)
    with pytest.raises(MscaleError, match="unsupported interval"):
        c.monthly("BTCUSDT", "5m", 2023, 8)
    with pytest.raises(MscaleError, match="unknown market"):
        ArchiveClient("http://127.0.0.1:9", market="cm")


# -- real data ------------------------------------------------------------------------------


@real
@pytest.mark.real
def test_real_futures_archive_end_to_end(tmp_path):
    """Real FILUSDT/NEARUSDT futures zips served locally: checksums verified, exact months, no gaps."""
    expected = {(2023, 8): 44_640, (2023, 9): 43_200, (2023, 10): 44_640}
    out = tmp_path / "um"
    with FakeBinance(archive_root=REAL / "binance-archive") as fb:
        c = ArchiveClient(fb.url, market="um", sleep=Sleeps())
        for symbol in ("FILUSDT", "NEARUSDT"):
            for (y, m), n in expected.items():
                t = c.monthly(symbol, "1m", y, m)
                assert t.num_rows == n, (symbol, y, m)
                write_klines(out, "1m", t, source="bulk", complete_months=[(y, m)])
        assert fb.count(".CHECKSUM") == 6
    for symbol in ("FILUSDT", "NEARUSDT"):
        shards = list_shards(out, "1m", symbol)
        assert [(s.year, s.month) for s in shards] == list(expected)
        t = read_klines(out, "1m", symbol)
        ot = t["open_time"].cast(pa.int64()).to_numpy()
        assert t.num_rows == sum(expected.values())
        assert ot[0] == month_start_ms(2023, 8)
        assert ot[-1] == month_start_ms(2023, 11) - 60_000
        assert (np.diff(ot) == 60_000).all()  # no gaps, no duplicates
        assert (t["close_time"].cast(pa.int64()).to_numpy() == ot + 60_000).all()
        assert t.column("trades").null_count == 0


@real
@pytest.mark.real
def test_real_futures_zip_values_match_the_csv(tmp_path):
    """Spot-check parsed values against the raw CSV text of a real file."""
    z = REAL / "binance-archive/data/futures/um/monthly/klines/NEARUSDT/1m/NEARUSDT-1m-2023-09.zip"
    with zipfile.ZipFile(z) as zf:
        lines = zf.read("NEARUSDT-1m-2023-09.csv").decode().splitlines()
    first = lines[1].split(",")
    with FakeBinance(archive_root=REAL / "binance-archive") as fb:
        t = ArchiveClient(fb.url, market="um", sleep=Sleeps()).monthly("NEARUSDT", "1m", 2023, 9)
    row = t.slice(0, 1).to_pylist()[0]
    assert int(row["open_time"].timestamp() * 1000) == int(first[0])
    assert [row[k] for k in ("open", "high", "low", "close", "volume")] == [float(x) for x in first[1:6]]
    assert row["quote_volume"] == float(first[7]) and row["trades"] == int(first[8])
    assert row["taker_buy_base"] == float(first[9]) and row["taker_buy_quote"] == float(first[10])
