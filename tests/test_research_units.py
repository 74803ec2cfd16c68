"""The research loop's pure parts: per-fold labels, preprocessing, models, tuning, the comparison,
the run folder."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from threadpoolctl import threadpool_limits

from backtest_inputs import hours, predictions, prices
from mscale.backtest import Rules
from mscale.errors import MscaleError
from mscale.research.compare import paired_block_bootstrap
from mscale.research.labels import vol_high
from mscale.research.models import fit_model
from mscale.research.preprocess import Preprocessor
from mscale.research.runs import RunFolder, create_run_views
from mscale.research.tuning import NEVER, tune_thresholds


def test_vol_high_threshold_comes_from_the_training_rows_only():
    rng = np.random.default_rng(0)
    fwd_rv = rng.lognormal(0, 0.5, 1000)
    fwd_rv[[5, 50]] = np.nan
    train = np.arange(600)
    labels, threshold = vol_high(fwd_rv, train, quantile=0.8)
    assert threshold == pytest.approx(np.nanquantile(fwd_rv[:600], 0.8))
    assert np.isnan(labels[5]) and np.nanmean(labels[:600]) == pytest.approx(0.2, abs=0.002)
    poisoned = fwd_rv.copy()
    poisoned[600:] *= 100  # the test rows change completely ...
    labels2, threshold2 = vol_high(poisoned, train, quantile=0.8)
    assert threshold2 == threshold  # ... the threshold does not move
    np.testing.assert_array_equal(labels2[:600], labels[:600])
    assert labels2[600:].min() == 1.0


def test_preprocessing_drops_constant_and_duplicate_columns_and_learns_from_training_rows_only():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    X[:, 1] = 3.0  # constant
    X[:, 3] = 2 * X[:, 0] + 1e-6 * rng.normal(size=400)  # |corr| ~ 1 with column 0: the later one goes
    X[rng.random(400) < 0.1, 4] = np.nan
    columns = ["a", "const", "b", "a_twice", "gappy"]
    train = np.arange(300)
    pre = Preprocessor(impute=True).fit(X[train], columns)
    assert pre.dropped_ == ["const", "a_twice"]
    assert pre.feature_names_out_ == ["a", "b", "gappy", "gappy__missing"]
    out = pre.transform(X[train])
    assert np.allclose(out[:, 0].mean(), 0) and np.allclose(out[:, 0].std(), 1)
    assert not np.isnan(out).any() and set(out[:, 3]) == {0.0, 1.0}
    poisoned = X.copy()
    poisoned[300:] = poisoned[300:] * 1000 + 7  # the rows it is not fitted on
    again = Preprocessor(impute=True).fit(poisoned[train], columns)
    assert again.dropped_ == pre.dropped_
    np.testing.assert_array_equal(again.scaler_.mean_, pre.scaler_.mean_)
    np.testing.assert_array_equal(again.medians_, pre.medians_)
    assert np.isnan(Preprocessor(impute=False).fit(X[train], columns).transform(X)[:, 2]).any()


def test_models_are_deterministic_and_refuse_a_single_class():
    with threadpool_limits(limits=1):  # as the pipeline runs them: one OpenMP thread per model
        _check_models()


def _check_models():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 6))
    y = np.where(X[:, 0] > 0.4, 1.0, np.where(X[:, 0] < -0.4, -1.0, 0.0))
    for kind in ("logistic", "lgbm", "histgb"):
        a = fit_model(kind, X, y, list("abcdef"), seed=3).predict_proba(X, (-1.0, 0.0, 1.0))
        b = fit_model(kind, X, y, list("abcdef"), seed=3).predict_proba(X, (-1.0, 0.0, 1.0))
        np.testing.assert_array_equal(a, b)
        assert np.allclose(a.sum(axis=1), 1)
        assert np.mean(np.array([-1, 0, 1])[a.argmax(axis=1)] == y) > 0.8
        importance = fit_model(kind, X, y, list("abcdef"), seed=3).importance()
        assert max(importance, key=importance.get) == "a"
    binary = fit_model("lgbm", X, (X[:, 1] > 0).astype(float), list("abcdef"), seed=0)
    p = binary.predict_proba(X, (-1.0, 0.0, 1.0))
    assert (p[:, 0] == 0).all()  # a class the training rows lacked gets probability 0
    with pytest.raises(MscaleError, match="single class"):
        fit_model("lgbm", X, np.zeros(600), list("abcdef"), seed=0)


def test_tuning_finds_a_real_edge_on_validation_and_stays_flat_without_trades():
    rng = np.random.default_rng(4)
    n = 400
    ts = hours(*range(n))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    future = np.r_[np.sign(np.diff(close)), 0.0]
    score = np.clip(future * rng.uniform(0.05, 0.6, n), -0.99, 0.99)  # knows the next move, with varying confidence
    val = predictions("BTCUSDT", ts, score, p_vol=rng.random(n), p_volm=rng.random(n))
    px = prices("BTCUSDT", ts, close)
    tuned = tune_thresholds(val, px, rules=Rules(), fee_bps=2.0, min_trades=10)
    assert tuned.val_sharpe > 10 and tuned.val_trades >= 10
    assert tuned.n_configs == len(set(np.round(np.quantile(np.abs(score), (0, .5, .6, .7, .8, .85, .9, .95, .975, .99)), 6))) ** 2
    assert tuned.sharpe_var > 0
    flat = tune_thresholds(val, px, rules=Rules(), fee_bps=2.0, min_trades=10_000)
    assert (flat.theta_long, flat.theta_short) == (NEVER, NEVER) and math.isnan(flat.val_sharpe)
    filtered = tune_thresholds(val, px, rules=Rules(filter="both"), fee_bps=2.0, min_trades=10)
    assert filtered.n_configs > tuned.n_configs and 0 <= filtered.theta_vol <= 1


def test_paired_block_bootstrap():
    rng = np.random.default_rng(5)
    common = rng.normal(0, 0.01, 5000)  # both arms trade the same market
    a = common + rng.normal(0, 0.002, 5000) + 0.0004
    b = common + rng.normal(0, 0.002, 5000)
    c = paired_block_bootstrap(a, b, replicates=400, seed=1)
    assert c.low <= c.difference <= c.high and c.significant and c.difference > 0
    again = paired_block_bootstrap(a, b, replicates=400, seed=1)
    assert (again.low, again.high) == (c.low, c.high)  # deterministic for a seed
    same = paired_block_bootstrap(a, a, replicates=200, seed=1)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0) and not same.significant
    # pairing matters: with the arms' hours misaligned the common noise no longer cancels
    misaligned = paired_block_bootstrap(a, np.roll(b, 2500), replicates=400, seed=1)
    assert misaligned.high - misaligned.low > 3 * (c.high - c.low)
    short = paired_block_bootstrap(a[:100], b[:100])
    assert math.isnan(short.low) and not short.significant


def test_run_folders_are_published_whole_and_never_overwritten(tmp_path):
    import duckdb

    folder = RunFolder(tmp_path, "20260101T000000Z-abcdef")
    folder.json("config.json", {"x": 1})
    folder.parquet("summary.parquet", pa.table({"run_id": ["20260101T000000Z-abcdef"], "pooled_net_sharpe": [0.1]}))
    folder.parquet("predictions.parquet", pa.table({"run_id": ["20260101T000000Z-abcdef"], "symbol": ["BTCUSDT"]}))
    con = duckdb.connect()
    create_run_views(con, tmp_path)
    assert con.execute("select count(*) from runs").fetchone()[0] == 0  # not published yet: invisible
    path = folder.publish()
    create_run_views(con, tmp_path)
    assert con.execute("select run_id from runs").fetchall() == [(path.name,)]
    assert con.execute("select count(*) from run_predictions").fetchone()[0] == 1
    with pytest.raises(MscaleError, match="already exists; runs are never overwritten"):
        RunFolder(tmp_path, "20260101T000000Z-abcdef")
    failed = RunFolder(tmp_path, "20260101T000001Z-abcdef")
    failed.json("config.json", {})
    failed.discard()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [path.name]


def test_tuning_pays_the_runs_slippage():
    rng = np.random.default_rng(6)
    n = 400
    ts = hours(*range(n))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    score = np.clip(np.r_[np.sign(np.diff(close)), 0.0] * rng.uniform(0.05, 0.6, n), -0.99, 0.99)
    val, px = predictions("BTCUSDT", ts, score), prices("BTCUSDT", ts, close)
    free = tune_thresholds(val, px, rules=Rules(), fee_bps=2.0, min_trades=10)
    costly = tune_thresholds(val, px, rules=Rules(), fee_bps=2.0, slippage=40.0, min_trades=10)
    assert costly.val_sharpe < free.val_sharpe
    psr, dsr = free.deflated()
    assert 0 <= dsr <= psr <= 1
