"""`mscale audit`: the leak test on the user's own data and SQL.

For K random cut times c (decision times of sampled symbols) it recomputes every feature relation
(every view under sql/features/ and the mart, including files the user added) three times over the
months around c: on the data as stored, on a copy truncated to close_time <= c, and on a copy where
every price and volume after c is multiplied by 10. A feature is leak-free when its values at every
ts <= c are the same in all three; any column that differs is reported with the first (symbol, ts).
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscale.config import Config
from mscale.errors import MscaleError
from mscale.store import list_shards, read_shard, write_klines
from mscale.warehouse import render as r
from mscale.warehouse.build import connect, create_views, warmup_start

log = logging.getLogger(__name__)

POISON_FACTOR = 10.0
_POISONED_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote")


@dataclass
class ColumnVerdict:
    relation: str
    column: str
    leaks: bool = False
    variant: str = ""  # "truncated" or "poisoned"
    first_symbol: str = ""
    first_ts: datetime | None = None
    cut: datetime | None = None


@dataclass
class AuditResult:
    cuts: list[tuple[str, datetime]] = field(default_factory=list)
    columns: dict[tuple[str, str], ColumnVerdict] = field(default_factory=dict)
    comparisons: int = 0  # (cut, column) pairs compared, each on the truncated and the poisoned copy
    rows_compared: int = 0  # rows at ts <= cut, summed over cuts and relations

    @property
    def ok(self) -> bool:
        return not any(v.leaks for v in self.columns.values())

    @property
    def leaking(self) -> list[ColumnVerdict]:
        return [v for v in self.columns.values() if v.leaks]


def _cut_tables(table: pa.Table, cut_ms: int, mode: str) -> pa.Table:
    """Rows with close_time <= cut unchanged; later rows dropped ("truncated") or scaled ("poisoned")."""
    close_ms = table.column("close_time").cast(pa.int64()).to_numpy()
    after = close_ms > cut_ms
    if mode == "truncated":
        return table.filter(pa.array(~after))
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if name in _POISONED_COLUMNS:
            values = col.to_numpy(zero_copy_only=False).astype(float)
            values = np.where(after, values * POISON_FACTOR, values)
            col = pa.array(values, col.type)
        cols[name] = col
    return pa.table(cols, schema=table.schema)


def _relations(con, models: list[r.Model]) -> list[str]:
    """Feature relations with a (symbol, ts) key."""
    out = []
    for m in models:
        if m.layer not in r.FEATURE_LAYERS:
            continue
        cols = {row[0] for row in con.execute(f"describe {m.name}").fetchall()}
        if {"symbol", "ts"} <= cols:
            out.append(m.name)
    return out


def _compute_all(sql_dir: Path, data_dir: Path, params: r.RenderParams, cut: datetime,
                 extra_dirs: tuple[Path, ...] = ()) -> dict[str, pa.Table]:
    """Every feature relation over the shards in `data_dir`, rows with ts <= cut, sorted by (symbol, ts)."""
    minute = sorted(str(s.path) for s in list_shards(data_dir, "1m"))
    hourly = sorted(str(s.path) for s in list_shards(data_dir, "1h"))
    p = replace(params, minute_files=minute, hourly_files=hourly, minute_from=None, minute_to=None,
                hourly_from=None, hourly_to=None, out_from=None, out_to=None)
    con = connect()
    con.execute("set threads = 1")
    try:
        models = create_views(con, sql_dir, p, layers=("sources", "staging") + r.FEATURE_LAYERS, extra_dirs=extra_dirs)
        return {
            name: con.execute(f"select * from {name} where ts <= ? order by symbol, ts", [cut]).to_arrow_table()
            for name in _relations(con, models)
        }
    finally:
        con.close()


def _first_difference(a: pa.Table, b: pa.Table, column: str) -> int | None:
    """Index of the first row where `column` differs (NULL-aware, exact), or None."""
    if a.num_rows != b.num_rows:
        return min(a.num_rows, b.num_rows)
    x, y = a.column(column), b.column(column)
    if x.equals(y):
        return None
    xn, yn = pc.is_null(x).to_numpy(zero_copy_only=False), pc.is_null(y).to_numpy(zero_copy_only=False)
    if pa.types.is_floating(x.type) or pa.types.is_integer(x.type):
        xv = x.to_numpy(zero_copy_only=False).astype(float)
        yv = y.to_numpy(zero_copy_only=False).astype(float)
        same = (xn & yn) | (~xn & ~yn & ((xv == yv) | (np.isnan(xv) & np.isnan(yv))))
    else:
        same = np.array([u == v for u, v in zip(x.to_pylist(), y.to_pylist())])
    bad = np.flatnonzero(~same)
    return int(bad[0]) if len(bad) else None


def audit(
    cfg: Config,
    *,
    cuts: int = 3,
    symbols: list[str] | None = None,
    seed: int = 0,
    sql_dir: Path | None = None,
) -> AuditResult:
    """Run the truncation and poisoning leak test at `cuts` random decision times (at least one: an
    audit that compares nothing cannot fail, so it is refused, and so is one that found no rows)."""
    if isinstance(cuts, bool) or not isinstance(cuts, int) or cuts < 1:
        raise MscaleError(f"--cuts must be a whole number >= 1, got {cuts!r}: an audit with no cut compares nothing")
    sql_dir = Path(sql_dir or cfg.sql_dir)
    extra_dirs = cfg.extra_feature_dirs if sql_dir == cfg.sql_dir else ()
    hourly = list_shards(cfg.market_dir, "1h")
    available = sorted({s.symbol for s in hourly})
    if not available:
        raise MscaleError(f"no hourly shards under {cfg.hourly_dir}: nothing to audit; run `mscale demo-data` first")
    rng = random.Random(seed)
    chosen = symbols or rng.sample(available, min(2, len(available)))
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise MscaleError(f"no hourly data for {', '.join(unknown)}; symbols with data: {', '.join(available)}")
    params = r.params_from_config(cfg)
    result = AuditResult()
    for k in range(cuts):
        symbol = chosen[k % len(chosen)]
        shards_1h = [s for s in hourly if s.symbol == symbol]
        months = sorted({(s.year, s.month) for s in shards_1h})
        year, month = months[rng.randrange(len(months))]
        index = year * 12 + month - 1
        start = warmup_start(index)
        span = {(i // 12, i % 12 + 1) for i in range(start.year * 12 + start.month - 1, index + 2)}
        bars = pa.concat_tables([read_shard(s.path) for s in shards_1h if (s.year, s.month) == (year, month)])
        close_ms = bars.column("close_time").cast(pa.int64()).to_numpy()
        cut_ms = int(close_ms[rng.randrange(len(close_ms))])
        cut = datetime.fromtimestamp(cut_ms / 1000, tz=timezone.utc)
        result.cuts.append((symbol, cut))
        log.info("audit cut %d/%d: %s at %s", k + 1, cuts, symbol, cut.isoformat())
        with tempfile.TemporaryDirectory(prefix="mscale-audit-") as tmp:
            variants = {}
            for variant in ("original", "truncated", "poisoned"):
                root = Path(tmp) / variant
                for interval in ("1m", "1h"):
                    for s in list_shards(cfg.market_dir, interval, symbol):
                        if (s.year, s.month) in span:
                            table = read_shard(s.path)
                            if variant != "original":
                                table = _cut_tables(table, cut_ms, variant)
                            if table.num_rows:
                                write_klines(root, interval, table)
                variants[variant] = _compute_all(sql_dir, root, params, cut, extra_dirs)
            for relation, original in variants["original"].items():
                result.rows_compared += original.num_rows
                for column in original.column_names:
                    if column in ("symbol", "ts"):
                        continue
                    verdict = result.columns.setdefault((relation, column), ColumnVerdict(relation, column))
                    result.comparisons += 1
                    for variant in ("truncated", "poisoned"):
                        other = variants[variant].get(relation)
                        i = _first_difference(original, other, column) if other is not None and column in other.column_names else 0
                        if i is not None and not verdict.leaks:
                            row = original.slice(min(i, original.num_rows - 1), 1).to_pylist()[0] if original.num_rows else {}
                            verdict.leaks, verdict.variant, verdict.cut = True, variant, cut
                            verdict.first_symbol, verdict.first_ts = row.get("symbol", symbol), row.get("ts")
    if not result.comparisons or not result.rows_compared:
        raise MscaleError(f"the audit compared nothing ({result.comparisons} columns, {result.rows_compared} rows at "
                          "or before its cuts): check the feature views and the data of the audited symbols")
    return result


def format_audit(result: AuditResult) -> str:
    """Leaking columns one per line with the first offending (symbol, ts); clean relations summarised."""
    lines = ["cuts: " + ", ".join(f"{s} @ {c:%Y-%m-%d %H:%M}Z" for s, c in result.cuts)]
    for v in sorted(result.leaking, key=lambda v: (v.relation, v.column)):
        lines.append(
            f"LEAK {v.relation}.{v.column}: differs on the {v.variant} copy (cut {v.cut:%Y-%m-%d %H:%M}Z), "
            f"first at {v.first_symbol} {v.first_ts}"
        )
    by_relation: dict[str, list[ColumnVerdict]] = {}
    for v in result.columns.values():
        by_relation.setdefault(v.relation, []).append(v)
    for relation, verdicts in sorted(by_relation.items()):
        clean = sum(not v.leaks for v in verdicts)
        status = "ok  " if clean == len(verdicts) else "LEAK"
        lines.append(f"{status} {relation}: {clean} of {len(verdicts)} columns unchanged by truncation and poisoning")
    n_leak, n_cuts = len(result.leaking), len(result.cuts)
    lines.append(
        f"{n_cuts} cut{'s' if n_cuts != 1 else ''} x {len(result.columns)} columns = {result.comparisons} comparisons, "
        f"over {result.rows_compared:,} rows at or before the cuts, each against a truncated and a poisoned copy; "
        f"{n_leak} leaking" + ("" if n_leak else ": no feature looks past its decision time")
    )
    return "\n".join(lines)
