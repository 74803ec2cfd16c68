"""Metrics against direct computations on known series; PSR/DSR against the published formulas;
the pooled portfolio against a direct equal-weight computation."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from backtest_inputs import HOUR, T0, column, hours, predictions, prices
from mscale.backtest import Rules, run_backtest
from mscale.backtest import metrics as m

RETURNS = [0.01, -0.005, 0.02, 0.0, -0.012, 0.004]


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_sharpe_and_sortino_are_annualised_with_8760_bars():
    mean = sum(RETURNS) / len(RETURNS)
    sd = statistics.stdev(RETURNS)
    assert m.sharpe(np.array(RETURNS)) == pytest.approx(mean / sd * math.sqrt(8760), rel=1e-12)
    downside = math.sqrt(sum(min(r, 0) ** 2 for r in RETURNS) / len(RETURNS))
    assert m.sortino(np.array(RETURNS)) == pytest.approx(mean / downside * math.sqrt(8760), rel=1e-12)
    assert math.isnan(m.sharpe(np.zeros(10)))  # no variance: undefined, not 0
    assert math.isnan(m.sortino(np.array([0.01, 0.02])))  # no losing bar


def test_max_drawdown_and_its_duration():
    returns = np.array([0.1, -0.5, 0.2, 1.0, -0.1])  # equity 1 -> 1.1 -> 0.55 -> 0.66 -> 1.32 -> 1.188
    end_ms = T0 + HOUR * np.arange(1, 6)
    depth, hours_ = m.max_drawdown(returns, end_ms, T0)
    assert depth == pytest.approx(0.5)
    assert hours_ == 3.0  # peak at the end of bar 0 (01:00), back above it at the end of bar 3 (04:00)
    depth, hours_ = m.max_drawdown(np.array([0.1, -0.5, 0.2]), end_ms[:3], T0)
    assert (depth, hours_) == (pytest.approx(0.5), 2.0)  # never recovered: runs to the last bar
    assert m.max_drawdown(np.array([0.01, 0.02]), end_ms[:2], T0) == (0.0, 0.0)
    # a drawdown from the very start counts from the initial equity at start_ms
    assert m.max_drawdown(np.array([-0.2, 0.0, 0.3]), end_ms[:3], T0) == (pytest.approx(0.2), 3.0)


def test_cagr_over_calendar_time():
    assert m.cagr(0.21, 2 * 8760) == pytest.approx(0.10)
    assert m.cagr(-0.19, 8760 / 2) == pytest.approx(0.81**2 - 1)
    assert m.cagr(-1.0, 100) == -1.0


def test_psr_matches_the_published_formula_on_hand_picked_numbers():
    # Bailey & López de Prado (2012), eq. for PSR: Φ((SR - SR*) √(n-1) / √(1 - γ3 SR + (γ4 - 1)/4 SR²))
    sr, skew, kurt, n = 0.1, -0.5, 4.0, 100
    expected = _phi((0.1 - 0.0) * math.sqrt(99) / math.sqrt(1 + 0.5 * 0.1 + 3 / 4 * 0.01))
    assert m.probabilistic_sharpe(sr, skew, kurt, n) == pytest.approx(expected, rel=1e-12)
    assert m.probabilistic_sharpe(sr, skew, kurt, n, sr_benchmark=0.05) == pytest.approx(
        _phi(0.05 * math.sqrt(99) / math.sqrt(1.0575)), rel=1e-12)
    assert m.probabilistic_sharpe(0.0, 0.0, 3.0, 50) == pytest.approx(0.5)


def test_psr_of_a_series_uses_its_skewness_and_kurtosis():
    rng = np.random.default_rng(0)
    r = rng.standard_t(5, 2000) * 0.01 + 0.0005
    d = r - r.mean()
    skew = np.mean(d**3) / np.mean(d**2) ** 1.5
    kurt = np.mean(d**4) / np.mean(d**2) ** 2
    sr = r.mean() / r.std(ddof=1)
    expected = _phi(sr * math.sqrt(len(r) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert m.psr(r) == pytest.approx(expected, rel=1e-12)


def test_dsr_deflates_by_the_expected_maximum_of_the_trials():
    # expected max Sharpe of N trials (Bailey & López de Prado 2014):
    # sqrt(V) ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))
    gamma = 0.5772156649015329
    z = statistics.NormalDist().inv_cdf
    n_trials, var = 100, 0.25
    expected_max = math.sqrt(var) * ((1 - gamma) * z(1 - 1 / 100) + gamma * z(1 - 1 / (100 * math.e)))
    assert m.expected_max_sharpe(n_trials, var) == pytest.approx(expected_max, rel=1e-12)
    assert expected_max == pytest.approx(0.5 * 2.5306, abs=1e-3)  # ≈ 2.53 standard deviations for 100 trials
    rng = np.random.default_rng(1)
    r = rng.normal(0.0004, 0.01, 5000)
    annual_var = 4.0  # variance of the trials' annualised Sharpe ratios
    benchmark = m.expected_max_sharpe(1000, annual_var / 8760)
    assert m.dsr(r, 1000, annual_var) == pytest.approx(m.psr(r, benchmark), rel=1e-12)
    assert m.dsr(r, 1000, annual_var) < m.psr(r)
    assert m.dsr(r, 1, annual_var) == m.psr(r)  # one trial: nothing to deflate


def test_summary_metrics_against_a_direct_computation():
    # one token, positions chosen by hand: long 3 bars, flat 2, short 2, flat (end)
    score = [1, 1, 1, 0, 0, -1, -1, 0]
    close = [100.0, 101.0, 99.0, 102.0, 102.0, 103.0, 101.0, 100.0]
    result = run_backtest(predictions("BTCUSDT", hours(*range(8)), score), prices("BTCUSDT", hours(*range(8)), close),
                          rules=Rules(theta_long=0.5, theta_short=0.5), fees={"VIP4": 5.4}, trials=50, trials_sharpe_var=2.0)
    pos = np.array([1, 1, 1, 0, 0, -1, -1, 0])
    assert column(result.pnl, "position") == pos.tolist()
    c = np.array(close)
    gross = np.r_[pos[:-1] * (c[1:] / c[:-1] - 1), 0.0]
    dpos = np.abs(np.diff(np.r_[0, pos]))
    net = gross - 5.4e-4 * dpos
    get = lambda name: result.metric(name, symbol="BTCUSDT", tier="VIP4")  # noqa: E731
    assert get("total_return") == pytest.approx(np.prod(1 + net) - 1, rel=1e-12)
    assert get("sharpe") == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(8760), rel=1e-12)
    assert get("exposure") == pytest.approx(5 / 8)
    assert get("turnover") == pytest.approx(dpos.sum() / 8 * 8760)  # one-way, per year
    assert get("trades_per_day") == pytest.approx(2 / (8 / 24))
    assert get("avg_hold_h") == pytest.approx((3 + 2) / 2)
    assert get("cagr") == pytest.approx((1 + get("total_return")) ** (8760 / 8) - 1, rel=1e-9)
    assert get("hit_rate_bar") == pytest.approx(np.mean(net[pos != 0] > 0))
    trade_1 = 101 / 100 * 99 / 101 * 102 / 99 * (1 - 5.4e-4) ** 2 - 1
    trade_2 = (1 - (101 / 103 - 1)) * (1 - (100 / 101 - 1)) * (1 - 5.4e-4) ** 2 - 1
    assert column(result.trades, "ret_net_VIP4") == pytest.approx([trade_1, trade_2])
    assert get("hit_rate_trade") == np.mean(np.array([trade_1, trade_2]) > 0)
    gross_total = np.prod(1 + gross) - 1
    assert get("fee_drag_return") == pytest.approx(gross_total - get("total_return"))
    assert get("fee_drag_sharpe") == pytest.approx(m.sharpe(gross) - m.sharpe(net))
    equity = np.r_[1.0, np.cumprod(1 + net)]  # at 00:00 (start), then at the end of each hour
    peaks = np.maximum.accumulate(equity)
    trough = int(np.argmax(1 - equity / peaks))
    assert get("max_drawdown") == pytest.approx(1 - equity[trough] / peaks[trough])
    peak_at = max(i for i in range(trough + 1) if equity[i] == peaks[trough])
    back = [i for i in range(trough, len(equity)) if equity[i] >= peaks[trough]]
    assert get("max_dd_duration_h") == (back[0] if back else len(equity) - 1) - peak_at
    assert get("calmar") == pytest.approx(get("cagr") / get("max_drawdown"))
    # the deflated Sharpe ratio of the run: PSR against the best of 50 trials' expected Sharpe
    assert get("dsr") == pytest.approx(m.dsr(net, 50, 2.0), rel=1e-12)
    assert get("dsr") < get("psr") == pytest.approx(m.psr(net), rel=1e-12)


def test_trade_net_returns_pay_fee_and_slippage_once_per_side():
    result = run_backtest(predictions("BTCUSDT", hours(0, 1, 2, 3), [1.0, 1.0, 0.0, 0.0]),
                          prices("BTCUSDT", hours(0, 1, 2, 3), [100.0, 102.0, 104.0, 104.0]),
                          rules=Rules(theta_long=0.5), fees={"VIP9": 2.0}, slippage=3.0)
    (trade,) = result.trades.to_pylist()
    assert trade["ret_gross"] == pytest.approx(104 / 100 - 1)
    assert trade["ret_net_VIP9"] == pytest.approx(1.04 * (1 - 5e-4) * (1 - 5e-4) - 1)


def test_pooled_equity_compounds_the_equal_weight_mean_of_the_tokens_with_a_bar_that_hour():
    rng = np.random.default_rng(7)
    preds, px = [], []
    for symbol, offsets in (("AAAUSDT", range(0, 60)), ("BBBUSDT", [*range(10, 30), *range(33, 70)]), ("CCCUSDT", range(40, 50))):
        ts = hours(*offsets)
        preds.append(predictions(symbol, ts, rng.uniform(-1, 1, len(ts))))
        px.append(prices(symbol, ts, 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))))
    result = run_backtest(pa.concat_tables(preds), pa.concat_tables(px), rules=Rules(theta_long=0.3, theta_short=0.3),
                          fees={"VIP9": 2.0})
    pnl = result.pnl.to_pandas()
    # a token is in the pool over (ts, ts + 1 h] when its bar closing at ts + 1 h exists
    nxt = pnl.groupby("symbol", observed=True)["ts"].shift(-1)
    pnl["in_pool"] = (nxt - pnl["ts"]) == pd.Timedelta(hours=1)
    by_hour = pnl.groupby("ts").agg(total=("ret_net_VIP9", "sum"), bh=("ret_bh", "sum"), rows=("symbol", "size"),
                                    members=("in_pool", "sum"))
    divisor = by_hour["members"].where(by_hour["members"] > 0, by_hour["rows"])
    expected, expected_bh = by_hour["total"] / divisor, by_hour["bh"] / divisor
    pooled = result.pooled.to_pandas().set_index("ts")
    assert list(pooled.index) == list(by_hour.index)
    np.testing.assert_array_equal(pooled["n_tokens"], by_hour["members"])
    np.testing.assert_allclose(pooled["ret_net_VIP9"], expected, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(pooled["equity_VIP9"], np.cumprod(1 + expected), rtol=1e-12)
    np.testing.assert_allclose(pooled["equity_bh"], np.cumprod(1 + expected_bh), rtol=1e-12)
    assert set(pooled["n_tokens"]) == {0, 1, 2, 3}  # 0: the final hour, after every token's last bar
    assert result.metric("sharpe", tier="VIP9") == pytest.approx(m.sharpe(expected.to_numpy()), rel=1e-12)
    assert result.metric("n_trades", tier="VIP9") == result.trades.num_rows
    metrics = result.metrics.to_pandas()
    assert set(metrics["symbol"]) == {"AAAUSDT", "BBBUSDT", "CCCUSDT", "pooled"}
    assert result.pooled.schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_a_token_in_a_gap_leaves_the_pool_for_that_hour():
    a_hours, b_hours = hours(0, 1, 2, 5, 6), hours(*range(7))
    a_close, b_close = [100.0, 101.0, 102.0, 90.0, 91.0], [50.0, 50.5, 51.0, 51.5, 52.0, 52.5, 53.0]
    result = run_backtest(
        pa.concat_tables([predictions("AAAUSDT", a_hours, [0.0] * 5), predictions("BBBUSDT", b_hours, [0.0] * 7)]),
        pa.concat_tables([prices("AAAUSDT", a_hours, a_close), prices("BBBUSDT", b_hours, b_close)]),
        fees={"gross": 0.0},
    )
    pooled = result.pooled.to_pylist()
    assert [row["n_tokens"] for row in pooled] == [2, 2, 1, 1, 1, 2, 0]
    # hour 2 -> 3: A has no bar, so the pool is all B
    assert pooled[2]["ret_bh"] == pytest.approx(51.5 / 51.0 - 1)
    assert pooled[0]["ret_bh"] == pytest.approx(((101 / 100 - 1) + (50.5 / 50 - 1)) / 2)


def test_ruin_stops_equity_at_zero():
    # a short through a price that triples loses everything: equity 0 from then on, never negative
    result = run_backtest(predictions("BTCUSDT", hours(0, 1, 2, 3), [-1.0, -1.0, 1.0, 1.0]),
                          prices("BTCUSDT", hours(0, 1, 2, 3), [100.0, 300.0, 200.0, 400.0]),
                          rules=Rules(theta_long=0.5, theta_short=0.5), fees={"VIP9": 2.0})
    assert column(result.pnl, "ret_net_VIP9")[0] == -1.0
    assert column(result.pnl, "equity_VIP9") == [0.0, 0.0, 0.0, 0.0]
    assert result.metric("max_drawdown", symbol="BTCUSDT", tier="VIP9") == 1.0
    assert column(result.trades, "ret_net_VIP9")[0] == -1.0
