"""`feature_catalog`: one row per feature column of the `features` mart, generated at build time
from the SQL, the feature docs and the built cache, so nothing about a feature is typed twice.

Where each field comes from:
- `column_name`, `position`: the columns of the built `features` view, in order (symbol and ts are
  the key, not features);
- `block`, `source`: the feature layer (`sql/features/<block>/`) and view whose SELECT first outputs
  the column, in build order, from the columns of the warehouse's feature views (`duckdb_columns()`);
- `definition`, `lookback` (the doc's "window" column), `null_when`: the tables of
  doc/features_multiscale.md (a row names its columns in backticks; `m_vol_sum_{5,15,60}m` is
  expanded and `W_w` made concrete). A column the doc does not list (your own `features/extra`
  files, an extra minute window, the z-scores) takes the `-- purpose:` line of the SQL file that
  makes it;
- `null_share`, `warmup_bars`: measured on the current build, over every row of `features`: the
  share of NULL values, and the hourly bars before the first non-NULL value (the most over symbols).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from mscale.config import Config, with_market
from mscale.errors import MscaleError
from mscale.warehouse import render as r

log = logging.getLogger(__name__)

DOC_NAME = "features_multiscale.md"
TABLE = "meta_feature_catalog"  # the stored rows; the `feature_catalog` view orders them
KEY = ("symbol", "ts")
MINUTE_COUNT = "m_n_60m"  # CONTRACT §5: minute bars in W_60, 0 for an hour without minutes
COLUMNS = ("position", "column_name", "block", "lookback", "warmup_bars", "null_share", "definition", "null_when", "source")


@dataclass(frozen=True)
class DocEntry:
    definition: str | None = None
    window: str | None = None
    null_when: str | None = None


@dataclass
class CatalogResult:
    rows: list[dict] = field(default_factory=list)
    # (symbol, feature columns NULL in every one of its rows) for symbols without minute bars
    without_minutes: list[tuple[str, int]] = field(default_factory=list)


# --- the docs ------------------------------------------------------------------------------------


def find_feature_doc(sql_dir: Path) -> Path | None:
    """doc/features_multiscale.md beside the `sql/` folder (a checkout), or shipped with the package."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (Path(sql_dir).parent / "doc" / DOC_NAME, here / "_doc" / DOC_NAME, here.parent / "doc" / DOC_NAME):
        if candidate.is_file():
            return candidate
    return None


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; a `|` inside a code span or escaped as `\\|` stays in its cell."""
    cells, current, in_code, i = [], [], False, 0
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    while i < len(body):
        ch = body[i]
        if ch == "\\" and body[i + 1 : i + 2] == "|":
            current.append("|")
            i += 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    if "".join(current).strip():
        cells.append("".join(current).strip())
    return cells


def _expand(name: str) -> list[str]:
    """`m_vol_sum_{5,15,60}m` -> m_vol_sum_5m, m_vol_sum_15m, m_vol_sum_60m."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", name)
    if not m:
        return [name]
    return [x for part in m.group(1).split(",") for x in _expand(name[: m.start()] + part.strip() + name[m.end():])]


def _plain(text: str) -> str:
    text = text.replace("**", "").replace("`", "")
    return " ".join(text.split())


def parse_feature_doc(text: str) -> dict[str, DocEntry]:
    """{column: DocEntry} from every Markdown table whose first header cell names columns
    ("column", "z column"); a column listed in several tables takes each field from the first
    table that has it."""
    entries: dict[str, DocEntry] = {}
    lines = text.splitlines()
    i = 0
    while i + 1 < len(lines):
        header, rule = lines[i], lines[i + 1]
        if not (header.lstrip().startswith("|") and re.fullmatch(r"\s*\|?(\s*:?-{3,}:?\s*\|?)+\s*", rule)):
            i += 1
            continue
        names = [c.lower() for c in _cells(header)]
        i += 2
        rows = []
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            rows.append(_cells(lines[i]))
            i += 1
        if not names or not names[0].endswith("column"):
            continue
        fields_at = {}
        for j, name in enumerate(names[1:], 1):
            if name.startswith("definition"):
                fields_at["definition"] = j
            elif name == "window":
                fields_at["window"] = j
            elif name.startswith("null when") or name.startswith("first defined"):
                fields_at["null_when"] = j
        for cells in rows:
            columns = [c for token in re.findall(r"`([^`]+)`", cells[0]) for c in _expand(token)]
            values = {k: _plain(cells[j]) if j < len(cells) and cells[j].strip() else None for k, j in fields_at.items()}
            if values.get("null_when") and names[fields_at["null_when"]].startswith("first defined"):
                values["null_when"] = f"{names[fields_at['null_when']]}: {values['null_when']}"
            for column in columns:
                if not re.fullmatch(r"[a-z0-9_]+", column):
                    continue  # a pattern such as hod_*, not a column
                concrete = _concrete(column, values)
                old = entries.get(column, DocEntry())
                entries[column] = DocEntry(**{k: getattr(old, k) or concrete.get(k) for k in ("definition", "window", "null_when")})
    return entries


def _concrete(column: str, values: dict) -> dict:
    """A row shared by several windows says `W_w` (minutes) or `h` (hours); each of its columns gets
    its own: `W_15` for m_*_15m, "3 h apart" and `ts−3h` for ret_3h."""
    if m := re.search(r"_(\d+)m$", column):
        return {k: re.sub(r"\bW_w\b", f"W_{m.group(1)}", v) if v else v for k, v in values.items()}
    if m := re.search(r"_(\d+)h$", column):
        n = m.group(1)
        subs = ((r"\bh h\b", f"{n} h"), (r"−h\b", f"−{n}h"), (r"\bexactly h hours\b", f"exactly {n} hours"),
                (r"\bbar h\+1\b", f"bar {int(n) + 1}"))

        def concrete(v: str) -> str:
            for pattern, repl in subs:
                v = re.sub(pattern, repl, v)
            return v

        return {k: concrete(v) if v else v for k, v in values.items()}
    return values


def purpose(path: Path) -> str | None:
    """The `-- purpose:` line of a template's three-line header."""
    for line in Path(path).read_text().splitlines()[:10]:
        if line.startswith("-- purpose:"):
            return line.removeprefix("-- purpose:").strip() or None
    return None


# --- the SQL -------------------------------------------------------------------------------------


def column_origins(con: duckdb.DuckDBPyConnection, cfg: Config) -> dict[str, r.Model]:
    """{column: the feature model that first outputs it}, in build order, from the columns of the
    feature views `con` holds (as `create_views` made them: a view's columns are the template's,
    whatever the shards)."""
    models = [m for m in r.discover(cfg.sql_dir, cfg.extra_feature_dirs) if m.layer.startswith("features/")]
    columns: dict[str, list[str]] = {}
    for view, column in con.execute(
        "select table_name, column_name from duckdb_columns() where database_name = current_database() "
        "and schema_name = 'main' order by table_name, column_index"
    ).fetchall():
        columns.setdefault(view, []).append(column)
    origins: dict[str, r.Model] = {}
    for model in models:
        for name in columns.get(model.name, []):
            origins.setdefault(name, model)
    return origins


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- measuring and storing -------------------------------------------------------------------------


def measure(con: duckdb.DuckDBPyConnection, columns: list[str]) -> tuple[dict[str, dict], list[tuple[str, int]]]:
    """({column: {"null_share", "warmup_bars"}}, [(symbol, all-NULL columns)] for symbols without
    minute bars), from the `features` view: one aggregate pass (per symbol, each column's non-NULL
    count and first non-NULL ts), and one over (symbol, ts) only for the bars before those firsts
    (the warm-up: the most over symbols)."""
    aggregates = ["count(*)"]
    for k, c in enumerate(columns):
        aggregates += [f"count({_quote(c)}) as n_{k}", f"min(ts) filter (where {_quote(c)} is not null) as f_{k}"]
    has_count = MINUTE_COUNT in columns
    aggregates.append(f"coalesce(max({MINUTE_COUNT}), 0) as minutes_max" if has_count else "null as minutes_max")
    con.execute(f"create or replace temp table _catalog_per_symbol as select symbol, {', '.join(aggregates)} "
                "from features group by symbol")
    try:
        per_symbol = con.execute("select * from _catalog_per_symbol order by symbol").fetchall()
        warmup: dict[int, int] = {}
        if columns:
            firsts = ", ".join(f"f_{k}" for k in range(len(columns)))
            for name, bars in con.execute(
                f"""
                with firsts as (
                    -- (symbol, f_k, its first non-NULL ts); a column NULL in every row of a symbol has none
                    unpivot (select symbol, {firsts} from _catalog_per_symbol) on {firsts} into name k value first_ts
                ),
                bars as (
                    select symbol, ts, row_number() over (partition by symbol order by ts) - 1 as bars_before
                    from features
                )
                select f.k, max(b.bars_before) from firsts as f join bars as b on b.symbol = f.symbol and b.ts = f.first_ts
                group by f.k
                """
            ).fetchall():
                warmup[int(name.removeprefix("f_"))] = bars
    finally:
        con.execute("drop table if exists _catalog_per_symbol")

    total = sum(row[1] for row in per_symbol)
    nonnull = [0] * len(columns)
    without_minutes = []
    for row in per_symbol:
        symbol, counts = row[0], row[2:-1]
        for k in range(len(columns)):
            nonnull[k] += counts[2 * k]
        if has_count and row[-1] == 0:
            without_minutes.append((symbol, sum(counts[2 * k] == 0 for k in range(len(columns)))))
    stats = {
        c: {"null_share": (1 - nonnull[k] / total) if total else None, "warmup_bars": warmup.get(k)}
        for k, c in enumerate(columns)
    }
    return stats, without_minutes


def build_catalog(con: duckdb.DuckDBPyConnection, cfg: Config) -> CatalogResult:
    """The catalog rows for the `features` view of `con` (see the module docstring)."""
    columns = [name for (name, *_) in con.execute("describe features").fetchall() if name not in KEY]
    origins = column_origins(con, cfg)
    doc_path = find_feature_doc(cfg.sql_dir)
    docs = parse_feature_doc(doc_path.read_text()) if doc_path else {}
    if doc_path is None:
        log.info("%s not found beside %s: feature definitions come from the SQL files' purpose lines", DOC_NAME, cfg.sql_dir)
    stats, without_minutes = measure(con, columns)
    purposes: dict[Path, str | None] = {}
    rows = []
    for position, column in enumerate(columns, 1):
        model = origins.get(column)
        doc = docs.get(column, DocEntry())
        definition = doc.definition
        if not definition and model is not None:
            if model.path not in purposes:
                purposes[model.path] = purpose(model.path)
            text = purposes[model.path] or f"computed in {model.path.name}"
            base = column.removesuffix("_z")
            definition = text.replace("{col}", base)  # feat_norm's line speaks of every {col}_z
        rows.append({
            "position": position,
            "column_name": column,
            "block": model.layer.removeprefix("features/") if model else "marts",
            "lookback": doc.window,
            "warmup_bars": stats[column]["warmup_bars"],
            "null_share": stats[column]["null_share"],
            "definition": definition or "(undocumented)",
            "null_when": doc.null_when,
            "source": model.name if model else "features",
        })
    return CatalogResult(rows, without_minutes)


def store_catalog(con: duckdb.DuckDBPyConnection, cfg: Config) -> CatalogResult:
    """Create `feature_catalog` in the warehouse of `con` (a view over the rows stored in
    meta_feature_catalog) and warn about symbols whose minute features are all NULL."""
    result = build_catalog(con, cfg)
    con.execute(f"create or replace table {TABLE} (position integer, column_name varchar, block varchar, lookback varchar, "
                "warmup_bars bigint, null_share double, definition varchar, null_when varchar, source varchar)")
    if result.rows:
        values = [f"({', '.join(r.sql_literal(row[c]) for c in COLUMNS)})" for row in result.rows]
        con.execute(f"insert into {TABLE} ({', '.join(COLUMNS)}) values\n" + ",\n".join(values))
    con.execute(f"create or replace view feature_catalog as select {', '.join(_quote(c) for c in COLUMNS)} from {TABLE} order by position")
    for symbol, n_null in result.without_minutes:
        log.warning(with_market(
            "%s has no minute bars: %d of its %d feature columns (the m_* block and what is built on it) are NULL "
            "in every row; add its 1m klines (mscale ingest --interval 1m --symbols %s, or mscale import) and re-run "
            "mscale features", cfg.market), symbol, n_null, len(result.rows), symbol,
        )
    return result


# --- printing ------------------------------------------------------------------------------------


def format_catalog(rows: list[dict], *, width: int = 72) -> str:
    """The catalog as `mscale features --list` prints it: one line per feature column."""
    from mscale.warehouse.sqlcmd import format_table

    table = [
        [row["column_name"], row["block"], row["lookback"] or "", row["warmup_bars"],
         None if row["null_share"] is None else f"{100 * row['null_share']:.1f}%", row["definition"]]
        for row in rows
    ]
    footer = (f"{len(rows)} feature columns; every field in full: "
              'mscale sql "select * from feature_catalog" --format csv')
    return format_table(["column", "block", "window", "warm-up bars", "null", "definition"], table, max_cell=width,
                        footer=footer)


def read_catalog(cfg: Config) -> list[dict]:
    """The rows of `feature_catalog` in the warehouse (read-only)."""
    if not cfg.warehouse.exists():
        raise MscaleError(with_market(f"no warehouse at {cfg.warehouse}: run `mscale features` first, it builds the "
                                      "feature catalog", cfg.market))
    from mscale.warehouse.build import check_market, connect

    con = connect(cfg.warehouse, read_only=True)
    try:
        check_market(con, cfg)
        try:
            return con.execute("select * from feature_catalog").to_arrow_table().to_pylist()
        except duckdb.CatalogException:
            raise MscaleError(f"{cfg.warehouse} has no feature_catalog yet: run `mscale features` to build it") from None
    finally:
        con.close()
