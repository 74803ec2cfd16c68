"""Parsing of Binance archive CSVs, zips and checksums (mscale.ingest.archive): pure, no I/O."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakebinance import make_archive_zip, rows_table, synthetic_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from mscale.errors import ChecksumError, MscaleError
from mscale.ingest.archive import parse_kline_csv, read_archive_zip, to_millis, verify_checksum
from mscale.schema import KLINE_SCHEMA

HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
T0 = 1_690_848_000_000  # 2023-08-01 00:00 UTC


def kline_csv(start_ms: int, n: int, *, step_ms: int = 60_000, header: bool = False, micros: bool = False, seed: int = 0) -> bytes:
    """An archive-style kline CSV with hand-checkable prices (close = 100 + i/100)."""
    rng = np.random.default_rng(seed)
    unit = 1000 if micros else 1
    lines = [HEADER] if header else []
    for i in range(n):
        ot = start_ms + i * step_ms
        c = 100 + i / 100
        vol = round(float(rng.uniform(1, 50)), 5)
        ct = (ot + step_ms) * unit - 1  # Binance's own close time: 1 unit before the next bar
        lines.append(
            f"{ot * unit},{c - 0.01:.2f},{c + 0.05:.2f},{c - 0.05:.2f},{c:.2f},{vol},{ct},{vol * c:.4f},{i + 1},{vol / 2},{vol * c / 2:.4f},0"
        )
    return ("\n".join(lines) + "\n").encode()


def zip_bytes(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, payload)
    return buf.getvalue()


def test_parse_gives_contract_schema_and_right_edge_close_time():
    t = parse_kline_csv(kline_csv(T0, 3), "BTCUSDT", "1m")
    assert t.schema == KLINE_SCHEMA
    assert t.num_rows == 3
    ot = t["open_time"].cast(pa.int64()).to_pylist()
    ct = t["close_time"].cast(pa.int64()).to_pylist()
    assert ot == [T0, T0 + 60_000, T0 + 120_000]
    assert ct == [o + 60_000 for o in ot]  # not Binance's +59999
    row = t.slice(1, 1).to_pylist()[0]
    assert row["symbol"] == "BTCUSDT"
    assert row["close"] == pytest.approx(100.01)
    assert row["trades"] == 2
    assert row["taker_buy_base"] == pytest.approx(row["volume"] / 2)


def test_ms_and_us_timestamps_give_identical_tables():
    ms = parse_kline_csv(kline_csv(T0, 500), "BTCUSDT", "1m")
    us = parse_kline_csv(kline_csv(T0, 500, micros=True), "BTCUSDT", "1m")
    assert us.equals(ms)


def test_header_and_no_header_give_identical_tables():
    plain = parse_kline_csv(kline_csv(T0, 200), "ETHUSDT", "1m")
    headed = parse_kline_csv(kline_csv(T0, 200, header=True), "ETHUSDT", "1m")
    assert headed.equals(plain)
    # any header wording (uploaders rename columns) and Windows line ends
    odd = kline_csv(T0, 200, header=True).replace(b"open_time,open", b"Opentime,Open").replace(b"\n", b"\r\n")
    assert parse_kline_csv(odd, "ETHUSDT", "1m").equals(plain)


def test_hourly_file():
    t = parse_kline_csv(kline_csv(T0, 24, step_ms=3_600_000), "BTCUSDT", "1h")
    assert t.num_rows == 24
    assert (t["close_time"].cast(pa.int64()).to_numpy() - t["open_time"].cast(pa.int64()).to_numpy() == 3_600_000).all()


def test_wrong_interval_is_rejected():
    with pytest.raises(MscaleError, match="not 1m"):  # hourly bars read as minutes
        parse_kline_csv(kline_csv(T0, 24, step_ms=3_600_000), "BTCUSDT", "1m")
    with pytest.raises(MscaleError, match="not on a 1h boundary"):  # minutes read as hours
        parse_kline_csv(kline_csv(T0, 5), "BTCUSDT", "1h")


def test_empty_and_header_only_files_give_empty_tables():
    assert parse_kline_csv(b"", "BTCUSDT", "1m").num_rows == 0
    t = parse_kline_csv((HEADER + "\n").encode(), "BTCUSDT", "1m")
    assert t.num_rows == 0 and t.schema == KLINE_SCHEMA


def test_six_column_csv_leaves_missing_fields_null():
    data = f"{T0},1,2,0.5,1.5,10\n{T0 + 60_000},1.5,2,1,1.8,12\n".encode()
    t = parse_kline_csv(data, "BTCUSDT", "1m")
    assert t["close"].to_pylist() == [1.5, 1.8]
    for col in ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote"):
        assert t[col].null_count == 2


def test_garbage_is_a_clear_error():
    with pytest.raises(MscaleError, match="columns"):
        parse_kline_csv(b"1,2,3\n", "BTCUSDT", "1m")
    with pytest.raises(MscaleError, match="not a Binance kline CSV"):
        parse_kline_csv(kline_csv(T0, 3) + b"abc,1,2,3,4,5,6,7,8,9,10,11\n", "BTCUSDT", "1m")
    with pytest.raises(MscaleError, match="invalid symbol"):
        parse_kline_csv(kline_csv(T0, 3), "btc/usdt", "1m")


def test_to_millis_detects_unit_per_value():
    assert to_millis(np.array([T0, T0 * 1000, T0 * 1_000_000])).tolist() == [T0, T0, T0]


def test_read_archive_zip_roundtrip_and_corruption():
    csv = kline_csv(T0, 100, header=True)
    z = zip_bytes("BTCUSDT-1m-2023-08.csv", csv)
    assert read_archive_zip(z, "BTCUSDT", "1m").equals(parse_kline_csv(csv, "BTCUSDT", "1m"))

    with pytest.raises(ChecksumError, match="corrupt"):
        read_archive_zip(z[: len(z) // 2], "BTCUSDT", "1m", name="BTCUSDT-1m-2023-08.zip")
    with pytest.raises(ChecksumError, match="corrupt"):
        read_archive_zip(b"<html>not found</html>", "BTCUSDT", "1m")
    # a flipped byte inside the compressed data: caught by inflate or the CRC-32 check
    damaged = bytearray(z)
    damaged[60] ^= 0xFF
    with pytest.raises(ChecksumError, match="BTCUSDT-1m-2023-08.zip is corrupt"):
        read_archive_zip(bytes(damaged), "BTCUSDT", "1m", name="BTCUSDT-1m-2023-08.zip")


def test_verify_checksum():
    data = b"zip bytes"
    digest = hashlib.sha256(data).hexdigest()
    verify_checksum(data, f"{digest}  BTCUSDT-1m-2023-08.zip\n", "BTCUSDT-1m-2023-08.zip")
    verify_checksum(data, digest.upper(), "BTCUSDT-1m-2023-08.zip")  # bare digest, any case
    with pytest.raises(ChecksumError, match="BTCUSDT-1m-2023-08.zip: sha256"):
        verify_checksum(data + b"!", f"{digest}  BTCUSDT-1m-2023-08.zip", "BTCUSDT-1m-2023-08.zip")
    with pytest.raises(ChecksumError, match="is for 'ETHUSDT"):
        verify_checksum(data, f"{digest}  ETHUSDT-1m-2023-08.zip", "BTCUSDT-1m-2023-08.zip")
    with pytest.raises(ChecksumError, match="not '<sha256>"):
        verify_checksum(data, "<html>oops</html>", "BTCUSDT-1m-2023-08.zip")


def test_one_month_parses_and_round_trips_through_parquet():
    """One month of 1m (44,640 rows) survives CSV -> Arrow -> Parquet unchanged (speed: `make bench`)."""
    csv = kline_csv(T0, 44_640, header=True)
    t = parse_kline_csv(csv, "BTCUSDT", "1m")
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="snappy")
    assert t.num_rows == 44_640
    assert pq.read_table(io.BytesIO(buf.getvalue())).equals(t)


# -- properties, against the fake archive's independent row-wise conversion -----------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    seed=st.integers(0, 10_000),
    interval=st.sampled_from(["1m", "1h"]),
    header=st.booleans(),
    micros=st.booleans(),
    start_step=st.integers(0, 24 * 365 * 6),
)
def test_any_archive_file_parses_to_exactly_its_rows(tmp_path_factory, n, seed, interval, header, micros, start_step):
    """Whatever the layout (header, unit, interval), the zip holds exactly the rows, no more, no less."""
    start = 1_514_764_800_000 + start_step * 3_600_000  # hours from 2018-01-01
    rows = synthetic_rows(start, n, interval, seed=seed)
    z = make_archive_zip(tmp_path_factory.mktemp("a"), "spot", "BTCUSDT", interval, 2023, 1, rows, header=header, micros=micros)
    t = read_archive_zip(z.read_bytes(), "BTCUSDT", interval)
    assert t.equals(rows_table(rows, "BTCUSDT", interval))
