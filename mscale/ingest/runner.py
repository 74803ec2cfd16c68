"""`mscale ingest`: plan UTC months per symbol, fetch what is missing, write through the store.

Guarantees:
- validation first: symbols, interval, source, `start <= end`, a writable data dir and one holding
  no synthetic demo shard (`mscale demo-data` marks its months complete, so real data would be
  skipped, and the views would mix both) are checked before any request;
- every row reaches disk through `mscale.store.write_klines`, in batches (a REST batch of
  `batch_rows`, one archive day, one archive month), so a kill loses at most the batch in flight
  and a re-run continues from what is stored: it fetches only the spans of the requested window
  the shard does not hold (after the last stored row, before the first, and inside holes);
- Ctrl-C (KeyboardInterrupt) puts the shard of the month in flight back exactly as it was before
  this run touched it (`mscale.interrupts.Undo`): every shard is then either as before the run
  or as a complete run leaves it, and a re-run resumes at that month;
- a shard is marked complete only for a past month whose whole calendar month was requested and
  fetched: from REST to the end of the month, or as the archive's monthly file. Complete shards
  are skipped (no request at all) unless `force`;
- rows are never lost or duplicated: the store merges by open_time, the REST client drops
  overlapping and still-open rows; the overlapping rows it drops are counted as duplicates, in
  the summary and in the `mscale.duplicates_dropped` metadata of the month's shard (handed to the
  store as `upstream_duplicates`; the data are unchanged);
- an unknown symbol gets nothing written; the other symbols are still ingested, then
  UnknownSymbolError naming the unknown ones is raised (its `.summary` holds the summary).
  Unknown means: REST answers Binance error -1121 (sources rest, auto), or, with source bulk,
  every archive file requested for it is missing (404) and nothing is stored for it.

Sources: "rest" = REST only; "bulk" = the archive only (monthly files for past months, daily files
for the current month's days before today, and for last month while its monthly file is not
published yet); "auto" = bulk first, then REST for whatever the archive lacks (404s, today, a
corrupt file).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mscale.config import Config
from mscale.errors import ChecksumError, MscaleError, UnknownSymbolError
from mscale.ingest.bulk import daily_name, monthly_name
from mscale.ingest.rest import RestClient
from mscale.interrupts import Undo, check_interrupted, interrupt_requested, remove_stale_undo
from mscale.schema import INTERVAL_MS, KLINE_SCHEMA, validate_interval, validate_symbol
from mscale.store import (
    META_SOURCE,
    WriteResult,
    is_complete,
    list_shards,
    mark_complete,
    read_open_times,
    shard_metadata,
    shard_paths,
    write_klines,
)

if TYPE_CHECKING:
    from mscale.ingest.bulk import ArchiveClient

log = logging.getLogger("mscale.ingest.runner")

SOURCES = ("bulk", "rest", "auto")
_MAX_SPANS = 16  # more holes than this in one month: fetch from the first hole to the end instead
DAY_MS = 86_400_000


@dataclass
class SymbolSummary:
    """What one symbol's ingestion did."""

    rows_written: int = 0  # rows new to the shards
    rows_fetched: int = 0  # rows handed to the store (new + replaced)
    rows_replaced: int = 0  # stored rows overwritten by a fetched row with the same open_time
    duplicates_dropped: int = 0  # repeated rows dropped by the REST client or the store
    months_skipped: int = 0  # complete shards left alone
    months_completed: int = 0  # shards marked complete by this run
    missing: list[str] = field(default_factory=list)  # archive files that do not exist (bulk only)
    archive_files: int = 0  # archive files asked for (found or missing)
    sources: set[str] = field(default_factory=set)
    error: str | None = None


@dataclass
class IngestSummary:
    """Per-symbol results of one `ingest` call."""

    interval: str
    source: str
    symbols: dict[str, SymbolSummary] = field(default_factory=dict)
    rest_requests: int = 0

    @property
    def unknown(self) -> list[str]:
        return [s for s, r in self.symbols.items() if r.error]

    @property
    def rows_written(self) -> int:
        return sum(r.rows_written for r in self.symbols.values())

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        """One human-readable line per symbol."""
        out = []
        for sym, r in self.symbols.items():
            if r.error:
                out.append(f"{sym}: {r.error}")
                continue
            line = (f"{sym} {self.interval}: {r.rows_written} new rows, {r.rows_replaced} re-fetched, "
                    f"{r.duplicates_dropped} duplicates dropped, {r.months_skipped} complete months skipped, "
                    f"sources {','.join(sorted(r.sources)) or '-'}")
            if r.missing:
                line += f"; not in the archive: {', '.join(r.missing[:3])}{' ...' if len(r.missing) > 3 else ''}"
            out.append(line)
        return out


def ingest(
    cfg: Config,
    *,
    symbols: list[str],
    start: date,
    end: date | None,
    interval: str = "1m",
    source: str = "bulk",
    force: bool = False,
    rest: RestClient | None = None,
    archive: "ArchiveClient | None" = None,
    today: date | None = None,
    progress: bool = True,
    batch_rows: int = 10_000,
) -> IngestSummary:
    """Download klines of `symbols` for the UTC days `start..end` (inclusive; end default today,
    a later end is clipped to today) into `cfg.market_dir`.

    `rest` / `archive` default to clients built from `cfg.ingest`; `today` defaults to the UTC
    date; `batch_rows` is how many REST rows are buffered before a write. See the module
    docstring for what is guaranteed about batching, resuming, completeness and unknown symbols.
    """
    syms = list(dict.fromkeys(validate_symbol(s) for s in symbols))
    if not syms:
        raise MscaleError("no symbols given: pass --symbols, e.g. --symbols BTCUSDT ETHUSDT")
    validate_interval(interval)
    if source not in SOURCES:
        raise MscaleError(f"unknown source {source!r}: use one of {', '.join(SOURCES)}")
    today = today or datetime.now(timezone.utc).date()
    end_day = end or today
    if start > end_day:
        raise MscaleError(f"--start {start} is after --end {end_day}")
    if start > today:
        raise MscaleError(f"--start {start} is in the future (today is {today} UTC)")
    if end_day > today:
        log.info("--end %s is in the future; fetching up to now", end_day)
        end_day = today
    _check_writable(cfg.market_dir)
    remove_stale_undo(cfg.market_dir)
    _refuse_synthetic(cfg.market_dir, syms, interval)
    if source in ("rest", "auto") and rest is None:
        rest = RestClient.from_settings(cfg.ingest, market=cfg.market)
    if source in ("bulk", "auto") and archive is None:
        from mscale.ingest.bulk import ArchiveClient

        archive = ArchiveClient(cfg.ingest.archive_url, market=cfg.market, timeout_s=cfg.ingest.timeout_s,
                                max_retries=cfg.ingest.max_retries, backoff_base_s=cfg.ingest.backoff_base_s,
                                backoff_max_s=cfg.ingest.backoff_max_s)
    show = progress and not cfg.quiet and sys.stderr.isatty()
    run = _Run(cfg, interval, source, force, rest, archive, today, show, batch_rows)
    summary = IngestSummary(interval=interval, source=source)
    requests_before = rest.stats.requests if rest else 0
    window = (_day_ms(start), _day_ms(end_day + timedelta(days=1)))
    for sym in syms:
        summ = summary.symbols[sym] = SymbolSummary()
        try:
            for year, month in _months(start, end_day):
                run.month(sym, year, month, window, summ)
        except UnknownSymbolError as e:
            if summ.rows_fetched or summ.months_skipped:
                # the archive (or an earlier run) had data: REST no longer lists it, e.g. delisted
                log.warning("%s; keeping the %s rows already stored (delisted?)", e, sym)
            else:
                summ.error = str(e)
        if (source == "bulk" and summ.archive_files and len(summ.missing) == summ.archive_files
                and not summ.rows_fetched and not summ.months_skipped
                and not list_shards(cfg.market_dir, interval, sym)):
            summ.error = f"unknown symbol {sym}: the archive has no {interval} files for it from {start} to {end_day}"
        if summ.error and sym != syms[-1]:
            log.warning("%s; continuing with the other symbols", summ.error)
    summary.rest_requests = (rest.stats.requests - requests_before) if rest else 0
    if summary.unknown:
        many = len(summary.unknown) > 1
        them = "them" if many else "it"
        others = [s for s in syms if s not in summary.unknown]
        if source == "bulk":
            where = getattr(archive, "archive_url", "") or "the archive"
            why = (f"the archive ({where}) has no {interval} files for {them} from {start} to {end_day}: "
                   f"misspelt, or not listed yet? (for a new listing use --source auto)")
        else:
            why = f"Binance does not list {them}"
        err = UnknownSymbolError(
            f"unknown symbol{'s' if many else ''} {', '.join(summary.unknown)}: {why}; nothing written for {them}"
            + (f" ({', '.join(others)} ingested)" if others else "")
        )
        err.summary = summary  # type: ignore[attr-defined]
        raise err
    return summary


class _Run:
    """The state shared by every month of one `ingest` call."""

    def __init__(self, cfg: Config, interval: str, source: str, force: bool, rest: RestClient | None,
                 archive: "ArchiveClient | None", today: date, show: bool, batch_rows: int) -> None:
        self.market_dir = cfg.market_dir
        self.interval = interval
        self.step = INTERVAL_MS[interval]
        self.source = source
        self.force = force
        self.rest = rest
        self.archive = archive
        self.today = today
        self.today_ms = _day_ms(today)
        self.show = show
        self.batch_rows = max(1, batch_rows)

    # ---- one month ---------------------------------------------------------------------------
    def month(self, sym: str, year: int, month: int, window: tuple[int, int], summ: SymbolSummary) -> None:
        m_start, m_end = _month_ms(year, month)
        a, b = max(window[0], m_start), min(window[1], m_end)
        if a >= b:
            return
        path = self._shard(sym, year, month)
        if path is not None and not self.force and is_complete(path):
            summ.months_skipped += 1
            return
        past = m_end <= self.today_ms
        whole = past and a == m_start and b == m_end  # may be marked complete once fetched
        # Ctrl-C puts this month's shard back as it was: no month is left half fetched by an
        # interrupt (a kill keeps the batches written, and a re-run fills the rest)
        undo = Undo(lambda: shard_paths(self.market_dir, self.interval, sym, year, month), self.market_dir)
        try:
            self._fetch_month(sym, year, month, a, b, past, whole, summ)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) or interrupt_requested():  # or an error the interrupt caused
                undo.restore()
            raise
        finally:
            undo.discard()

    def _fetch_month(self, sym: str, year: int, month: int, a: int, b: int, past: bool, whole: bool,
                     summ: SymbolSummary) -> None:
        label = f"{sym} {year:04d}-{month:02d}"
        with tqdm(total=None, desc=label, unit="rows", unit_scale=True, leave=False, disable=not self.show,
                  file=sys.stderr) as bar:
            if self.source in ("bulk", "auto"):
                done = self._bulk(sym, year, month, a, b, past, whole, summ, bar)
                if done or self.source == "bulk":
                    return
            self._rest(sym, year, month, a, b, whole, summ, bar)

    def _bulk(self, sym: str, year: int, month: int, a: int, b: int, past: bool, whole: bool,
              summ: SymbolSummary, bar: tqdm) -> bool:
        """Archive files for [a, b); True when the month needs nothing more (the monthly file)."""
        assert self.archive is not None
        if past:
            table = self._archive_call(self.archive.monthly, sym, self.interval, year, month, summ=summ)
            if table is not None:
                bar.set_postfix_str("bulk monthly")
                self._write(sym, _clip(table, a, b), "bulk", summ, bar, complete=(year, month) if whole else None,
                            origin=monthly_name(sym, self.interval, year, month))
                return True
            summ.missing.append(f"{year:04d}-{month:02d}")
            prev = date(self.today.year, self.today.month, 1) - timedelta(days=1)
            if (year, month) != (prev.year, prev.month):
                return False  # old month without a monthly file: no daily files either
        all_days = True
        bar.set_postfix_str("bulk daily")
        for day in self._days_to_fetch(sym, year, month, a, b):
            table = self._archive_call(self.archive.daily, sym, self.interval, day, summ=summ)
            if table is None:
                summ.missing.append(f"{day:%Y-%m-%d}")
                all_days = False
                continue
            self._write(sym, _clip(table, a, b), "bulk", summ, bar,
                        origin=daily_name(sym, self.interval, day))
        if whole and all_days and self.source == "bulk":
            self._mark_complete(sym, year, month, summ)
        return False

    def _archive_call(self, fn, *args, summ: SymbolSummary) -> pa.Table | None:
        summ.archive_files += 1
        try:
            return fn(*args)
        except ChecksumError as e:
            if self.source != "auto":
                raise
            log.warning("%s; fetching that period from REST instead", e)
            return None

    def _days_to_fetch(self, sym: str, year: int, month: int, a: int, b: int) -> list[date]:
        """Days before today that overlap a span of [a, b) the shard does not hold."""
        last = min(b, self.today_ms)
        days: set[int] = set()
        for s, e in self._spans(sym, year, month, a, last):
            d = s - s % DAY_MS
            while d < e:
                days.add(d)
                d += DAY_MS
        return [datetime.fromtimestamp(d / 1000, timezone.utc).date() for d in sorted(days)]

    def _rest(self, sym: str, year: int, month: int, a: int, b: int, whole: bool, summ: SymbolSummary,
              bar: tqdm) -> None:
        """REST for every span of [a, b) the shard lacks; writes every `batch_rows` rows.

        The rows the client drops as overlap go with the next write as `dups` (see `_write`). A
        failing request keeps the rows already received (written, the month not marked complete).
        """
        rest = self.rest
        assert rest is not None
        spans = self._spans(sym, year, month, a, b)
        now_ms = int(rest.clock() * 1000)
        bar.total = sum(max(0, (min(e, now_ms) - s) // self.step) for s, e in spans) or None
        bar.set_postfix_str("rest")
        buf: list[pa.Table] = []
        n = dups = 0
        seen = rest.stats.overlap_dropped
        try:
            for s, e in spans:
                for page in rest.klines(sym, self.interval, s, e):
                    check_interrupted()  # a Ctrl-C some library swallowed
                    buf.append(page)
                    n += page.num_rows
                    dups, seen = dups + rest.stats.overlap_dropped - seen, rest.stats.overlap_dropped
                    if n >= self.batch_rows:
                        self._write(sym, pa.concat_tables(buf), "rest", summ, bar, dups=dups)
                        buf, n, dups = [], 0, 0
        except MscaleError:
            if buf:
                self._write(sym, pa.concat_tables(buf), "rest", summ, bar, dups=dups)
            raise
        dups += rest.stats.overlap_dropped - seen  # dropped from pages that yielded nothing
        complete = (year, month) if whole else None
        self._write(sym, pa.concat_tables(buf) if buf else KLINE_SCHEMA.empty_table(), "rest", summ, bar,
                    complete=complete, dups=dups)

    # ---- store -------------------------------------------------------------------------------
    def _shard(self, sym: str, year: int, month: int) -> Path | None:
        found = shard_paths(self.market_dir, self.interval, sym, year, month)
        return found[0] if found else None

    def _spans(self, sym: str, year: int, month: int, a: int, b: int) -> list[tuple[int, int]]:
        """The parts of [a, b) the stored shard does not cover (everything when forced)."""
        if a >= b:
            return []
        path = self._shard(sym, year, month)
        if self.force or path is None:
            return [(a, b)]
        return missing_spans(read_open_times(path), a, b, self.step)

    def _write(self, sym: str, table: pa.Table, source: str, summ: SymbolSummary, bar: tqdm,
               complete: tuple[int, int] | None = None, dups: int = 0, origin: str | None = None) -> None:
        """Write `table` through the store; `dups` rows dropped upstream (REST overlap) are counted
        in the shard's metadata, and with `origin` (an archive file's name) so are the source
        anomalies its flag columns mark (`mscale.store.shard_anomalies`)."""
        if table.num_rows == 0:
            if complete:
                self._mark_complete(sym, *complete, summ, dups=dups)
            else:
                summ.duplicates_dropped += dups
            return
        res: WriteResult = write_klines(self.market_dir, self.interval, table, source=source,
                                        complete_months=[complete] if complete else [], upstream_duplicates=dups,
                                        origin=origin)
        summ.rows_fetched += res.rows_in
        summ.rows_replaced += res.rows_replaced
        summ.duplicates_dropped += res.duplicates_dropped
        summ.rows_written += res.rows_in - (res.duplicates_dropped - dups) - res.rows_replaced
        summ.sources.add(source)
        if complete and res.shards:
            summ.months_completed += 1
        bar.update(table.num_rows)
        check_interrupted()

    def _mark_complete(self, sym: str, year: int, month: int, summ: SymbolSummary, dups: int = 0) -> None:
        """Mark a fully fetched month complete, its stored rows unchanged; `dups` go with it."""
        summ.duplicates_dropped += dups
        summ.months_completed += mark_complete(self.market_dir, self.interval, sym, year, month,
                                               upstream_duplicates=dups)


def missing_spans(open_time_ms: np.ndarray, a: int, b: int, step: int) -> list[tuple[int, int]]:
    """Half-open spans of [a, b) holding no stored open_time: before the first, holes, after the last.

    With more than _MAX_SPANS holes the spans are merged into one from the first hole to `b`.
    """
    ot = np.unique(open_time_ms[(open_time_ms >= a) & (open_time_ms < b)])
    if len(ot) == 0:
        return [(a, b)]
    spans: list[tuple[int, int]] = []
    if ot[0] > a:
        spans.append((a, int(ot[0])))
    holes = np.nonzero(np.diff(ot) > step)[0]
    spans += [(int(ot[i]) + step, int(ot[i + 1])) for i in holes]
    if ot[-1] + step < b:
        spans.append((int(ot[-1]) + step, b))
    if len(spans) > _MAX_SPANS:
        spans = [(spans[0][0], b)]
    return spans


def _refuse_synthetic(market_dir: Path, symbols: list[str], interval: str) -> None:
    """MscaleError naming a synthetic demo shard in `market_dir`, if there is one (first one of the
    requested symbols and interval)."""
    from mscale.demo import SOURCE as SYNTHETIC

    found = [s for itv in ("1m", "1h") for s in list_shards(market_dir, itv)]
    found.sort(key=lambda s: (s.symbol not in symbols, s.interval != interval))
    for shard in found:
        sources = shard_metadata(shard.path).get(META_SOURCE, b"").decode().split(",")
        if SYNTHETIC in sources:
            raise MscaleError(
                f"{shard.path} holds synthetic demo data (`mscale demo-data`), not Binance's: ingest real data "
                "into another --data-dir"
            )


def _clip(table: pa.Table, a: int, b: int) -> pa.Table:
    ot = table.column("open_time").cast(pa.int64()).to_numpy()
    mask = (ot >= a) & (ot < b)
    return table if mask.all() else table.filter(pa.array(mask))


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise MscaleError(f"data dir {path} is not writable ({e.strerror or e}); choose another with --data-dir") from None


def _months(start: date, end: date) -> list[tuple[int, int]]:
    out = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        out.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


def _month_ms(year: int, month: int) -> tuple[int, int]:
    start = _day_ms(date(year, month, 1))
    end = _day_ms(date(year + (month == 12), month % 12 + 1, 1))
    return start, end
