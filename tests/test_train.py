"""`python -m mscale.train` on a small demo market: every artifact, reproducibility, the sanity
modes, nothing learned from a test block, and the guard rails."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import run_config
from mscale.errors import CheckFailedError, MscaleError
from mscale.research import pipeline
from mscale.research.splits import Fold, make_splitter
from mscale.train import main

FAST = {"model": "logistic", "n_splits": 3}


def _cfg(root: Path, runs: str = "_exp", **train):
    return run_config(root, runs, **train)


def _run(root: Path, runs: str, **train) -> pipeline.TrainingResult:
    return pipeline.run_training(_cfg(root, runs, **train))


def test_a_compare_run_writes_every_artifact_and_shows_in_runs(demo_warehouse, capsys):
    args = ["--data-dir", str(demo_warehouse / "data"), "--warehouse", str(demo_warehouse / "w.duckdb"),
            "--out", str(demo_warehouse / "full"), "--quiet", "--compare", "--n-splits", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    (run,) = [p for p in (demo_warehouse / "full").iterdir() if not p.name.startswith(".")]
    assert f"run written to {run}" in printed and "pooled difference" in printed

    for name in ("config.json", "metrics.json", "folds.csv", "predictions.parquet", "trades.parquet", "alignment.log",
                 "importance.csv", "summary.parquet", "pnl/hourly/tokens.parquet", "pnl/hourly/pooled.parquet",
                 "pnl/multiscale/tokens.parquet", "pnl/multiscale/pooled.parquet"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["run_id"] == run.name and config["config"]["train"]["compare"] is True
    assert config["data"]["symbols"] == ["BTCUSDT", "ETHUSDT"] and len(config["data"]["shard_hash"]) == 16
    assert config["git_commit"]
    metrics = json.loads((run / "metrics.json").read_text())
    comparison = metrics["comparison"]
    assert set(comparison["tokens"]) == {"BTCUSDT", "ETHUSDT"}
    pooled = comparison["pooled"]
    assert pooled["low"] <= pooled["difference"] <= pooled["high"]

    folds = pacsv.read_csv(run / "folds.csv")
    assert folds.num_rows == 2 * 3 * 2  # arms x folds x tokens
    for column in ("fit_start", "test_end", "fold_purged_fit", "share_flat", "accuracy", "macro_f1", "log_loss", "brier",
                   "auc_vol_high", "auc_volm_up", "model_vol_high", "theta_long", "theta_short", "n_configs", "sharpe_var", "val_dsr", "trades_per_day",
                   "avg_hold_h", "net_sharpe_VIP9", "net_sharpe_VIP4"):
        assert column in folds.column_names, column

    predictions = pq.read_table(run / "predictions.parquet")
    for column in ("symbol", "ts", "fold", "feature_set", "p_down", "p_flat", "p_up", "p_vol_high", "p_volm_up",
                   "theta_long", "y_dir", "y_vol_high", "run_id"):
        assert column in predictions.column_names, column
    per_arm = predictions.num_rows // 2
    assert per_arm == sum(folds.column("test_rows").to_pylist()) // 2  # OOS rows only, once per arm
    assert "chk_features__unique_key: ok" in (run / "alignment.log").read_text()

    con = duckdb.connect(str(demo_warehouse / "w.duckdb"), read_only=True)
    try:
        row = con.execute("select run_id, feature_set, pooled_net_sharpe, sharpe_diff from runs order by pooled_net_sharpe desc").fetchall()
        assert [r[0] for r in row] == [run.name] and row[0][1] == "hourly,multiscale"
        assert con.execute("select count(*) from run_predictions where run_id = ?", [run.name]).fetchone()[0] == predictions.num_rows
    finally:
        con.close()

    # the demo market: volatility clusters, direction is unpredictable by construction
    for arm in ("hourly", "multiscale"):
        quality = metrics["arms"][arm]["models"]
        assert quality["auc_vol_high"] > 0.65
        test = predictions.filter(pc.equal(predictions.column("feature_set"), arm))
        y = np.asarray(test.column("y_dir").to_pylist(), dtype=float)
        p = np.column_stack([test.column(c).to_numpy() for c in ("p_down", "p_flat", "p_up")])
        known = np.isfinite(y)
        accuracy = np.mean(np.array([-1, 0, 1])[p[known].argmax(axis=1)] == y[known])
        majority = max(np.mean(y[known] == v) for v in (-1, 0, 1))
        assert accuracy < majority + 2.58 * math.sqrt(majority * (1 - majority) / known.sum())
        psr = next(r["psr"] for r in metrics["arms"][arm]["backtest"]
                   if (r["symbol"], r["strategy"], r["tier"]) == ("pooled", "model", "VIP9"))
        assert psr < 0.95


def test_two_runs_give_identical_predictions(demo_warehouse):
    first = _run(demo_warehouse, "repro", model="lgbm", n_splits=2)
    second = _run(demo_warehouse, "repro", model="lgbm", n_splits=2)
    assert first.path != second.path and first.path.exists() and second.path.exists()  # never overwritten
    a = pq.read_table(first.path / "predictions.parquet").drop(["run_id"])
    b = pq.read_table(second.path / "predictions.parquet").drop(["run_id"])
    assert a.equals(b)


def test_shuffled_labels_put_direction_accuracy_at_chance(demo_warehouse):
    """Trained on permuted labels, the direction model's OOS accuracy is within a 99% binomial
    interval of chance: the accuracy of predictions independent of the labels, sum_k q_k p_k per
    fold (q: predicted class shares, p: true class shares; the majority-class rate when the model
    always predicts the majority class). And it never beats the majority-class rate."""
    shuffled = _run(demo_warehouse, "shuffle", shuffle_labels=True, **FAST)
    oos = shuffled.arms["multiscale"].oos
    y = np.asarray(oos.column("y_dir").to_pylist(), dtype=float)
    p = np.column_stack([oos.column(c).to_numpy() for c in ("p_down", "p_flat", "p_up")])
    fold = oos.column("fold").to_numpy()
    known = np.isfinite(y)
    y, fold, predicted = y[known], fold[known], np.array([-1.0, 0.0, 1.0])[p[known].argmax(axis=1)]
    chance = sum((fold == f).sum() * sum(np.mean(predicted[fold == f] == v) * np.mean(y[fold == f] == v) for v in (-1, 0, 1))
                 for f in np.unique(fold)) / len(y)
    accuracy = float(np.mean(predicted == y))
    se = math.sqrt(chance * (1 - chance) / len(y))
    assert abs(accuracy - chance) < 2.58 * se
    majority = max(np.mean(y == v) for v in (-1, 0, 1))
    assert accuracy < majority + 2.58 * math.sqrt(majority * (1 - majority) / len(y))
    assert shuffled.arms["multiscale"].oos.num_rows == _run(demo_warehouse, "shuffle", **FAST).arms["multiscale"].oos.num_rows


def _poisoned(ds, rows, *, features=True):
    out = replace(ds, features=ds.features.copy(), labels={k: v.copy() for k, v in ds.labels.items()})
    if features:
        out.features[rows] = out.features[rows] * 10 + 1
    for name, values in out.labels.items():  # reversed (and scaled) labels: thresholds would move if read
        values[rows] = values[rows][::-1] * (3 if name.startswith("fwd_") else 1)
    return out


def test_nothing_learned_changes_when_rows_a_fold_must_not_learn_from_change(demo_warehouse):
    cfg = _cfg(demo_warehouse, "poison", **FAST)
    plan = pipeline.load_plan(cfg)
    ds = plan.ds
    splitter = make_splitter("walk_forward", n_splits=3, embargo_h=pipeline.embargo_hours(cfg), val_fraction=0.2)
    folds = list(splitter.split(ds.ts_ms, ds.label_end_ms))
    clean = pipeline.train_arms(cfg, ds, plan.prices, folds, plan.arms, "clean")[0]["multiscale"]

    # 1. the last test block (features and labels): nothing learned anywhere may change,
    #    y_vol_high's training threshold included
    dirty = pipeline.train_arms(cfg, _poisoned(ds, folds[-1].test), plan.prices, folds, plan.arms, "dirty")[0]["multiscale"]
    assert [t.as_dict() for t in clean.tuned] == [t.as_dict() for t in dirty.tuned]
    assert clean.importance == dirty.importance  # the same models, fitted on the same rows
    keep = ["p_down", "p_flat", "p_up", "p_vol_high", "p_volm_up", "theta_long", "theta_vol"]
    for part_a, part_b in zip(clean.parts, dirty.parts):
        if part_a.column("fold")[0].as_py() < folds[-1].index:
            assert part_a.select(keep).equals(part_b.select(keep))
        else:
            assert not part_a.select(["p_up"]).equals(part_b.select(["p_up"]))  # the test rows did change

    # 2. the last fold's purged band (rows between its fit rows and its validation slice) and its
    #    validation labels: no model may have been fitted on them, so every model is the same
    last = folds[-1]
    band = np.flatnonzero((ds.ts_ms > last.fit_span[1]) & (ds.ts_ms < last.val_span[0]))
    assert len(band) >= last.purged_fit > 0
    banded = _poisoned(_poisoned(ds, band), last.val, features=False)
    other = pipeline.train_arms(cfg, banded, plan.prices, folds, plan.arms, "band")[0]["multiscale"]
    assert clean.importance == other.importance
    assert [t.as_dict() for t in clean.tuned] == [t.as_dict() for t in other.tuned]


def test_dates_mode_runs_on_explicit_ranges(demo_warehouse):
    result = _run(demo_warehouse, "dates", model="logistic", split_mode="dates", train="2024-01-01→2024-02-29",
                  tune="2024-03-01→2024-03-31", oos="2024-04-01→end")
    (fold,) = {row["fold"] for row in result.arms["multiscale"].folds}
    row = result.arms["multiscale"].folds[0]
    assert row["val_start"] >= "2024-03-01" and row["test_start"] == "2024-04-01 01:00Z"
    log = (result.path / "alignment.log").read_text()
    assert "fold 0: fit 2024-01-01" in log


def _with_view(root: Path, tmp: Path, view: str, definition: str) -> Path:
    """A copy of root's warehouse where `view` is redefined; `{body}` in `definition` is its old query."""
    import shutil

    wh = tmp / "w.duckdb"
    shutil.copy(root / "w.duckdb", wh)
    con = duckdb.connect(str(wh))
    body = con.execute("select sql from duckdb_views() where view_name = ?", [view]).fetchone()[0].split(" AS ", 1)[1].rstrip(";")
    con.execute(f"create or replace view {view} as " + definition.format(body=body))
    con.close()
    return wh


def test_a_failing_warehouse_is_refused(demo_warehouse, tmp_path):
    wh = _with_view(demo_warehouse, tmp_path, "features", "select * from ({body}) union all (select * from ({body}) limit 10)")
    cfg = replace(_cfg(demo_warehouse, "refused", **FAST), warehouse=wh)
    with pytest.raises(CheckFailedError, match="chk_features__unique_key"):
        pipeline.run_training(cfg)
    assert not (demo_warehouse / "refused").exists()


def test_guard_rails_are_one_line_errors(demo_warehouse, capsys):
    common = ["--data-dir", str(demo_warehouse / "data"), "--warehouse", str(demo_warehouse / "w.duckdb"),
              "--out", str(demo_warehouse / "guard"), "--quiet", "--model", "logistic"]
    cases = [
        (["--columns", "rsi_14,m_rv_60mm"], "feature column 'm_rv_60mm' does not exist in the features mart; did you mean m_rv_60m"),
        (["--n-splits", "400"], "empty after purging"),
        (["--n-splits", "4000"], "too few"),
        (["--tune-fee", "VIP3"], "tune fee 'VIP3' is not one of the fee tiers gross, VIP9, VIP4"),
        (["--split-mode", "dates"], "split mode dates needs --train, --tune and --oos"),
        (["--filter", "vol", "--min-hold", "-1"], "min_hold must be a whole number >= 0, got -1"),
    ]
    for extra, message in cases:
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (extra, err)
    assert not (demo_warehouse / "guard").exists() or not any((demo_warehouse / "guard").iterdir())


def test_a_label_end_reaching_its_block_is_refused(demo_warehouse):
    cfg = _cfg(demo_warehouse, "x", **FAST)
    ds = pipeline.load_plan(cfg).ds
    rows = np.arange(len(ds.ts_ms))
    late = Fold(0, fit=rows[:100], val=rows[100:150], test=rows[150:200], fit_span=(0, 0),
                val_span=(int(ds.ts_ms[60]), 0), test_span=(int(ds.ts_ms[150]), 0), purged_fit=0, purged_val=0)
    with pytest.raises(MscaleError, match="label_end .* reaches into its evaluation block"):
        pipeline._assert_purged(ds, late, 24)


def test_stale_labels_misaligned_keys_and_unknown_symbols_are_refused(demo_warehouse, tmp_path):
    cfg = _cfg(demo_warehouse, "stale", **FAST)
    with pytest.raises(MscaleError, match=r"built with other \[labels\] settings \(horizon 1 -> 4\): run `mscale features`"):
        pipeline.run_training(replace(cfg, labels=replace(cfg.labels, horizon=4, horizons=(1, 4, 24))))
    with pytest.raises(MscaleError, match="no features for XXUSDT; symbols in the warehouse: BTCUSDT, ETHUSDT"):
        pipeline.run_training(replace(cfg, train=replace(cfg.train, symbols=("XXUSDT",))))

    wh = _with_view(demo_warehouse, tmp_path, "labels", "select * from ({body}) where ts <> timestamptz '2024-02-01 12:00:00+00'")
    with pytest.raises(MscaleError, match=r"features and labels are misaligned: 2 feature rows have no label row \(first: BTCUSDT 2024-02-01 12:00\)"):
        pipeline.run_training(replace(cfg, warehouse=wh))


def test_a_fold_that_cannot_learn_direction_is_refused_and_aux_tasks_fall_back_to_the_prior(demo_warehouse):
    cfg = _cfg(demo_warehouse, "x", **FAST)
    ds = pipeline.load_plan(cfg).ds
    rows = np.flatnonzero(ds.code == 0)
    fold = Fold(0, fit=rows[:150], val=rows[200:250], test=rows[300:400], fit_span=(0, 0), val_span=(0, 0),
                test_span=(0, 0), purged_fit=0, purged_val=0)
    with pytest.raises(MscaleError, match=r"fold 0 has too few rows for BTCUSDT \(fit 150, validation 50, test 100; at least 200"):
        pipeline._plan_unit(cfg, ds, fold, [0])
    early = Fold(0, fit=rows[:400], val=rows[450:500], test=rows[550:600], fit_span=(0, 0), val_span=(0, 0),
                 test_span=(0, 0), purged_fit=0, purged_val=0)
    unit = pipeline._plan_unit(cfg, ds, early, [0])  # y_volm_up needs 20 days of history: too few labels
    assert unit.jobs["dir"][2] and not unit.jobs["volm_up"][2]
    single = replace(ds, labels={**ds.labels, "y_dir": np.where(np.isfinite(ds.labels["y_dir"]), 1.0, np.nan)})
    with pytest.raises(MscaleError, match="have a direction label .1 classes; at least 200 rows and two classes"):
        pipeline._plan_unit(cfg, single, early, [0])


def test_the_default_embargo_is_the_longest_label_horizon(demo_warehouse):
    cfg = _cfg(demo_warehouse, "x")
    assert pipeline.embargo_hours(cfg) == 24
    assert pipeline.embargo_hours(replace(cfg, labels=replace(cfg.labels, vol_window=48))) == 48
    assert pipeline.embargo_hours(replace(cfg, train=replace(cfg.train, embargo_h=6))) == 6
