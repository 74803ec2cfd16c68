"""The compiled pass equals the plain-Python reference for random probabilities, gaps and knobs."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_inputs import HOUR, T0, column, predictions, prices
from mscale.backtest import Rules, prepare_bars, run_backtest, sweep
from mscale.backtest.reference import Bar, Knobs, reference_positions, reference_returns, reference_trades

FEES = {"gross": 0.0, "VIP9": 2.0, "VIP4": 5.4}


@st.composite
def tokens(draw):
    """1-3 tokens, each a few dozen hourly rows with random gaps, probabilities, prices and fills."""
    out = []
    for k in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 40))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        steps = rng.choice([1, 1, 1, 1, 2, 5], size=n)  # some hours missing
        start = T0 + HOUR * int(rng.integers(0, 48))  # tokens start at different hours and cross midnights
        ts = start + HOUR * np.cumsum(steps)
        # probabilities on a coarse grid so scores often sit exactly on a threshold
        p_up = rng.choice(np.linspace(0, 1, 9), n)
        p_down = (1 - p_up) * rng.choice([0.0, 0.25, 0.5, 1.0], n)
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n) + (rng.random(n) < 0.03) * rng.choice([-1.5, 1.5], n)))
        fill = close * np.exp(rng.normal(0, 0.003, n))
        fill[rng.random(n) < 0.15] = np.nan
        if k == 0:
            fill[0] = close[0]  # an all-NULL fill column offers no minute fills at all
        out.append({
            "symbol": f"T{k}USDT", "ts": ts, "p_up": p_up, "p_down": p_down, "close": close, "fill": fill,
            "p_vol": rng.choice(np.linspace(0, 1, 5), n), "p_volm": rng.choice(np.linspace(0, 1, 5), n),
            "th_long": rng.choice([0.0, 0.25, 0.5], n), "th_short": rng.choice([0.0, 0.25, 0.5], n),
            "spread": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 2e-3, n)),
        })
    return out


knob_sets = st.fixed_dictionaries({
    "long_only": st.booleans(),
    "filter": st.sampled_from(["none", "vol", "volm", "both"]),
    "filter_exit": st.booleans(),
    "min_hold": st.integers(0, 4),
    "cooldown": st.integers(0, 3),
    "max_trades_per_day": st.one_of(st.none(), st.integers(0, 3)),
    "per_row_thresholds": st.booleans(),
    "theta_long": st.sampled_from([0.0, 0.25, 0.5]),
    "theta_short": st.sampled_from([0.0, 0.25, 0.5]),
    "theta_vol": st.sampled_from([0.25, 0.5]),
    "theta_volm": st.sampled_from([0.25, 0.5]),
    "slippage": st.sampled_from([None, 1.5, "cs"]),
})


def _tables(toks, per_row):
    preds, px = [], []
    for t in toks:
        extra = {"theta_long": t["th_long"], "theta_short": t["th_short"]} if per_row else {}
        preds.append(predictions(t["symbol"], t["ts"], np.zeros(len(t["ts"])), p_vol=t["p_vol"], p_volm=t["p_volm"], **extra)
                     .set_column(2, "p_up", pa.array(t["p_up"])).set_column(3, "p_down", pa.array(t["p_down"]))
                     .append_column("p_flat", pa.array(1 - t["p_up"] - t["p_down"])))
        fill = pa.array(t["fill"], mask=np.isnan(t["fill"]))
        px.append(prices(t["symbol"], t["ts"], t["close"], fill_next_minute=fill, fill_twap_15m=fill,
                         spread_cs_60m=pa.array(t["spread"], mask=np.isnan(t["spread"]))))
    return pa.concat_tables(preds[::-1]), pa.concat_tables(px)  # symbols out of order on purpose


def _reference(t, knobs, rules):
    slip = []
    last = None
    for s in t["spread"]:  # the engine's "cs" slippage: half the last known estimate
        last = s if math.isfinite(s) else last
        slip.append(0.0 if knobs["slippage"] is None else (knobs["slippage"] / 1e4 if knobs["slippage"] != "cs" else (last or 0.0) / 2))
    bars = [
        Bar(ts_ms=int(t["ts"][i]), p_up=float(t["p_up"][i]), p_down=float(t["p_down"][i]), close=float(t["close"][i]),
            fill=float(t["fill"][i]), p_vol=float(t["p_vol"][i]), p_volm=float(t["p_volm"][i]),
            th_long=float(t["th_long"][i]) if knobs["per_row_thresholds"] else knobs["theta_long"],
            th_short=float(t["th_short"][i]) if knobs["per_row_thresholds"] else knobs["theta_short"],
            th_vol=knobs["theta_vol"], th_volm=knobs["theta_volm"], slip=slip[i])
        for i in range(len(t["ts"]))
    ]
    k = Knobs(long_only=rules.long_only, use_vol=rules.use_vol, use_volm=rules.use_volm, filter_exit=rules.filter_exit,
              min_hold=rules.min_hold, cooldown=rules.cooldown, max_per_day=rules.max_trades_per_day)
    positions, reasons = reference_positions(bars, k)
    rates = [bps / 1e4 for bps in FEES.values()]
    gross, net = reference_returns(bars, positions, rates)
    return positions, reasons, gross, net, reference_trades(bars, positions, reasons, rates)


def _rules(knobs):
    per_row = knobs["per_row_thresholds"]
    return Rules(
        theta_long=None if per_row else knobs["theta_long"], theta_short=None if per_row else knobs["theta_short"],
        long_only=knobs["long_only"], filter=knobs["filter"], theta_vol=knobs["theta_vol"], theta_volm=knobs["theta_volm"],
        filter_exit=knobs["filter_exit"], min_hold=knobs["min_hold"], cooldown=knobs["cooldown"],
        max_trades_per_day=knobs["max_trades_per_day"],
    )


@settings(max_examples=300, deadline=None)
@given(toks=tokens(), knobs=knob_sets, fill=st.sampled_from(["close", "next_minute", "twap_15m"]))
def test_compiled_pass_equals_the_reference(toks, knobs, fill):
    rules = _rules(knobs)
    pred, px = _tables(toks, knobs["per_row_thresholds"])
    result = run_backtest(pred, px, rules=rules, fees=FEES, fill=fill, slippage=knobs["slippage"])
    for t in sorted(toks, key=lambda t: t["symbol"]):
        if fill == "close":
            t = {**t, "fill": t["close"]}
        positions, reasons, gross, net, trades = _reference(t, knobs, rules)
        mine = result.pnl.filter(pc.equal(result.pnl.column("symbol").cast(pa.string()), t["symbol"]))
        assert column(mine, "position") == positions
        assert [r or "" for r in column(mine, "exit_reason")] == reasons
        np.testing.assert_allclose(column(mine, "ret_gross"), gross, rtol=1e-12, atol=1e-15)
        for j, tier in enumerate(FEES):
            np.testing.assert_allclose(column(mine, f"ret_net_{tier}"), net[j], rtol=1e-12, atol=1e-15)
        my_trades = result.trades.filter(pc.equal(result.trades.column("symbol").cast(pa.string()), t["symbol"])).to_pylist()
        rows = {int(ms): i for i, ms in enumerate(t["ts"])}
        assert len(my_trades) == len(trades)
        for mine_t, ref in zip(my_trades, trades):
            entry_ms, exit_ms = (int(mine_t[k].timestamp() * 1000) for k in ("entry_ts", "exit_ts"))
            assert (rows[entry_ms], rows[exit_ms], mine_t["side"], mine_t["exit_reason"]) == (ref["entry"], ref["exit"], ref["side"], ref["reason"])
            assert mine_t["entry_price"] == ref["entry_price"] and mine_t["exit_price"] == ref["exit_price"]
            assert mine_t["ret_gross"] == pytest.approx(ref["gross"], rel=1e-12, abs=1e-15)
            assert [mine_t[f"ret_net_{tier}"] for tier in FEES] == pytest.approx(ref["net"], rel=1e-12, abs=1e-15)


@settings(max_examples=100, deadline=None)
@given(toks=tokens(), knobs=knob_sets)
def test_sweep_runs_the_same_rules_as_the_engine(toks, knobs):
    knobs = {**knobs, "per_row_thresholds": False}
    rules = _rules(knobs)
    pred, px = _tables(toks, False)
    combo = np.array([[knobs["theta_long"], knobs["theta_short"], knobs["theta_vol"], knobs["theta_volm"]]])
    swept = sweep(prepare_bars(pred, px), combo, rules=rules, fee_bps=5.4, fill="next_minute", slippage=knobs["slippage"])
    full = run_backtest(pred, px, rules=rules, fees={"VIP4": 5.4}, fill="next_minute", slippage=knobs["slippage"])
    net = np.array(column(full.pnl, "ret_net_VIP4"))
    assert swept.n_trades[0] == full.trades.num_rows
    np.testing.assert_allclose(swept.total_return[0], np.prod(1 + net) - 1, rtol=1e-9, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(toks=tokens(), knobs=knob_sets)
def test_knob_invariants_hold_on_every_path(toks, knobs):
    """Independently of the reference: the holding, cooldown, cap and gap rules read off the output."""
    rules = _rules(knobs)
    pred, px = _tables(toks, knobs["per_row_thresholds"])
    result = run_backtest(pred, px, rules=rules, fees={"gross": 0.0})
    for t in result.trades.to_pylist():
        if t["exit_reason"] in ("signal", "filter"):
            assert t["bars_held"] >= rules.min_hold
    pnl = result.pnl.to_pylist()
    for symbol in {row["symbol"] for row in pnl}:
        rows = [r for r in pnl if r["symbol"] == symbol]
        last_exit = None
        for i, r in enumerate(rows):
            prev = rows[i - 1]["position"] if i else 0
            if r["exit_reason"]:
                last_exit = i
            elif r["position"] != 0 and prev == 0 and last_exit is not None:
                assert i - last_exit > rules.cooldown
            gap_after = i + 1 == len(rows) or rows[i + 1]["ts"] - r["ts"] != np.timedelta64(1, "h").astype(object)
            if gap_after:
                assert r["position"] == 0 and r["ret_gross"] == 0.0
    if rules.max_trades_per_day is not None:
        entries = result.trades.to_pylist()
        per_day: dict = {}
        for t in entries:
            key = (t["symbol"], t["entry_ts"].date())
            per_day[key] = per_day.get(key, 0) + 1
        assert max(per_day.values(), default=0) <= rules.max_trades_per_day
