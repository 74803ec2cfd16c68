"""A fake Binance (REST klines + data.binance.vision archive) on 127.0.0.1 for offline tests.

`FakeBinance` is a real `ThreadingHTTPServer` on an ephemeral port, run in a daemon thread and
used as a context manager. It serves:

- `GET /api/v3/klines` like Binance: 12-field rows, prices as strings, `startTime <= open_time <=
  endTime`, at most `limit` rows (default 500, max 1000), ascending; without `startTime` the
  latest rows. Unknown symbol -> HTTP 400 `{"code":-1121,"msg":"Invalid symbol."}`. Every `/api/`
  response carries `X-MBX-USED-WEIGHT-1M` (the `used_weight` counter, settable).
  With `now_ms`, rows opening after `now_ms` do not exist yet, the row whose close time is
  `>= now_ms` is served as the still-open candle (with partial, different values), and the `Date`
  header says `now_ms`.
- `GET /api/v3/ping`, `GET /api/v3/time`; the same three under `/fapi/v1/` (USD-M futures).
- any other `/data/...` path as a static file from `archive_root` (404 if absent).

Faults (`add_fault`), each consumed `times` times by requests whose path+query contains
`path_contains`, first registered first: "429", "418", "500", "503", "slow", "truncated",
"reset" on any path; "overlap", "shuffle" on klines requests only; "weight" on `/api/` paths.

`make_archive_zip` and `synthetic_rows` build fixtures; `rows_table` turns fixture rows into the
expected KLINE_SCHEMA table with an independent (row-wise) conversion.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import random
import socket
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from email.utils import formatdate
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "1d": 86_400_000}

FAULTS = ("429", "418", "500", "503", "slow", "truncated", "reset", "overlap", "shuffle", "weight")
_KLINES_ONLY = ("overlap", "shuffle")
_KLINES_ROUTES = ("/api/v3/klines", "/fapi/v1/klines")  # spot and USD-M futures serve the same rows


@dataclass
class _Fault:
    kind: str
    times: int
    path_contains: str
    kw: dict[str, Any] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeBinance"

    def handle_error(self, request, client_address) -> None:  # client went away: expected in fault tests
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections end instead of lingering forever
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header follows `now_ms` when it is set, as a real server's clock would."""
        now_ms = self.server.fake.now_ms
        if timestamp is None and now_ms is not None:
            return formatdate(now_ms / 1000, usegmt=True)
        return super().date_time_string(timestamp)

    def do_GET(self) -> None:
        try:
            self.server.fake._handle(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
            self.close_connection = True


class FakeBinance:
    """A Binance look-alike on 127.0.0.1; `with FakeBinance(...) as fb: fb.url ...`."""

    def __init__(
        self,
        klines: dict[tuple[str, str], list[list]] | None = None,
        archive_root: Path | None = None,
        now_ms: int | None = None,
    ) -> None:
        self.archive_root = Path(archive_root) if archive_root is not None else None
        self.now_ms = now_ms
        self.used_weight = 0
        self.requests: list[str] = []
        self.url = ""
        self._klines: dict[tuple[str, str], tuple[list[int], list[list]]] = {}
        self._symbols: set[str] = set()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for (symbol, interval), rows in (klines or {}).items():
            self.set_klines(symbol, interval, rows)

    # ---- configuration -------------------------------------------------------------------
    def set_klines(self, symbol: str, interval: str, rows: list[list]) -> None:
        """Replace the rows served for (symbol, interval); rows are sorted by open_time here."""
        rows = sorted((list(r) for r in rows), key=lambda r: int(r[0]))
        with self._lock:
            self._klines[(symbol, interval)] = ([int(r[0]) for r in rows], rows)
            self._symbols.add(symbol)

    def add_fault(self, fault: str, *, times: int = 1, path_contains: str = "", **kw: Any) -> None:
        """Inject `fault` into the next `times` requests whose path+query contains `path_contains`.

        kw: "429"/"418" `retry_after` (seconds, may be fractional; default 1); "slow" `delay`
        (seconds, default 2); "overlap" `rows` (default 5); "shuffle" `seed`; "weight" `value`
        (default 5990); "truncated"/"reset" `fraction` of the body sent (default 0.5).
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: use one of {FAULTS}")
        with self._lock:
            self._faults.append(_Fault(fault, times, path_contains, dict(kw)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults)

    def count(self, path_contains: str = "") -> int:
        """Number of logged requests whose path+query contains `path_contains`."""
        with self._lock:
            return sum(path_contains in r for r in self.requests)

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "FakeBinance":
        self._stop.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                conns = list(self._conns)
            for c in conns:  # wake handler threads blocked on idle keep-alive connections
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # ---- request handling ----------------------------------------------------------------
    def _take_fault(self, target: str, route: str) -> _Fault | None:
        is_klines = route in _KLINES_ROUTES
        with self._lock:
            for f in self._faults:
                if f.times <= 0 or f.path_contains not in target:
                    continue
                if f.kind in _KLINES_ONLY and not is_klines:
                    continue
                if f.kind == "weight" and not route.startswith(("/api/", "/fapi/")):
                    continue
                f.times -= 1
                self._faults = [g for g in self._faults if g.times > 0]
                return f
        return None

    def _handle(self, h: _Handler) -> None:
        target = h.path
        with self._lock:
            self.requests.append(target)
        parts = urlsplit(target)
        route = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        fault = self._take_fault(target, route)
        kind = fault.kind if fault else ""
        kw = fault.kw if fault else {}

        if kind in ("429", "418"):
            retry_after = kw.get("retry_after", 1)
            msg = "Too many requests; current limit is 6000 request weight per 1 MINUTE." if kind == "429" \
                else "Way too many requests; IP banned until 1700000000000."
            return self._send(h, int(kind), _dumps({"code": -1003, "msg": msg}).encode(),
                              {"Retry-After": str(retry_after)}, route)
        if kind == "500":
            return self._send(h, 500, b"<html><body>Internal Server Error</body></html>", {}, route, "text/html")
        if kind == "503":
            return self._send(h, 503, _dumps({"code": -1001, "msg": "Service unavailable."}).encode(), {}, route)
        if kind == "slow":
            if self._stop.wait(float(kw.get("delay", 2.0))):
                return

        if route.startswith(("/api/", "/fapi/")):
            status, body, ctype = self._api(route, query, kind, kw)
        elif route.startswith("/data/"):
            status, body, ctype = self._static(route)
        else:
            status, body, ctype = 404, b"Not Found", "text/plain"
        extra: dict[str, str] = {}
        if kind == "weight":
            extra["X-MBX-USED-WEIGHT-1M"] = str(kw.get("value", 5990))
        if kind == "truncated":
            body = body[: int(len(body) * kw.get("fraction", 0.5))]
        if kind == "reset":
            return self._reset(h, status, body, ctype, float(kw.get("fraction", 0.5)))
        self._send(h, status, body, extra, route, ctype)

    def _send(self, h: _Handler, status: int, body: bytes, headers: dict[str, str], route: str,
              ctype: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        if route.startswith(("/api/", "/fapi/")):
            with self._lock:
                weight = self.used_weight
            headers = {"X-MBX-USED-WEIGHT-1M": str(weight), **headers}
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def _reset(self, h: _Handler, status: int, body: bytes, ctype: str, fraction: float) -> None:
        """Send headers announcing the full body, part of it, then abort the connection (RST)."""
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: int(len(body) * fraction)])
        h.wfile.flush()
        h.close_connection = True
        conn = h.connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.wfile.close()
        h.rfile.close()
        conn.close()  # last reference gone: the kernel sends RST because of SO_LINGER 0

    def _api(self, route: str, q: dict[str, str], kind: str, kw: dict[str, Any]) -> tuple[int, bytes, str]:
        if route in ("/api/v3/ping", "/fapi/v1/ping"):
            self._add_weight(1)
            return 200, b"{}", "application/json"
        if route in ("/api/v3/time", "/fapi/v1/time"):
            self._add_weight(1)
            now = self.now_ms if self.now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
            return 200, _dumps({"serverTime": now}).encode(), "application/json"
        if route not in _KLINES_ROUTES:
            return 404, _dumps({"code": -1000, "msg": "Unknown endpoint."}).encode(), "application/json"
        self._add_weight(2)
        symbol, interval = q.get("symbol", ""), q.get("interval", "")
        with self._lock:
            known = symbol in self._symbols
            data = self._klines.get((symbol, interval))
        if not known:
            return 400, _dumps({"code": -1121, "msg": "Invalid symbol."}).encode(), "application/json"
        if interval not in INTERVAL_MS:
            return 400, _dumps({"code": -1120, "msg": "Invalid interval."}).encode(), "application/json"
        try:
            limit = min(max(int(q.get("limit", 500)), 1), 1000)
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return 400, _dumps({"code": -1100, "msg": "Illegal characters found in a parameter."}).encode(), \
                "application/json"
        times, rows = data if data else ([], [])
        now = self.now_ms
        hi = len(times) if now is None else bisect.bisect_right(times, now)  # rows opened by now
        if end is not None:
            hi = min(hi, bisect.bisect_right(times, end))
        if start is not None:
            lo = bisect.bisect_left(times, start)
            if kind == "overlap":
                lo = max(0, lo - int(kw.get("rows", 5)))
            page = rows[lo:min(hi, lo + limit)] if lo < hi else []
        else:
            page = rows[max(0, hi - limit):hi]
        page = [list(r) for r in page]
        if page and now is not None and int(page[-1][6]) >= now:
            page[-1] = _still_open(page[-1])
        if kind == "shuffle":
            random.Random(kw.get("seed", 0)).shuffle(page)
        return 200, json.dumps(page, separators=(",", ":")).encode(), "application/json"

    def _add_weight(self, w: int) -> None:
        with self._lock:
            self.used_weight += w

    def _static(self, route: str) -> tuple[int, bytes, str]:
        if self.archive_root is None:
            return 404, b"Not Found", "text/plain"
        root = self.archive_root.resolve()
        path = (root / route.lstrip("/")).resolve()
        if root not in path.parents or not path.is_file():
            return 404, b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code></Error>", "application/xml"
        ctype = "application/zip" if path.suffix == ".zip" else "text/plain"
        return 200, path.read_bytes(), ctype


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _still_open(row: list) -> list:
    """The candle as Binance shows it before it closes: partial volume, close not final."""
    r = list(row)
    o = float(r[1])
    r[4] = f"{o:.8f}"
    r[2] = f"{max(o, float(r[2])):.8f}"
    r[3] = f"{min(o, float(r[3])):.8f}"
    r[5] = f"{float(r[5]) / 3:.8f}"
    r[7] = f"{float(r[7]) / 3:.8f}"
    r[8] = max(0, int(r[8]) // 3)
    r[9] = f"{float(r[9]) / 3:.8f}"
    r[10] = f"{float(r[10]) / 3:.8f}"
    return r


# ---- fixtures -------------------------------------------------------------------------------

def synthetic_rows(start_ms: int, n: int, interval: str = "1m", seed: int = 0) -> list[list]:
    """`n` consecutive valid Binance kline rows from `start_ms`: a random walk with consistent OHLC.

    Guarantees low <= min(open, close) <= max(open, close) <= high, volumes > 0, taker volumes
    <= totals, close_time = open_time + interval - 1 (Binance's convention), values as strings
    with 8 decimals that round-trip exactly through float.
    """
    step = INTERVAL_MS[interval]
    rng = random.Random(seed)
    price = 100.0 + 900.0 * rng.random()
    out = []
    for i in range(n):
        ot = start_ms + i * step
        o = round(price, 2)
        c = round(max(0.01, o * (1 + rng.gauss(0, 0.002))), 2)
        h = round(max(o, c) + rng.random() * 0.5, 2)
        lo = round(max(0.01, min(o, c) - rng.random() * 0.5), 2)
        v = round(0.001 + rng.random() * 50, 4)
        qv = round(v * (o + c) / 2, 4)
        frac = rng.random()
        tb = round(v * frac, 4)
        tq = round(qv * frac, 4)
        trades = rng.randint(0, 2000)
        out.append([ot, f"{o:.8f}", f"{h:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{v:.8f}", ot + step - 1,
                    f"{qv:.8f}", trades, f"{min(tb, v):.8f}", f"{min(tq, qv):.8f}", "0"])
        price = c
    return out


def rows_table(rows: list[list], symbol: str, interval: str):
    """The KLINE_SCHEMA table these fixture rows must become (row-wise, independent of the parser)."""
    import pyarrow as pa

    from mscale.schema import INTERVAL_MS as SCHEMA_INTERVAL_MS
    from mscale.schema import KLINE_SCHEMA

    rows = sorted(rows, key=lambda r: int(r[0]))
    step = SCHEMA_INTERVAL_MS[interval]
    cols: dict[str, list] = {name: [] for name in KLINE_SCHEMA.names}
    for r in rows:
        ot = int(r[0])
        cols["symbol"].append(symbol)
        cols["open_time"].append(datetime.fromtimestamp(ot / 1000, timezone.utc))
        cols["close_time"].append(datetime.fromtimestamp((ot + step) / 1000, timezone.utc))
        for name, i in (("open", 1), ("high", 2), ("low", 3), ("close", 4), ("volume", 5), ("quote_volume", 7),
                        ("taker_buy_base", 9), ("taker_buy_quote", 10)):
            cols[name].append(float(r[i]))
        cols["trades"].append(int(r[8]))
    return pa.table(cols, schema=KLINE_SCHEMA)


def archive_relpath(market: str, symbol: str, interval: str, year: int, month: int,
                    daily: date | None = None) -> str:
    """Path of an archive zip under the archive root, as data.binance.vision lays it out."""
    base = "data/spot" if market == "spot" else f"data/futures/{market}"
    if daily is not None:
        return f"{base}/daily/klines/{symbol}/{interval}/{symbol}-{interval}-{daily:%Y-%m-%d}.zip"
    return f"{base}/monthly/klines/{symbol}/{interval}/{symbol}-{interval}-{year:04d}-{month:02d}.zip"


_CSV_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
               "taker_buy_volume,taker_buy_quote_volume,ignore")


def make_archive_zip(
    dir: Path,
    market: str,
    symbol: str,
    interval: str,
    year: int,
    month: int,
    rows: list[list],
    *,
    header: bool = False,
    micros: bool = False,
    bad_checksum: bool = False,
    daily: date | None = None,
) -> Path:
    """Write an archive zip (one CSV named like it) and its `.CHECKSUM` under `dir` in the
    data.binance.vision layout; returns the zip's path. Serve `dir` as FakeBinance's archive_root.

    `header` adds the futures-style header line; `micros` writes open/close times in microseconds
    (spot files since 2025); `bad_checksum` publishes a sha256 that does not match; `daily`
    writes the daily file of that day instead of the monthly one.
    """
    rel = archive_relpath(market, symbol, interval, year, month, daily)
    zpath = Path(dir) / rel
    zpath.parent.mkdir(parents=True, exist_ok=True)
    lines = [_CSV_HEADER] if header else []
    for r in rows:
        r = list(r)
        if micros:
            r[0] = int(r[0]) * 1000
            r[6] = int(r[6]) * 1000 + 999
        lines.append(",".join(str(x) for x in r))
    csv = ("\n".join(lines) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zpath.name[:-4] + ".csv", csv)
    data = buf.getvalue()
    zpath.write_bytes(data)
    digest = hashlib.sha256(data + (b"x" if bad_checksum else b"")).hexdigest()
    Path(str(zpath) + ".CHECKSUM").write_text(f"{digest}  {zpath.name}\n")
    return zpath


def month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)


def day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


class FakeClock:
    """An injectable (clock, sleep) pair: `sleep` only advances `now` and records the wait.

    `clock()` returns seconds since the epoch like `time.time`; pass `clock=fc.clock,
    sleep=fc.sleep` to a client and no real time passes.
    """

    def __init__(self, now_s: float) -> None:
        self.now = float(now_s)
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
