"""The research pipeline behind `python -m mscale.train`: purged walk-forward training, tuned
thresholds, the out-of-sample backtest, and the run folder `_exp/<run_id>/` (CONTRACT §7, §8, §10;
doc/training.md).

Per fold, everything learned comes from that fold's rows only: the y_vol_high threshold and the
models from its fit rows, the trading thresholds from its validation slice; the test block is
only ever predicted. With `compare` the hourly and multiscale feature sets run on the same folds
and their out-of-sample Sharpe ratios are compared with a paired block-bootstrap interval.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from mscale.backtest import BacktestResult, Rules, parse_fees
from mscale.backtest.market import load_prices
from mscale.backtest.metrics import HOUR_MS, sharpe
from mscale.config import Config, with_market
from mscale.errors import CheckFailedError, MscaleError
from mscale.research import dataset, runs
from mscale.research.evaluate import (BacktestSettings, Evaluation, evaluate, headline, main_arm, summary_table, verdict_line,
                                      write_evaluation)
from mscale.research.labels import vol_high
from mscale.research.models import fit_model, prior_model
from mscale.research.splits import Fold, make_splitter, parse_date_range
from mscale.research.tuning import Tuned, tune_thresholds

log = logging.getLogger("mscale.train")

DIRECTION = (-1.0, 0.0, 1.0)
BINARY = (0.0, 1.0)
TASKS = ("dir", "vol_high", "volm_up")
TRAINING_CHECKS = {"chk_features__unique_key", "chk_labels__unique_key", "chk_features__alignment"}
MIN_FIT_ROWS = 200  # below this a tree with min_child_samples=100 cannot split: nothing to learn


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Arm:
    """One feature set's out-of-sample predictions and what they were built from."""

    feature_set: str
    columns: list[str]
    parts: list[pa.Table] = field(default_factory=list)  # test-block predictions, fold by fold
    folds: list[dict] = field(default_factory=list)  # folds.csv rows
    importance: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    tuned: list[Tuned] = field(default_factory=list)
    tuning_seconds: float = 0.0
    oos: pa.Table | None = None  # every test-block prediction, sorted by (symbol, ts)
    backtest: BacktestResult | None = None


@dataclass
class TrainingResult:
    run_id: str
    path: Any
    summary: str
    arms: dict[str, Arm]
    timings: dict[str, float]


@dataclass
class Plan:
    """What a run reads from the warehouse, checked."""

    ds: dataset.Dataset
    prices: pa.Table
    arms: dict[str, list[str]]  # feature set -> its columns
    alignment: list[str]  # alignment.log lines
    pull_seconds: float


def run_training(cfg: Config, *, ingestion: list[dict] | None = None) -> TrainingResult:
    """Train, predict, tune and backtest every fold; write and publish `_exp/<run_id>/`.
    `ingestion`: the ingestion reports (`mscale.report.build_report`) of the market, when the
    caller has just built them; the run's `ingestion.json` takes its symbols' from there."""
    started = time.perf_counter()
    s = cfg.train
    tiers, _ = trading_settings(cfg)  # fees and knobs are checked before anything is read
    embargo = embargo_hours(cfg)
    splitter = make_splitter(
        s.split_mode, n_splits=s.n_splits, embargo_h=embargo, val_fraction=s.val_fraction,
        train=parse_date_range(s.train) if s.train else None, tune=parse_date_range(s.tune) if s.tune else None,
        oos=parse_date_range(s.oos) if s.oos else None,
    )
    plan = load_plan(cfg)
    ds = plan.ds
    folds = list(splitter.split(ds.ts_ms, ds.label_end_ms))
    for fold in folds:
        plan.alignment.append(_purge_line(ds, fold, embargo))
        _assert_purged(ds, fold, embargo)
    now = datetime.now(timezone.utc)
    resolved = {"train": _plain(s), "labels": _plain(cfg.labels), "embargo_h": embargo, "symbols": list(ds.symbols),
                "fees": tiers, "data_dir": str(cfg.market_dir), "warehouse": str(cfg.warehouse)}
    run_id = runs.make_run_id(resolved, now)
    arms, evaluation, settings = train_arms(cfg, ds, plan.prices, folds, plan.arms, run_id)
    timings = {"total_s": time.perf_counter() - started, "pull_s": plan.pull_seconds,
               "tuning_s": sum(a.tuning_seconds for a in arms.values()), "backtest_s": evaluation.seconds,
               "folds": len(folds)}
    resolved["backtest"] = settings.as_dict()
    path = _write_run(cfg, run_id, now, resolved, _fingerprint(cfg, ds), arms, evaluation, plan.prices, plan.alignment,
                      timings, ingestion)
    _refresh_views(cfg)
    return TrainingResult(run_id, path, summary_table(evaluation, s.tune_fee), arms, timings)


def trading_settings(cfg: Config) -> tuple[dict[str, float], Rules]:
    """The fee tiers and the backtest knobs of a run (thresholds come from tuning), validated."""
    s = cfg.train
    tiers = parse_fees(list(s.fees))
    if s.tune_fee not in tiers:
        raise MscaleError(f"tune fee {s.tune_fee!r} is not one of the fee tiers {', '.join(tiers)}; add it to --fees")
    knobs = Rules(long_only=s.long_only, filter=s.filter, filter_exit=s.filter_exit, min_hold=s.min_hold,
                  cooldown=s.cooldown, max_trades_per_day=s.max_trades_per_day)
    return tiers, knobs


def load_plan(cfg: Config) -> Plan:
    """Run the warehouse checks training depends on, then read the features, labels and prices."""
    from mscale.warehouse import render as r
    from mscale.warehouse.build import check_market, connect, run_checks

    s, lab = cfg.train, cfg.labels
    if not cfg.warehouse.exists():
        raise MscaleError(with_market(f"no warehouse at {cfg.warehouse}: run `mscale features` first", cfg.market))
    con = connect(cfg.warehouse, read_only=True)
    try:
        check_market(con, cfg)
        _check_label_settings(con, cfg)
        checks = run_checks(con, cfg.sql_dir, r.params_from_config(cfg), only=TRAINING_CHECKS)
        alignment = [f"{c.name}: {'ok' if c.failing_rows == 0 else f'{c.failing_rows} offending rows, e.g. {c.sample[:2]}'}"
                     for c in checks]
        if any(c.failing_rows for c in checks):
            raise CheckFailedError("the warehouse fails checks training depends on: "
                                   + "; ".join(line for line in alignment if not line.endswith(": ok"))
                                   + "; rebuild with `mscale features`")
        arms = _arm_columns(con, s)
        wanted = list(dict.fromkeys(c for cols in arms.values() for c in cols))
        label_names = ["y_dir", f"fwd_ret_{lab.horizon}h", f"fwd_rv_{lab.vol_window}h", "y_volm_up"]
        ds = dataset.load_dataset(con, columns=wanted, labels=label_names, symbols=list(s.symbols) or None,
                                  start=_day(s.start), end=_day(s.end))
        pull_started = time.perf_counter()
        prices = load_prices(con, symbols=list(ds.symbols))
        pull_seconds = ds.seconds + time.perf_counter() - pull_started
        # provenance: the label definitions the warehouse holds (rendered at `mscale features` time)
        labels_sql = con.execute("select sql from duckdb_views() where view_name = 'labels'").fetchone()[0]
    finally:
        con.close()
    alignment.append(f"features and labels: {len(ds.ts_ms)} rows on the same (symbol, ts) keys, "
                     f"{len(ds.symbols)} symbols, label_end = ts + {int((ds.label_end_ms - ds.ts_ms).max() // HOUR_MS)} h")
    alignment.append(f"labels view sha256 {hashlib.sha256(labels_sql.encode()).hexdigest()[:16]} "
                     "(rendered by `mscale features` with the [labels] settings of that time)")
    return Plan(ds, prices, arms, alignment, pull_seconds)


def _check_label_settings(con, cfg: Config) -> None:
    """The labels view was rendered by `mscale features` with the [labels] settings of that time:
    refuse to train (and record) other settings than the ones the labels were built with."""
    import json

    from mscale.warehouse.build import label_settings

    try:
        built = json.loads(con.execute("select labels from build_info").fetchone()[0])
    except Exception:
        raise MscaleError("the warehouse does not say which [labels] settings built it: run `mscale features`") from None
    wanted = label_settings(cfg)
    changed = sorted(k for k in wanted if built.get(k) != wanted[k])
    if changed:
        detail = ", ".join(f"{k} {built.get(k)!r} -> {wanted[k]!r}" for k in changed)
        raise MscaleError(f"the labels view was built with other [labels] settings ({detail}): run `mscale features` first")


def train_arms(cfg: Config, ds: dataset.Dataset, prices: pa.Table, folds: list[Fold], arms: dict[str, list[str]],
               run_id: str) -> tuple[dict[str, Arm], Evaluation, BacktestSettings]:
    """Every arm over every fold, then the backtest step on all arms' out-of-sample predictions
    with their tuned thresholds (DSR trials: the median combinations per tuning).

    Pure with respect to I/O: everything comes in as arguments, so tests can change the data."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    s = cfg.train
    tiers, knobs = trading_settings(cfg)
    units = [[c] for c in range(len(ds.symbols))] if s.fit == "per_token" else [list(range(len(ds.symbols)))]
    total = len(arms) * len(folds) * len(units) * len(_tasks(s))
    results: dict[str, Arm] = {}
    # a bar on a terminal (tqdm's `disable=None`), nothing in logs and pipes
    # Every fit of an arm is independent of the others, so all of them are queued at once and run
    # side by side on `threads` workers, each single-threaded: a fold's models are small, and
    # OpenMP threads spinning on a busy 2-core machine made LightGBM 10-40x slower. Units are then
    # finished (predictions, tuning) in order as their fits arrive. A bar on a terminal only.
    with tqdm(total=total, desc="train", unit="model", disable=True if cfg.quiet else None, leave=False) as bar, \
            threadpool_limits(limits=1), _fit_pool(s) as pool:
        for name, columns in arms.items():
            arm = results[name] = Arm(name, columns)
            X = ds.subset(columns)
            shared = pool.share(X)
            planned = [_plan_unit(cfg, ds, fold, unit) for fold in folds for unit in units]
            queued = [{task: pool.submit(_fit, s.model if learnable else "prior", shared, rows, labels, columns, s.seed)
                       for task, (rows, labels, learnable) in plan.jobs.items()} for plan in planned]
            for plan, futures in zip(planned, queued):
                bar.set_postfix_str(f"{name} fold {plan.fold.index + 1}/{len(folds)} {plan.tokens}")
                fitted = {}
                for task, future in futures.items():
                    fitted[task] = future.result()
                    bar.update(1)
                _finish_unit(cfg, ds, X, plan, fitted, arm, prices, knobs, tiers, run_id)
    tuned = [t for arm in results.values() for t in arm.tuned]
    # Deflating the OOS Sharpe: the trials' Sharpe variance was measured on validation slices; its
    # estimation-noise part shrinks with sample length, so it is rescaled to each token's OOS hours.
    oos_hours = len(np.concatenate([f.test for f in folds])) / max(len(ds.symbols), 1)
    settings = BacktestSettings(
        tiers=tiers, rules=knobs, fill=s.fill, slippage=_slippage(s.slippage), tune_fee=s.tune_fee,
        trials=int(np.median([t.n_configs for t in tuned])),
        trials_sharpe_var=float(np.nanmedian([t.sharpe_var * t.val_rows / oos_hours for t in tuned])),
        block_h=s.block_h, seed=s.seed,
    )
    for arm in results.values():
        arm.oos = pa.concat_tables(arm.parts).sort_by([("symbol", "ascending"), ("ts", "ascending")])
    started = time.perf_counter()
    evaluation = evaluate({name: arm.oos for name, arm in results.items()}, prices, settings)
    evaluation.seconds = time.perf_counter() - started
    for name, arm in results.items():
        arm.backtest = evaluation.backtests[name]
        _fold_trading(arm, tiers)
    return results, evaluation, settings


class _ThreadPool(ThreadPoolExecutor):
    def share(self, value: Any) -> Any:
        return value


class _DaskPool:
    """Fits as Dask tasks: the feature matrix goes to every worker once (`share`), each fit is a task."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def share(self, value: Any) -> Any:
        return self.client.scatter(value, broadcast=True)

    def submit(self, fn: Any, *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)


@contextmanager
def _fit_pool(s: Any) -> Iterator[Any]:
    """Where an arm's fits run (`[train] executor`): `threads` local threads, or a Dask cluster.
    Each fit is deterministic and single-threaded wherever it runs, so the results are identical."""
    if s.executor == "dask":
        from mscale.cluster import dask_client

        with dask_client(s.scheduler or None, s.threads) as client:
            yield _DaskPool(client)
    else:
        with _ThreadPool(max_workers=s.threads) as pool:
            yield pool


def _tasks(s: Any) -> tuple[str, ...]:
    """The models fitted per unit: the direction model, and the auxiliary ones unless `aux` is off."""
    return TASKS if s.aux else ("dir",)


def embargo_hours(cfg: Config) -> int:
    """The embargo in hours: the setting, or by default max(H, Wv) (CONTRACT §8)."""
    s = cfg.train
    return s.embargo_h if s.embargo_h is not None else max(cfg.labels.horizon, cfg.labels.vol_window)


def _day(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc) if value else None


def _slippage(value: Any) -> Any:
    if value is None or value in ("cs", "ar"):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MscaleError(f"unknown slippage {value!r}: use a number of bps, cs or ar") from None


def _plain(settings: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()}


def _arm_columns(con, s) -> dict[str, list[str]]:
    if s.columns:
        return {"custom": dataset.check_columns(con, list(s.columns))}
    names = ["hourly", "multiscale"] if s.compare else [s.features]
    return {name: dataset.feature_columns(con, name) for name in names}


def _purge_line(ds: dataset.Dataset, fold: Fold, embargo: int) -> str:
    def span(a: tuple[int, int]) -> str:
        return "empty" if a[0] < 0 else f"{_iso(a[0])} .. {_iso(a[1])}"

    return (f"fold {fold.index}: fit {span(fold.fit_span)} ({len(fold.fit)} rows, {fold.purged_fit} purged), "
            f"val {span(fold.val_span)} ({len(fold.val)} rows, {fold.purged_val} purged), test {span(fold.test_span)} "
            f"({len(fold.test)} rows); embargo {embargo} h: max label_end of fit "
            f"{_iso(int(ds.label_end_ms[fold.fit].max()))}, of val {_iso(int(ds.label_end_ms[fold.val].max()))}")


def _assert_purged(ds: dataset.Dataset, fold: Fold, embargo: int) -> None:
    """The guard rail: no training or validation label reads into the block it is evaluated on."""
    gap = embargo * HOUR_MS
    for rows, block, what in ((fold.fit, fold.val_span[0], "fit"), (fold.val, fold.test_span[0], "validation")):
        late = rows[ds.label_end_ms[rows] > block - gap]
        if len(late):
            i = int(late[0])
            raise MscaleError(f"fold {fold.index}: a {what} row's label_end {_iso(int(ds.label_end_ms[i]))} reaches into "
                              f"its evaluation block starting {_iso(block)} (embargo {embargo} h); this is a splitter bug")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%MZ")


# --- one fold, one token (or the pooled model) -------------------------------------------------


@dataclass
class Unit:
    """One fold of one token (or of every token, for a pooled fit): its rows and labels."""

    fold: Fold
    members: list[int]  # symbol codes
    tokens: str  # for messages
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    targets: dict[str, np.ndarray]
    jobs: dict[str, tuple[np.ndarray, np.ndarray, bool]]  # task -> (labelled fit rows, labels to learn, learnable)


def _plan_unit(cfg: Config, ds: dataset.Dataset, fold: Fold, members: list[int]) -> Unit:
    """The rows and labels of one fold and unit, checked before anything is fitted."""
    s, lab = cfg.train, cfg.labels
    in_unit = np.isin(ds.code, members)
    fit, val, test = (rows[in_unit[rows]] for rows in (fold.fit, fold.val, fold.test))
    tokens = ", ".join(ds.symbols[c] for c in members) if len(members) <= 3 else f"{len(members)} tokens"
    if len(fit) < MIN_FIT_ROWS or len(val) == 0 or len(test) == 0:
        raise MscaleError(f"fold {fold.index} has too few rows for {tokens} (fit {len(fit)}, validation {len(val)}, "
                          f"test {len(test)}; at least {MIN_FIT_ROWS} fit rows are needed): use fewer splits or more data")
    targets = {
        "dir": ds.labels["y_dir"],
        "vol_high": _vol_high(ds, fit, members, lab.vol_window, s.vol_high_quantile),
        "volm_up": ds.labels["y_volm_up"],
    }
    rng = np.random.default_rng([s.seed, fold.index, members[0]])
    jobs = {}
    for task in _tasks(s):
        y = targets[task]
        rows = fit[np.isfinite(y[fit])]
        labels = rng.permutation(y[rows]) if s.shuffle_labels else y[rows]
        learnable = len(rows) >= MIN_FIT_ROWS and len(np.unique(labels)) > 1
        if task == "dir" and not learnable:
            raise MscaleError(f"fold {fold.index}: {len(rows)} fit rows of {tokens} have a direction label "
                              f"({len(np.unique(labels))} classes; at least {MIN_FIT_ROWS} rows and two classes needed): "
                              "use fewer splits or more data")
        # an auxiliary task without enough to learn from predicts its training share (model "prior")
        jobs[task] = (rows, labels, learnable)
    return Unit(fold, members, tokens, fit, val, test, targets, jobs)


def _fit(kind: str, X: np.ndarray, rows: np.ndarray, labels: np.ndarray, columns: list[str], seed: int):
    return prior_model(labels) if kind == "prior" else fit_model(kind, X[rows], labels, columns, seed=seed)


def _finish_unit(cfg: Config, ds: dataset.Dataset, X: np.ndarray, unit: Unit, fitted: dict, arm: Arm,
                 prices: pa.Table, knobs: Rules, tiers: dict[str, float], run_id: str) -> None:
    """Predict a unit's validation and test rows with its fitted models, tune each token's
    thresholds on the validation rows; the test predictions go to `arm.parts`."""
    s, lab = cfg.train, cfg.labels
    fold, val, test, targets = unit.fold, unit.val, unit.test, unit.targets
    rows = np.concatenate([val, test])
    proba: dict[str, np.ndarray] = {}
    for task, model in fitted.items():
        proba[task] = model.predict_proba(X[rows], DIRECTION if task == "dir" else BINARY)
        for feature, value in model.importance().items():
            arm.importance.setdefault((task, feature), []).append(value)

    n_val = len(val)
    table = ds.table(rows).append_column("fold", pa.array(np.full(len(rows), fold.index, np.int32)))
    direction = proba["dir"]
    for j, name in enumerate(("p_down", "p_flat", "p_up")):
        table = table.append_column(name, pa.array(direction[:, j]))
    for task, column in (("vol_high", "p_vol_high"), ("volm_up", "p_volm_up")):
        if task in proba:  # without auxiliary models (aux = false) the columns are absent
            table = table.append_column(column, pa.array(proba[task][:, 1]))

    tuning_started = time.perf_counter()
    thresholds = {name: np.empty(len(test)) for name in ("theta_long", "theta_short", "theta_vol", "theta_volm")}
    for c in unit.members:
        mine = ds.code[val] == c
        tuned = tune_thresholds(table.slice(0, n_val).filter(pa.array(mine)), prices, rules=knobs,
                                fee_bps=tiers[s.tune_fee], fill=s.fill, slippage=_slippage(s.slippage),
                                min_trades=s.min_trades)
        arm.tuned.append(tuned)
        on_test = ds.code[test] == c
        for name in thresholds:
            thresholds[name][on_test] = getattr(tuned, name)
        kinds = {task: model.kind for task, model in fitted.items()}
        arm.folds.append(_fold_row(ds, fold, c, unit.fit, val, test, targets, proba, kinds, n_val, tuned, arm.feature_set))
    arm.tuning_seconds += time.perf_counter() - tuning_started

    oos = table.slice(n_val)
    for name, values in thresholds.items():
        oos = oos.append_column(name, pa.array(values))
    for name, values in (("y_dir", targets["dir"]), (f"fwd_ret_{lab.horizon}h", ds.labels[f"fwd_ret_{lab.horizon}h"]),
                         ("y_vol_high", targets["vol_high"]), ("y_volm_up", targets["volm_up"])):
        oos = oos.append_column(name, pa.array(values[test], mask=~np.isfinite(values[test])))
    oos = oos.append_column("feature_set", pa.array([arm.feature_set] * len(test)))
    oos = oos.append_column("run_id", pa.array([run_id] * len(test)))
    arm.parts.append(oos)


def _vol_high(ds: dataset.Dataset, fit: np.ndarray, unit: list[int], vol_window: int, quantile: float) -> np.ndarray:
    """y_vol_high with each token's threshold from its own fit rows of this fold."""
    fwd_rv = ds.labels[f"fwd_rv_{vol_window}h"]
    out = np.full(len(fwd_rv), np.nan)
    for c in unit:
        token_rows = np.flatnonzero(ds.code == c)
        labels, _ = vol_high(fwd_rv, fit[ds.code[fit] == c], quantile=quantile)
        out[token_rows] = labels[token_rows]
    return out


def _fold_row(ds, fold, c, fit, val, test, targets, proba, kinds, n_val, tuned: Tuned, feature_set: str) -> dict:
    """folds.csv: one row per fold and token."""
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    mine_fit, mine_val, mine_test = (rows[ds.code[rows] == c] for rows in (fit, val, test))
    at = n_val + np.flatnonzero(ds.code[test] == c)  # this token's test rows inside the predicted block
    y = targets["dir"][mine_test]
    known = np.isfinite(y)
    p = proba["dir"][at][known]
    row: dict[str, Any] = {
        "feature_set": feature_set, "fold": fold.index, "symbol": ds.symbols[c],
        "fit_start": _iso(int(ds.ts_ms[mine_fit].min())), "fit_end": _iso(int(ds.ts_ms[mine_fit].max())),
        "val_start": _iso(int(ds.ts_ms[mine_val].min())) if len(mine_val) else None,
        "val_end": _iso(int(ds.ts_ms[mine_val].max())) if len(mine_val) else None,
        "test_start": _iso(int(ds.ts_ms[mine_test].min())), "test_end": _iso(int(ds.ts_ms[mine_test].max())),
        "fit_rows": len(mine_fit), "val_rows": len(mine_val), "test_rows": len(mine_test),
        "fold_purged_fit": fold.purged_fit, "fold_purged_val": fold.purged_val,  # all tokens of the fold
    }
    fit_dir = targets["dir"][mine_fit]
    for value, name in zip(DIRECTION, ("share_down", "share_flat", "share_up")):
        row[name] = float(np.mean(fit_dir[np.isfinite(fit_dir)] == value))
    yk = y[known]
    row["accuracy"] = float(np.mean(np.asarray(DIRECTION)[p.argmax(axis=1)] == yk)) if len(yk) else math.nan
    row["majority_rate"] = float(max(np.mean(yk == v) for v in DIRECTION)) if len(yk) else math.nan
    row["macro_f1"] = float(f1_score(yk, np.asarray(DIRECTION)[p.argmax(axis=1)], average="macro", labels=list(DIRECTION),
                                     zero_division=0)) if len(yk) else math.nan
    row["log_loss"] = float(log_loss(yk, np.clip(p, 1e-12, 1), labels=list(DIRECTION))) if len(yk) else math.nan
    onehot = (yk[:, None] == np.asarray(DIRECTION)[None, :]).astype(float)
    row["brier"] = float(np.mean(np.sum((p - onehot) ** 2, axis=1))) if len(yk) else math.nan
    for task in ("vol_high", "volm_up"):
        yt = targets[task][mine_test]
        ok = np.isfinite(yt)
        both = task in proba and ok.any() and len(np.unique(yt[ok])) == 2
        row[f"auc_{task}"] = float(roc_auc_score(yt[ok], proba[task][at][ok][:, 1])) if both else math.nan
        row[f"rate_{task}"] = float(np.mean(yt[ok])) if ok.any() else math.nan
    for task in ("vol_high", "volm_up"):
        row[f"model_{task}"] = kinds.get(task, "none")
    row.update(tuned.as_dict())
    row["val_psr"], row["val_dsr"] = tuned.deflated()
    return row


# --- after the folds ---------------------------------------------------------------------------


def _fold_trading(arm: Arm, tiers: dict[str, float]) -> None:
    """Add each (fold, token)'s out-of-sample trading figures to its folds.csv row."""
    pnl = arm.backtest.pnl
    trades = arm.backtest.trades
    symbol = pnl.column("symbol").cast(pa.string()).to_numpy(zero_copy_only=False)
    ts = pnl.column("ts").cast(pa.int64()).to_numpy() // 1000
    t_symbol = trades.column("symbol").cast(pa.string()).to_numpy(zero_copy_only=False)
    t_entry = trades.column("entry_ts").cast(pa.int64()).to_numpy() // 1000
    for row in arm.folds:
        lo = _ms(row["test_start"])
        hi = _ms(row["test_end"])
        mine = (symbol == row["symbol"]) & (ts >= lo) & (ts <= hi)
        deals = (t_symbol == row["symbol"]) & (t_entry >= lo) & (t_entry <= hi)
        days = (hi - lo + HOUR_MS) / 86_400_000
        row["trades_per_day"] = float(deals.sum() / days)
        held = trades.column("bars_held").to_numpy()[deals]
        row["avg_hold_h"] = float(held.mean()) if len(held) else math.nan
        for tier in tiers:
            row[f"net_sharpe_{tier}"] = sharpe(pnl.column(f"ret_net_{tier}").to_numpy()[mine])


def _ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%MZ").replace(tzinfo=timezone.utc).timestamp() * 1000)


def _fingerprint(cfg: Config, ds: dataset.Dataset) -> dict:
    from mscale.store import list_shards

    shards = [sh.path for interval in ("1m", "1h") for sh in list_shards(cfg.market_dir, interval) if sh.symbol in ds.symbols]
    rows = {sym: int(np.sum(ds.code == c)) for c, sym in enumerate(ds.symbols)}
    return {"symbols": list(ds.symbols), "rows": rows, "first_ts": _iso(int(ds.ts_ms.min())),
            "last_ts": _iso(int(ds.ts_ms.max())), "shards": len(shards), "shard_hash": runs.shard_fingerprint(shards)}


def _write_run(cfg, run_id, now, resolved, fingerprint, arms: dict[str, Arm], evaluation: Evaluation, prices: pa.Table,
               alignment, timings, ingestion: list[dict] | None = None):
    """Every file of CONTRACT §10, then the charts and the report, then publish."""
    from mscale.report import build_report, flat_row
    from mscale.report.html import render_report

    folder = runs.RunFolder(cfg.runs_dir, run_id)
    try:
        folder.json("config.json", {"run_id": run_id, "created_at": now, "config": resolved, "data": fingerprint,
                                    "git_commit": runs.git_commit(cfg.project_root)})
        given = {rep["symbol"]: rep for rep in ingestion or []}
        symbols = fingerprint["symbols"]
        reports = [given[s] for s in symbols] if set(symbols) <= set(given) else build_report(cfg, symbols)
        folder.json("ingestion.json", [flat_row(rep) for rep in reports])
        metrics: dict[str, Any] = {"run_id": run_id, "tune_fee": cfg.train.tune_fee, "timings": timings, "arms": {}}
        for name, arm in arms.items():
            metrics["arms"][name] = {"backtest": arm.backtest.metrics.to_pylist(), "columns": len(arm.columns),
                                     "models": _model_quality(arm), "tuning": _tuning_summary(arm)}
        if evaluation.comparison:
            metrics["comparison"] = evaluation.comparison
        metrics["verdict"] = verdict_line(evaluation, cfg.train.tune_fee)
        folder.json("metrics.json", metrics)
        write_evaluation(folder, evaluation)
        folder.csv("folds.csv", pa.Table.from_pylist([row for arm in arms.values() for row in arm.folds]))
        folder.parquet(runs.PREDICTIONS, pa.concat_tables([arm.oos for arm in arms.values()]))
        folder.parquet(runs.PRICES, prices)  # what a backtest re-run needs, so it never reads the warehouse
        folder.text("alignment.log", "\n".join(alignment) + "\n")
        folder.csv("importance.csv", _importance(arms))
        folder.parquet(runs.SUMMARY, _summary_row(cfg, run_id, now, fingerprint, arms, evaluation.comparison))
        started = time.perf_counter()
        render_report(folder.path)
        timings["report_s"] = time.perf_counter() - started
        return folder.publish()
    except BaseException:
        folder.discard()
        raise


def _model_quality(arm: Arm) -> dict:
    """Means over the folds and tokens (NaN where a metric never applied, e.g. AUCs without aux models)."""
    keys = ("accuracy", "majority_rate", "macro_f1", "log_loss", "brier", "auc_vol_high", "auc_volm_up")
    out = {}
    for k in keys:
        values = np.array([row[k] for row in arm.folds], dtype=float)
        out[k] = float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else math.nan
    return out


def _tuning_summary(arm: Arm) -> dict:
    return {"configs_per_tuning": int(np.median([t.n_configs for t in arm.tuned])),
            "tunings": len(arm.tuned), "median_sharpe_var": float(np.nanmedian([t.sharpe_var for t in arm.tuned])),
            "flat_tunings": int(sum(math.isnan(t.val_sharpe) for t in arm.tuned))}


def _importance(arms: dict[str, Arm]) -> pa.Table:
    rows = []
    for name, arm in arms.items():
        totals: dict[str, float] = {}
        for (task, _feature), values in arm.importance.items():
            totals[task] = totals.get(task, 0.0) + float(np.mean(values))
        for (task, feature), values in sorted(arm.importance.items(), key=lambda kv: (kv[0][0], -np.mean(kv[1]))):
            mean = float(np.mean(values))
            rows.append({"feature_set": name, "task": task, "feature": feature, "importance": mean,
                         "share": mean / totals[task] if totals[task] else 0.0})
    return pa.Table.from_pylist(rows)


def _summary_row(cfg, run_id, now, fingerprint, arms: dict[str, Arm], comparison) -> pa.Table:
    s = cfg.train
    main = arms[main_arm(arms)]
    quality = _model_quality(main)
    row: dict[str, Any] = {
        "run_id": run_id, "created_at": now, "model": s.model, "feature_set": ",".join(arms), "split_mode": s.split_mode,
        "n_splits": s.n_splits, "fit": s.fit, "symbols": ",".join(fingerprint["symbols"]), "tune_fee": s.tune_fee,
        "fill": s.fill, "filter": s.filter, "shuffle_labels": s.shuffle_labels, "first_ts": fingerprint["first_ts"],
        "last_ts": fingerprint["last_ts"], **headline(main.backtest, s.tune_fee),
        "dir_accuracy": quality["accuracy"], "dir_majority_rate": quality["majority_rate"],
        "auc_vol_high": quality["auc_vol_high"], "auc_volm_up": quality["auc_volm_up"],
    }
    if comparison:
        row["hourly_pooled_net_sharpe"] = arms["hourly"].backtest.metric("sharpe", tier=s.tune_fee)
        pooled = comparison["pooled"]
        row.update(sharpe_diff=pooled["difference"], diff_low=pooled["low"], diff_high=pooled["high"])
    row["run_dir"] = str(cfg.runs_dir / run_id)
    return pa.Table.from_pylist([row])


def _refresh_views(cfg: Config) -> None:
    """Recreate `runs` / `run_predictions` so the new run shows up; a locked warehouse only warns."""
    from mscale.warehouse.build import connect

    try:
        con = connect(cfg.warehouse)
    except MscaleError as e:
        log.warning("run views not refreshed (%s); `mscale features` refreshes them later", e)
        return
    try:
        runs.create_run_views(con, cfg.runs_dir)
    finally:
        con.close()
