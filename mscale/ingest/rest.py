"""Binance REST klines client (`GET /api/v3/klines`), polite and fault-tolerant.

Guarantees of `RestClient.klines(symbol, interval, start_ms, end_ms)`:
- yields KLINE_SCHEMA tables whose rows are closed candles (`open_time + interval <= now`, now
  the injected clock, or the server's `Date` header when that is earlier), with `start_ms <= open_time < end_ms`, sorted, and every open_time
  yielded at most once across the whole iteration, whatever order or overlap the server's pages
  have; overlapping rows (before the page's startTime, or repeated) are dropped and counted in
  `stats.overlap_dropped`;
- it ends before `end_ms` only when the server has nothing more (an empty or short page, or the
  still-open candle); a full page without any row at or after its startTime is asked for again
  and, after `max_retries` retries, raises DownloadError, never a silent early end;
- a page is only yielded once it was received completely and parsed; a failed request (5xx,
  429/418, timeout, reset connection, truncated or malformed body) is retried and never yields
  partial rows;
- waits: at least `pace_ms` between requests; the full `Retry-After` after a 429 or 418 (no
  request at all is sent before it has passed); exponential backoff with full jitter on server and
  network errors; until the next minute once `X-MBX-USED-WEIGHT-1M` passes
  `weight_slowdown * weight_limit`;
- Binance error -1121 raises UnknownSymbolError naming the symbol; any other rejected request, or
  a request still failing after `max_retries` retries, raises DownloadError naming the URL;
- a host that cannot be resolved, or refuses the connection, before it ever answered is not a
  transient fault but a wrong URL or no network: after a second attempt (within about a second)
  DownloadError says so in one line ("cannot resolve data-api.binance.vision — offline? ...").
  Once the host has answered, the same errors are retried with the backoff above (a restart).
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import requests

from mscale.config import DEFAULT_BASE_URL, IngestSettings
from mscale.errors import DownloadError, MscaleError, UnknownSymbolError
from mscale.schema import INTERVAL_MS, empty_klines, klines_from_arrays, validate_interval, validate_symbol

log = logging.getLogger("mscale.ingest.rest")

FUTURES_BASE_URL = "https://fapi.binance.com"
# spot hosts that serve no futures endpoint: with one of these, `market="um"` goes to FUTURES_BASE_URL
SPOT_BASE_URLS = frozenset({DEFAULT_BASE_URL, "https://data-api.binance.vision", "https://api.binance.com"})
KLINES_PATH = {"spot": "/api/v3/klines", "um": "/fapi/v1/klines"}
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"

# Binance's kline array: index of each field we keep
_OPEN_TIME, _OPEN, _HIGH, _LOW, _CLOSE, _VOLUME, _CLOSE_TIME, _QUOTE_VOLUME, _TRADES, _TB_BASE, _TB_QUOTE = range(11)
_FLOAT_FIELDS = {"open": _OPEN, "high": _HIGH, "low": _LOW, "close": _CLOSE, "volume": _VOLUME,
                 "quote_volume": _QUOTE_VOLUME, "taker_buy_base": _TB_BASE, "taker_buy_quote": _TB_QUOTE}


class MalformedPageError(MscaleError):
    """A 200 response whose body is not a list of 12-field kline arrays; retriable (e.g. truncated)."""


# ---- parsing ----------------------------------------------------------------------------------

def parse_klines_page(payload: bytes | str | list, symbol: str, interval: str) -> pa.Table:
    """One `/api/v3/klines` response body as a KLINE_SCHEMA table (rows in the order served).

    `close_time` is normalised to `open_time + interval`; Binance's own close time is ignored.
    Anything but a JSON list of 12-field arrays with numeric first 11 fields raises
    MalformedPageError (a truncated body included), which the client retries.

    Fast path (~700k rows/s with the table built): Binance sends compact JSON with quoted decimals, so without the
    quotes and with `],[` as line breaks the body is a CSV that Arrow parses in C++, exactly
    (correctly rounded floats, integers as int64). A body that does not fit it exactly (spaces,
    nulls, odd shapes) takes the checked path: `json.loads`, then column-wise numpy conversion.
    """
    validate_interval(interval)
    if isinstance(payload, str):
        payload = payload.encode()
    if isinstance(payload, (bytes, bytearray, memoryview)):
        raw = bytes(payload)
        cols = _fast_columns(raw)
        if cols is None:
            try:
                data = json.loads(raw)
            except ValueError as e:
                raise MalformedPageError(f"klines body for {symbol} is not valid JSON ({e}; {len(raw)} bytes)") from None
            cols = _checked_columns(data, symbol)
    else:
        cols = _checked_columns(payload, symbol)
    if len(cols["open_time"]) == 0:
        return empty_klines()
    return klines_from_arrays(symbol, cols.pop("open_time"), interval, **cols)


_CSV_NAMES = [f"f{i}" for i in range(12)]
_CSV_TYPES = {f"f{i}": pa.float64() for i in range(11)} | {
    f"f{_OPEN_TIME}": pa.int64(), f"f{_CLOSE_TIME}": pa.int64(), f"f{_TRADES}": pa.int64(), "f11": pa.string()}
_CSV_CONVERT = pacsv.ConvertOptions(column_types=_CSV_TYPES, strings_can_be_null=False, quoted_strings_can_be_null=False)
_CSV_PARSE = pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False)


def _fast_columns(raw: bytes) -> dict[str, np.ndarray] | None:
    """Columns of a compact Binance body via Arrow's CSV reader; None when it does not fit exactly."""
    body = raw.strip()
    if body == b"[]":
        return _empty_columns()
    if not (body.startswith(b"[[") and body.endswith(b"]]")):
        return None
    text = body[2:-2].replace(b'"', b"").replace(b"],[", b"\n")
    try:
        t = pacsv.read_csv(
            pa.py_buffer(text),
            read_options=pacsv.ReadOptions(column_names=_CSV_NAMES, use_threads=False, block_size=len(text) + 64),
            parse_options=_CSV_PARSE,
            convert_options=_CSV_CONVERT,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        return None
    if t.num_columns != 12 or any(t.column(i).null_count for i in range(11)):
        return None
    cols = {"open_time": t.column(_OPEN_TIME).to_numpy(), "trades": t.column(_TRADES).to_numpy()}
    for name, i in _FLOAT_FIELDS.items():
        cols[name] = t.column(i).to_numpy()
    return cols


def _exact_int(x: object) -> int:
    """An integer field (open time, trades) as int; bools, fractions and other junk raise ValueError."""
    if isinstance(x, bool) or (isinstance(x, float) and not x.is_integer()):
        raise ValueError(f"{x!r} is not an integer")
    return int(x)  # type: ignore[call-overload]


def _empty_columns() -> dict[str, np.ndarray]:
    cols = {name: np.empty(0) for name in _FLOAT_FIELDS}
    return {"open_time": np.empty(0, np.int64), "trades": np.empty(0, np.int64), **cols}


def _checked_columns(data: object, symbol: str) -> dict[str, np.ndarray]:
    """Columns of an already-parsed body, or MalformedPageError saying what is wrong."""
    if not isinstance(data, list):
        raise MalformedPageError(f"klines body for {symbol} is a {type(data).__name__}, expected a list of klines")
    if not data:
        return _empty_columns()
    for r in data:
        if not (isinstance(r, list) and len(r) == 12):
            raise MalformedPageError(f"klines body for {symbol} has a row that is not a 12-field array: {str(r)[:80]}")
    fields = list(zip(*data))
    try:
        cols = {name: np.array(fields[i], dtype=np.float64) for name, i in _FLOAT_FIELDS.items()}
        cols["open_time"] = np.array([_exact_int(x) for x in fields[_OPEN_TIME]], dtype=np.int64)
        cols["trades"] = np.array([_exact_int(x) for x in fields[_TRADES]], dtype=np.int64)
        [_exact_int(x) for x in fields[_CLOSE_TIME]]  # unused, but garbage there means a garbled body
    except (ValueError, TypeError, OverflowError) as e:
        raise MalformedPageError(f"klines body for {symbol} has a non-numeric field ({e})") from None
    for name in _FLOAT_FIELDS:
        if not np.isfinite(cols[name]).all():
            raise MalformedPageError(f"klines body for {symbol} has null or non-finite {name} values")
    return cols


# ---- client -------------------------------------------------------------------------------------

@dataclass
class RestStats:
    """Counters of what the client did; the runner reports them."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429 and 418 responses
    weight_waits: int = 0  # pauses because the used weight passed the slowdown threshold
    slept_s: float = 0.0
    rows: int = 0  # rows yielded
    overlap_dropped: int = 0  # served rows dropped: before startTime or repeated
    open_dropped: int = 0  # still-open candles dropped


class RestClient:
    """Pages `/api/v3/klines` politely; every wait goes through the injected `sleep` and `clock`.

    `clock()` returns seconds since the epoch (like `time.time`), `sleep(s)` waits `s` seconds;
    tests inject a fake pair so no real time passes. `max_wait_s`, when set, turns a Retry-After
    longer than it into a DownloadError instead of a long silent wait (None: always obey).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        pace_ms: int = 250,
        timeout_s: float = 10.0,
        max_retries: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        weight_limit: int = 6000,
        weight_slowdown: float = 0.8,
        page_limit: int = 1000,
        klines_path: str = KLINES_PATH["spot"],
        max_wait_s: float | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.pace_ms = pace_ms
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.weight_limit = weight_limit
        self.weight_slowdown = weight_slowdown
        self.page_limit = page_limit
        self.klines_path = klines_path
        self.max_wait_s = max_wait_s
        self.session = session if session is not None else requests.Session()
        self.sleep = sleep
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.stats = RestStats()
        self._last_request: float | None = None
        self._not_before = 0.0
        self._server_time: float | None = None
        self._answered = False  # the host has sent an HTTP response: unreachable now means transient

    @classmethod
    def from_settings(cls, settings: IngestSettings, *, market: str = "spot", **overrides) -> "RestClient":
        """A client configured from `[ingest]`; for `market="um"` the futures endpoint and host."""
        base = settings.base_url
        if market == "um" and base.rstrip("/") in SPOT_BASE_URLS:
            base = FUTURES_BASE_URL
        kw = dict(
            pace_ms=settings.pace_ms,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            weight_limit=settings.weight_limit,
            weight_slowdown=settings.weight_slowdown,
            klines_path=KLINES_PATH.get(market, KLINES_PATH["spot"]),
        )
        kw.update(overrides)
        return cls(base, **kw)

    # ---- paging ----------------------------------------------------------------------------
    def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> Iterator[pa.Table]:
        """Closed candles with `start_ms <= open_time < end_ms`, one table per page, ascending.

        Pages by startTime: the next page starts at the last open_time served + interval. The
        iteration ends at `end_ms`, at an empty or short page, or at the still-open candle; it
        only ends early (short of `end_ms`) when the server said it has nothing more. A full page
        holding no row at or after startTime (a server or cache ignoring startTime) says nothing
        about what follows: it is requested again with backoff, up to `max_retries` times, then
        DownloadError, so a caller never takes such an iteration for a complete one.
        """
        validate_symbol(symbol)
        validate_interval(interval)
        step = INTERVAL_MS[interval]
        cursor = int(start_ms)
        stale = 0  # full pages in a row that held no row at or after the cursor
        while cursor < end_ms:
            params = {"symbol": symbol, "interval": interval, "startTime": cursor, "endTime": int(end_ms) - 1,
                      "limit": self.page_limit}
            page = self.page(symbol, interval, params)
            served = page.num_rows
            if served == 0:
                return
            ot = page.column("open_time").cast(pa.int64()).to_numpy()
            order = np.argsort(ot, kind="stable")
            ot = ot[order]
            if served >= self.page_limit and not (ot >= cursor).any():
                stale += 1
                self._stale_page(params, served, stale)
                continue
            stale = 0
            keep = (ot >= cursor) & (ot < end_ms)
            keep[1:] &= ot[1:] != ot[:-1]  # a row repeated inside the page counts once
            now_ms = int(self._now() * 1000)
            closed = ot + step <= now_ms
            self.stats.overlap_dropped += int((~keep).sum())
            self.stats.open_dropped += int((keep & ~closed).sum())
            if not keep.any():  # a short page of older rows, or rows from end_ms on: nothing more up to end_ms
                return
            rows = page.take(pa.array(order[keep & closed]))
            if rows.num_rows:
                self.stats.rows += rows.num_rows
                yield rows
            if not closed[keep].all():
                return  # reached the still-open candle: nothing later exists yet
            cursor = int(ot[keep][-1]) + step
            if served < self.page_limit:
                return  # a short page: the server had nothing more up to endTime

    def _stale_page(self, params: dict, served: int, stale: int) -> None:
        """A full page with no row at or after startTime: back off and ask again, or DownloadError."""
        url = requests.Request("GET", self.base_url + self.klines_path, params=params).prepare().url
        reason = f"a full page of {served} rows held no row at or after startTime={params['startTime']}"
        if stale > self.max_retries:
            raise DownloadError(f"GET {url}: {reason}, {stale} times in a row; the server ignores startTime? "
                                "stopping rather than leaving a gap")
        delay = self._backoff(stale - 1)
        self.stats.retries += 1
        log.warning("GET %s: %s; retry %d/%d in %.2fs", url, reason, stale, self.max_retries, delay)
        self._not_before = max(self._not_before, self.clock() + delay)

    def page(self, symbol: str, interval: str, params: dict) -> pa.Table:
        """One klines request with retries: the parsed page exactly as served (any order)."""
        url = requests.Request("GET", self.base_url + self.klines_path, params=params).prepare().url
        attempt = 0
        while True:
            self._wait_turn()
            self.stats.requests += 1
            reason, delay = self._try(url, symbol, interval, attempt)
            if isinstance(reason, pa.Table):
                return reason
            attempt += 1
            if attempt > self.max_retries:
                raise DownloadError(f"GET {url} failed after {attempt} attempts; last error: {reason}")
            self.stats.retries += 1
            of = UNREACHABLE_ATTEMPTS - 1 if isinstance(reason, Unreachable) else self.max_retries
            log.warning("GET %s: %s; retry %d/%d in %.2fs", url, reason, attempt, of, delay)
            self._not_before = max(self._not_before, self.clock() + delay)

    def _try(self, url: str, symbol: str, interval: str, attempt: int) -> tuple[pa.Table | str, float]:
        """One attempt: (table, 0) on success, else (reason, seconds to wait before the next one)."""

        def backoff() -> float:
            return self._backoff(attempt)

        try:
            resp = self.session.get(url, timeout=self.timeout_s)
            self._answered = True
            body = resp.content  # reads the whole body; a reset or short body raises here
        except requests.Timeout:
            return f"no answer within {self.timeout_s}s", backoff()
        except requests.RequestException as e:
            cause = unreachable(e, url, "--base-url")
            if cause and not self._answered:
                if attempt >= UNREACHABLE_ATTEMPTS - 1:
                    raise DownloadError(cause) from None
                return Unreachable(cause), min(self.backoff_base_s, UNREACHABLE_PAUSE_S)
            return f"connection failed ({describe_error(e)})", backoff()
        finally:
            self._last_request = self.clock()
        self._note_weight(resp.headers.get(WEIGHT_HEADER))
        self._server_time = _http_date(resp.headers.get("Date"))
        status = resp.status_code
        if status == 200:
            try:
                return parse_klines_page(body, symbol, interval), 0.0
            except MalformedPageError as e:
                return str(e), backoff()
        if status in (418, 429):
            self.stats.rate_limited += 1
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            if wait is None:
                wait = self.backoff_max_s if status == 418 else backoff()
            if self.max_wait_s is not None and wait > self.max_wait_s:
                raise DownloadError(
                    f"GET {url}: Binance answered HTTP {status} and asks to wait {wait:.0f}s "
                    f"(more than the {self.max_wait_s:.0f}s allowed); retry later"
                )
            what = "IP banned (HTTP 418)" if status == 418 else "rate limited (HTTP 429)"
            return f"{what}, Retry-After {wait:g}s", wait
        if status >= 500 or status == 408:
            return f"HTTP {status}", backoff()
        code, msg = _binance_error(body)
        if code == -1121:
            raise UnknownSymbolError(f"unknown symbol {symbol}: Binance ({self.base_url}) does not list it (error -1121)")
        raise DownloadError(f"GET {url} was rejected: HTTP {status}, Binance error {code}: {msg}")

    def _now(self) -> float:
        """The earlier of the local clock and the last response's `Date` (whole seconds, so never
        ahead of the server): a local clock running fast must not close a candle Binance still
        updates, since a stored partial candle would never be fetched again."""
        now = self.clock()
        return now if self._server_time is None else min(now, self._server_time)

    # ---- waiting ---------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)], attempt = retries of this request."""
        return self.rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempt, 30)))

    def _wait_turn(self) -> None:
        """Sleep until pacing, Retry-After and weight pauses all allow the next request."""
        target = self._not_before
        if self._last_request is not None:
            target = max(target, self._last_request + self.pace_ms / 1000)
        wait = target - self.clock()
        if wait > 0:
            self.stats.slept_s += wait
            self.sleep(wait)

    def _note_weight(self, header: str | None) -> None:
        """Pause until the next minute once the used weight passes the slowdown threshold."""
        if header is None:
            return
        try:
            used = int(header)
        except ValueError:
            return
        if used < self.weight_slowdown * self.weight_limit:
            return
        now = self.clock()
        next_minute = (math.floor(now / 60) + 1) * 60 + 0.5  # Binance resets the counter each minute
        if next_minute > self._not_before:
            self._not_before = next_minute
            self.stats.weight_waits += 1
            log.info("used weight %d of %d: pausing %.1fs until the next minute", used, self.weight_limit,
                     next_minute - now)


UNREACHABLE_ATTEMPTS = 2  # a host never reached: one quick retry, then the cause
UNREACHABLE_PAUSE_S = 1.0


class Unreachable(str):
    """The reason of a failed attempt that found the host unresolvable or refusing (see `unreachable`)."""


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and the exceptions behind it: causes, contexts, and what requests and urllib3 wrap
    (`args[0]`, a MaxRetryError's `reason`), outermost first."""
    seen: list[BaseException] = []
    todo = [e]
    while todo:
        x = todo.pop(0)
        if x is None or any(x is y for y in seen):
            continue
        seen.append(x)
        wrapped = [getattr(x, "reason", None), x.__cause__, x.__context__]
        wrapped += [a for a in getattr(x, "args", ()) if isinstance(a, BaseException)]
        todo += [w for w in wrapped if isinstance(w, BaseException)]
    return seen


def unreachable(e: BaseException, url: str, flag: str) -> str | None:
    """The one-line cause when `e` says the host of `url` cannot be resolved or refuses
    connections (None for any other error); `flag` is the option that changes the URL."""
    parts = urlsplit(url)
    host = parts.hostname or url
    hint = f"use {flag} or import local files"
    chain = _chain(e)
    names = {type(x).__name__ for x in chain}
    if any(isinstance(x, socket.gaierror) for x in chain) or "NameResolutionError" in names:
        return f"cannot resolve {host} — offline? {hint}"
    if any(isinstance(x, ConnectionRefusedError) for x in chain):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"cannot connect to {host}:{port} (connection refused) — is the server up? {hint}"
    return None


def describe_error(e: BaseException) -> str:
    """What went wrong, in one short line: the innermost error with a message (urllib3's
    "HTTPConnectionPool(...): Max retries exceeded ... (Caused by" wrapping left out)."""
    for x in reversed(_chain(e)):
        text = " ".join(str(x).split())
        if text and "Max retries exceeded" not in text:
            return f"{type(x).__name__}: {text[:160]}"
    return type(e).__name__


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, possibly fractional, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _binance_error(body: bytes) -> tuple[int | None, str]:
    try:
        data = json.loads(body)
        return int(data.get("code")), str(data.get("msg", ""))[:200]
    except (ValueError, TypeError, AttributeError):
        return None, body[:200].decode("utf-8", "replace").replace("\n", " ")
