"""Provenance of hourly bars (issue 9, deliverable 1): `resample-hourly` never replaces an exchange
or imported bar unless forced, every bar's source is queryable in `klines_1h`, and the report's
reconciliation never compares minutes with hourly bars derived from those same minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conftest import REAL_DATA, REPO, make_config, random_minutes, requires_real_data
from mscale.report import build_report, format_report
from mscale.resample import hours_from_minutes
from mscale.store import META_SOURCE, read_klines, write_klines

T0 = int(datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp() * 1000)
HOUR = 3_600_000


def mscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscale", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def _exchange_hours(minutes: pa.Table, hours: tuple[int, ...]) -> pa.Table:
    """The exchange's own bars of the given hours: the minutes' aggregate with a volume no minute sum gives."""
    own = hours_from_minutes(minutes)
    own = own.filter(pa.array(np.isin(own.column("open_time").cast(pa.int64()).to_numpy(), [T0 + h * HOUR for h in hours])))
    i = own.schema.get_field_index("volume")
    return own.set_column(i, own.schema.field(i), pa.array(1000.0 + np.arange(own.num_rows)))


def _market(tmp_path: Path, exchange_hours: tuple[int, ...] = (0, 1)):
    """4 full hours of minutes for BTCUSDT; the exchange's bars for `exchange_hours` (source rest)."""
    cfg = make_config(tmp_path)
    minutes = random_minutes("BTCUSDT", T0, 4 * 60, seed=1)
    write_klines(cfg.market_dir, "1m", minutes, source="bulk")
    exchange = _exchange_hours(minutes, exchange_hours)
    write_klines(cfg.market_dir, "1h", exchange, source="rest")
    return cfg, minutes, exchange


def _hours(cfg) -> dict[int, dict]:
    t = read_klines(cfg.market_dir, "1h", "BTCUSDT", with_source=True)
    return {(r["open_time"].timestamp() * 1000 - T0) // HOUR: r for r in t.to_pylist()}


# --- resample-hourly ---------------------------------------------------------------------------


def test_exchange_bars_survive_resample_hourly(tmp_path):
    cfg, minutes, exchange = _market(tmp_path)
    out = mscale("resample-hourly", "--symbols", "BTCUSDT", "--data-dir", str(cfg.data_dir))
    assert out.returncode == 0, out.stderr
    hours = _hours(cfg)
    assert sorted(hours) == [0, 1, 2, 3]
    assert [hours[h]["volume"] for h in (0, 1)] == [1000.0, 1001.0]  # the exchange's bars, untouched
    assert [hours[h]["source"] for h in range(4)] == ["exchange", "exchange", "resampled", "resampled"]
    derived = hours_from_minutes(minutes).to_pylist()
    assert hours[2]["close"] == derived[2]["close"] and hours[3]["volume"] == derived[3]["volume"]
    # it says what it derived and what it left
    assert "derived 2" in out.stdout and "left 2 exchange" in out.stdout, out.stdout
    assert "replaced" not in out.stdout + out.stderr


def test_default_run_covers_every_symbol_with_minutes_and_is_idempotent(tmp_path):
    cfg, _, _ = _market(tmp_path)
    first = mscale("resample-hourly", "--data-dir", str(cfg.data_dir))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in cfg.hourly_dir.iterdir()}
    again = mscale("resample-hourly", "--data-dir", str(cfg.data_dir))
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in cfg.hourly_dir.iterdir()} == before
    assert "nothing to derive" in again.stdout, again.stdout


def test_force_replaces_exchange_bars_with_a_warning_naming_the_count(tmp_path):
    cfg, minutes, _ = _market(tmp_path, exchange_hours=(0, 1, 2))
    out = mscale("resample-hourly", "--symbols", "BTCUSDT", "--force", "--data-dir", str(cfg.data_dir))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "replaced 3 exchange bars" in warnings[0], out.stderr
    hours = _hours(cfg)
    derived = hours_from_minutes(minutes).to_pylist()
    assert [hours[h]["volume"] for h in range(4)] == [d["volume"] for d in derived]
    assert {hours[h]["source"] for h in range(4)} == {"resampled"}


@requires_real_data()
def test_real_imported_exchange_hours_survive_resample_hourly(tmp_path):
    """The README's own line on the real BTC files: the 719 exchange bars stay as they were."""
    src = REAL_DATA / "spot-freqtrade-json"
    data = tmp_path / "data"
    assert mscale("import", str(src / "BTC_USDT-1m.json"), str(src / "BTC_USDT-1h.json"), "--data-dir", str(data)).returncode == 0
    cfg = make_config(tmp_path)
    before = read_klines(cfg.market_dir, "1h", "BTCUSDT")
    out = mscale("resample-hourly", "--symbols", "BTCUSDT", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    after = read_klines(cfg.market_dir, "1h", "BTCUSDT", with_source=True)
    kept = after.filter(pc.equal(after.column("source"), "import"))
    assert kept.num_rows == 719
    assert kept.select(before.column_names).equals(before)
    assert "left 719 import" in out.stdout, out.stdout


# --- source in klines_1h -----------------------------------------------------------------------


def test_source_is_queryable_in_klines_1h(tmp_path):
    from mscale.warehouse import render as r
    from mscale.warehouse.build import connect, create_views

    cfg, _, _ = _market(tmp_path)
    assert mscale("resample-hourly", "--data-dir", str(cfg.data_dir)).returncode == 0
    eth = hours_from_minutes(random_minutes("ETHUSDT", T0, 120, seed=2))
    write_klines(cfg.market_dir, "1h", eth, source="import")
    # a shard written before per-bar sources existed: no source column, only the shard's metadata
    sol = hours_from_minutes(random_minutes("SOLUSDT", T0, 120, seed=3)).drop(["symbol"])
    pq.write_table(sol.replace_schema_metadata({META_SOURCE: b"rest"}), cfg.hourly_dir / "binance_SOLUSDT_1h_20240301_20240301.parquet")
    con = connect()
    create_views(con, cfg.sql_dir, r.params_from_config(cfg))
    rows = con.execute("select symbol, source, count(*) from klines_1h group by all order by all").fetchall()
    assert rows == [("BTCUSDT", "exchange", 2), ("BTCUSDT", "resampled", 2), ("ETHUSDT", "import", 2), ("SOLUSDT", "exchange", 2)]
    cols = [c[0] for c in con.execute("describe klines_1h").fetchall()]
    assert cols[:12] == ["symbol", "open_time", "close_time", "open", "high", "low", "close", "volume",
                         "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"]  # CONTRACT §2, then source
    con.close()


def test_legacy_hourly_shards_stay_readable(tmp_path):
    cfg = make_config(tmp_path)
    hours = hours_from_minutes(random_minutes("BTCUSDT", T0, 180, seed=4))
    cfg.hourly_dir.mkdir(parents=True)
    path = cfg.hourly_dir / "binance_BTCUSDT_1h_20240301_20240301.parquet"
    pq.write_table(hours.slice(0, 2).replace_schema_metadata({META_SOURCE: b"rest,resampled"}), path)
    # ambiguous: an older resample-hourly may have rewritten some of them
    assert set(read_klines(cfg.market_dir, "1h", "BTCUSDT", with_source=True).column("source").to_pylist()) == {"unknown"}
    write_klines(cfg.market_dir, "1h", hours.slice(2), source="resampled")  # merging keeps them
    t = read_klines(cfg.market_dir, "1h", "BTCUSDT", with_source=True)
    assert t.column("source").to_pylist() == ["unknown", "unknown", "resampled"]
    assert read_klines(cfg.market_dir, "1h", "BTCUSDT").equals(hours)
    (rep,) = build_report(cfg)  # no minutes here, but bars of unknown source are never compared
    assert rep["reconciliation"]["hours_skipped_unknown_source"] == 2
    assert rep["reconciliation"]["hours_skipped_derived_from_minutes"] == 1


# --- the report's reconciliation ---------------------------------------------------------------


def test_report_reconciliation_skips_bars_derived_from_minutes_and_says_so(tmp_path):
    cfg, _, _ = _market(tmp_path)
    assert mscale("resample-hourly", "--data-dir", str(cfg.data_dir)).returncode == 0
    (rep,) = build_report(cfg)
    rec = rep["reconciliation"]
    assert rec["hourly_bars"] == 4
    assert rec["hours_compared"] == 2 and rec["mismatching_hours"] == 2  # the planted exchange volumes
    assert rec["hours_skipped_derived_from_minutes"] == 2
    assert rep["hours"]["sources"] == {"exchange": 2, "resampled": 2}
    text = format_report([rep])
    assert "skipped 2 hourly bars derived from these minutes" in text, text
    out = mscale("report", "--data-dir", str(cfg.data_dir))
    assert out.returncode == 0, out.stderr
    assert "skipped 2 hourly bars derived from these minutes" in out.stdout, out.stdout
    saved = json.loads((cfg.reports_dir / "ingestion_report.json").read_text())["symbols"][0]
    assert saved["reconciliation"]["hours_skipped_derived_from_minutes"] == 2


def test_synthetic_demo_hours_are_not_reconciled_with_their_own_minutes(demo_market):
    reps = build_report(demo_market)
    for rep in reps:
        rec = rep["reconciliation"]
        assert rec["hours_compared"] == 0
        assert rec["hours_skipped_derived_from_minutes"] == rep["hours"]["rows"] > 0
