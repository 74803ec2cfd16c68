"""The training table: features and labels pulled from the warehouse as Arrow, aligned on (symbol, ts).

The I/O edge of the research loop. Only the columns a run needs are read. Feature sets
(CONTRACT §4, the seed plan's comparison):
- `hourly`: the hourly block (`features_hourly`'s columns) and their rolling z-scores;
- `multiscale`: every column of the `features` mart (hourly, minute→hour, cross-scale, time, z-scores).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa

from mscale.errors import MscaleError
from mscale.schema import validate_symbol

FEATURE_SETS = ("hourly", "multiscale")
KEY = ("symbol", "ts")
NOT_FEATURES = {"symbol", "ts", "close", "m_last_close_time"}  # keys, a price level, a timestamp


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    try:
        return [row[0] for row in con.execute(f"describe {relation}").fetchall()]
    except duckdb.Error:
        raise MscaleError(f"the warehouse has no `{relation}` view: run `mscale features` first") from None


def feature_columns(con: duckdb.DuckDBPyConnection, feature_set: str) -> list[str]:
    """The model inputs of a feature set, in the mart's column order."""
    mart = [c for c in _columns(con, "features") if c not in NOT_FEATURES]
    if feature_set == "multiscale":
        return mart
    if feature_set == "hourly":
        hourly = set(_columns(con, "features_hourly")) - NOT_FEATURES
        return [c for c in mart if c in hourly or (c.endswith("_z") and c[:-2] in hourly)]
    raise MscaleError(f"unknown feature set {feature_set!r}: use one of {', '.join(FEATURE_SETS)}")


def check_columns(con: duckdb.DuckDBPyConnection, requested: list[str]) -> list[str]:
    """`requested` if every column is a feature of the mart, else a one-line error naming the first
    unknown one and its closest matches."""
    available = [c for c in _columns(con, "features") if c not in NOT_FEATURES]
    for c in requested:
        if c not in available:
            near = difflib.get_close_matches(c, available, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; `mscale sql \"describe features\"` lists them"
            raise MscaleError(f"feature column {c!r} does not exist in the features mart{hint}")
    return requested


@dataclass
class Dataset:
    """Rows sorted by (symbol, ts); every array is aligned with `ts_ms`."""

    symbols: tuple[str, ...]
    code: np.ndarray  # index into symbols
    ts_ms: np.ndarray
    label_end_ms: np.ndarray
    features: np.ndarray  # (rows, columns) float64, NaN where NULL
    columns: list[str]
    labels: dict[str, np.ndarray]  # float64, NaN where NULL
    seconds: float = 0.0  # spent reading from DuckDB

    def subset(self, columns: list[str]) -> np.ndarray:
        """The feature matrix of `columns` (a subset of `self.columns`)."""
        index = {c: j for j, c in enumerate(self.columns)}
        return self.features[:, [index[c] for c in columns]]

    def table(self, rows: np.ndarray) -> pa.Table:
        """symbol and ts of `rows`, for prediction tables."""
        symbol = pa.DictionaryArray.from_arrays(pa.array(self.code[rows].astype(np.int32)), pa.array(list(self.symbols)))
        ts = pa.array(self.ts_ms[rows] * 1000).cast(pa.timestamp("us", tz="UTC"))
        return pa.table({"symbol": symbol.cast(pa.string()), "ts": ts})


def load_dataset(
    con: duckdb.DuckDBPyConnection,
    *,
    columns: list[str],
    labels: list[str],
    symbols: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Dataset:
    """Features `columns` and `labels` for `symbols` (all when None) with start < ts <= end.

    Refuses (one-line error) when the features and labels views disagree on their keys: every
    feature row must have exactly one label row.
    """
    started = time.perf_counter()
    where, args = ["true"], []
    if symbols:
        known = {row[0] for row in con.execute("select distinct symbol from features").fetchall()}
        unknown = sorted({validate_symbol(s) for s in symbols} - known)
        if unknown:
            raise MscaleError(f"no features for {', '.join(unknown)}; symbols in the warehouse: {', '.join(sorted(known))}")
        where.append(f"f.symbol in ({', '.join('?' for _ in symbols)})")
        args += list(symbols)
    if start is not None:
        where.append("f.ts > ?")
        args.append(start)
    if end is not None:
        where.append("f.ts <= ?")
        args.append(end)
    condition = " and ".join(where)
    label_cols = _columns(con, "labels")
    missing = [c for c in [*labels, "label_end"] if c not in label_cols]
    if missing:
        raise MscaleError(f"the labels view lacks {', '.join(missing)}: rebuild it with `mscale features`")
    orphans = con.execute(
        f"select count(*), min(symbol || ' ' || strftime(ts at time zone 'UTC', '%Y-%m-%d %H:%M')) "
        f"from (select symbol, ts from features as f where {condition}) as f anti join labels as l using (symbol, ts)", args
    ).fetchone()
    if orphans[0]:
        raise MscaleError(f"features and labels are misaligned: {orphans[0]} feature rows have no label row "
                          f"(first: {orphans[1]}); rebuild both with `mscale features`")
    select = ", ".join([f"f.{c}" for c in columns] + [f"l.{c}" for c in labels])
    query = (f"select f.symbol, epoch_ms(f.ts) as ts_ms, epoch_ms(l.label_end) as label_end_ms, {select} "
             f"from features as f join labels as l using (symbol, ts) where {condition} "
             f"order by f.symbol, f.ts")
    table = con.execute(query, args).to_arrow_table()
    if table.num_rows == 0:
        raise MscaleError("no feature rows for these symbols and dates: check --symbols / --start / --end, or run `mscale features`")
    names = np.asarray(table.column("symbol").to_pylist())
    symbols_found, code = np.unique(names, return_inverse=True)
    features = np.column_stack([_float(table, c) for c in columns]) if columns else np.empty((table.num_rows, 0))
    return Dataset(
        symbols=tuple(str(s) for s in symbols_found),
        code=code,
        ts_ms=table.column("ts_ms").to_numpy(),
        label_end_ms=table.column("label_end_ms").to_numpy(),
        features=features,
        columns=list(columns),
        labels={c: _float(table, c) for c in labels},
        seconds=time.perf_counter() - started,
    )


def _float(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
