"""`mscale import`: local kline files into the shard layout of CONTRACT §1.

Reads Binance archive zips and CSVs (spot or futures, header or not, ms or µs), freqtrade JSON
(`[[open_time_ms, open, high, low, close, volume], ...]`, optionally gzipped) and pandas dumps of
REST klines (a `timestamp` column among named columns). Guarantees:
- every file's market, symbol and interval are settled before anything is written, so a bad
  name fails the whole command up front with a one-line error. The market is what the path says
  (`.../spot/...` -> spot, `.../futures/um/...` -> um, a freqtrade `*_USDT_USDT-1m-futures.json`
  -> um; `.../futures/cm/...` is refused: coin-M is not stored), else `--market`, else the
  config's; a `--market` that contradicts the path is an error. The symbol is what the file name
  says; a `--symbol` that contradicts it is an error unless `rename_symbol` (`--rename-symbol`)
  says to store the bars under the new name. The interval comes from `--interval` or the file
  name, else from the bars themselves;
- rows go through the one writer `write_klines(..., source="import", origin=<file name>)` into
  the market's folder (spot or `um/`), so importing the same files again leaves identical shards;
- a zip with a `.CHECKSUM` file next to it is verified before it is read;
- fields a format lacks (e.g. freqtrade has no trade counts) are NULL, and close times are
  `open_time + interval` whatever the file said. What that normalisation removed (close times
  other than open + interval - 1 ms, timestamps in µs, repeated rows) is counted per shard and
  file (`mscale.store.shard_anomalies`), for `mscale report`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mscale.config import Config
from mscale.errors import MscaleError
from mscale.ingest.archive import (
    klines_from_columns,
    parse_kline_csv,
    to_millis,
    unzip_single_csv,
    verify_checksum,
)
from mscale.names import MARKETS
from mscale.schema import INTERVAL_MS, INTERVALS, SYMBOL_RE, validate_interval, validate_symbol
from mscale.store import ANOMALY_FLAGS, write_klines

log = logging.getLogger("mscale.ingest.local")

SUFFIXES = (".zip", ".csv", ".json", ".json.gz")

_INTERVAL_TOKEN = r"(\d+[smhdwM])"
# BTCUSDT-1m-2023-08 / BTCUSDT-1m-2023-08-01 (archive monthly / daily)
_ARCHIVE_NAME = re.compile(rf"^([A-Za-z0-9]{{2,20}})-{_INTERVAL_TOKEN}-\d{{4}}-\d{{2}}(?:-\d{{2}})?$")
# Outside the dated archive names a symbol must be spelled in capitals, as Binance does, so that
# "download.csv" or "klines_1m.csv" are not read as symbols DOWNLOAD and KLINES.
# BTC_USDT-1m, BTC_USDT_USDT-1m-futures (freqtrade)
_FREQTRADE_NAME = re.compile(rf"^([A-Z0-9]+)_([A-Z0-9]+)(?:_([A-Z0-9]+))?-{_INTERVAL_TOKEN}(-[a-z_]+)?$")
# BTCUSDT_1m, BTCUSDT-1m (REST dumps and the like)
_PLAIN_NAME = re.compile(rf"^([A-Z0-9]{{2,20}})[-_]{_INTERVAL_TOKEN}$")
# BTCUSDT
_BARE_NAME = re.compile(r"^([A-Z0-9]{2,20})$")

# Column names of pandas/REST dumps -> klines_from_columns keys.
_REST_ALIASES = {
    "open_time": ("timestamp", "open_time", "opentime", "open time", "time", "date"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
    "close_time": ("close_time", "closetime", "close time"),
    "quote_volume": ("quote_av", "quote_volume", "quote asset volume", "quote_asset_volume"),
    "trades": ("trades", "count", "number of trades", "number_of_trades"),
    "taker_buy_base": ("tb_base_av", "taker_buy_volume", "taker_buy_base", "taker buy base asset volume"),
    "taker_buy_quote": ("tb_quote_av", "taker_buy_quote_volume", "taker_buy_quote", "taker buy quote asset volume"),
}
_REST_TYPES = {"open_time": pa.int64(), "close_time": pa.int64(), "trades": pa.int64()}


@dataclass(frozen=True)
class ImportedFile:
    """One imported file: what it was read as and what the writer did with it."""

    path: Path
    symbol: str
    interval: str
    rows: int  # rows read from the file
    duplicates_dropped: int  # repeated open times inside the file (the last one is kept)
    rows_replaced: int  # stored rows overwritten by this file's rows
    shards: tuple[str, ...]  # shard paths written
    market: str = "spot"
    market_dir: Path | None = None
    anomalies: dict[str, int] = field(default_factory=dict)  # rows per ANOMALY_FLAGS kind, normalised away


@dataclass
class ImportSummary:
    market_dir: Path  # the configured market's folder; files may have gone to another (`ImportedFile.market_dir`)
    files: list[ImportedFile] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def duplicates_dropped(self) -> int:
        return sum(f.duplicates_dropped for f in self.files)

    def lines(self) -> list[str]:
        """Human-readable lines, one per file and a total, for the command line."""
        out = [
            f"{f.path.name}: {f.symbol} {f.interval}, {f.rows} rows, {f.duplicates_dropped} duplicates dropped, "
            f"{len(f.shards)} shard(s){_anomaly_text(f.anomalies)}"
            for f in self.files
        ]
        dirs = {(f.market, f.market_dir or self.market_dir) for f in self.files} or {(None, self.market_dir)}
        where = " and ".join(f"{d} ({m})" if m else str(d) for m, d in sorted(dirs, key=lambda x: str(x[1])))
        out.append(f"imported {len(self.files)} file(s), {self.rows} rows into {where}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _anomaly_text(anomalies: dict[str, int]) -> str:
    close, micros = (anomalies.get(k, 0) for k in ANOMALY_FLAGS.values())
    if not close and not micros:
        return ""
    return (f"; normalised {close} close time(s) not open + interval - 1 ms, "
            f"{micros} timestamp(s) in µs")


@dataclass(frozen=True)
class _Plan:
    path: Path
    kind: str  # zip | csv | json
    symbol: str
    interval: str | None  # None: infer from the bars
    market: str


def import_paths(
    cfg: Config,
    paths: list[Path],
    *,
    symbol: str | None = None,
    interval: str | None = None,
    market: str | None = None,
    rename_symbol: bool = False,
) -> ImportSummary:
    """Import local kline files (or every supported file under the given folders) into their market's folder.

    `market` is the market the user named (`--market`), None when not named; `cfg.market` is
    the fallback for paths that do not say. `symbol` names files whose names do not; it may
    differ from a name's symbol only with `rename_symbol`. `interval` overrides the file names.
    Raises MscaleError, before writing anything, when a path is missing, unsupported, coin-M,
    in another market than `market`, names another symbol than `symbol`, or names no symbol and
    none was given.
    """
    if symbol is not None:
        symbol = validate_symbol(symbol.upper())
    elif rename_symbol:
        raise MscaleError("--rename-symbol needs --symbol (the name to store the bars under)")
    if interval is not None:
        validate_interval(interval)
    if market is not None and market not in MARKETS:
        raise MscaleError(f"unknown market {market!r}: use spot or um")
    plans = [_plan(p, symbol, interval, market=market, default_market=cfg.market, rename_symbol=rename_symbol)
             for p in _expand(paths)]
    summary = ImportSummary(market_dir=cfg.market_dir)
    for plan in plans:
        table, itv = _read(plan)
        anomalies = {ANOMALY_FLAGS[c]: int(np.count_nonzero(table.column(c).to_numpy(zero_copy_only=False)))
                     for c in ANOMALY_FLAGS if c in table.column_names}
        market_dir = replace(cfg, market=plan.market).market_dir
        result = write_klines(market_dir, itv, table, source="import", origin=plan.path.name)
        summary.files.append(
            ImportedFile(
                path=plan.path,
                symbol=plan.symbol,
                interval=itv,
                rows=table.num_rows,
                duplicates_dropped=result.duplicates_dropped,
                rows_replaced=result.rows_replaced,
                shards=tuple(result.shards),
                market=plan.market,
                market_dir=market_dir,
                anomalies=anomalies,
            )
        )
        log.debug("%s: %s %s %s, %d rows (%d duplicates dropped, anomalies %s)", plan.path, plan.market, plan.symbol,
                  itv, table.num_rows, result.duplicates_dropped, anomalies)
    return summary


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in ((".json.gz", "json"), (".json", "json"), (".zip", "zip"), (".csv", "csv")):
        if name.endswith(suffix):
            return kind
    return None


def _expand(paths: list[Path]) -> list[Path]:
    """The files to import: explicit files as given, folders searched recursively (sorted)."""
    if not paths:
        raise MscaleError("nothing to import: pass one or more files or folders")
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f) and not f.name.startswith("."))
            if not found:
                raise MscaleError(f"{p}: no {', '.join(SUFFIXES)} files inside")
            out.extend(found)
        elif p.is_file():
            if _kind(p) is None:
                raise MscaleError(f"{p}: unsupported file type; import handles {', '.join(SUFFIXES)}")
            out.append(p)
        else:
            raise MscaleError(f"{p}: no such file or folder")
    return list(dict.fromkeys(out))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".json.gz", ".json", ".zip", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def infer_from_name(name: str) -> tuple[str | None, str | None]:
    """(symbol, interval) a file name states, each None when it does not say.

    `BTCUSDT-1m-2023-08.zip` / `.csv` -> (BTCUSDT, 1m); `BTC_USDT-1m.json` and freqtrade's futures
    `BTC_USDT_USDT-1m-futures.json` -> (BTCUSDT, 1m); `BTCUSDT_1m.csv` -> (BTCUSDT, 1m);
    `BTCUSDT.csv` -> (BTCUSDT, None). Only the dated archive names may spell the symbol in lower case.
    Intervals are returned as written, even ones mscale does not store (the caller rejects them).
    """
    stem = _stem(Path(name))
    m = _ARCHIVE_NAME.match(stem) or _PLAIN_NAME.match(stem)
    if m:
        return _symbol_or_none(m[1]), m[2]
    m = _FREQTRADE_NAME.match(stem)
    if m:
        return _symbol_or_none(m[1] + m[2]), m[4]
    m = _BARE_NAME.match(stem)
    if m:
        return _symbol_or_none(m[1]), None
    m = re.search(rf"(?:^|[-_.]){_INTERVAL_TOKEN}(?:$|[-_.])", stem)
    return None, (m[1] if m else None)


def _symbol_or_none(text: str) -> str | None:
    text = text.upper()
    return text if SYMBOL_RE.match(text) else None


_COIN_M = "coin-M futures are not supported: mscale stores spot and USDⓈ-M (futures/um) klines"


def market_of_path(path: Path) -> tuple[str, str] | None:
    """(market, what said so) as a file's path states it, None when it does not say.

    The folder nearest the file wins: Binance's archive layout `.../spot/...` -> spot and
    `.../futures/um/...` -> um; freqtrade's futures files `BASE_QUOTE_QUOTE-<interval>-futures.json`
    -> um. Coin-M (`.../futures/cm/...`, or a freqtrade futures file settled in another currency
    than its quote) raises MscaleError.
    """
    path = Path(path)
    folders = [p.lower() for p in path.absolute().parts[:-1]]
    for i in range(len(folders) - 1, -1, -1):
        if folders[i] == "spot":
            return "spot", "spot/"
        if folders[i] == "futures" and i + 1 < len(folders) and folders[i + 1] in ("um", "cm"):
            if folders[i + 1] == "cm":
                raise MscaleError(f"{path}: its path is under futures/cm/; {_COIN_M}")
            return "um", "futures/um/"
    m = _FREQTRADE_NAME.match(_stem(path))
    if m and m[5] == "-futures":
        if m[3] and m[3] != m[2]:
            raise MscaleError(f"{path}: a futures file settled in {m[3]}, not {m[2]}; {_COIN_M}")
        return "um", "a freqtrade -futures name"
    return None


def _plan(
    path: Path, symbol: str | None, interval: str | None, *, market: str | None, default_market: str, rename_symbol: bool
) -> _Plan:
    kind = _kind(path)
    assert kind is not None
    stated = market_of_path(path)
    if stated and market and stated[0] != market:
        raise MscaleError(
            f"{path}: its path says {stated[0]} ({stated[1]}), but --market {market} was given; "
            f"drop --market or use --market {stated[0]}"
        )
    named_symbol, named_interval = infer_from_name(path.name)
    if symbol and named_symbol and symbol != named_symbol and not rename_symbol:
        raise MscaleError(
            f"{path}: the file name says {named_symbol}, but --symbol {symbol} was given; "
            f"pass --rename-symbol to store these bars as {symbol} anyway"
        )
    sym = symbol or named_symbol
    if sym is None:
        raise MscaleError(f"{path}: cannot tell the symbol from the file name; pass --symbol (e.g. --symbol BTCUSDT)")
    itv = interval or named_interval
    if itv is not None and itv not in INTERVALS:
        raise MscaleError(f"{path}: interval {itv!r} is not stored by mscale; import {' or '.join(INTERVALS)} files")
    return _Plan(path, kind, sym, itv, stated[0] if stated else (market or default_market))


def _read(plan: _Plan) -> tuple[pa.Table, str]:
    """(rows in KLINE_SCHEMA, interval) of one planned file."""
    name = str(plan.path)
    try:
        data = plan.path.read_bytes()
    except OSError as e:
        raise MscaleError(f"{plan.path}: cannot read ({e.strerror})") from None
    if plan.kind == "zip":
        checksum = plan.path.with_name(plan.path.name + ".CHECKSUM")
        if checksum.is_file():
            verify_checksum(data, checksum.read_text(errors="replace"), plan.path.name)
        member, payload = unzip_single_csv(data, name=name)
        itv = plan.interval or _interval_of_csv(payload, name)
        return parse_kline_csv(payload, plan.symbol, itv, name=f"{name}:{member}", with_anomalies=True), itv
    if plan.kind == "json":
        return _read_freqtrade(data, plan, name)
    if _is_named_dump(data):
        return _read_rest_dump(data, plan, name)
    itv = plan.interval or _interval_of_csv(data, name)
    return parse_kline_csv(data, plan.symbol, itv, name=name, with_anomalies=True), itv


def _interval_from_bars(open_time_ms: np.ndarray, close_time_ms: np.ndarray | None, name: str) -> str:
    """The stored interval whose length matches the bars (close - open, else the usual spacing)."""
    if close_time_ms is not None and len(close_time_ms):
        length = int(np.median(close_time_ms - open_time_ms)) + 1
    elif len(open_time_ms) > 1:
        diffs = np.diff(np.sort(open_time_ms))
        diffs = diffs[diffs > 0]
        length = int(np.min(diffs)) if len(diffs) else 0
    else:
        length = 0
    for itv, ms in INTERVAL_MS.items():
        if abs(length - ms) <= ms // 2:
            return itv
    raise MscaleError(
        f"{name}: cannot tell the interval from the file name or its bars; pass --interval ({' or '.join(INTERVALS)})"
    )


def _interval_of_csv(data: bytes, name: str) -> str:
    """Interval of an archive-style CSV from its first data rows."""
    rows = []
    for line in data[:65536].splitlines()[:50]:
        parts = line.decode("utf-8", "replace").lstrip("\ufeff").split(",")
        try:
            rows.append((int(float(parts[0])), int(float(parts[6])) if len(parts) > 6 else None))
        except (ValueError, IndexError):
            continue
    if not rows:
        raise MscaleError(f"{name}: no kline rows found")
    ot = to_millis(np.array([r[0] for r in rows]))
    ct = to_millis(np.array([r[1] for r in rows])) if all(r[1] is not None for r in rows) else None
    return _interval_from_bars(ot, ct, name)


def _read_freqtrade(data: bytes, plan: _Plan, name: str) -> tuple[pa.Table, str]:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise MscaleError(f"{name}: corrupt gzip ({e})") from None
    try:
        rows = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MscaleError(f"{name}: not valid JSON ({e})") from None
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) < 6 for r in rows[:1]):
        raise MscaleError(f"{name}: expected freqtrade JSON, [[open_time_ms, open, high, low, close, volume], ...]")
    try:
        arr = np.array([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)
    except (TypeError, ValueError) as e:
        raise MscaleError(f"{name}: rows must be 6 numbers each ({e})") from None
    open_time = to_millis(arr[:, 0].astype(np.int64))
    itv = plan.interval or _interval_from_bars(open_time, None, name)
    columns = {"open_time": open_time, **{k: arr[:, i + 1] for i, k in enumerate(["open", "high", "low", "close", "volume"])}}
    return klines_from_columns(plan.symbol, itv, columns, name=name, with_anomalies=True), itv


def _is_named_dump(data: bytes) -> bool:
    """True for a CSV whose header names the columns (pandas REST dumps), not an archive CSV."""
    end = data.find(b"\n")
    header = data[: end if end >= 0 else len(data)].decode("utf-8", "replace").lstrip("\ufeff").strip().lower()
    fields = [f.strip() for f in header.split(",")]
    return bool(fields) and (fields[0] == "" or "timestamp" in fields)


def _read_rest_dump(data: bytes, plan: _Plan, name: str) -> tuple[pa.Table, str]:
    end = data.find(b"\n")
    first = data[: end if end >= 0 else len(data)].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    header = next(csv.reader([first]))
    lower = {h.strip().lower(): h for h in header}
    picked: dict[str, str] = {}
    for key, aliases in _REST_ALIASES.items():
        for a in aliases:
            if a in lower:
                picked[key] = lower[a]
                break
    missing = [k for k in ("open_time", "open", "high", "low", "close", "volume") if k not in picked]
    if missing:
        raise MscaleError(f"{name}: CSV header lacks {', '.join(missing)} (has {', '.join(header)[:200]})")
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(picked.values()),
                column_types={col: _REST_TYPES.get(key, pa.float64()) for key, col in picked.items()},
            ),
        )
    except pa.ArrowInvalid as e:
        raise MscaleError(f"{name}: unreadable kline rows ({str(e).splitlines()[0][:160]})") from None
    columns = {key: table.column(col) for key, col in picked.items()}
    if plan.interval is None:
        ot = to_millis(columns["open_time"].to_numpy())
        ct = to_millis(columns["close_time"].fill_null(0).to_numpy()) if "close_time" in columns else None
        itv = _interval_from_bars(ot, ct, name)
    else:
        itv = plan.interval
    return klines_from_columns(plan.symbol, itv, columns, name=name, with_anomalies=True), itv
