"""The ingestion / data-quality report: planted violations, gaps and mismatches, then real data."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mscale.config import Config
from mscale.report import build_report, format_report, symbol_report, write_report
from mscale.resample import hours_from_minutes
from mscale.schema import KLINE_SCHEMA, klines_from_arrays
from mscale.store import write_klines

MIN = 60_000
HOUR = 3_600_000
T0 = int(datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp() * 1000)
EMPTY = KLINE_SCHEMA.empty_table()

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real market data not found at {REAL} (../shared/data/real beside the repo)")


def _cfg(tmp_path: Path) -> Config:
    return Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "w.duckdb")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _walk(offsets_min: np.ndarray, *, symbol: str = "BTCUSDT", seed: int = 0, full: bool = True) -> pa.Table:
    """Clean minute bars at T0 + offsets (a random walk; OHLC consistent, volume > 0)."""
    rng = np.random.default_rng(seed)
    n = len(offsets_min)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 1e-3, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 1e-3, n))
    volume = rng.uniform(0.1, 10, n)
    extra = {}
    if full:
        extra = dict(
            quote_volume=volume * close,
            trades=rng.integers(1, 100, n),
            taker_buy_base=volume * 0.4,
            taker_buy_quote=volume * close * 0.4,
        )
    return klines_from_arrays(symbol, T0 + np.asarray(offsets_min) * MIN, "1m", open=open_, high=high, low=low, close=close, volume=volume, **extra)


def _set(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def _report(minutes: pa.Table, hours: pa.Table = EMPTY, **kw) -> dict:
    kw.setdefault("sources", ["test"])
    kw.setdefault("duplicates_dropped", 0)
    return symbol_report(minutes, hours, symbol="BTCUSDT", **kw)


# ---- sanity violations ------------------------------------------------------------------------


def test_clean_table_has_no_violations():
    rep = _report(_walk(np.arange(120)))
    assert all(v == 0 for v in rep["minutes"]["violations"].values())
    assert rep["minutes"]["zero_volume"] == 0 and rep["minutes"]["missing"] == 0


def test_each_planted_violation_is_counted_separately():
    t = _walk(np.arange(10))
    t = _set(t, "low", 1, t.column("open")[1].as_py() + 1.0)  # low above open (and the high is fine)
    t = _set(t, "high", 1, t.column("low")[1].as_py() + 1.0)  # keep high >= low so only one check fires
    t = _set(t, "volume", 2, -1.0)  # negative volume; taker (0.4 * old volume) > -1 -> taker check too
    t = _set(t, "taker_buy_base", 2, None)  # ... unless taker is NULL: then only the volume check
    t = _set(t, "taker_buy_base", 3, t.column("volume")[3].as_py() * 1.5)  # taker above volume
    t = _set(t, "high", 4, min(t.column("open")[4].as_py(), t.column("close")[4].as_py()) - 0.5)
    t = _set(t, "low", 4, t.column("high")[4].as_py() - 0.1)  # high below open/close, low still below high
    v = _report(t)["minutes"]["violations"]
    assert v == {
        "low_above_open_or_close": 1,
        "high_below_open_or_close": 1,
        "negative_volume": 1,
        "taker_buy_above_volume": 1,
        "open_time_off_grid": 0,
        "close_time_not_open_plus_interval": 0,
    }


def test_null_fields_are_not_violations_but_the_other_side_still_counts():
    t = _walk(np.arange(4), full=False)
    t = _set(t, "open", 0, None)
    t = _set(t, "close", 0, None)
    t = _set(t, "low", 0, 1e9)  # open and close NULL: nothing to compare against
    t = _set(t, "volume", 1, None)  # NULL volume: no negative-volume or taker check
    t = _set(t, "open", 2, None)
    t = _set(t, "low", 2, t.column("close")[2].as_py() + 1)  # open NULL but low > close: counted
    t = _set(t, "high", 2, t.column("low")[2].as_py() + 1)
    v = _report(t)["minutes"]["violations"]
    assert v["low_above_open_or_close"] == 1
    assert v["high_below_open_or_close"] == 0
    assert v["negative_volume"] == 0 and v["taker_buy_above_volume"] == 0


def test_off_grid_and_bad_close_time_are_counted():
    t = _walk(np.arange(3))
    ot = t.column("open_time").cast(pa.int64()).to_numpy().copy()
    ot[1] += 1_000
    t = t.set_column(1, "open_time", pa.array(ot).cast(KLINE_SCHEMA.field("open_time").type))
    v = _report(t)["minutes"]["violations"]
    assert v["open_time_off_grid"] == 1
    assert v["close_time_not_open_plus_interval"] == 1  # close_time was not moved with it


def test_duplicates_and_sources_come_from_the_caller_and_synthetic_is_flagged():
    rep = _report(_walk(np.arange(3)), sources=["synthetic", "", "synthetic"], duplicates_dropped=7)
    assert rep["duplicates_dropped"] == 7
    assert rep["sources"] == ["synthetic"] and rep["synthetic"] is True
    assert _report(_walk(np.arange(3)), sources=["bulk", "rest"])["synthetic"] is False


def test_repeated_open_times_in_the_input_are_counted_and_collapsed():
    t = _walk(np.arange(5))
    rep = _report(pa.concat_tables([t, t.slice(2, 1)]))
    m = rep["minutes"]
    assert m["rows"] == 6 and m["duplicate_open_times"] == 1 and m["present"] == 5 and m["missing"] == 0


# ---- gaps and halts --------------------------------------------------------------------------


def test_planted_gaps_have_the_right_start_end_and_length():
    # present 0..9, missing 10..14 (5), present 15..19, missing 20..21 (2), present 22..24,
    # missing 25..29 (5, ties with the first; reported after it)
    offsets = np.r_[0:10, 15:20, 22:25, 30]
    m = _report(_walk(offsets), top_gaps=2)["minutes"]
    assert m["rows"] == 19 and m["expected"] == 31 and m["present"] == 19 and m["missing"] == 12
    assert m["pct_missing"] == pytest.approx(100 * 12 / 31)
    assert m["gaps"] == 3
    assert m["first_open_time"] == _iso(T0) and m["last_open_time"] == _iso(T0 + 30 * MIN)
    assert m["largest_gaps"] == [
        {"start": _iso(T0 + 10 * MIN), "end": _iso(T0 + 14 * MIN), "bars": 5,
         "prev_open_time": _iso(T0 + 9 * MIN), "next_open_time": _iso(T0 + 15 * MIN)},
        {"start": _iso(T0 + 25 * MIN), "end": _iso(T0 + 29 * MIN), "bars": 5,
         "prev_open_time": _iso(T0 + 24 * MIN), "next_open_time": _iso(T0 + 30 * MIN)},
    ]  # fmt: skip


def test_zero_volume_runs_are_found_and_broken_by_gaps():
    offsets = np.r_[0:20, 25:30]
    t = _walk(offsets)
    for i in [3, 4, 5, 6, 10, 18, 19, 20, 21]:  # rows 19 and 20 are minutes 19 and 25: not contiguous
        t = _set(t, "volume", i, 0.0)
        t = _set(t, "taker_buy_base", i, 0.0)
    m = _report(t, top_gaps=3)["minutes"]
    assert m["zero_volume"] == 9
    assert [(r["start"], r["end"], r["bars"]) for r in m["longest_zero_volume_runs"]] == [
        (_iso(T0 + 3 * MIN), _iso(T0 + 6 * MIN), 4),
        (_iso(T0 + 18 * MIN), _iso(T0 + 19 * MIN), 2),
        (_iso(T0 + 25 * MIN), _iso(T0 + 26 * MIN), 2),
    ]


def test_empty_tables():
    rep = _report(EMPTY)
    assert rep["minutes"]["rows"] == 0 and rep["minutes"]["first_open_time"] is None
    assert rep["minutes"]["pct_missing"] is None and rep["minutes"]["largest_gaps"] == []
    assert rep["reconciliation"]["hours_compared"] == 0


# ---- hourly reconciliation -------------------------------------------------------------------


def test_resampled_hours_reconcile_with_zero_mismatches():
    rng = np.random.default_rng(3)
    offsets = np.sort(rng.choice(np.arange(24 * 60), size=24 * 60 - 40, replace=False))
    minutes = _walk(offsets)
    rep = _report(minutes, hours_from_minutes(minutes))
    r = rep["reconciliation"]
    per_hour = np.bincount(offsets // 60, minlength=24)
    assert r["mismatching_hours"] == 0 and r["mismatches"] == []
    assert r["hours_compared"] == int((per_hour == 60).sum()) > 0
    assert r["hours_skipped_incomplete"] == int(((per_hour > 0) & (per_hour < 60)).sum()) > 0
    assert r["hours_compared"] + r["hours_skipped_incomplete"] + r["hours_skipped_no_minutes"] == r["hourly_bars"]


def test_planted_hourly_mismatch_is_listed_with_its_fields():
    minutes = _walk(np.arange(3 * 60))
    hours = hours_from_minutes(minutes)
    hours = _set(hours, "high", 1, hours.column("high")[1].as_py() * (1 + 1e-9))
    hours = _set(hours, "volume", 1, hours.column("volume")[1].as_py() * (1 + 1e-6))
    hours = _set(hours, "close", 2, hours.column("close")[2].as_py() + 0.01)
    hours = _set(hours, "trades", 2, hours.column("trades")[2].as_py() + 1)
    hours = _set(hours, "volume", 0, hours.column("volume")[0].as_py() * (1 + 1e-12))  # within tolerance
    r = _report(minutes, hours)["reconciliation"]
    assert r["hours_compared"] == 3 and r["mismatching_hours"] == 2
    assert [(m["open_time"], m["fields"]) for m in r["mismatches"]] == [
        (_iso(T0 + HOUR), ["high", "volume"]),
        (_iso(T0 + 2 * HOUR), ["close", "trades"]),
    ]
    m = r["mismatches"][1]
    assert m["hourly"]["trades"] == m["minutes"]["trades"] + 1


def test_incomplete_hour_is_skipped_not_flagged():
    offsets = np.r_[0:60, 60:119, 180:240]  # hour 1 lacks its last minute; hour 2 has none
    full = _walk(np.arange(240))
    minutes = full.take(pa.array(offsets))
    hours = hours_from_minutes(full)  # hours 1 and 2 include minutes the report does not see
    hours = _set(hours, "open", 0, 1.0)  # hour 0 is complete: flagged
    hours = _set(hours, "high", 1, 1e6)  # hour 1 is incomplete: skipped, never flagged
    hours = _set(hours, "low", 2, -1.0)  # hour 2 has no minutes: skipped
    r = _report(minutes, hours)["reconciliation"]
    assert r["hours_skipped_incomplete"] == 1 and r["hours_skipped_no_minutes"] == 1
    assert r["hours_compared"] == 2
    assert [(m["open_time"], m["fields"]) for m in r["mismatches"]] == [(_iso(T0), ["open"])]


def test_null_only_on_one_side_is_not_a_mismatch():
    minutes = _walk(np.arange(60), full=False)  # no quote volume, trades, taker
    hours = hours_from_minutes(_walk(np.arange(60)))  # has them
    r = _report(minutes, hours)["reconciliation"]
    assert r["hours_compared"] == 1 and r["mismatching_hours"] == 0


# ---- build / write / format ------------------------------------------------------------------


def test_build_write_and_format_end_to_end(tmp_path):
    cfg = _cfg(tmp_path)
    btc = _walk(np.r_[0:100, 110:180])
    write_klines(cfg.market_dir, "1m", pa.concat_tables([btc, btc.slice(5, 2)]), source="bulk")  # 2 dups
    write_klines(cfg.market_dir, "1h", hours_from_minutes(btc), source="rest")  # bars derived here would be skipped
    eth = _walk(np.arange(120), symbol="ETHUSDT")
    write_klines(cfg.market_dir, "1m", eth, source="synthetic")
    only_hours = hours_from_minutes(_walk(np.arange(60), symbol="SOLUSDT"))
    write_klines(cfg.market_dir, "1h", pa.concat_tables([only_hours, only_hours]), source="rest")  # 1 dup

    reports = build_report(cfg)
    assert [r["symbol"] for r in reports] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    btc_r, eth_r, sol_r = reports
    assert btc_r["duplicates_dropped"] == 2 and btc_r["sources"] == ["bulk", "rest"]
    assert btc_r["minutes"]["missing"] == 10 and btc_r["minutes"]["largest_gaps"][0]["bars"] == 10
    assert btc_r["reconciliation"]["hours_compared"] == 2  # hour 1 (minutes 60..119) lost 10 minutes
    assert btc_r["reconciliation"]["hours_skipped_incomplete"] == 1
    assert eth_r["synthetic"] is True and eth_r["hours"]["rows"] == 0
    assert sol_r["duplicates_dropped"] == 1 and sol_r["minutes"]["rows"] == 0
    assert sol_r["reconciliation"]["hours_skipped_no_minutes"] == 1

    json_path, csv_path = write_report(cfg, reports)
    assert json_path == cfg.reports_dir / "ingestion_report.json"
    assert csv_path == cfg.reports_dir / "ingestion_report.csv"
    doc = json.loads(json_path.read_text())
    assert doc["symbols"] == reports
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["symbol"] for r in rows] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert rows[0]["minute_missing"] == "10" and rows[0]["duplicates_dropped"] == "2"
    assert rows[0]["minute_largest_gaps"] == f"{_iso(T0 + 100 * MIN)}..{_iso(T0 + 109 * MIN)}(10)"
    assert rows[1]["synthetic"] == "True" and rows[2]["hour_rows"] == "1"
    assert not list(cfg.reports_dir.glob(".*.tmp"))

    text = format_report(reports)
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("symbol")
    assert "10m @ 2024-03-01 01:40" in lines[2] and "synthetic" in lines[3]
    assert format_report([]) == "no symbols with data"

    assert [r["symbol"] for r in build_report(cfg, ["ETHUSDT"])] == ["ETHUSDT"]


# ---- real data -------------------------------------------------------------------------------


def _freqtrade(name: str, symbol: str, interval: str) -> pa.Table:
    """A freqtrade JSON file `[[open_time_ms, o, h, l, c, v], ...]` as a kline table."""
    a = np.asarray(json.loads((REAL / "spot-freqtrade-json" / name).read_text()), dtype=np.float64)
    return klines_from_arrays(
        symbol, a[:, 0].astype(np.int64), interval, open=a[:, 1], high=a[:, 2], low=a[:, 3], close=a[:, 4], volume=a[:, 5]
    )


def _rest_csv() -> pa.Table:
    """spot-rest-csv/BTCUSDT_1m.csv (a pandas dump of REST rows, all fields) as a kline table."""
    import pandas as pd

    df = pd.read_csv(REAL / "spot-rest-csv" / "BTCUSDT_1m.csv")
    return klines_from_arrays(
        "BTCUSDT",
        df["timestamp"].to_numpy(np.int64),
        "1m",
        open=df["open"],
        high=df["high"],
        low=df["low"],
        close=df["close"],
        volume=df["volume"],
        quote_volume=df["quote_av"],
        trades=df["trades"],
        taker_buy_base=df["tb_base_av"],
        taker_buy_quote=df["tb_quote_av"],
    )


def _hours_with_missing_minutes(minutes: pa.Table, hours: pa.Table) -> int:
    ot = minutes.column("open_time").cast(pa.int64()).to_numpy()
    hour, counts = np.unique(ot - ot % HOUR, return_counts=True)
    full = set(hour[counts == 60].tolist())
    return sum(h not in full for h in hours.column("open_time").cast(pa.int64()).to_pylist())


@pytest.mark.real
@real
def test_real_spot_btc_halt_and_gap():
    minutes = _freqtrade("BTC_USDT-1m.json", "BTCUSDT", "1m")
    hours = _freqtrade("BTC_USDT-1h.json", "BTCUSDT", "1h")
    rep = _report(minutes, hours)
    m = rep["minutes"]
    assert m["rows"] == 66_087
    assert m["first_open_time"] == "2023-03-16T22:15:00Z" and m["last_open_time"] == "2023-05-01T21:01:00Z"
    assert m["expected"] == m["present"] + m["missing"] and m["missing"] == 80
    assert m["zero_volume"] == 72
    assert m["longest_zero_volume_runs"][0] == {"start": "2023-03-24T11:28:00Z", "end": "2023-03-24T12:39:00Z", "bars": 72}
    gap = {"start": "2023-03-24T12:40:00Z", "end": "2023-03-24T13:59:00Z", "bars": 80}
    assert gap in [{k: g[k] for k in ("start", "end", "bars")} for g in m["largest_gaps"]]
    assert all(v == 0 for v in m["violations"].values())
    assert rep["hours"]["rows"] == 719 and rep["hours"]["missing"] == 0


@pytest.mark.real
@real
@pytest.mark.parametrize("base", ["BTC", "ETH"])
def test_real_minutes_reconcile_exactly_with_the_exchange_hours(base):
    minutes = _freqtrade(f"{base}_USDT-1m.json", f"{base}USDT", "1m")
    hours = _freqtrade(f"{base}_USDT-1h.json", f"{base}USDT", "1h")
    r = symbol_report(minutes, hours, symbol=f"{base}USDT", sources=["freqtrade"], duplicates_dropped=0)["reconciliation"]
    incomplete = _hours_with_missing_minutes(minutes, hours)
    assert r["mismatching_hours"] == 0, r["mismatches"][:3]
    assert r["hours_compared"] == 719 - incomplete
    assert r["hours_compared"] > 700 - incomplete
    # and our resampler reproduces the exchange's bars to the same tolerance
    own = hours_from_minutes(minutes)
    own = own.filter(pc.is_in(own.column("open_time"), value_set=hours.column("open_time")))
    r_own = symbol_report(minutes, own, symbol=f"{base}USDT", sources=[], duplicates_dropped=0)["reconciliation"]
    assert r_own["hours_compared"] == r["hours_compared"] and r_own["mismatching_hours"] == 0
    for f in ("open", "high", "low", "close"):
        assert own.column(f).equals(hours.column(f))
    np.testing.assert_allclose(own.column("volume").to_numpy(), hours.column("volume").to_numpy(), rtol=1e-9)


@pytest.mark.real
@real
def test_real_rest_csv_outage_is_the_largest_gap():
    minutes = _rest_csv()
    rep = _report(minutes, hours_from_minutes(minutes))
    m = rep["minutes"]
    assert m["rows"] == 16_891
    assert m["largest_gaps"][0] == {
        "start": "2021-04-25T04:01:00Z",  # first missing minute
        "end": "2021-04-25T08:44:00Z",  # last missing minute
        "bars": 284,
        "prev_open_time": "2021-04-25T04:00:00Z",  # the truncated candle
        "next_open_time": "2021-04-25T08:45:00Z",
    }
    assert all(v == 0 for v in m["violations"].values())
    r = rep["reconciliation"]  # every field, incl. quote volume, trades and taker volumes
    assert r["mismatching_hours"] == 0 and r["hours_compared"] > 0


@pytest.mark.real
@real
def test_real_build_report_end_to_end(tmp_path):
    cfg = _cfg(tmp_path)
    for base in ("BTC", "ETH"):
        write_klines(cfg.market_dir, "1m", _freqtrade(f"{base}_USDT-1m.json", f"{base}USDT", "1m"), source="freqtrade")
        write_klines(cfg.market_dir, "1h", _freqtrade(f"{base}_USDT-1h.json", f"{base}USDT", "1h"), source="freqtrade")
    reports = build_report(cfg)
    json_path, csv_path = write_report(cfg, reports)
    doc = json.loads(json_path.read_text())
    by_symbol = {r["symbol"]: r for r in doc["symbols"]}
    assert sorted(by_symbol) == ["BTCUSDT", "ETHUSDT"]
    for r in by_symbol.values():
        assert r["sources"] == ["freqtrade"] and r["synthetic"] is False and r["duplicates_dropped"] == 0
        assert r["minutes"]["rows"] == 66_087 and r["minutes"]["zero_volume"] == 72
        assert r["minutes"]["largest_gaps"][0]["start"] == "2023-03-24T12:40:00Z"
        assert r["reconciliation"]["mismatching_hours"] == 0 and r["reconciliation"]["hours_compared"] > 700
    rows = {row["symbol"]: row for row in csv.DictReader(csv_path.open())}
    assert rows["BTCUSDT"]["minute_rows"] == "66087" and rows["BTCUSDT"]["minute_missing"] == "80"
    assert rows["BTCUSDT"]["minute_largest_gaps"] == "2023-03-24T12:40:00Z..2023-03-24T13:59:00Z(80)"
    assert rows["ETHUSDT"]["recon_mismatching_hours"] == "0"
    assert "BTCUSDT" in format_report(reports)
