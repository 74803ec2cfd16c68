"""`mscale import` (mscale.ingest.local.import_paths): local files into the shard layout."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mscale.config import Config
from mscale.errors import ChecksumError, MscaleError
from mscale.ingest.local import import_paths, infer_from_name
from mscale.store import list_shards, read_klines, read_shard

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real Binance data not found at {REAL} (../shared/data/real)")

HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
T0 = 1_690_848_000_000  # 2023-08-01 00:00 UTC
MIN = 60_000


def kline_lines(start_ms: int, n: int, *, step_ms: int = MIN, micros: bool = False) -> list[str]:
    unit = 1000 if micros else 1
    out = []
    for i in range(n):
        ot = start_ms + i * step_ms
        c = 100 + i / 100
        out.append(f"{ot * unit},{c:.2f},{c + 0.05:.2f},{c - 0.05:.2f},{c:.2f},{i + 1}.5,{(ot + step_ms) * unit - 1},{c * (i + 1):.4f},{i + 1},{i / 2},{c * i / 2:.4f},0")
    return out


def write_zip(path: Path, lines: list[str], *, header: bool = False, checksum: bool = False) -> Path:
    payload = ("\n".join(([HEADER] if header else []) + lines) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.name.replace(".zip", ".csv"), payload)
    path.write_bytes(buf.getvalue())
    if checksum:
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
    return path


def make_cfg(tmp_path: Path, market: str = "spot") -> Config:
    return Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "wh.duckdb", market=market)


def shard_bytes(market_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(market_dir)): p.read_bytes() for p in sorted(market_dir.rglob("*.parquet"))}


def ints(col) -> list[int]:
    return col.cast(pa.int64()).to_pylist()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("BTCUSDT-1m-2023-08.zip", ("BTCUSDT", "1m")),
        ("BTCUSDT-1h-2023-08-01.csv", ("BTCUSDT", "1h")),
        ("BTC_USDT-1m.json", ("BTCUSDT", "1m")),
        ("BTC_USDT_USDT-1h-futures.json", ("BTCUSDT", "1h")),
        ("ETH_USDT-1m.json.gz", ("ETHUSDT", "1m")),
        ("BTCUSDT_1m.csv", ("BTCUSDT", "1m")),
        ("btcusdt-1m-2023-08.zip", ("BTCUSDT", "1m")),
        ("BTCUSDT-5m-2023-08.zip", ("BTCUSDT", "5m")),
        ("klines_1m.csv", (None, "1m")),
        ("download.csv", (None, None)),
        ("SOLUSDT.csv", ("SOLUSDT", None)),
        ("btc_usdt-1m.json", (None, "1m")),
    ],
)
def test_infer_from_name(name, expected):
    assert infer_from_name(name) == expected


def test_spot_zip_without_header_in_micros_equals_futures_style_csv(tmp_path):
    """The same bars as a µs spot zip and a ms header CSV land as identical shards."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    lines_ms = kline_lines(T0, 120)
    write_zip(a / "BTCUSDT-1m-2023-08.zip", kline_lines(T0, 120, micros=True))
    (b / "BTCUSDT-1m-2023-08.csv").write_text("\n".join([HEADER, *lines_ms]) + "\n")
    cfg_a, cfg_b = make_cfg(tmp_path / "A"), make_cfg(tmp_path / "B")
    sa = import_paths(cfg_a, [a / "BTCUSDT-1m-2023-08.zip"])
    sb = import_paths(cfg_b, [b / "BTCUSDT-1m-2023-08.csv"])
    assert [(f.symbol, f.interval, f.rows) for f in sa.files] == [("BTCUSDT", "1m", 120)]
    assert [(f.symbol, f.interval, f.rows) for f in sb.files] == [("BTCUSDT", "1m", 120)]
    ta, tb = read_klines(cfg_a.market_dir, "1m", "BTCUSDT"), read_klines(cfg_b.market_dir, "1m", "BTCUSDT")
    assert ta.equals(tb)
    assert ints(ta["close_time"]) == [t + MIN for t in ints(ta["open_time"])]
    assert shard_bytes(cfg_a.market_dir).keys() == {"minute/binance_BTCUSDT_1m_202308.parquet"}


def test_market_um_writes_under_um(tmp_path):
    src = write_zip(tmp_path / "FILUSDT-1m-2023-08.zip", kline_lines(T0, 10), header=True)
    cfg = make_cfg(tmp_path, market="um")
    import_paths(cfg, [src])
    assert cfg.market_dir == tmp_path / "data" / "um"
    assert [s.path.name for s in list_shards(cfg.market_dir, "1m")] == ["binance_FILUSDT_1m_202308.parquet"]
    assert not (tmp_path / "data" / "minute").exists()


def test_freqtrade_json_missing_fields_are_null(tmp_path):
    rows = [[T0 + i * MIN, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 10.0 * i] for i in range(5)]
    src = tmp_path / "BTC_USDT-1m.json"
    src.write_text(json.dumps(rows))
    cfg = make_cfg(tmp_path)
    s = import_paths(cfg, [src])
    assert (s.files[0].symbol, s.files[0].interval, s.files[0].rows) == ("BTCUSDT", "1m", 5)
    t = read_klines(cfg.market_dir, "1m", "BTCUSDT")
    assert t["close"].to_pylist() == [1.5, 2.5, 3.5, 4.5, 5.5]
    assert t["volume"].to_pylist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    for col in ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote"):
        assert t[col].null_count == 5, col


def test_freqtrade_json_under_the_wrong_interval_is_refused(tmp_path):
    hourly = [[T0 + i * 3_600_000, 1, 2, 0.5, 1.5, 3] for i in range(5)]
    src = tmp_path / "BTC_USDT-1m.json"
    src.write_text(json.dumps(hourly))
    cfg = make_cfg(tmp_path)
    with pytest.raises(MscaleError, match="3600 s apart, not 1m"):
        import_paths(cfg, [src])
    assert not cfg.market_dir.exists()
    assert import_paths(cfg, [src], interval="1h").files[0].interval == "1h"


def test_rest_dump_truncated_close_time_and_duplicates(tmp_path):
    header = ",timestamp,open,high,low,close,volume,close_time,quote_av,trades,tb_base_av,tb_quote_av,ignore,datetime"
    body = []
    for i in range(4):
        ot = T0 + i * MIN
        ct = ot + 58_146 if i == 2 else ot + 59_999  # an outage-truncated candle
        body.append(f"{i},{ot},1,2,0.5,1.{i},3,{ct},4,{10 + i},1,2,0,2023-08-01 00:0{i}:00")
    body.append(body[1].replace(",1.1,", ",9.9,"))  # a repeated minute: the later row wins
    src = tmp_path / "BTCUSDT_1m.csv"
    src.write_text("\n".join([header, *body]) + "\n")
    cfg = make_cfg(tmp_path)
    s = import_paths(cfg, [src])
    f = s.files[0]
    assert (f.symbol, f.interval, f.rows, f.duplicates_dropped) == ("BTCUSDT", "1m", 5, 1)
    t = read_klines(cfg.market_dir, "1m", "BTCUSDT")
    assert ints(t["open_time"]) == [T0 + i * MIN for i in range(4)]
    assert ints(t["close_time"]) == [T0 + (i + 1) * MIN for i in range(4)]
    assert t["close"].to_pylist() == [1.0, 9.9, 1.2, 1.3]
    assert t["trades"].to_pylist() == [10, 11, 12, 13]


def test_folder_import_and_interval_from_bars(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_zip(src / "BTCUSDT-1m-2023-08.zip", kline_lines(T0, 30))
    write_zip(src / "sub" / "ETHUSDT-1h-2023-08.zip", kline_lines(T0, 48, step_ms=3_600_000))
    (src / "notes.txt").write_text("ignored")
    # a name without an interval: the bars say 1h
    (src / "SOLUSDT.csv").write_text("\n".join(kline_lines(T0, 5, step_ms=3_600_000)) + "\n")
    cfg = make_cfg(tmp_path)
    s = import_paths(cfg, [src])
    assert sorted((f.symbol, f.interval, f.rows) for f in s.files) == [
        ("BTCUSDT", "1m", 30),
        ("ETHUSDT", "1h", 48),
        ("SOLUSDT", "1h", 5),
    ]
    assert s.rows == 83
    assert len(str(s).splitlines()) == 4
    assert "SOLUSDT.csv: SOLUSDT 1h, 5 rows, 0 duplicates dropped" in str(s)


def test_unknown_symbol_needs_flag_and_writes_nothing(tmp_path):
    good = write_zip(tmp_path / "BTCUSDT-1m-2023-08.zip", kline_lines(T0, 3))
    bad = tmp_path / "download.csv"
    bad.write_text("\n".join(kline_lines(T0, 3)) + "\n")
    cfg = make_cfg(tmp_path)
    with pytest.raises(MscaleError, match="pass --symbol") as e:
        import_paths(cfg, [good, bad])
    assert "\n" not in str(e.value)
    assert not cfg.market_dir.exists()  # names are checked before anything is written
    s = import_paths(cfg, [bad], symbol="xrpusdt")
    assert s.files[0].symbol == "XRPUSDT"
    # --symbol overrides what the name says only when asked to (tests/test_import_labels.py)
    import_paths(cfg, [good], symbol="DOGEUSDT", rename_symbol=True)
    assert {sh.symbol for sh in list_shards(cfg.market_dir, "1m")} == {"XRPUSDT", "DOGEUSDT"}


@pytest.mark.parametrize(
    "paths, match",
    [
        (["missing.zip"], "no such file"),
        (["notes.txt"], "unsupported file type"),
        (["BTCUSDT-5m-2023-08.csv"], "'5m' is not stored"),
        ([], "nothing to import"),
    ],
)
def test_bad_paths_are_one_line_errors(tmp_path, paths, match):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "BTCUSDT-5m-2023-08.csv").write_text("\n".join(kline_lines(T0, 3, step_ms=300_000)) + "\n")
    with pytest.raises(MscaleError, match=match):
        import_paths(make_cfg(tmp_path), [tmp_path / p for p in paths])


def test_sibling_checksum_is_verified(tmp_path):
    src = write_zip(tmp_path / "BTCUSDT-1m-2023-08.zip", kline_lines(T0, 10), checksum=True)
    cfg = make_cfg(tmp_path)
    assert import_paths(cfg, [tmp_path]).files[0].rows == 10  # .CHECKSUM itself is not imported
    cfg2 = make_cfg(tmp_path / "other")
    write_zip(src, kline_lines(T0, 11))  # the zip changes, its published checksum does not
    with pytest.raises(ChecksumError, match="BTCUSDT-1m-2023-08.zip"):
        import_paths(cfg2, [src])
    assert not cfg2.market_dir.exists()


@pytest.mark.parametrize("name", ["BTCUSDT-1m-2023-08.zip", "BTCUSDT.zip"])  # interval from the name / the bars
def test_corrupt_zip_writes_nothing(tmp_path, name):
    src = write_zip(tmp_path / name, kline_lines(T0, 100))
    src.write_bytes(src.read_bytes()[:200])
    cfg = make_cfg(tmp_path)
    with pytest.raises(ChecksumError, match=f"{name} is corrupt"):
        import_paths(cfg, [src])
    assert not list(cfg.data_dir.rglob("*.parquet"))


def test_import_twice_is_idempotent(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_zip(src / "BTCUSDT-1m-2023-08.zip", kline_lines(T0 - 30 * MIN, 90))  # spans July/August
    (src / "BTC_USDT-1h.json").write_text(json.dumps([[T0 + i * 3_600_000, 1, 2, 0.5, 1.5, 3] for i in range(30)]))
    cfg = make_cfg(tmp_path)
    import_paths(cfg, [src])
    first = shard_bytes(cfg.market_dir)
    assert len(first) == 3
    s = import_paths(cfg, [src])
    assert shard_bytes(cfg.market_dir) == first
    assert sum(f.rows_replaced for f in s.files) == 120


# -- real data ------------------------------------------------------------------------------


@real
@pytest.mark.real
@pytest.mark.parametrize("pair", ["BTC", "ETH"])
def test_real_freqtrade_json(tmp_path, pair):
    cfg = make_cfg(tmp_path)
    s = import_paths(cfg, [REAL / "spot-freqtrade-json" / f"{pair}_USDT-1m.json", REAL / "spot-freqtrade-json" / f"{pair}_USDT-1h.json"])
    assert [(f.symbol, f.interval, f.rows, f.duplicates_dropped) for f in s.files] == [
        (f"{pair}USDT", "1m", 66_087, 0),
        (f"{pair}USDT", "1h", 719, 0),
    ]
    m = read_klines(cfg.market_dir, "1m", f"{pair}USDT")
    assert m.num_rows == 66_087
    assert str(m["open_time"][0].as_py()) == "2023-03-16 22:15:00+00:00"
    assert str(m["open_time"][-1].as_py()) == "2023-05-01 21:01:00+00:00"
    assert m["trades"].null_count == m.num_rows  # freqtrade has no trade counts
    if pair == "BTC":  # the real 2023-03-24 halt: 80 missing minutes 12:40-13:59, kept missing
        ot = np.array(ints(m["open_time"]))
        gaps = np.diff(ot) // MIN - 1
        assert 80 in gaps.tolist()
    h = read_klines(cfg.market_dir, "1h", f"{pair}USDT")
    assert h.num_rows == 719
    assert str(h["open_time"][0].as_py()) == "2023-04-01 16:00:00+00:00"
    assert str(h["open_time"][-1].as_py()) == "2023-05-01 14:00:00+00:00"


@real
@pytest.mark.real
def test_real_rest_csv(tmp_path):
    cfg = make_cfg(tmp_path)
    s = import_paths(cfg, [REAL / "spot-rest-csv" / "BTCUSDT_1m.csv"])
    assert [(f.symbol, f.interval, f.rows, f.duplicates_dropped) for f in s.files] == [("BTCUSDT", "1m", 16_891, 0)]
    t = read_klines(cfg.market_dir, "1m", "BTCUSDT")
    assert t.num_rows == 16_891
    assert str(t["open_time"][0].as_py()) == "2021-04-24 00:00:00+00:00"
    assert str(t["open_time"][-1].as_py()) == "2021-05-05 22:14:00+00:00"
    ot, ct = np.array(ints(t["open_time"])), np.array(ints(t["close_time"]))
    assert (ct == ot + MIN).all()
    i = int(np.flatnonzero(ot == 1619323200000)[0])  # truncated close_time 1619323258146 in the file
    assert ct[i] == 1619323200000 + MIN
    assert t["trades"][i].as_py() == 224
    assert (np.diff(ot) // MIN - 1).max() == 284  # the outage stays a gap


@real
@pytest.mark.real
def test_real_spot_archive_1h_csv_and_idempotence(tmp_path):
    cfg = make_cfg(tmp_path)
    src = REAL / "spot-archive-1h" / "BTCUSDT-1h-2022-01.csv"
    s = import_paths(cfg, [src])
    assert [(f.symbol, f.interval, f.rows) for f in s.files] == [("BTCUSDT", "1h", 744)]
    shards = list_shards(cfg.market_dir, "1h")
    assert [sh.path.name for sh in shards] == ["binance_BTCUSDT_1h_20220101_20220131.parquet"]
    t = read_shard(shards[0].path)
    assert t.num_rows == 744
    assert str(t["open_time"][-1].as_py()) == "2022-01-31 23:00:00+00:00"
    before = shard_bytes(cfg.market_dir)
    import_paths(cfg, [src])
    assert shard_bytes(cfg.market_dir) == before


@real
@pytest.mark.real
def test_real_import_of_everything_twice_is_identical(tmp_path):
    cfg = make_cfg(tmp_path)
    paths = [REAL / "spot-freqtrade-json", REAL / "spot-rest-csv", REAL / "spot-archive-1h"]
    import_paths(cfg, paths)
    first = shard_bytes(cfg.market_dir)
    import_paths(cfg, paths)
    assert shard_bytes(cfg.market_dir) == first


@real
@pytest.mark.real
def test_real_futures_zips_import_with_their_checksums(tmp_path):
    cfg = make_cfg(tmp_path, market="um")
    folder = REAL / "binance-archive" / "data" / "futures" / "um" / "monthly" / "klines" / "FILUSDT" / "1m"
    s = import_paths(cfg, [folder])
    assert [f.rows for f in s.files] == [44_640, 43_200, 44_640]
    assert [sh.path.name for sh in list_shards(cfg.market_dir, "1m")] == [
        f"binance_FILUSDT_1m_2023{m:02d}.parquet" for m in (8, 9, 10)
    ]
