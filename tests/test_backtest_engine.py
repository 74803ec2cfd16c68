"""Hand-computed cases for every knob of the backtest engine, on series short enough to check by eye."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from backtest_inputs import HOUR, T0, column, hours, predictions, prices
from mscale.backtest import Rules, parse_fees, prepare_bars, run_backtest, sweep, threshold_grid
from mscale.errors import MscaleError

LONG, SHORT, FLAT = 1.0, -1.0, 0.0
ONLY_VIP9 = {"VIP9": 2.0}


def _run(score, close, *, ts=None, rules=None, fees=None, fill="close", symbol="BTCUSDT", price_columns=None, **pred_columns):
    ts = hours(*range(len(score))) if ts is None else ts
    return run_backtest(
        predictions(symbol, ts, score, **pred_columns),
        prices(symbol, ts, close, **(price_columns or {})),
        rules=rules or Rules(theta_long=0.5, theta_short=0.5),
        fees=fees or {"gross": 0.0, "VIP9": 2.0},
        fill=fill,
    )


# --- costs ---------------------------------------------------------------------------------------


def test_fee_is_charged_on_each_change_and_twice_on_a_flip():
    close = [100.0, 101.0, 102.0, 101.0, 100.0, 100.0]
    result = _run([LONG, LONG, SHORT, FLAT, FLAT, FLAT], close)
    assert column(result.pnl, "position") == [1, 1, -1, 0, 0, 0]
    gross = [101 / 100 - 1, 102 / 101 - 1, -(101 / 102 - 1), 0.0, 0.0, 0.0]
    fee = 2.0 / 1e4
    cost = [fee * 1, 0.0, fee * 2, fee * 1, 0.0, 0.0]  # enter, hold, flip (two sides), exit
    np.testing.assert_allclose(column(result.pnl, "ret_gross"), gross, rtol=0, atol=1e-15)
    np.testing.assert_allclose(column(result.pnl, "ret_net_VIP9"), np.subtract(gross, cost), rtol=0, atol=1e-15)
    np.testing.assert_allclose(column(result.pnl, "equity_VIP9"), np.cumprod(1 + np.subtract(gross, cost)), rtol=1e-15)


def test_zero_fees_give_net_equal_to_gross():
    rng = np.random.default_rng(3)
    n = 300
    result = _run(rng.uniform(-1, 1, n), 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))),
                  rules=Rules(theta_long=0.2, theta_short=0.2), fees={"gross": 0.0, "VIP9": 2.0})
    assert result.metric("n_trades", symbol="BTCUSDT", tier="gross") > 20
    assert column(result.pnl, "ret_net_gross") == column(result.pnl, "ret_gross")
    assert result.metric("fee_drag_return", symbol="BTCUSDT", tier="gross") == 0
    assert result.metric("fee_drag_return", symbol="BTCUSDT", tier="VIP9") > 0


def test_fee_tiers_by_name_and_value():
    assert parse_fees("gross,VIP9,VIP4") == {"gross": 0.0, "VIP9": 2.0, "VIP4": 5.4}
    assert parse_fees(["VIP9", "taker=10"]) == {"VIP9": 2.0, "taker": 10.0}
    assert parse_fees(None) == {"gross": 0.0, "VIP9": 2.0, "VIP4": 5.4}
    result = _run([LONG, FLAT, FLAT], [100.0, 100.0, 100.0], fees="maker=1,taker=10")
    assert column(result.pnl, "ret_net_maker") == pytest.approx([-1e-4, -1e-4, 0.0])
    assert column(result.pnl, "ret_net_taker") == pytest.approx([-1e-3, -1e-3, 0.0])


def test_fixed_slippage_is_paid_per_side_on_top_of_the_fee():
    result = run_backtest(
        predictions("BTCUSDT", hours(0, 1, 2), [LONG, FLAT, FLAT]),
        prices("BTCUSDT", hours(0, 1, 2), [100.0, 100.0, 100.0]),
        rules=Rules(theta_long=0.5), fees={"VIP9": 2.0}, slippage=3.0,
    )
    assert column(result.pnl, "ret_net_VIP9") == pytest.approx([-5e-4, -5e-4, 0.0])


def test_spread_slippage_uses_half_the_past_only_estimate_and_carries_the_last_one_forward():
    spread = [0.0010, None, 0.0030, 0.0]
    result = run_backtest(
        predictions("BTCUSDT", hours(0, 1, 2, 3), [LONG, FLAT, LONG, FLAT]),
        prices("BTCUSDT", hours(0, 1, 2, 3), [100.0] * 4, spread_cs_60m=pa.array(spread, pa.float64())),
        rules=Rules(theta_long=0.5), fees={"zero": 0.0}, slippage="cs",
    )
    # entry at 0 pays 5 bps, exit at 1 pays the last known 5 bps, entry at 2 pays 15 bps, exit at 3 pays 0
    assert column(result.pnl, "ret_net_zero") == pytest.approx([-5e-4, -5e-4, -15e-4, 0.0])


# --- risk knobs -------------------------------------------------------------------------------------


def test_min_hold_keeps_a_position_for_n_bars():
    score = [LONG, SHORT, SHORT, FLAT, FLAT, LONG, FLAT, FLAT, FLAT]
    result = _run(score, [100.0] * len(score), rules=Rules(theta_long=0.5, theta_short=0.5, min_hold=3))
    # held over rows 0, 1, 2 (three bars), free to change at row 3; row 5 opens again, kept to row 7
    assert column(result.pnl, "position") == [1, 1, 1, 0, 0, 1, 1, 1, 0]
    without = _run(score, [100.0] * len(score))
    assert column(without.pnl, "position") == [1, -1, -1, 0, 0, 1, 0, 0, 0]


def test_min_hold_does_not_hold_a_position_across_a_gap():
    ts = hours(0, 1, 3, 4)
    result = _run([LONG, LONG, FLAT, FLAT], [100.0] * 4, ts=ts, rules=Rules(theta_long=0.5, min_hold=5))
    assert column(result.pnl, "position") == [1, 0, 0, 0]
    assert column(result.pnl, "exit_reason") == [None, "gap", None, None]


def test_cooldown_keeps_it_flat_n_rows_after_every_exit():
    score = [LONG, FLAT, LONG, LONG, LONG, LONG, FLAT, LONG, LONG]
    result = _run(score, [100.0] * len(score), rules=Rules(theta_long=0.5, cooldown=2))
    # exit at row 1 -> rows 2, 3 flat -> entry at 4; exit at 6 -> rows 7, 8 flat
    assert column(result.pnl, "position") == [1, 0, 0, 0, 1, 1, 0, 0, 0]


def test_cooldown_turns_a_flip_into_an_exit():
    score = [LONG, SHORT, SHORT, SHORT, SHORT]
    result = _run(score, [100.0] * 5, rules=Rules(theta_long=0.5, theta_short=0.5, cooldown=1))
    assert column(result.pnl, "position") == [1, 0, 0, -1, 0]
    assert column(result.pnl, "exit_reason") == [None, "signal", None, None, "end"]


def test_daily_cap_counts_entries_per_utc_day_across_midnight():
    ts = hours(*range(21, 29))  # 2024-01-01 21:00 .. 2024-01-02 04:00
    score = [LONG, FLAT, LONG, LONG, FLAT, LONG, LONG, FLAT]
    result = _run(score, [100.0] * 8, ts=ts, rules=Rules(theta_long=0.5, max_trades_per_day=1))
    # 21:00 enters (day 1's one entry), 23:00 is capped, 00:00 is day 2 and may enter, 02:00 and 03:00 capped
    assert column(result.pnl, "position") == [1, 0, 0, 1, 0, 0, 0, 0]
    entries = result.trades.column("entry_ts").cast(pa.int64()).to_numpy() // 1000
    days = entries // 86_400_000
    assert len(entries) == 2 and len(set(days)) == 2
    uncapped = _run(score, [100.0] * 8, ts=ts, rules=Rules(theta_long=0.5, max_trades_per_day=2))
    assert column(uncapped.pnl, "position") == [1, 0, 1, 1, 0, 1, 1, 0]


def test_a_flip_over_the_daily_cap_becomes_an_exit():
    score = [LONG, SHORT, SHORT]
    result = _run(score, [100.0] * 3, rules=Rules(theta_long=0.5, theta_short=0.5, max_trades_per_day=1))
    assert column(result.pnl, "position") == [1, 0, 0]


def test_long_only_never_shorts():
    result = _run([SHORT, LONG, SHORT, FLAT], [100.0] * 4, rules=Rules(theta_long=0.5, theta_short=0.5, long_only=True))
    assert column(result.pnl, "position") == [0, 1, 0, 0]


def test_thresholds_are_strict_and_may_come_per_row_from_the_predictions():
    score = [0.25, 0.25, -0.25, 0.25]  # exact in binary: p_up 0.625, p_down 0.375
    result = _run(score, [100.0] * 4, rules=Rules(), theta_long=[0.25, 0.2, 0.2, 0.2], theta_short=[0.5, 0.5, 0.2, 0.2])
    assert column(result.pnl, "position") == [0, 1, -1, 0]
    overridden = _run(score, [100.0] * 4, rules=Rules(theta_long=0.5, theta_short=0.5), theta_long=[0.0] * 4, theta_short=[0.0] * 4)
    assert column(overridden.pnl, "position") == [0, 0, 0, 0]


# --- filters --------------------------------------------------------------------------------------


def test_filters_open_nothing_when_they_fail():
    score = [LONG] * 6
    p_vol = [0.2, 0.9, 0.2, 0.2, 0.9, 0.9]
    p_volm = [0.9, 0.2, 0.2, 0.9, 0.9, 0.9]
    close = [100.0] * 6
    none = _run(score, close, rules=Rules(theta_long=0.5), p_vol=p_vol, p_volm=p_volm)
    vol = _run(score, close, rules=Rules(theta_long=0.5, filter="vol", theta_vol=0.5), p_vol=p_vol, p_volm=p_volm)
    volm = _run(score, close, rules=Rules(theta_long=0.5, filter="volm", theta_volm=0.5), p_vol=p_vol, p_volm=p_volm)
    both = _run(score, close, rules=Rules(theta_long=0.5, filter="both", theta_vol=0.5, theta_volm=0.5), p_vol=p_vol, p_volm=p_volm)
    assert column(none.pnl, "position") == [1, 1, 1, 1, 1, 0]
    assert column(vol.pnl, "position") == [0, 1, 1, 1, 1, 0]  # an open position stays when the filter fails
    assert column(volm.pnl, "position") == [1, 1, 1, 1, 1, 0]
    assert column(both.pnl, "position") == [0, 0, 0, 0, 1, 0]
    never = _run(score, close, rules=Rules(theta_long=0.5, filter="vol", theta_vol=0.95), p_vol=p_vol)
    assert column(never.pnl, "position") == [0] * 6 and never.trades.num_rows == 0


def test_filter_exit_closes_a_position_when_its_filter_stops_passing():
    score = [LONG] * 6
    p_vol = [0.9, 0.9, 0.2, 0.9, 0.9, 0.9]
    result = _run(score, [100.0] * 6, rules=Rules(theta_long=0.5, filter="vol", theta_vol=0.5, filter_exit=True), p_vol=p_vol)
    assert column(result.pnl, "position") == [1, 1, 0, 1, 1, 0]
    assert column(result.trades, "exit_reason") == ["filter", "end"]


def test_a_filter_without_its_probabilities_is_an_error():
    with pytest.raises(MscaleError, match="needs p_vol_high"):
        _run([LONG, FLAT], [100.0, 100.0], rules=Rules(filter="vol"))


# --- timing -----------------------------------------------------------------------------------


def test_a_position_decided_at_ts_earns_nothing_before_ts():
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 12)))
    result = _run([FLAT] * 6 + [LONG] * 6, close)
    gross = np.array(column(result.pnl, "ret_gross"))
    equity = np.array(column(result.pnl, "equity_VIP9"))
    assert (gross[:6] == 0).all() and (equity[:6] == 1.0).all()
    assert gross[6] == pytest.approx(close[7] / close[6] - 1)  # earned over (ts, ts + 1 h]
    period_end = result.pnl.column("period_end").cast(pa.int64()).to_numpy() // 1000
    assert (period_end == hours(*range(12)) + HOUR).all()


def test_equity_never_moves_across_a_missing_bar():
    ts = hours(0, 1, 2, 5, 6, 7)  # the bars closing at 03:00 and 04:00 are missing
    close = [100.0, 101.0, 102.0, 1000.0, 1001.0, 1002.0]
    result = _run([LONG] * 6, close, ts=ts)
    assert column(result.pnl, "position") == [1, 1, 0, 1, 1, 0]
    assert column(result.pnl, "exit_reason") == [None, None, "gap", None, None, "end"]
    gross = column(result.pnl, "ret_gross")
    assert gross == pytest.approx([0.01, 102 / 101 - 1, 0.0, 1001 / 1000 - 1, 1002 / 1001 - 1, 0.0])
    equity = column(result.pnl, "equity_gross")
    assert equity[2] == equity[1]  # closed at the last known price: 102 -> 1000 is never earned
    assert column(result.trades, "exit_price") == [102.0, 1002.0]
    bh = column(result.pnl, "ret_bh")
    assert bh[2] == 0.0 and bh[5] == 0.0


def test_every_token_starts_flat_and_ends_flat():
    a = predictions("AAAUSDT", hours(0, 1, 2), [LONG] * 3)
    b = predictions("BBBUSDT", hours(0, 1, 2), [SHORT] * 3)
    p = pa.concat_tables([prices("AAAUSDT", hours(0, 1, 2), [1.0, 2.0, 3.0]), prices("BBBUSDT", hours(0, 1, 2), [3.0, 2.0, 1.0])])
    result = run_backtest(pa.concat_tables([b, a]), p, rules=Rules(theta_long=0.5, theta_short=0.5))
    assert column(result.pnl, "symbol") == ["AAAUSDT"] * 3 + ["BBBUSDT"] * 3
    assert column(result.pnl, "position") == [1, 1, 0, -1, -1, 0]
    assert column(result.trades, "exit_reason") == ["end", "end"]


# --- fills --------------------------------------------------------------------------------------


def test_minute_fills_price_each_change_and_measure_the_bar_from_the_fill():
    close = [100.0, 102.0, 101.0, 103.0, 103.0]
    fill = [100.5, 101.5, 100.0, 104.0, 103.0]
    result = _run([LONG, LONG, SHORT, FLAT, FLAT], close, fill="next_minute",
                  price_columns={"fill_next_minute": fill})
    gross = column(result.pnl, "ret_gross")
    expected = [
        102 / 100.5 - 1,  # enter long at the fill, hold to the next close
        101 / 102 - 1,  # unchanged: close to close
        (1 + (100.0 / 101 - 1)) * (1 - (103 / 100.0 - 1)) - 1,  # exit long at 100, short from 100 to 103
        (1 - (104.0 / 103 - 1)) - 1,  # cover the short at 104
        0.0,
    ]
    assert gross == pytest.approx(expected, abs=1e-15)
    assert column(result.pnl, "fill_price") == [100.5, None, 100.0, 104.0, None]
    trades = result.trades.to_pylist()
    assert [(t["entry_price"], t["exit_price"]) for t in trades] == [(100.5, 100.0), (100.0, 104.0)]
    assert trades[0]["ret_gross"] == pytest.approx(102 / 100.5 * 100 / 102 - 1)
    assert trades[1]["ret_gross"] == pytest.approx((1 - (103 / 100 - 1)) * (1 - (104 / 103 - 1)) - 1)


def test_a_missing_fill_price_fills_at_the_next_close_and_is_counted():
    result = _run([LONG, FLAT, FLAT], [100.0, 110.0, 110.0], fill="twap_15m",
                  price_columns={"fill_twap_15m": pa.array([None, 109.0, None], pa.float64())})
    assert column(result.pnl, "ret_gross") == pytest.approx([0.0, 109 / 110 - 1, 0.0])
    assert result.metric("fill_fallbacks", symbol="BTCUSDT") == 1


def test_latency_drag_is_close_fills_minus_next_minute_fills():
    close = [100.0, 101.0, 102.0, 103.0]
    fill = [100.2, 101.0, 102.1, 103.0]
    result = _run([LONG, FLAT, LONG, FLAT], close, fill="close", price_columns={"fill_next_minute": fill})
    by_close = (1.01 - 2e-4) * (1 - 2e-4) * (1 + 103 / 102 - 1 - 2e-4) * (1 - 2e-4) - 1
    by_minute = (1 + 101 / 100.2 - 1 - 2e-4) * (1 - 2e-4) * (1 + 103 / 102.1 - 1 - 2e-4) * (1 - 2e-4) - 1
    assert result.metric("latency_drag_return", symbol="BTCUSDT", tier="VIP9") == pytest.approx(by_close - by_minute)
    assert result.metric("latency_drag_return", symbol="BTCUSDT", tier="VIP9") > 0


# --- outputs ------------------------------------------------------------------------------------


def test_trades_table_records_each_trade_once():
    score = [LONG, LONG, SHORT, SHORT, FLAT, LONG, LONG]
    close = [100.0, 101.0, 102.0, 100.0, 99.0, 99.0, 100.0]
    result = _run(score, close)
    trades = result.trades.to_pylist()
    assert [(t["side"], t["bars_held"], t["exit_reason"]) for t in trades] == [(1, 2, "signal"), (-1, 2, "signal"), (1, 1, "end")]
    assert trades[0]["ret_gross"] == pytest.approx(102 / 100 - 1)
    assert trades[1]["ret_gross"] == pytest.approx((1 - (100 / 102 - 1)) * (1 - (99 / 100 - 1)) - 1)
    assert trades[0]["ret_net_VIP9"] == pytest.approx(1.02 * (1 - 2e-4) ** 2 - 1)
    assert result.metric("avg_hold_h", symbol="BTCUSDT") == pytest.approx(5 / 3)
    assert result.metric("n_trades", symbol="BTCUSDT") == 3


def test_buy_and_hold_sits_beside_every_strategy_with_the_same_metrics():
    result = _run([FLAT] * 5, [100.0, 110.0, 121.0, 121.0, 121.0])
    rows = result.metrics.to_pylist()
    assert {(r["symbol"], r["strategy"], r["tier"]) for r in rows} == {
        (s, strategy, tier) for s in ("BTCUSDT", "pooled") for strategy in ("model", "buy_hold") for tier in ("gross", "VIP9")
    }
    assert result.metric("total_return", symbol="BTCUSDT", strategy="buy_hold", tier="gross") == pytest.approx(0.21)
    assert result.metric("total_return", symbol="BTCUSDT", strategy="buy_hold", tier="VIP9") == pytest.approx(
        (1.1 - 2e-4) * 1.1 * (1 - 2e-4) - 1, rel=1e-14)  # the entry fee comes off the first bar, the exit fee off the last
    assert result.metric("total_return", symbol="BTCUSDT", strategy="model") == 0.0


def test_sweep_agrees_with_the_full_backtest():
    rng = np.random.default_rng(11)
    n = 400
    ts = np.sort(rng.choice(np.arange(n + 20), n, replace=False))
    pred = predictions("BTCUSDT", hours(*ts), rng.uniform(-1, 1, n), p_vol=rng.random(n))
    price = prices("BTCUSDT", hours(*ts), 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))))
    rules = Rules(filter="vol", min_hold=2, cooldown=1, max_trades_per_day=4)
    combos = threshold_grid([0.1, 0.3, 0.6], [0.2, 0.5], [0.3, 0.6])
    result = sweep(prepare_bars(pred, price), combos, rules=rules, fee_bps=5.4)
    for i, (tl, ts_, tv, _tvm) in enumerate(combos):
        one = run_backtest(pred, price, rules=Rules(theta_long=tl, theta_short=ts_, theta_vol=tv, filter="vol", min_hold=2,
                                                    cooldown=1, max_trades_per_day=4), fees={"VIP4": 5.4})
        assert result.sharpe[i] == pytest.approx(one.metric("sharpe", symbol="BTCUSDT"), rel=1e-9)
        assert result.total_return[i] == pytest.approx(one.metric("total_return", symbol="BTCUSDT"), rel=1e-9, abs=1e-12)
        assert result.n_trades[i] == one.metric("n_trades", symbol="BTCUSDT")
    assert result.best(min_trades=10) is not None


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.set_column(2, "p_up", pa.array([0.7, 0.5, 0.5])), "sum to 1.2"),
        (lambda p: p.set_column(2, "p_up", pa.array([math.nan, 0.5, 0.5])), "p_up is nan"),
        (lambda p: p.set_column(1, "ts", p.column("ts").take([0, 2, 1])), "unsorted decision time"),
        (lambda p: p.set_column(1, "ts", p.column("ts").take([0, 1, 1])), "duplicate decision time"),
    ],
)
def test_bad_predictions_get_one_line_errors(change, message):
    pred = predictions("BTCUSDT", hours(0, 1, 2), [0.0, 0.0, 0.0])
    with pytest.raises(MscaleError, match=message) as error:
        run_backtest(change(pred), prices("BTCUSDT", hours(0, 1, 2), [1.0, 1.0, 1.0]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fees": "VIP3"}, "unknown fee tier 'VIP3': known tiers are gross, VIP9, VIP4"),
        ({"fees": {"VIP9": -1.0}}, "bps >= 0"),
        ({"fill": "twap_7m"}, "fill mode 'twap_7m' needs minute fill prices the prices lack; they offer close"),
        ({"fill": "open"}, "unknown fill mode 'open': use close, next_minute or twap_<N>m"),
        ({"slippage": "roll"}, "unknown slippage 'roll'"),
        ({"trials": 0}, "trials must be a whole number >= 1"),
    ],
)
def test_bad_settings_get_one_line_errors(kwargs, message):
    pred = predictions("BTCUSDT", hours(0, 1, 2), [0.0, 0.0, 0.0])
    price = prices("BTCUSDT", hours(0, 1, 2), [1.0, 1.0, 1.0])
    with pytest.raises(MscaleError, match=message):
        run_backtest(pred, price, **kwargs)


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"min_hold": -1}, "min_hold must be a whole number >= 0, got -1"),
        ({"cooldown": -2}, "cooldown must be a whole number >= 0, got -2"),
        ({"max_trades_per_day": -1}, "max_trades_per_day must be a whole number >= 0"),
        ({"filter": "volume"}, "unknown filter 'volume': use one of none, vol, volm, both"),
        ({"theta_long": math.nan}, r"theta_long must be a number in \[0, 2\], got nan"),
        ({"theta_short": -0.1}, r"theta_short must be a number in \[0, 2\], got -0.1"),
        ({"theta_vol": 1.5}, r"theta_vol must be a number in \[0, 1\], got 1.5"),
    ],
)
def test_bad_knobs_get_one_line_errors(knobs, message):
    with pytest.raises(MscaleError, match=message):
        Rules(**knobs)


def test_a_prediction_without_its_hourly_bar_is_an_error():
    with pytest.raises(MscaleError, match="no price .hourly bar. for BTCUSDT at 2024-01-01 02:00Z"):
        run_backtest(predictions("BTCUSDT", hours(0, 1, 2), [0.0] * 3), prices("BTCUSDT", hours(0, 1), [1.0, 1.0]))


def test_decision_times_must_sit_on_the_hour():
    with pytest.raises(MscaleError, match="not on the hour"):
        run_backtest(predictions("BTCUSDT", [T0 + 60_000], [0.0]), prices("BTCUSDT", [T0 + 60_000], [1.0]))


def test_prepared_bars_and_their_slices_backtest_like_the_tables_they_came_from():
    rng = np.random.default_rng(2)
    ts = hours(*np.sort(rng.choice(np.arange(140), 120, replace=False)))
    pred = predictions("BTCUSDT", ts, rng.uniform(-1, 1, 120), p_vol=rng.random(120))
    price = prices("BTCUSDT", ts, 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 120))))
    rules = Rules(theta_long=0.2, theta_short=0.2, filter="vol", min_hold=2)
    bars = prepare_bars(pred, price)
    assert run_backtest(bars, rules=rules).pnl.equals(run_backtest(pred, price, rules=rules).pnl)
    part = run_backtest(bars.slice(30, 90), rules=rules).pnl
    assert part.equals(run_backtest(pred.slice(30, 60), price.slice(30, 60), rules=rules).pnl)
    with pytest.raises(MscaleError, match="not both"):
        run_backtest(bars, price)
    with pytest.raises(MscaleError, match="needs prices"):
        run_backtest(pred)


def test_prices_may_hold_symbols_the_predictions_do_not():
    ts = hours(*range(5))
    px = pa.concat_tables([prices(s, ts, [100.0 + i for i in range(5)]) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")])
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        result = run_backtest(predictions(symbol, ts, [LONG] * 5), px, rules=Rules(theta_long=0.5))
        assert column(result.pnl, "symbol") == [symbol] * 5
        assert column(result.pnl, "ret_gross")[0] == pytest.approx(101 / 100 - 1)


def test_an_all_null_minute_fill_column_offers_no_minute_fills():
    none = pa.array([None] * 4, pa.float64())
    price_columns = {"fill_next_minute": none, "fill_twap_5m": none}
    result = _run([LONG, FLAT, LONG, FLAT], [100.0, 110.0, 100.0, 110.0], price_columns=price_columns)
    assert math.isnan(result.metric("latency_drag_return", symbol="BTCUSDT"))
    with pytest.raises(MscaleError, match="fill mode 'next_minute' needs minute fill prices the prices lack; they offer close"):
        _run([LONG, FLAT, LONG, FLAT], [100.0] * 4, fill="next_minute", price_columns=price_columns)


def test_fill_fallbacks_are_counted_per_token_and_pooled():
    ts = hours(0, 1, 2)
    pred = pa.concat_tables([predictions("AAAUSDT", ts, [LONG, FLAT, FLAT]), predictions("BBBUSDT", ts, [LONG, FLAT, FLAT])])
    nm = {"fill_next_minute": pa.array([None, 1.0, 1.0], pa.float64())}
    px = pa.concat_tables([prices("AAAUSDT", ts, [1.0, 1.0, 1.0], **nm), prices("BBBUSDT", ts, [1.0, 1.0, 1.0], **nm)])
    result = run_backtest(pred, px, rules=Rules(theta_long=0.5), fill="next_minute")
    assert result.metric("fill_fallbacks", symbol="AAAUSDT") == 1
    assert result.metric("fill_fallbacks") == 2
    assert result.metric("fill_fallbacks", strategy="buy_hold") == 2  # buy-and-hold enters at the same rows


@pytest.mark.parametrize("unit, tz", [("s", "UTC"), ("ms", "UTC"), ("us", "UTC"), ("ns", "UTC"), ("us", "Asia/Tokyo"), ("ms", None)])
def test_decision_times_in_any_unit_and_zone_mean_the_same_instants(unit, tz):
    ts = hours(0, 1, 2)
    pred = predictions("BTCUSDT", ts, [LONG, FLAT, FLAT])
    pred = pred.set_column(1, "ts", pred.column("ts").cast(pa.timestamp(unit, tz=tz)))
    result = run_backtest(pred, prices("BTCUSDT", ts, [100.0, 101.0, 101.0]), rules=Rules(theta_long=0.5))
    assert column(result.pnl, "ret_gross") == pytest.approx([0.01, 0.0, 0.0])
    assert result.pnl.column("ts").cast(pa.int64()).to_pylist() == [int(t) * 1000 for t in ts]


def test_empty_prices_and_sub_millisecond_times_get_one_line_errors():
    with pytest.raises(MscaleError, match="prices are empty"):
        run_backtest(predictions("BTCUSDT", hours(0), [0.0]), prices("BTCUSDT", [], []))
    pred = predictions("BTCUSDT", hours(0), [0.0])
    pred = pred.set_column(1, "ts", pa.array([int(hours(0)[0]) * 1_000_000 + 1], pa.timestamp("ns", tz="UTC")))
    with pytest.raises(MscaleError, match="decision time 2024-01-01 00:00:00.000000001Z is not on the hour"):
        run_backtest(pred, prices("BTCUSDT", hours(0), [1.0]))


def test_filters_default_to_one_half_and_take_per_row_thresholds():
    score = [LONG] * 4
    p_vol = [0.4, 0.6, 0.6, 0.6]
    default = _run(score, [100.0] * 4, rules=Rules(theta_long=0.5, filter="vol"), p_vol=p_vol)
    assert column(default.pnl, "position") == [0, 1, 1, 0]
    per_row = _run(score, [100.0] * 4, rules=Rules(theta_long=0.5, filter="vol"), p_vol=p_vol, theta_vol=[0.3, 0.7, 0.7, 0.7])
    assert column(per_row.pnl, "position") == [1, 1, 1, 0]


def test_cooldown_counts_rows_so_a_gap_does_not_shorten_it():
    ts = hours(0, 1, 2, 8, 9, 10)
    result = _run([LONG] * 6, [100.0] * 6, ts=ts, rules=Rules(theta_long=0.5, cooldown=1))
    # row 2 (02:00) closes before the gap (03:00-07:00 missing); the cooldown then keeps row 3 (08:00) flat
    assert column(result.pnl, "position") == [1, 1, 0, 0, 1, 0]


def test_rules_take_numpy_numbers_and_are_keyword_only():
    rules = Rules(theta_long=np.float32(0.25), min_hold=np.int64(2), max_trades_per_day=np.int32(3))
    assert (rules.theta_long, rules.min_hold, rules.max_trades_per_day) == (0.25, 2, 3)
    assert type(rules.min_hold) is int
    with pytest.raises(TypeError):
        Rules(0.1)  # noqa
    with pytest.raises(MscaleError, match="trials_sharpe_var must be a number >= 0, got True"):
        run_backtest(predictions("BTCUSDT", hours(0), [0.0]), prices("BTCUSDT", hours(0), [1.0]), trials_sharpe_var=True)
