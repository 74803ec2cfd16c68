"""Fills and the engine on real Binance spot minutes around the 2023-03-24 halt (72 zero-volume
minutes 11:28-12:39, then 80 missing minutes 12:40-13:59), read from ../shared/data/real."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from backtest_inputs import column, warehouse_prices
from conftest import REAL_DATA, make_config, requires_real_data
from mscale.backtest import Rules, run_backtest
from mscale.resample import hours_from_minutes
from mscale.schema import klines_from_arrays
from mscale.store import write_klines

pytestmark = [pytest.mark.real, requires_real_data()]
DAY_START = datetime(2023, 3, 23, tzinfo=timezone.utc)
DAY_END = datetime(2023, 3, 26, tzinfo=timezone.utc)


def _utc(hour: int, minute: int = 0) -> datetime:
    return datetime(2023, 3, 24, hour, minute, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def halt_prices(tmp_path_factory) -> pa.Table:
    """BTCUSDT minutes of 2023-03-23..25 and the hourly bars rolled up from them, through `fills`."""
    raw = np.asarray(json.loads((REAL_DATA / "spot-freqtrade-json" / "BTC_USDT-1m.json").read_text()), dtype=np.float64)
    keep = (raw[:, 0] >= DAY_START.timestamp() * 1000) & (raw[:, 0] < DAY_END.timestamp() * 1000)
    a = raw[keep]
    minutes = klines_from_arrays("BTCUSDT", a[:, 0].astype(np.int64), "1m", open=a[:, 1], high=a[:, 2], low=a[:, 3],
                                 close=a[:, 4], volume=a[:, 5])
    cfg = make_config(tmp_path_factory.mktemp("halt"))
    write_klines(cfg.market_dir, "1m", minutes)
    write_klines(cfg.market_dir, "1h", hours_from_minutes(minutes))
    return warehouse_prices(cfg)


def _row(prices: pa.Table, ts: datetime) -> dict:
    rows = [row for row in prices.to_pylist() if row["ts"] == ts]
    assert len(rows) == 1, ts
    return rows[0]


def test_fills_around_the_real_halt(halt_prices):
    before = _row(halt_prices, _utc(12))  # minutes after 12:00 exist (halted, zero volume) until 12:40
    assert before["next_minute_close_time"] == _utc(12, 1)
    assert before["fill_minutes_60m"] == 40
    during = _row(halt_prices, _utc(13))  # no minute closes in (13:00, 14:00]: nothing to fill at
    assert during["fill_next_minute"] is None and during["fill_minutes_60m"] == 0
    # the halted minutes have high = low: both estimators read the frozen hour as no spread at all
    assert during["spread_cs_60m"] == 0 and during["spread_ar_60m"] == 0
    assert _utc(14) not in set(halt_prices.column("ts").to_pylist())  # the hour 13:00-14:00 has no bar
    normal = np.array([x for x in halt_prices.column("spread_cs_60m").to_pylist() if x])
    assert 0 < np.median(normal) < 0.01  # BTCUSDT's minute-range spread estimate: basis points, not percent


def test_the_engine_is_flat_through_the_real_outage(halt_prices):
    n = halt_prices.num_rows
    predictions = pa.table({"symbol": halt_prices.column("symbol"), "ts": halt_prices.column("ts"),
                            "p_up": np.ones(n), "p_down": np.zeros(n)})
    result = run_backtest(predictions, halt_prices, rules=Rules(theta_long=0.5), fill="next_minute", fees={"VIP9": 2.0})
    pnl = {row["ts"]: row for row in result.pnl.to_pylist()}
    assert pnl[_utc(13)]["position"] == 0 and pnl[_utc(13)]["exit_reason"] == "gap"
    after = pnl[_utc(15)]  # the first decision after the missing hour opens a new position
    assert after["position"] == 1 and pnl[_utc(13)]["ret_gross"] == 0.0
    assert after["equity_VIP9"] / pnl[_utc(13)]["equity_VIP9"] == pytest.approx(1 + after["ret_net_VIP9"])
    assert column(result.trades, "exit_reason").count("gap") == 1
    assert result.metric("fill_fallbacks", symbol="BTCUSDT") == 0  # both entries found a next minute
