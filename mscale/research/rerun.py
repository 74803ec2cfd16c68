"""`mscale backtest --run _exp/<run_id>`: the backtest step again on a run's stored predictions
and tuned thresholds, with other fees, fills, filters or risk knobs; no retraining.

The new results go to `_exp/<run_id>/backtests/<sub_id>/` (same files as the run's own backtest
step, plus charts and report.html), published whole, never over anything. With the run's own
settings the re-run reproduces the stored per-bar PnL exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from mscale.backtest import Rules, parse_fees
from mscale.config import Config
from mscale.errors import MscaleError
from mscale.research import runs
from mscale.research.evaluate import (BacktestSettings, Evaluation, backtest_metrics, evaluate, verdict_line,
                                      write_evaluation)

RULE_KNOBS = ("filter", "filter_exit", "long_only", "min_hold", "cooldown", "max_trades_per_day", "theta_vol", "theta_volm")


def stored_settings(run_dir: Path) -> BacktestSettings:
    """The backtest settings a training run used (its config.json)."""
    config = json.loads((run_dir / "config.json").read_text())
    b = config["config"]["backtest"]
    return BacktestSettings(tiers=parse_fees(b["tiers"]), rules=Rules(**b["rules"]), fill=b["fill"],
                            slippage=b["slippage"], tune_fee=b["tune_fee"], trials=b["trials"],
                            trials_sharpe_var=b["trials_sharpe_var"], block_h=b["block_h"], seed=b["seed"])


def backtest_run(cfg: Config, run_dir: Path, *, fees: Any = None, fill: str | None = None, slippage: Any = None,
                 **knobs: Any) -> tuple[Path, Evaluation]:
    """Re-run the backtest step of `run_dir` with the given overrides; returns the sub-run folder."""
    from mscale.report.html import render_report

    run_dir = Path(run_dir).resolve()
    missing = [name for name in ("config.json", runs.PREDICTIONS, runs.PRICES) if not (run_dir / name).is_file()]
    if missing:
        raise MscaleError(f"{run_dir} is not a complete training run folder (no {', '.join(missing)}); "
                          f"give one of the folders under {cfg.runs_dir}")
    base = stored_settings(run_dir)
    unknown = set(knobs) - set(RULE_KNOBS)
    if unknown:
        raise MscaleError(f"unknown backtest knob(s) {sorted(unknown)}: use {', '.join(RULE_KNOBS)}")
    rules = replace(base.rules, **{k: v for k, v in knobs.items() if v is not None})
    tiers = parse_fees(fees) if fees is not None else base.tiers
    if base.tune_fee not in tiers:  # the thresholds were tuned at this tier: it stays the headline
        tiers = {**tiers, base.tune_fee: base.tiers[base.tune_fee]}
    settings = replace(base, tiers=tiers, rules=rules, fill=fill or base.fill,
                       slippage=base.slippage if slippage is None else slippage)
    predictions = pq.read_table(run_dir / runs.PREDICTIONS)
    arms = sorted(set(predictions.column("feature_set").to_pylist()))
    oos = {arm: predictions.filter(pc.equal(predictions.column("feature_set"), arm)) for arm in arms}
    prices = pq.read_table(run_dir / runs.PRICES)  # the prices the run's own backtest used
    evaluation = evaluate(oos, prices, settings)

    now = datetime.now(timezone.utc)
    digest = hashlib.sha256(json.dumps(settings.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:6]
    folder = runs.RunFolder(run_dir / "backtests", f"{now:%Y%m%dT%H%M%S.%f}Z-{digest}")
    try:
        folder.json("config.json", {"run_id": run_dir.name, "created_at": now, "config": {"backtest": settings.as_dict()},
                                    "overrides": {"fees": fees, "fill": fill, "slippage": slippage, **knobs}})
        metrics: dict[str, Any] = {"run_id": run_dir.name, "tune_fee": settings.tune_fee,
                                   "arms": {arm: {"backtest": rows} for arm, rows in backtest_metrics(evaluation).items()}}
        if evaluation.comparison:
            metrics["comparison"] = evaluation.comparison
        metrics["verdict"] = verdict_line(evaluation, settings.tune_fee)
        folder.json("metrics.json", metrics)
        write_evaluation(folder, evaluation)
        render_report(folder.path, base_dir=run_dir)
        return folder.publish(), evaluation
    except BaseException:
        folder.discard()
        raise
