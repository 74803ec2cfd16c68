"""`mscale sql`: run SQL against the warehouse; print each result as a table, CSV or JSON, or write it
to a file.

What it guarantees:
- the statements of a query run in order on one read-only connection (a temp table made by one
  is seen by the next), with the session time zone set to UTC; each result is printed as soon as
  its statement has run, and a failing statement stops the rest with an error naming it;
- every printed result states its true number of rows; `max_rows` bounds only what is shown
  (0 = all; default 40 rows for a table, every row for csv / json / parquet and for files);
- timestamps print as ISO 8601 in UTC (`2024-01-01T01:00:00Z`), dates as `2024-01-01`;
- `out` is written atomically (a temp file beside it, then `os.replace`) with the user's umask:
  a query that fails half-way leaves the previous file as it was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mscale.config import Config, with_market
from mscale.errors import MscaleError
from mscale.store import replace_atomically

FORMATS = ("table", "csv", "json", "parquet")
TABLE_ROWS = 40  # rows a table shows unless --max-rows says otherwise
MAX_CELL = 60  # characters of one table cell; csv / json carry the full value
BATCH_ROWS = 65_536

# Statements whose result is data to show; the others (set, create, insert, ...) print "ok".
_ROW_TYPES = {"SELECT", "EXPLAIN", "PRAGMA", "CALL", "RELATION", "EXECUTE"}


@dataclass
class StatementResult:
    """What one statement did: `columns` is None when it returns no data (set, create, ...)."""

    sql: str
    columns: list[str] | None = None
    rows: int = 0  # every row of the result
    shown: int = 0  # rows printed or written


# --- the command ---------------------------------------------------------------------------------


def split_statements(query: str) -> list[tuple[str, bool]]:
    """(statement text, returns rows) for each statement of `query`, in order; DuckDB's own parser
    splits them, so a `;` inside a string or a comment does not. MscaleError when there is none."""
    if not query or not query.strip():
        raise MscaleError('empty query: give one or more SQL statements, e.g. mscale sql "select * from feature_catalog"')
    con = duckdb.connect()
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise MscaleError(f"query failed: {_first_line(e)}") from None
    finally:
        con.close()
    if not statements:
        raise MscaleError('empty query: only comments or semicolons; give a statement, e.g. mscale sql "select 1"')
    return [(s.query.strip(), s.type.name in _ROW_TYPES) for s in statements]


_SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}


def resolve_format(fmt: str | None, out: str | os.PathLike | None) -> str:
    """The output format: `fmt` if given, else the --out file's extension (.csv, .json, .parquet),
    else a table. A given format that contradicts a known extension is an error."""
    implied = _SUFFIX_FORMATS.get(Path(out).suffix.lower()) if out is not None else None
    if fmt is None:
        return implied or "table"
    if implied is not None and implied != fmt:
        raise MscaleError(f"--format {fmt} contradicts --out {Path(out).name}: drop --format (the extension decides) "
                          f"or name the file for {fmt}")
    return fmt


def check_options(fmt: str, max_rows: int | None, out: str | os.PathLike | None) -> None:
    """One-line errors for options that cannot work together, before anything runs."""
    if fmt not in FORMATS:
        raise MscaleError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
        raise MscaleError(f"--max-rows must be 0 (every row) or a positive number of rows, got {max_rows!r}")
    if fmt == "parquet" and out is None:
        raise MscaleError("--format parquet writes a file: add --out FILE.parquet")


def run_sql(
    cfg: Config,
    query: str,
    *,
    max_rows: int | None = None,
    fmt: str = "table",
    out: str | os.PathLike | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> list[StatementResult]:
    """Run every statement of `query` against `cfg.warehouse` (read-only), in order.

    Results go to `stdout` (default sys.stdout), or with `out` the one result that returns rows
    goes to that file (written atomically) and nothing else is printed. Notes about rows left out
    of csv / json on stdout go to `stderr`, so the data stay parseable.
    """
    check_options(fmt, max_rows, out)
    statements = split_statements(query)
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if out is not None:
        n_results = sum(returns for _, returns in statements)
        if n_results != 1:
            raise MscaleError(
                f"--out writes one result, but {n_results} of the {len(statements)} statements return rows: "
                "run them separately, or drop --out"
            )
    if not cfg.warehouse.exists():
        raise MscaleError(with_market(f"no warehouse at {cfg.warehouse}: run `mscale features` first", cfg.market))
    from mscale.warehouse.build import check_market, connect

    con = connect(cfg.warehouse, read_only=True)
    results = []
    try:
        check_market(con, cfg)
        con.execute("set TimeZone = 'UTC'")
        for i, (sql, returns) in enumerate(statements, 1):
            label = f"statement {i} of {len(statements)} " if len(statements) > 1 else ""
            try:
                cursor = con.execute(sql)
            except duckdb.Error as e:
                raise MscaleError(f"{label or 'query '}failed: {_first_line(e)}") from None
            result = StatementResult(sql)
            results.append(result)
            if len(statements) > 1 and out is None and fmt == "table":
                stdout.write(("\n" if i > 1 else "") + f"-- {i}/{len(statements)}: {_one_line(sql, 100)}\n")
            elif returns and out is None and any(r.columns is not None for r in results[:-1]):
                stdout.write("\n")  # csv / json: a blank line between results
            if not returns:
                cursor.fetchall()
                if fmt == "table" and out is None:
                    stdout.write("ok\n")
                continue
            reader = cursor.to_arrow_reader(BATCH_ROWS)
            batches = _batches(reader, label)
            limit = max_rows if max_rows is not None else (TABLE_ROWS if fmt == "table" and out is None else 0)
            result.columns = list(reader.schema.names)
            if out is not None:
                _write_file(Path(out), lambda sink: _emit(fmt, reader.schema, batches, limit, sink, result, sql))
            else:
                _emit(fmt, reader.schema, batches, limit, _TextSink(stdout), result, sql)
                if fmt in ("csv", "json") and result.shown < result.rows:
                    stderr.write(f"({result.rows:,} rows, {result.shown:,} shown; --max-rows 0 shows all)\n")
            stdout.flush()
    finally:
        con.close()
    return results


# --- reading -------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _batches(reader: pa.RecordBatchReader, label: str) -> Iterator[pa.RecordBatch]:
    """The reader's batches; an error raised while DuckDB is still producing rows (it reaches
    Python as an OSError from the Arrow stream) becomes a one-line MscaleError."""
    it = iter(reader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (duckdb.Error, OSError, pa.ArrowException) as e:
            raise MscaleError(f"{label or 'query '}failed: {_first_line(e)}") from None
        yield batch


# --- writing -------------------------------------------------------------------------------------


class _TextSink:
    """A binary sink over a text stream (stdout), so every format writes bytes."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode("utf-8"))
        return len(data)


def _write_file(path: Path, write) -> None:
    """`write(binary file)` into `path` atomically, with the user's umask (store.replace_atomically)."""
    try:
        replace_atomically(path.absolute(), write, hint="choose another --out")
    except OSError as e:
        raise MscaleError(f"cannot write {path} ({e.strerror or e}); choose another --out") from None


def _emit(fmt: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch], limit: int, sink: BinaryIO,
          result: StatementResult, sql: str) -> None:
    """Write one result in `fmt`; counts every row into `result.rows`, the written ones into `shown`."""

    def limited() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            result.rows += batch.num_rows
            room = batch.num_rows if not limit else max(0, min(batch.num_rows, limit - result.shown))
            if room:
                result.shown += room
                yield batch.slice(0, room)

    if fmt == "table":
        rows = [row for batch in limited() for row in _rows(batch)]
        explain = sql.lstrip().lower().startswith("explain") and schema.names[-1:] == ["explain_value"]
        text = "".join(str(row[-1]).rstrip() + "\n" for row in rows) if explain else format_table(
            schema.names, rows, total=result.rows
        )
        sink.write(text.encode("utf-8"))
    elif fmt == "csv":
        _write_csv(schema, limited(), sink)
    elif fmt == "json":
        _write_json(limited(), sink)
    else:
        _write_parquet(schema, limited(), sink)


def _rows(batch: pa.RecordBatch) -> list[list[Any]]:
    columns = [column.to_pylist() for column in batch.columns]
    return [list(row) for row in zip(*columns)]


def _write_csv(schema: pa.Schema, batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> None:
    """RFC 4180 CSV with a header; NULL is an empty field (text values are quoted, so an empty
    string is ""), timestamps ISO 8601 UTC."""
    sink.write((",".join(_csv_field(n) for n in schema.names) + "\n").encode("utf-8"))
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    for batch in batches:
        buf = io.BytesIO()
        pacsv.write_csv(_csv_ready(pa.Table.from_batches([batch])), buf, options)
        sink.write(buf.getvalue())


def _csv_field(name: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([name])
    return buf.getvalue()


_NATIVE_CSV = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_large_string,
               pa.types.is_boolean, pa.types.is_date, pa.types.is_decimal, pa.types.is_null)


def _csv_ready(table: pa.Table) -> pa.Table:
    """Columns Arrow's CSV writer would print its own way (timestamps) or not at all (lists,
    structs, intervals, blobs) become text, formatted like the table cells."""
    for i, field in enumerate(table.schema):
        if not any(test(field.type) for test in _NATIVE_CSV):
            values = [None if v is None else text_value(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
    return table


def _write_json(batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> None:
    """A JSON array of one object per row; NaN and infinities become null (strict JSON)."""
    sink.write(b"[")
    first = True
    for batch in batches:
        for row in batch.to_pylist():
            sink.write((("\n" if first else ",\n") + json.dumps(_jsonable(row), ensure_ascii=False)).encode("utf-8"))
            first = False
    sink.write(b"\n]\n" if not first else b"]\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return text_value(value)


def _write_parquet(schema: pa.Schema, batches: Iterator[pa.RecordBatch], sink: BinaryIO) -> None:
    try:
        with pq.ParquetWriter(sink, schema, compression="snappy") as writer:
            for batch in batches:
                writer.write_batch(batch)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as e:
        raise MscaleError(f"cannot write this result as Parquet ({_first_line(e)}); cast the column, or use --format csv") from None


# --- the table -----------------------------------------------------------------------------------


def text_value(value: Any) -> str:
    """A value as the table and CSV show it: ISO 8601 times (UTC, `Z`), full text otherwise."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.10g}"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
            suffix = "Z"
        else:
            suffix = ""
        fmt = "%Y-%m-%dT%H:%M:%S.%f" if value.microsecond else "%Y-%m-%dT%H:%M:%S"
        return value.strftime(fmt) + suffix
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    return str(value)


def _cell(value: Any, width: int) -> str:
    text = text_value(value).replace("\r", "").replace("\n", "↵")
    return text if len(text) <= width else text[: width - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def format_table(columns: list[str], rows: list[list[Any]], *, total: int | None = None, max_cell: int = MAX_CELL,
                 footer: str | None = None) -> str:
    """A plain-text table: a header, a rule, one line per row (numbers right-aligned), and a footer
    with the true row count ("72 rows (40 shown; ...)" when rows were left out)."""
    total = len(rows) if total is None else total
    cells = [[_cell(v, max_cell) for v in row] for row in rows]
    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)

    numeric = [  # right-aligned: columns of numbers (and NULLs)
        any(is_number(row[j]) for row in rows) and all(row[j] is None or is_number(row[j]) for row in rows)
        for j in range(len(columns))
    ]
    widths = [max([len(name)] + [len(row[j]) for row in cells]) for j, name in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[j] else v.ljust(w) for j, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    if footer is None:
        footer = _plural(total, "row")
        if len(rows) < total:
            footer += f" ({len(rows):,} shown; --max-rows 0 shows all)"
        footer += f", {_plural(len(columns), 'column')}"
    out.append(footer)
    return "\n".join(out) + "\n"
