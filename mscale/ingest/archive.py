"""Pure parsing of Binance archive files (data.binance.vision): CSV, zip and `.CHECKSUM`.

No I/O here: every function takes bytes and returns an Arrow table in KLINE_SCHEMA or raises a
one-line error. Guarantees of every table returned:
- `open_time` in milliseconds whatever the file used (spot archive files from 2025-01-01 on use
  microseconds; the unit is detected per row by magnitude, so ms and µs files give identical tables);
- `close_time = open_time + interval` (CONTRACT §2), never Binance's `+ interval - 1 ms`, and never a
  truncated close time of a candle cut short by an outage;
- rows in file order (the shard writer sorts and deduplicates);
- a file whose bars do not fit `interval` (misaligned open times, or close times an interval apart
  that is not `interval`) is rejected instead of being stored under the wrong interval;
- with `with_anomalies=True`, what the normalisation above removed stays visible: one boolean
  column per kind in `mscale.store.ANOMALY_FLAGS` (a close time other than open + interval - 1 ms,
  an open time in µs or finer), for the writer to count per shard.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mscale.errors import ChecksumError, MscaleError
from mscale.schema import INTERVAL_MS, KLINE_SCHEMA, klines_from_arrays, validate_interval, validate_symbol
from mscale.store import ANOMALY_FLAGS

# The 12 columns of a Binance kline row, in archive order (the futures header names them so).
ARCHIVE_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]
_ARCHIVE_TYPES = {
    "open_time": pa.int64(),
    "open": pa.float64(),
    "high": pa.float64(),
    "low": pa.float64(),
    "close": pa.float64(),
    "volume": pa.float64(),
    "close_time": pa.int64(),
    "quote_volume": pa.float64(),
    "count": pa.int64(),
    "taker_buy_volume": pa.float64(),
    "taker_buy_quote_volume": pa.float64(),
}
# archive column -> KLINE_SCHEMA column
_TO_KLINE = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "quote_volume": "quote_volume",
    "count": "trades",
    "taker_buy_volume": "taker_buy_base",
    "taker_buy_quote_volume": "taker_buy_quote",
}

# Epoch timestamps of the years 1973..5138 in each unit: ms < 1e14 <= µs < 1e17 <= ns.
_US_FROM = 10**14
_NS_FROM = 10**17

_SHA256_RE = re.compile(r"^\s*([0-9a-fA-F]{64})(?:\s+\*?(\S.*?))?\s*$")


def to_millis(ts: np.ndarray) -> np.ndarray:
    """Epoch timestamps in ms, µs or ns (detected per value by magnitude) as int64 milliseconds."""
    ts = np.asarray(ts, dtype=np.int64)
    out = np.where(ts >= _US_FROM, ts // 1000, ts)
    return np.where(ts >= _NS_FROM, ts // 1_000_000, out)


def klines_from_columns(
    symbol: str,
    interval: str,
    columns: Mapping[str, pa.Array | pa.ChunkedArray | np.ndarray | None],
    *,
    name: str = "input",
    with_anomalies: bool = False,
) -> pa.Table:
    """Build a KLINE_SCHEMA table from raw kline columns, checking they fit `interval`.

    `columns` holds `open_time` (ms/µs/ns epoch) and any of `close_time`, `open`, `high`, `low`,
    `close`, `volume`, `quote_volume`, `trades`, `taker_buy_base`, `taker_buy_quote`; a column that
    is missing, or a NULL inside one, stays NULL in the result. `close_time` is only used to check
    the interval: the result's close time is always `open_time + interval`. `name` names the input
    in error messages. `with_anomalies` appends the ANOMALY_FLAGS columns: `anomaly_close_time`
    where a given close time was not `open_time + interval - 1 ms` (a NULL one is not counted),
    `anomaly_us` where the open time was not in milliseconds.
    """
    validate_symbol(symbol)
    validate_interval(interval)
    step = INTERVAL_MS[interval]
    ot_arr = _arrow(columns.get("open_time"))
    if ot_arr is None:
        raise MscaleError(f"{name}: no open_time column")
    if ot_arr.null_count:
        raise MscaleError(f"{name}: {ot_arr.null_count} rows have no open time; the file is damaged")
    ot_raw = ot_arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    ot = to_millis(ot_raw)
    n = len(ot)
    bad_close = np.zeros(n, dtype=bool)

    if n:
        bad = np.flatnonzero(ot % step)
        if len(bad):
            raise MscaleError(
                f"{name}: {len(bad)} open times are not on a {interval} boundary (first at {int(ot[bad[0]])} ms); "
                f"is this really a {interval} file?"
            )
        ct_arr = _arrow(columns.get("close_time"))
        if ct_arr is not None and ct_arr.null_count < n:
            ct = to_millis(ct_arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
            valid = ct_arr.is_valid().to_numpy(zero_copy_only=False)
            bad_close = valid & (ct != ot + step - 1)
            span = (ct - ot)[valid] + 1
            typical = int(np.median(span))
            if abs(typical - step) > step // 2:
                raise MscaleError(
                    f"{name}: its bars span {typical / 1000:g} s each, not {interval}; "
                    "pass the right interval (or check the file name)"
                )
        elif n > 1:
            # No close times (freqtrade): bars never closer than 15 intervals apart mean coarser bars
            # (hours named as minutes); real gaps, even long outages, leave most bars adjacent.
            gaps = np.diff(np.unique(ot))
            if len(gaps) and gaps.min() >= 15 * step:
                raise MscaleError(
                    f"{name}: its bars are at least {gaps.min() / 1000:g} s apart, not {interval}; "
                    "pass the right interval (or check the file name)"
                )

    def values(key: str, dtype) -> np.ndarray | None:
        arr = _arrow(columns.get(key))
        if arr is None:
            return None
        arr = arr.cast(pa.float64() if dtype is np.float64 else pa.int64())
        return arr.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)

    value_cols = ["open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote"]
    kwargs = {k: values(k, np.float64) for k in value_cols}
    kwargs["trades"] = values("trades", np.int64)
    table = klines_from_arrays(symbol, ot, interval, **kwargs)

    # klines_from_arrays takes plain arrays; put back the NULLs a source really had.
    for key in [*value_cols, "trades"]:
        arr = _arrow(columns.get(key))
        if arr is not None and arr.null_count:
            i = table.schema.get_field_index(key)
            table = table.set_column(i, table.schema.field(i), arr.cast(table.schema.field(i).type))
    if with_anomalies:
        flags = dict(zip(ANOMALY_FLAGS, (bad_close, ot_raw >= _US_FROM)))
        for key, values in flags.items():
            table = table.append_column(key, pa.array(values, pa.bool_()))
    return table


def _arrow(values) -> pa.Array | None:
    if values is None:
        return None
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(np.asarray(values))


def _first_line(data: bytes) -> str:
    end = data.find(b"\n")
    return data[: end if end >= 0 else len(data)].decode("utf-8", "replace").lstrip("\ufeff").strip()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_kline_csv(
    data: bytes, symbol: str, interval: str, *, name: str = "CSV", with_anomalies: bool = False
) -> pa.Table:
    """Parse one Binance archive kline CSV (spot or futures) into KLINE_SCHEMA.

    Accepts a header row or none (futures files have one, spot files do not; the columns are read
    by position, so any header wording works), ms or µs timestamps, and 6 to 12 columns (missing
    trailing columns are NULL). Rows come back in file order with `close_time = open_time + interval`
    (`with_anomalies`: plus the flag columns of `klines_from_columns`).
    """
    validate_symbol(symbol)
    validate_interval(interval)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    first = _first_line(data)
    if not first:
        return _empty(with_anomalies)
    fields = first.split(",")
    has_header = not _is_number(fields[0].strip())
    if has_header:
        rest = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
        first_data = _first_line(rest)
        if not first_data:
            return _empty(with_anomalies)
        ncols = len(first_data.split(","))
    else:
        ncols = len(fields)
    if ncols < 6:
        raise MscaleError(f"{name}: {ncols} columns per row; a kline CSV has at least 6 (open_time,open,high,low,close,volume)")
    names = ARCHIVE_COLUMNS[:ncols] + [f"extra_{i}" for i in range(ncols - len(ARCHIVE_COLUMNS))]
    wanted = [c for c in names if c in _ARCHIVE_TYPES]
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0, use_threads=False),
            convert_options=pacsv.ConvertOptions(
                column_types={c: _ARCHIVE_TYPES[c] for c in wanted}, include_columns=wanted
            ),
        )
    except pa.ArrowInvalid as e:
        raise MscaleError(f"{name}: not a Binance kline CSV ({str(e).splitlines()[0][:160]})") from None
    columns: dict[str, pa.ChunkedArray] = {"open_time": table.column("open_time")}
    if "close_time" in wanted:
        columns["close_time"] = table.column("close_time")
    for src, dst in _TO_KLINE.items():
        if src in wanted:
            columns[dst] = table.column(src)
    return klines_from_columns(symbol, interval, columns, name=name, with_anomalies=with_anomalies)


def _empty(with_anomalies: bool) -> pa.Table:
    table = KLINE_SCHEMA.empty_table()
    for key in ANOMALY_FLAGS if with_anomalies else ():
        table = table.append_column(key, pa.array([], pa.bool_()))
    return table


def unzip_single_csv(data: bytes, *, name: str = "archive zip") -> tuple[str, bytes]:
    """(member name, bytes) of the one CSV inside an archive zip; a damaged zip raises ChecksumError."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            csvs = [i for i in members if i.filename.lower().endswith(".csv")] or members
            if len(csvs) != 1:
                raise MscaleError(
                    f"{name}: expected one CSV inside, found {len(csvs)} ({', '.join(i.filename for i in csvs)[:200]})"
                )
            return csvs[0].filename, zf.read(csvs[0])  # read() checks the member's CRC-32
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise ChecksumError(f"{name} is corrupt ({e}); delete it and download it again") from None


def read_archive_zip(
    data: bytes, symbol: str, interval: str, *, name: str = "archive zip", with_anomalies: bool = False
) -> pa.Table:
    """Parse an archive zip holding one kline CSV; a damaged zip raises ChecksumError naming `name`.
    `with_anomalies` keeps the flag columns of `klines_from_columns`."""
    member, payload = unzip_single_csv(data, name=name)
    return parse_kline_csv(payload, symbol, interval, name=f"{name}:{member}", with_anomalies=with_anomalies)


def verify_checksum(data: bytes, checksum_text: str | bytes, name: str) -> None:
    """Raise ChecksumError unless sha256(`data`) equals the digest in `checksum_text`.

    `checksum_text` is the archive's `.CHECKSUM` content, `<hex>  <file name>`; when it names a
    file, that name must be `name` (a checksum published for another file proves nothing).
    """
    if isinstance(checksum_text, bytes):
        checksum_text = checksum_text.decode("utf-8", "replace")
    lines = [ln for ln in checksum_text.splitlines() if ln.strip()]
    m = _SHA256_RE.match(lines[0]) if len(lines) == 1 else None
    if not m:
        raise ChecksumError(f"{name}: its .CHECKSUM is not '<sha256>  <file name>' ({checksum_text.strip()[:100]!r})")
    expected, listed = m[1].lower(), m[2]
    base = name.rsplit("/", 1)[-1]
    if listed is not None and listed.rsplit("/", 1)[-1] != base:
        raise ChecksumError(f"{name}: its .CHECKSUM is for {listed!r}, not {base!r}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"{name}: sha256 {actual[:16]}… does not match the published {expected[:16]}…; "
            "the download is damaged, nothing was written"
        )
