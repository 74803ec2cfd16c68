"""Client of Binance's public data archive (data.binance.vision): monthly and daily kline zips.

Guarantees:
- nothing is returned before the zip's sha256 matches the published `.CHECKSUM`; a mismatch is
  downloaded again `checksum_retries` times (a body cut short in transit heals), then raises
  ChecksumError, as do a missing checksum and a corrupt zip; since callers write what is
  returned, nothing reaches a shard;
- every row returned lies inside the requested month or day, in KLINE_SCHEMA with
  `close_time = open_time + interval`, plus the ANOMALY_FLAGS columns saying which rows the
  normalisation changed (close times that were not open + interval - 1 ms, µs timestamps);
- `None` means the archive has no such file (HTTP 404), e.g. a month before the listing;
- 5xx, 429/418, timeouts, dropped connections and truncated bodies are retried with exponential
  backoff and jitter (honouring Retry-After); after `max_retries` retries DownloadError is raised;
- a host that cannot be resolved or refuses the connection before it ever answered fails after a
  second attempt (about a second later) with DownloadError naming the cause ("cannot resolve
  data.binance.vision — offline? use --archive-url or import local files"); once it has answered,
  those errors are retried like the others.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import requests

from mscale.errors import ChecksumError, DownloadError, MscaleError
from mscale.ingest.archive import read_archive_zip, verify_checksum
from mscale.ingest.rest import UNREACHABLE_ATTEMPTS, UNREACHABLE_PAUSE_S, describe_error, retry_after_seconds, unreachable
from mscale.schema import validate_interval, validate_symbol
from mscale.store import month_bounds

log = logging.getLogger("mscale.ingest.bulk")

_MARKET_PATHS = {"spot": "spot", "um": "futures/um"}
_RETRY_STATUS = {408, 418, 425, 429, 500, 502, 503, 504}


def monthly_name(symbol: str, interval: str, year: int, month: int) -> str:
    """The archive's file name of one month, e.g. BTCUSDT-1m-2023-08.zip."""
    return f"{validate_symbol(symbol)}-{validate_interval(interval)}-{year:04d}-{month:02d}.zip"


def daily_name(symbol: str, interval: str, day: date) -> str:
    """The archive's file name of one day, e.g. BTCUSDT-1m-2023-08-01.zip."""
    return f"{validate_symbol(symbol)}-{validate_interval(interval)}-{day:%Y-%m-%d}.zip"


class ArchiveClient:
    """Fetches and verifies kline zips from `archive_url` (the folder that holds `data/`)."""

    def __init__(
        self,
        archive_url: str,
        *,
        market: str = "spot",
        session: requests.Session | None = None,
        timeout_s: float = 30,
        max_retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        checksum_retries: int = 2,
    ) -> None:
        if market not in _MARKET_PATHS:
            raise MscaleError(f"unknown market {market!r}: use spot or um")
        self.archive_url = archive_url.rstrip("/")
        self.market = market
        self.session = session if session is not None else requests.Session()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.sleep = sleep
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.checksum_retries = checksum_retries
        self._answered = False  # the host has sent an HTTP response: unreachable now means transient

    def monthly_url(self, symbol: str, interval: str, year: int, month: int) -> str:
        return f"{self._prefix('monthly', symbol, interval)}/{monthly_name(symbol, interval, year, month)}"

    def daily_url(self, symbol: str, interval: str, day: date) -> str:
        return f"{self._prefix('daily', symbol, interval)}/{daily_name(symbol, interval, day)}"

    def monthly(self, symbol: str, interval: str, year: int, month: int) -> pa.Table | None:
        """One UTC month of klines, checksum-verified; None when the archive has no such file."""
        start, end = month_bounds(year, month)
        return self._fetch(self.monthly_url(symbol, interval, year, month), symbol, interval, start, end)

    def daily(self, symbol: str, interval: str, day: date) -> pa.Table | None:
        """One UTC day of klines, checksum-verified; None when the archive has no such file."""
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        return self._fetch(self.daily_url(symbol, interval, day), symbol, interval, start, start + timedelta(days=1))

    # -- internals -------------------------------------------------------------------------

    def _prefix(self, period: str, symbol: str, interval: str) -> str:
        s, i = validate_symbol(symbol), validate_interval(interval)
        return f"{self.archive_url}/data/{_MARKET_PATHS[self.market]}/{period}/klines/{s}/{i}"

    def _fetch(self, url: str, symbol: str, interval: str, start: datetime, end: datetime) -> pa.Table | None:
        name = url.rsplit("/", 1)[-1]
        for attempt in range(self.checksum_retries + 1):
            payload = self._get(url)
            if payload is None:
                log.debug("%s: not in the archive", name)
                return None
            checksum = self._get(url + ".CHECKSUM")
            if checksum is None:
                raise ChecksumError(f"{name}: the archive publishes no {name}.CHECKSUM; refusing unverified data")
            try:
                verify_checksum(payload, checksum.decode("utf-8", "replace"), name)
                break
            except ChecksumError as e:
                # a body cut short by a proxy or a dropped connection is worth fetching again;
                # a mismatch that persists is reported
                if attempt == self.checksum_retries:
                    raise
                delay = self._backoff(attempt)
                log.warning("%s; downloading again (%d/%d) in %.2f s", e, attempt + 1, self.checksum_retries, delay)
                self.sleep(delay)
        table = read_archive_zip(payload, symbol, interval, name=name, with_anomalies=True)
        ot = table.column("open_time").cast(pa.int64()).to_numpy()
        lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        outside = int(np.count_nonzero((ot < lo) | (ot >= hi)))
        if outside:
            raise MscaleError(f"{name}: {outside} rows lie outside [{start:%Y-%m-%d}, {end:%Y-%m-%d}); the file is mislabelled")
        log.debug("%s: %d rows, checksum ok", name, table.num_rows)
        return table

    def _get(self, url: str) -> bytes | None:
        """GET `url`: its body, None on 404, retrying transient failures; else DownloadError."""
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = 0.0
            pause = None
            try:
                resp = self.session.get(url, timeout=self.timeout_s)
                self._answered = True
                status = resp.status_code
                if status == 200:
                    body = resp.content
                    expected = resp.headers.get("Content-Length")
                    if expected is not None and not resp.headers.get("Content-Encoding") and int(expected) != len(body):
                        last = f"truncated body ({len(body)} of {expected} bytes)"
                    else:
                        return body
                elif status == 404:
                    return None
                elif status in _RETRY_STATUS or status >= 500:
                    last = f"HTTP {status}"
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After")) or 0.0
                else:
                    raise DownloadError(f"{url}: HTTP {status} {resp.reason or ''}".rstrip())
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                cause = None if isinstance(e, requests.Timeout) else unreachable(e, url, "--archive-url")
                if cause and not self._answered:
                    if attempt >= UNREACHABLE_ATTEMPTS - 1:
                        raise DownloadError(cause) from None
                    pause = min(self.backoff_base_s, UNREACHABLE_PAUSE_S)
                last = cause or describe_error(e)
            if attempt == self.max_retries:
                break
            delay = pause if pause is not None else max(retry_after, self._backoff(attempt))
            of = UNREACHABLE_ATTEMPTS - 1 if pause is not None else self.max_retries
            log.warning("%s: %s; retry %d/%d in %.2f s", url, last, attempt + 1, of, delay)
            self.sleep(delay)
        raise DownloadError(f"{url}: failed after {self.max_retries} retries (last: {last})")

    def _backoff(self, attempt: int) -> float:
        # "equal jitter": half the exponential step fixed, half random, so retries spread out
        step = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return step / 2 + random.uniform(0, step / 2)
