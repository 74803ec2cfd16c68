"""The one Parquet writer every source uses, and the readers of the shard layout (CONTRACT §1).

Guarantees of everything written here:
- one shard per symbol and UTC calendar month (minutes: `minute/binance_{S}_1m_YYYYMM.parquet`;
  hours: `hourly/binance_{S}_1h_YYYYMMDD_YYYYMMDD.parquet`, first and last day present);
- rows in KLINE_SCHEMA, sorted by `open_time`, unique `open_time`, Snappy-compressed;
- merges by `open_time`, the incoming row winning over a stored one, so re-running is idempotent;
- hourly shards carry one more column, `source`: where each bar came from (`exchange`, `import`,
  `resampled`, `synthetic`, or `unknown`), so bars of several origins can share a shard and a
  later merge never loses who wrote which bar. Shards written before the column existed stay
  readable: their bars take the class of the shard's single `mscale.source`, else `unknown`;
- source anomalies that normalisation removed from an input file (close times that were not
  open + interval - 1 ms, timestamps in µs, repeated rows) are counted per shard and per input
  file in the metadata `mscale.anomalies`, replaced (not added) when the same file comes again;
- atomic: a temp file in the same folder, fsynced, then `os.replace`; a reader or a crash never
  sees a half-written shard, and an unreadable existing shard stops the write instead of being
  replaced by less data.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mscale.errors import CorruptShardError, MscaleError
from mscale.schema import KLINE_SCHEMA, validate_interval, validate_symbol

META_COMPLETE = b"mscale.complete"
META_SOURCE = b"mscale.source"
META_DUPLICATES = b"mscale.duplicates_dropped"
META_ANOMALIES = b"mscale.anomalies"

# The per-bar origin column of hourly shards, and the classes a write's `source` falls into.
SOURCE_COLUMN = "source"
SOURCE_FIELD = pa.field(SOURCE_COLUMN, pa.string(), nullable=False)
_SOURCE_CLASS = {"bulk": "exchange", "rest": "exchange", "exchange": "exchange", "import": "import",
                 "resampled": "resampled", "synthetic": "synthetic"}  # mirrored in sql/macros/klines.sql
UNKNOWN_SOURCE = "unknown"
# Bars computed from the minute shards themselves (the demo's hours are resampled synthetic minutes).
DERIVED_SOURCES = frozenset({"resampled", "synthetic"})

# Per-row flags a parser may add to a table (`with_anomalies=True`): a source anomaly that
# normalisation removed. `write_klines(..., origin=...)` counts them per shard and drops them.
ANOMALY_FLAGS = {
    "anomaly_close_time": "close_time_not_open_plus_interval_minus_1ms",
    "anomaly_us": "timestamps_in_us",
}
ANOMALY_KEYS = (*ANOMALY_FLAGS.values(), "duplicates_dropped")

_MINUTE_RE = re.compile(r"^binance_([A-Z0-9]{2,20})_1m_(\d{4})(\d{2})\.parquet$")
_HOURLY_RE = re.compile(r"^binance_([A-Z0-9]{2,20})_1h_(\d{8})_(\d{8})\.parquet$")


def interval_dir(market_dir: Path, interval: str) -> Path:
    return Path(market_dir) / ("minute" if validate_interval(interval) == "1m" else "hourly")


def minute_shard_path(market_dir: Path, symbol: str, year: int, month: int) -> Path:
    return Path(market_dir) / "minute" / f"binance_{validate_symbol(symbol)}_1m_{year:04d}{month:02d}.parquet"


def hourly_shard_path(market_dir: Path, symbol: str, first_day: date, last_day: date) -> Path:
    return (
        Path(market_dir)
        / "hourly"
        / f"binance_{validate_symbol(symbol)}_1h_{first_day:%Y%m%d}_{last_day:%Y%m%d}.parquet"
    )


@dataclass(frozen=True)
class Shard:
    path: Path
    symbol: str
    interval: str
    year: int
    month: int


def list_shards(market_dir: Path, interval: str, symbol: str | None = None) -> list[Shard]:
    """Every shard of `interval` (optionally one symbol), sorted by symbol then month."""
    folder = interval_dir(market_dir, interval)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        if interval == "1m":
            m = _MINUTE_RE.match(p.name)
            if m:
                out.append(Shard(p, m[1], interval, int(m[2]), int(m[3])))
        else:
            m = _HOURLY_RE.match(p.name)
            if m:
                out.append(Shard(p, m[1], interval, int(m[2][:4]), int(m[2][4:6])))
    out = [s for s in out if symbol is None or s.symbol == symbol]
    return sorted(out, key=lambda s: (s.symbol, s.year, s.month, s.path.name))


def symbols_with_data(market_dir: Path, interval: str) -> list[str]:
    return sorted({s.symbol for s in list_shards(market_dir, interval)})


def source_class(source: str | None) -> str:
    """The per-bar source recorded for a write by `source` (bulk/rest -> exchange, ...); a name
    mscale does not know is kept as it is, no name at all is `unknown`."""
    if not source:
        return UNKNOWN_SOURCE
    return _SOURCE_CLASS.get(source, source)


def _legacy_source(meta: dict[bytes, bytes]) -> str:
    """The source of every bar of a shard written without the `source` column: the class of its
    one writer, or `unknown` when several wrote it (which bar came from which is lost)."""
    names = [s for s in meta.get(META_SOURCE, b"").decode().split(",") if s]
    return source_class(names[0]) if len(names) == 1 else UNKNOWN_SOURCE


def read_shard(path: Path, *, with_source: bool = False) -> pa.Table:
    """Read one shard in KLINE_SCHEMA; an unreadable file raises CorruptShardError naming it.

    `with_source` appends each bar's `source` (hourly shards; see the module docstring)."""
    try:
        table = pq.read_table(path)
        if "symbol" not in table.column_names:
            m = _MINUTE_RE.match(path.name) or _HOURLY_RE.match(path.name)
            table = table.add_column(0, "symbol", pa.array([m[1] if m else ""] * table.num_rows, pa.string()))
        out = table.select(KLINE_SCHEMA.names).cast(KLINE_SCHEMA)
        if not with_source:
            return out
        if SOURCE_COLUMN in table.column_names:
            source = table.column(SOURCE_COLUMN).cast(pa.string())
            if source.null_count:
                source = source.fill_null(_legacy_source(dict(table.schema.metadata or {})))
        else:
            source = pa.array([_legacy_source(dict(table.schema.metadata or {}))] * table.num_rows, pa.string())
        return out.append_column(SOURCE_FIELD, source)
    except (OSError, pa.ArrowInvalid, KeyError, ValueError) as e:
        raise CorruptShardError(
            f"existing shard {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "move it aside and re-run to fetch that month again"
        ) from None


def shard_metadata(path: Path) -> dict[bytes, bytes]:
    try:
        return dict(pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowInvalid) as e:
        raise CorruptShardError(f"existing shard {path} is unreadable ({e}); move it aside and re-run") from None


def is_complete(path: Path) -> bool:
    """True when the shard was marked complete (a past month fully fetched from a closed source)."""
    return path.is_file() and shard_metadata(path).get(META_COMPLETE) == b"1"


def shard_paths(market_dir: Path, interval: str, symbol: str, year: int, month: int) -> list[Path]:
    """Existing shard files of one symbol-month: a minute month has one file; an hourly month has
    one, or two for a moment while it is renamed as it grows."""
    if interval == "1m":
        path = minute_shard_path(market_dir, symbol, year, month)
        return [path] if path.exists() else []
    return [s.path for s in list_shards(market_dir, interval, symbol) if (s.year, s.month) == (year, month)]


def read_open_times(path: Path) -> np.ndarray:
    """open_time (int64 ms) of one shard, reading only that column."""
    try:
        return pq.read_table(path, columns=["open_time"]).column("open_time").cast(pa.int64()).to_numpy()
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        read_shard(path)  # raises the CorruptShardError naming the file
        raise


def shard_anomalies(path: Path) -> dict[str, dict[str, int]]:
    """{input file name: {anomaly: rows}} of one shard: what normalisation removed from the rows
    each imported file put into it (see ANOMALY_KEYS); {} when nothing was recorded."""
    return _anomaly_records(shard_metadata(path), path)


def _anomaly_records(meta: dict[bytes, bytes], path: Path | str) -> dict[str, dict[str, int]]:
    raw = meta.get(META_ANOMALIES)
    if not raw:
        return {}
    try:
        return {str(k): {a: int(v.get(a, 0)) for a in ANOMALY_KEYS} for k, v in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError):
        raise CorruptShardError(f"{path}: unreadable {META_ANOMALIES.decode()} metadata; move the shard aside and re-import") from None


def read_klines(market_dir: Path, interval: str, symbol: str, *, with_source: bool = False) -> pa.Table:
    """All rows of one symbol and interval, sorted by open_time (`with_source`: plus each bar's source)."""
    shards = list_shards(market_dir, interval, symbol)
    if not shards:
        empty = KLINE_SCHEMA.empty_table()
        return empty.append_column(SOURCE_FIELD, pa.array([], pa.string())) if with_source else empty
    table, _ = dedupe_sorted(pa.concat_tables([read_shard(s.path, with_source=with_source) for s in shards]))
    return table


def dedupe_sorted(table: pa.Table) -> tuple[pa.Table, int]:
    """Sort by open_time and keep the last row of each open_time; returns (table, rows dropped).

    "Last" is by position, so when stored rows come before incoming ones the incoming row wins.
    """
    n = table.num_rows
    if n == 0:
        return table, 0
    ot = table.column("open_time").cast(pa.int64()).to_numpy()
    if (ot[1:] > ot[:-1]).all():  # already sorted and unique, as every stored shard is
        return table, 0
    order = np.lexsort((np.arange(n), ot))
    ot_sorted = ot[order]
    keep_last = np.ones(n, dtype=bool)
    keep_last[:-1] = ot_sorted[:-1] != ot_sorted[1:]
    idx = order[keep_last]
    return table.take(pa.array(idx)), int(n - len(idx))


@dataclass
class WriteResult:
    """What one `write_klines` call did, per shard path."""

    rows_in: int = 0
    duplicates_dropped: int = 0  # repeated open_times inside the incoming rows
    rows_replaced: int = 0  # stored rows overwritten by an incoming row with the same open_time
    shards: dict[str, int] = field(default_factory=dict)  # path -> rows now in the shard


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly visible to other threads)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def replace_atomically(path: Path, write: Callable[[BinaryIO], None], *,
                       hint: str = "choose another with --data-dir") -> None:
    """Run `write` on a temp file beside `path`, fsync it, then rename it over `path`: readers see
    the old file or the new one, never a part; nothing is left behind when writing fails.

    The file gets the user's usual permissions (0o666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise MscaleError(f"{path.parent} is not writable ({e.strerror}); {hint}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(table: pa.Table, path: Path, metadata: dict[bytes, bytes] | None = None, *,
                 dictionary: bool | list[str] = True) -> None:
    """Write `table` to `path` so that `path` is either the old file or the complete new one.
    `dictionary`: dictionary-encode every column (True) or only those named."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    replace_atomically(path, lambda f: pq.write_table(table, f, compression="snappy", use_dictionary=dictionary))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path`: the old file or the complete new one, never half of it."""
    replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _month_key(table: pa.Table) -> np.ndarray:
    """year*100+month of each row's open_time (UTC)."""
    ms = table.column("open_time").cast(pa.int64()).to_numpy()
    months = ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    return (1970 + months // 12) * 100 + (months % 12) + 1


def _split(table: pa.Table) -> Iterator[tuple[str, int, int, pa.Table]]:
    """(symbol, year, month, rows) groups of a table."""
    if table.num_rows == 0:
        return
    syms = table.column("symbol").to_numpy(zero_copy_only=False)
    keys = _month_key(table)
    for sym in np.unique(syms):
        for ym in np.unique(keys[syms == sym]):
            mask = (syms == sym) & (keys == ym)
            yield str(sym), int(ym // 100), int(ym % 100), table.filter(pa.array(mask))


def _merge_meta(
    stored: list[dict[bytes, bytes]], complete: bool, source: str | None, dups: int,
    origin: str | None = None, anomalies: dict[str, int] | None = None,
) -> dict[bytes, bytes]:
    """Metadata of a merged shard. Duplicates of a write with an `origin` (an input file) are
    recorded with its anomalies under that file's name, replacing an earlier record of the same
    file, so importing a file again leaves the counts as they were; other writes add theirs up."""
    prev_dups = sum(int(m.get(META_DUPLICATES, b"0")) for m in stored)
    sources = {s for m in stored for s in m.get(META_SOURCE, b"").decode().split(",") if s}
    if source:
        sources.add(source)
    meta = {
        META_COMPLETE: b"1" if complete or any(m.get(META_COMPLETE) == b"1" for m in stored) else b"0",
        META_SOURCE: ",".join(sorted(sources)).encode(),
        META_DUPLICATES: str(prev_dups + (0 if origin else dups)).encode(),
    }
    records: dict[str, dict[str, int]] = {}
    for m in stored:
        records.update(_anomaly_records(m, "a stored shard"))
    if origin:
        records[origin] = {**{k: 0 for k in ANOMALY_KEYS}, **(anomalies or {}), "duplicates_dropped": dups}
    if records:
        meta[META_ANOMALIES] = json.dumps(records, sort_keys=True, separators=(",", ":")).encode()
    return meta


def write_klines(
    market_dir: Path,
    interval: str,
    table: pa.Table,
    *,
    source: str | None = None,
    complete_months: Iterable[tuple[int, int]] = (),
    upstream_duplicates: int = 0,
    origin: str | None = None,
) -> WriteResult:
    """Merge `table` (any symbols, any months) into the shard layout under `market_dir`.

    Every (symbol, month) group is merged with what is stored, sorted, deduplicated by open_time
    (incoming wins) and written atomically. `complete_months` marks shards as complete, so later
    runs skip them; the mark is never removed by a later partial write. `upstream_duplicates`
    counts rows a source dropped before this call (e.g. overlapping REST pages); they are added to
    the first shard's `duplicates_dropped` metadata, which the ingestion report sums.

    Hourly bars are stored with their `source`: the table's own `source` column where it has one,
    else `source_class(source)`. With `origin` (the input file's name), the table's ANOMALY_FLAGS
    columns and the duplicates dropped are counted per shard under that name (`shard_anomalies`).
    """
    validate_interval(interval)
    flags = {c: table.column(c) for c in ANOMALY_FLAGS if c in table.column_names} if origin else {}
    row_source = table.column(SOURCE_COLUMN) if SOURCE_COLUMN in table.column_names else None
    table = table.select(KLINE_SCHEMA.names).cast(KLINE_SCHEMA)
    _refuse_non_finite(table, origin)
    if interval == "1h":
        fill = source_class(source)
        row_source = pa.array([fill] * table.num_rows, pa.string()) if row_source is None else row_source.cast(pa.string()).fill_null(fill)
        table = table.append_column(SOURCE_FIELD, row_source)
    for name, column in flags.items():
        table = table.append_column(name, column.cast(pa.bool_()).fill_null(False))
    complete = set(complete_months)
    result = WriteResult(rows_in=table.num_rows)
    for i, (symbol, year, month, part) in enumerate(_split(table)):
        counts = {ANOMALY_FLAGS[c]: int(pc.sum(part.column(c).cast(pa.int64())).as_py() or 0) for c in flags}
        part = part.drop_columns(list(flags))
        part, dups = dedupe_sorted(part)
        dups += upstream_duplicates if i == 0 else 0
        path, rows, replaced = _merge_into_shard(
            market_dir, interval, symbol, year, month, part, complete=(year, month) in complete, source=source, dups=dups,
            origin=origin, anomalies=counts,
        )
        result.duplicates_dropped += dups
        result.rows_replaced += replaced
        result.shards[str(path)] = rows
    return result


# the prices and volumes the features read (the taker-buy columns are stored, not used)
PRICES_AND_VOLUMES = ("open", "high", "low", "close", "volume", "quote_volume")


def _refuse_non_finite(table: pa.Table, origin: str | None) -> None:
    """MscaleError, before any of `table` is written, when a price or volume the features read is
    NaN or infinite: a missing value is NULL, and the features' sums and z-scores cannot take the
    others. (An import of several files stores them one by one: the files before this one stay.)"""
    for name in PRICES_AND_VOLUMES:
        bad = pc.fill_null(pc.invert(pc.is_finite(table.column(name))), False)
        n = pc.sum(bad.cast(pa.int64())).as_py() or 0
        if n:
            first = pc.index(bad, True).as_py()
            when = table.column("open_time")[first].as_py()
            symbol = table.column("symbol")[first].as_py()
            raise MscaleError(
                f"{origin or 'the bars to store'}: {n} bar{'s' if n > 1 else ''} with a non-finite {name} (the first: "
                f"{symbol} {when:%Y-%m-%d %H:%M} UTC); none of them was stored: prices and volumes must be numbers "
                "or missing (empty), so drop or fix those rows at the source and run again"
            )


def mark_complete(market_dir: Path, interval: str, symbol: str, year: int, month: int, *, upstream_duplicates: int = 0) -> bool:
    """Mark a stored symbol-month complete (its rows unchanged); False when nothing is stored."""
    if not shard_paths(market_dir, interval, symbol, year, month):
        return False
    empty = KLINE_SCHEMA.empty_table()
    if interval == "1h":
        empty = empty.append_column(SOURCE_FIELD, pa.array([], pa.string()))
    _merge_into_shard(market_dir, interval, symbol, year, month, empty,
                      complete=True, source=None, dups=upstream_duplicates)
    return True


def _merge_into_shard(
    market_dir: Path, interval: str, symbol: str, year: int, month: int, part: pa.Table, *,
    complete: bool, source: str | None, dups: int, origin: str | None = None, anomalies: dict[str, int] | None = None,
) -> tuple[Path, int, int]:
    """Merge deduplicated, sorted rows of one symbol-month into its shard; (path, rows, replaced).

    `part` is in KLINE_SCHEMA, plus `source` for hourly shards."""
    validate_symbol(symbol)
    old_paths = shard_paths(market_dir, interval, symbol, year, month)
    stored = [read_shard(p, with_source=interval == "1h") for p in old_paths]
    metas = [shard_metadata(p) for p in old_paths]
    merged, replaced = part, 0
    if stored:
        stored_unique = dedupe_sorted(pa.concat_tables(stored))[0].num_rows
        merged = dedupe_sorted(pa.concat_tables([*stored, part]))[0]
        replaced = stored_unique + part.num_rows - merged.num_rows
    meta = _merge_meta(metas, complete, source, dups, origin, anomalies)
    if interval == "1m":
        path = minute_shard_path(market_dir, symbol, year, month)
    else:
        ot = merged.column("open_time")
        path = hourly_shard_path(market_dir, symbol, pc.min(ot).as_py().date(), pc.max(ot).as_py().date())
    write_atomic(merged, path, meta)
    for p in old_paths:  # hourly shards are renamed as their last day grows
        if p != path:
            p.unlink(missing_ok=True)
    return path, merged.num_rows, replaced


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """[start, end) of a UTC calendar month."""
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end
