"""Experiment runs: the `_exp/<run_id>/` folder (CONTRACT §10) and the warehouse views over all runs.

A run folder is the interface between training, the backtest re-runs and the report: written in
a hidden temporary folder and renamed into place only when complete, never overwritten.
`run_id` = UTC start time + a short hash of the resolved config.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mscale.errors import MscaleError
from mscale.warehouse.render import sql_string

SUMMARY = "summary.parquet"  # one row: what the `runs` view shows
PREDICTIONS = "predictions.parquet"
PRICES = "prices.parquet"  # the fills-view rows the run's backtest used


def make_run_id(config: dict[str, Any], now: datetime) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{digest}"


def git_commit(root: Path) -> str | None:
    """The project's HEAD commit (with '-dirty' when the work tree has changes), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def shard_fingerprint(paths: list[Path]) -> str:
    """Hash of the shard file names and sizes a run read."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


class RunFolder:
    """Writes a run into `<exp_dir>/.tmp/<run_id>/` (out of the views' `*/` glob); `publish()`
    renames it to `<exp_dir>/<run_id>/`."""

    def __init__(self, exp_dir: Path, run_id: str):
        self.final = Path(exp_dir) / run_id
        if self.final.exists():
            raise MscaleError(f"run folder {self.final} already exists; runs are never overwritten")
        self.path = Path(exp_dir) / ".tmp" / run_id
        try:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        except OSError as e:
            raise MscaleError(f"cannot create the run folder under {exp_dir} ({e.strerror}); pick another with --out") from None

    def file(self, name: str) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def json(self, name: str, obj: Any) -> None:
        """Strict JSON: NaN and infinities are written as null."""
        self.file(name).write_text(json.dumps(_finite(obj), indent=1, sort_keys=False, default=_jsonable, allow_nan=False) + "\n")

    def parquet(self, name: str, table: pa.Table) -> None:
        pq.write_table(table, self.file(name))

    def csv(self, name: str, table: pa.Table) -> None:
        pacsv.write_csv(table, self.file(name))

    def text(self, name: str, text: str) -> None:
        self.file(name).write_text(text)

    def publish(self) -> Path:
        os.replace(self.path, self.final)
        self._tidy()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._tidy()

    def _tidy(self) -> None:
        try:
            self.path.parent.rmdir()  # the .tmp folder, when no other run is being written
        except OSError:
            pass


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return _finite(obj.item())
    return obj


def _jsonable(value: Any) -> Any:
    """json.dumps's fallback for what `_finite` leaves that JSON has no type for (numbers and
    numpy scalars never get here)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# --- views over every run ----------------------------------------------------------------------


_EMPTY_RUNS = """select null::varchar as run_id, null::timestamptz as created_at, null::varchar as model,
    null::varchar as feature_set, null::varchar as split_mode, null::varchar as symbols,
    null::double as pooled_net_sharpe where false"""
_EMPTY_PREDICTIONS = """select null::varchar as run_id, null::varchar as symbol, null::timestamptz as ts,
    null::varchar as feature_set, null::integer as fold where false"""


def create_run_views(con, exp_dir: Path) -> None:
    """`runs` (one row per run) and `run_predictions` (every run's OOS predictions) over
    `<exp_dir>/*/`. Both read the files in place, so a new run shows up without recreating them
    as long as one run existed when they were created; with none yet they are empty."""
    exp_dir = Path(exp_dir).resolve()
    summaries = sorted(exp_dir.glob(f"*/{SUMMARY}"))
    runs = (f"select * from read_parquet({sql_string(str(exp_dir / '*' / SUMMARY))}, union_by_name = true)"
            if summaries else _EMPTY_RUNS)
    predictions = (f"select * from read_parquet({sql_string(str(exp_dir / '*' / PREDICTIONS))}, union_by_name = true)"
                   if any(p.with_name(PREDICTIONS).exists() for p in summaries) else _EMPTY_PREDICTIONS)
    con.execute(f"create or replace view runs as {runs}")
    con.execute(f"create or replace view run_predictions as {predictions}")
