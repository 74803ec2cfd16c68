"""`report.html`: one self-contained page per run (or backtest re-run), rendered from its files.

Images are embedded as data URIs and the CSS is inline, so the page opens from disk with no server
and no network, and prints. The page renders what the run stored; the only numbers computed here
are layout (which rows, which columns), never a metric.
"""

from __future__ import annotations

import base64
import json
import math
import multiprocessing as mp
import os
from collections.abc import Callable
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mscale.report import charts

TEMPLATES = Path(__file__).parent / "templates"
# (key, header, kind): "ret" a signed return, "share" an unsigned fraction shown in %, "num", "int"
METRIC_COLUMNS = (
    ("total_return", "total return", "ret"), ("cagr", "CAGR", "ret"), ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"), ("max_drawdown", "max DD", "share"), ("max_dd_duration_h", "DD hours", "int"),
    ("calmar", "Calmar", "num"), ("hit_rate_trade", "hit/trade", "share"), ("hit_rate_bar", "hit/bar", "share"),
    ("exposure", "exposure", "share"), ("trades_per_day", "trades/day", "num"), ("avg_hold_h", "avg hold h", "num"),
    ("fee_drag_return", "fee drag", "ret"), ("fee_drag_sharpe", "fee drag SR", "num"),
    ("latency_drag_return", "latency drag", "ret"), ("psr", "PSR", "num"), ("dsr", "DSR", "num"),
)
FOLD_MODEL_COLUMNS = ("feature_set", "fold", "symbol", "test_start", "test_end", "fit_rows", "fold_purged_fit",
                      "fold_purged_val", "share_down", "share_flat", "share_up", "accuracy", "majority_rate", "log_loss",
                      "auc_vol_high", "auc_volm_up", "theta_long", "theta_short", "theta_vol", "theta_volm", "val_dsr")
FOLD_TRADING_COLUMNS = ("trades_per_day", "avg_hold_h")  # and net_sharpe_<tier>: the training run's knobs
SECTIONS = ("verdict", "charts", "comparison", "metrics", "folds", "importance", "data", "config")  # page order


def fmt(value: Any, kind: str = "num") -> str:
    """A table cell: NaN/None as an en dash; "ret" a signed percentage, "share" an unsigned one,
    "int" a whole number with thousands separators, "num" as it is. Any other kind is an error."""
    if kind not in ("num", "ret", "share", "int"):
        raise ValueError(f"unknown cell kind {kind!r}")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind in ("ret", "share"):
        sign = "+" if kind == "ret" else ""
        return f"{100 * value:{sign}.1f}%" if abs(value) < 1e4 else f"{value:{sign}.2e}"
    if kind == "int":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def _png_uri(path: Path) -> str:
    """The PNG as a data URI, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


def render_report(run_dir: Path, *, base_dir: Path | None = None) -> Path:
    """Draw the charts into `<run_dir>/charts/` and write `<run_dir>/report.html`.

    `run_dir` holds the backtest step's files (metrics.json, pnl/, trades.parquet, fee_curve.parquet);
    `base_dir` (default: the same folder) the training run's (config.json, ingestion.json,
    folds.csv, importance.csv, predictions.parquet). A backtest re-run passes its parent run.
    """
    run_dir = Path(run_dir)
    base = Path(base_dir) if base_dir else run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((base / "config.json").read_text())
    rerun = json.loads((run_dir / "config.json").read_text()) if base_dir else None
    backtest = (rerun or config)["config"]["backtest"]
    from mscale.research.evaluate import main_arm

    arms = list(metrics["arms"])
    main = main_arm(arms)
    pnl = pq.read_table(run_dir / "pnl" / main / "tokens.parquet")
    pooled = charts.frame(pq.read_table(run_dir / "pnl" / main / "pooled.parquet"))
    trades = pq.read_table(run_dir / "trades.parquet")
    trades = trades.filter(pc.equal(trades.column("feature_set"), main))
    curve = pq.read_table(run_dir / "fee_curve.parquet")
    curve = charts.frame(curve.filter(pc.equal(curve.column("arm"), main)))
    folds = pacsv.read_csv(base / "folds.csv").to_pylist()
    tiers = list(backtest["tiers"])
    symbols = sorted(set(pnl.column("symbol").cast(pa.string()).to_pylist()))
    filter_note = f"filter {backtest['rules']['filter']}, fill {backtest['fill']}"

    out = run_dir / "charts"
    jobs: list[tuple[str, str, Callable[[], Any]]] = []  # (file stem, caption, figure builder)

    def add(key: str, caption: str, build: Callable[[], Any]) -> None:
        jobs.append((key, caption, build))

    main_rows = [r for r in metrics["arms"][main]["backtest"] if r["strategy"] == "model"]
    for symbol in [*symbols, "pooled"]:
        table = pooled if symbol == "pooled" else charts.frame(pnl, symbol)
        deals = charts.frame(trades, None if symbol == "pooled" else symbol)
        spans = _fold_spans(folds, main, None if symbol == "pooled" else symbol)
        drag = {r["tier"]: r["fee_drag_return"] for r in main_rows if r["symbol"] == symbol and r["fee_bps"] > 0}
        add(f"equity_{main}_{symbol}", f"{symbol} ({main} features): equity per fee tier with the OOS test blocks shaded, "
            f"buy-and-hold dashed; trades per day below",
            partial(charts.two_panel, table, deals, tiers, spans, title=f"{symbol} ({main})", fee_drag=drag))
    marked = {tier: bps for tier, bps in backtest["tiers"].items() if bps > 0}
    add("fee_curve", f"net Sharpe and net total return against the fee per side, the run's tiers marked ({filter_note})",
        partial(charts.fee_curve, curve, title=main, marked=marked))
    predictions = pq.read_table(base / "predictions.parquet")
    predictions = predictions.filter(pc.equal(predictions.column("feature_set"), main))
    if "p_vol_high" in predictions.column_names and pc.sum(pc.is_valid(predictions.column("p_vol_high"))).as_py():
        add("vol_high_rate", "predicted vs realised rate of high-volatility hours",
            partial(charts.vol_high_rate, charts.frame(predictions.select(["ts", "p_vol_high", "y_vol_high"])), title=main))
    if metrics.get("comparison"):
        tier = metrics["comparison"]["tier"]
        sharpes = {arm: {r["symbol"]: r["sharpe"] for r in metrics["arms"][arm]["backtest"]
                         if r["strategy"] == "model" and r["tier"] == tier} for arm in ("hourly", "multiscale")}
        add("comparison", "hourly vs multiscale: OOS net Sharpe per arm and the difference with its 95% interval",
            partial(charts.comparison, metrics["comparison"], sharpes))
    add("drawdown", "drawdown of the pooled portfolio per fee tier", partial(charts.drawdown, pooled, tiers, title=main))
    pnl_all = charts.frame(pnl)
    for tier in tiers:
        add(f"equity_tier_{tier}", f"every token and the pool net of {tier} ({filter_note})",
            partial(charts.equity_at_tier, pnl_all, pooled, tier, title=f"{main}, {filter_note}"))

    fold_columns = [c for c in FOLD_MODEL_COLUMNS if folds and c in folds[0]]
    if not base_dir:  # a re-run's knobs differ from the ones these trading columns were measured with
        fold_columns += [c for c in (folds[0] if folds else {}) if c in FOLD_TRADING_COLUMNS or c.startswith("net_sharpe_")]
    context = {
        "title": f"mscale run {config['run_id']}" + (f", backtest {run_dir.name}" if base_dir else ""),
        "run_id": config["run_id"], "sub_run": run_dir.name if base_dir else None,
        "rendered": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "verdict": metrics.get("verdict", "(this run stored no verdict line)"),
        "config_json": json.dumps(config.get("config", {}), indent=1, default=str),
        "rerun_json": json.dumps(rerun, indent=1, default=str) if rerun else None,
        "fingerprint": config.get("data", {}), "git_commit": config.get("git_commit"),
        "ingestion": _read_json(base / "ingestion.json") or [],
        "metric_columns": METRIC_COLUMNS, "metric_tables": _metric_tables(metrics, tiers),
        "figures": [(key, caption, _png_uri(path)) for (key, caption, _), path in zip(jobs, draw_all(jobs, out))],
        "fold_columns": fold_columns,
        "folds": folds, "importance": _top_importance(base / "importance.csv", main),
        "comparison": metrics.get("comparison"), "arms": arms, "main": main, "fmt": fmt, "sections": SECTIONS,
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    path = run_dir / "report.html"
    path.write_text(env.get_template("report.html.j2").render(**context))
    return path


_PENDING: list[tuple[Callable[[], Any], Path]] = []  # the figures a forked worker draws


def _draw(i: int) -> Path:
    build, path = _PENDING[i]
    return charts.save(build(), path)


def draw_all(jobs: list[tuple[str, str, Callable[[], Any]]], out: Path) -> list[Path]:
    """Draw and save every figure, on both cores where the platform can fork (figures are
    independent; forked workers inherit the data, nothing is pickled). Returns the PNG paths."""
    _PENDING[:] = [(build, out / f"{key}.png") for key, _, build in jobs]
    try:
        if len(_PENDING) > 2 and "fork" in mp.get_all_start_methods():
            charts.warm_up()  # fonts and the text layout caches load once, here, not in every worker
            with mp.get_context("fork").Pool(min(2, os.cpu_count() or 1)) as pool:
                return pool.map(_draw, range(len(_PENDING)))
        return [_draw(i) for i in range(len(_PENDING))]
    finally:
        _PENDING.clear()


def _fold_spans(folds: list[dict], arm: str, symbol: str | None) -> list[tuple]:
    """Each fold's test block (first and last decision time), for one symbol or over all."""
    spans: dict[int, tuple] = {}
    for f in folds:
        if f["feature_set"] == arm and (symbol is None or f["symbol"] == symbol):
            start, end = spans.get(f["fold"], (f["test_start"], f["test_end"]))
            spans[f["fold"]] = (min(start, f["test_start"]), max(end, f["test_end"]))
    return [spans[k] for k in sorted(spans)]


def _metric_tables(metrics: dict, tiers: list[str]) -> list[dict]:
    """One table per arm and tier: a row per token and the pool, model then buy-and-hold."""
    tables = []
    for arm, data in metrics["arms"].items():
        for tier in tiers:
            rows = [r for r in data["backtest"] if r["tier"] == tier]
            rows.sort(key=lambda r: (r["strategy"] != "model", r["symbol"] == "pooled", r["symbol"]))
            tables.append({"arm": arm, "tier": tier, "fee_bps": rows[0]["fee_bps"] if rows else 0, "rows": rows})
    return tables


def _top_importance(path: Path, arm: str, top: int = 20) -> dict[str, list[dict]]:
    if not path.exists():
        return {}
    rows = [r for r in pacsv.read_csv(path).to_pylist() if r["feature_set"] == arm]
    out: dict[str, list[dict]] = {}
    for task in ("dir", "vol_high", "volm_up"):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: -r["importance"])[:top]
        if mine:
            out[task] = mine
    return out
