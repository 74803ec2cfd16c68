"""The engine on the demo market through the real warehouse views: prices from `fills`, a
look-ahead oracle that must win big, and the same oracle one hour late that must not."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from backtest_inputs import warehouse_prices
from mscale.backtest import Rules, run_backtest


@pytest.fixture(scope="module")
def demo_prices(demo_market) -> pa.Table:
    return warehouse_prices(demo_market)


def _sign_predictions(prices: pa.Table, signal: np.ndarray) -> pa.Table:
    """p_up = 1 where signal > 0, p_down = 1 where < 0 (certain predictions)."""
    return pa.table({
        "symbol": prices.column("symbol"), "ts": prices.column("ts"),
        "p_up": (signal > 0).astype(float), "p_down": (signal < 0).astype(float), "p_flat": (signal == 0).astype(float),
    })


def _forward_returns(prices: pa.Table) -> np.ndarray:
    """close(ts + 1 h) / close(ts) - 1 per row, 0 where the next hour is another symbol or missing."""
    close = prices.column("close").to_numpy()
    ts = prices.column("ts").cast(pa.int64()).to_numpy()
    symbol = prices.column("symbol").to_numpy(zero_copy_only=False)
    nxt = np.zeros(len(close))
    follows = (symbol[1:] == symbol[:-1]) & (ts[1:] - ts[:-1] == 3_600_000_000)
    nxt[:-1] = np.where(follows, close[1:] / close[:-1] - 1, 0.0)
    return nxt


def test_prices_from_the_fills_view_feed_every_fill_mode(demo_prices):
    signal = np.sign(np.random.default_rng(0).normal(size=demo_prices.num_rows))
    predictions = _sign_predictions(demo_prices, signal)
    for fill in ("close", "next_minute", "twap_5m", "twap_60m"):
        result = run_backtest(predictions, demo_prices, rules=Rules(theta_long=0.5, theta_short=0.5), fill=fill,
                              slippage="cs")
        assert result.pnl.num_rows == demo_prices.num_rows
        # the demo's exchange-wide outages remove whole hours: the rows before them are gap exits
        assert "gap" in set(result.trades.column("exit_reason").to_pylist())
        assert result.metric("fill_fallbacks") <= 10  # only where the minutes after ts are missing
    assert np.isfinite(result.metric("latency_drag_return", tier="VIP9"))


def test_a_look_ahead_oracle_wins_and_the_same_oracle_one_hour_late_does_not(demo_prices):
    ahead = _forward_returns(demo_prices)
    rules = Rules(theta_long=0.5, theta_short=0.5)
    oracle = run_backtest(_sign_predictions(demo_prices, ahead), demo_prices, rules=rules)
    # the engine pays a position decided at ts exactly the return of (ts, ts + 1 h]
    assert oracle.metric("sharpe", tier="VIP4") > 50
    assert oracle.metric("hit_rate_bar", tier="gross") > 0.99
    late = np.r_[0.0, ahead[:-1]]  # the same signal, known one hour after the fact: past-only
    honest = run_backtest(_sign_predictions(demo_prices, late), demo_prices, rules=rules)
    # the demo market has no predictable direction: the late oracle has no edge before fees
    assert abs(honest.metric("sharpe", tier="gross")) < 3
    assert honest.metric("sharpe", tier="VIP4") < honest.metric("sharpe", tier="gross")
    assert honest.metric("psr", tier="VIP4") < 0.95
