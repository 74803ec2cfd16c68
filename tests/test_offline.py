"""Fast, honest network failures: a host that cannot be resolved, or a port that refuses the
connection, before any data arrived fails in at most 2 attempts and 5 seconds, naming the cause;
once data has flowed, transient errors keep the usual backoff."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import requests
from fakebinance import FakeBinance, FakeClock, make_archive_zip, synthetic_rows

from mscale.config import Config
from mscale.errors import DownloadError
from mscale.ingest.bulk import ArchiveClient
from mscale.ingest.rest import RestClient
from mscale.ingest.runner import ingest

AUG1 = 1_690_848_000_000  # 2023-08-01 00:00 UTC
NO_HOST = "http://no-such-host.invalid"


def refused_url() -> str:
    """A local port that refuses connections: bound, then closed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class CountingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get(self, *a, **kw):
        self.calls += 1
        return super().get(*a, **kw)


def cfg_at(root: Path) -> Config:
    return Config(project_root=root, data_dir=root / "data", warehouse=root / "wh.duckdb", quiet=True)


def ingest_rest(root: Path, url: str, session: requests.Session) -> None:
    # the production defaults: 8 retries, backoff from 0.5 s, a 10 s timeout
    rest = RestClient(url, session=session)
    ingest(cfg_at(root), symbols=["BTCUSDT"], start=date(2023, 8, 1), end=date(2023, 8, 2), source="rest",
           rest=rest, progress=False)


def ingest_bulk(root: Path, url: str, session: requests.Session) -> None:
    archive = ArchiveClient(url, session=session)
    ingest(cfg_at(root), symbols=["BTCUSDT"], start=date(2023, 8, 1), end=date(2023, 8, 31), source="bulk",
           archive=archive, progress=False)


@pytest.mark.parametrize("run", [ingest_rest, ingest_bulk], ids=["rest", "bulk"])
@pytest.mark.parametrize("where", ["unresolvable", "refused"])
def test_an_unreachable_host_fails_fast_with_the_cause(tmp_path, run, where):
    url = NO_HOST if where == "unresolvable" else refused_url()
    session = CountingSession()
    started = time.monotonic()
    with pytest.raises(DownloadError) as e:
        run(tmp_path, url, session)
    elapsed = time.monotonic() - started
    msg = str(e.value)
    assert elapsed < 5, elapsed
    assert session.calls <= 2
    assert "\n" not in msg and "Caused by" not in msg and "HTTPConnectionPool" not in msg, msg
    flag = "--base-url" if run is ingest_rest else "--archive-url"
    if where == "unresolvable":
        assert msg.startswith("cannot resolve no-such-host.invalid — offline?"), msg
    else:
        port = url.rsplit(":", 1)[1]
        assert msg.startswith(f"cannot connect to 127.0.0.1:{port} (connection refused)"), msg
    assert f"use {flag} or import local files" in msg, msg
    assert not list((tmp_path / "data").rglob("*.parquet"))


def test_the_command_line_says_offline_within_5_seconds(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mscale", "ingest", "--symbols", "BTCUSDT", "--start", "2023-08-01", "--end",
         "2023-08-02", "--source", "rest", "--base-url", NO_HOST, "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert errors == ["error: cannot resolve no-such-host.invalid — offline? use --base-url or import local files"], \
        result.stderr
    assert elapsed < 5, elapsed


def test_the_default_hosts_are_named(tmp_path):
    """The hint names the real host, as a user offline would see it."""
    class Offline(requests.Session):
        def get(self, url, **kw):
            raise requests.ConnectionError(
                "HTTPSConnectionPool(host='data-api.binance.vision', port=443): Max retries exceeded (Caused by "
                "NameResolutionError(\"<urllib3.connection.HTTPSConnection object>: Failed to resolve "
                "'data-api.binance.vision' ([Errno -3] Temporary failure in name resolution)\"))"
            ) from socket.gaierror(-3, "Temporary failure in name resolution")

    rest = RestClient(session=Offline(), sleep=lambda s: None)
    with pytest.raises(DownloadError, match="^cannot resolve data-api.binance.vision — offline\\? use --base-url or "
                                            "import local files"):
        rest.page("BTCUSDT", "1m", {"symbol": "BTCUSDT"})


class FlakySession(requests.Session):
    """Passes requests through until `fail_from`, then raises `error` for `times` calls."""

    def __init__(self, error: Exception, fail_from: int, times: int) -> None:
        super().__init__()
        self.error, self.fail_from, self.times, self.calls = error, fail_from, times, 0

    def get(self, *a, **kw):
        self.calls += 1
        if self.fail_from <= self.calls < self.fail_from + self.times:
            raise self.error
        return super().get(*a, **kw)


def test_refused_after_data_flowed_keeps_the_backoff(tmp_path):
    """The server went away mid-run (a restart): that is transient, retried with the usual backoff."""
    rows = synthetic_rows(AUG1, 3000)
    refused = requests.ConnectionError("refused")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    fc = FakeClock(AUG1 / 1000 + 10 * 86400)
    with FakeBinance({("BTCUSDT", "1m"): rows}) as fb:
        session = FlakySession(refused, fail_from=2, times=5)
        rest = RestClient(fb.url, pace_ms=0, page_limit=1000, session=session, sleep=fc.sleep, clock=fc.clock,
                          rng=random.Random(0))
        got = sum(t.num_rows for t in rest.klines("BTCUSDT", "1m", AUG1, AUG1 + 3000 * 60_000))
    assert got == 3000
    assert rest.stats.retries == 5 and session.calls == 8


def test_a_5xx_after_data_flowed_is_still_retried(tmp_path):
    rows = synthetic_rows(AUG1, 3000)
    fc = FakeClock(AUG1 / 1000 + 10 * 86400)
    with FakeBinance({("BTCUSDT", "1m"): rows}) as fb:
        fb.add_fault("500", times=3, path_contains=f"startTime={AUG1 + 1000 * 60_000}&")
        fb.add_fault("503", times=2, path_contains=f"startTime={AUG1 + 2000 * 60_000}&")
        rest = RestClient(fb.url, pace_ms=0, page_limit=1000, sleep=fc.sleep, clock=fc.clock, rng=random.Random(0))
        got = sum(t.num_rows for t in rest.klines("BTCUSDT", "1m", AUG1, AUG1 + 3000 * 60_000))
    assert got == 3000 and rest.stats.retries == 5


def test_a_5xx_before_any_data_is_retried_too(tmp_path):
    """The server answered: it is reachable, so its errors are transient from the first request."""
    rows = synthetic_rows(AUG1, 500)
    fc = FakeClock(AUG1 / 1000 + 10 * 86400)
    with FakeBinance({("BTCUSDT", "1m"): rows}) as fb:
        fb.add_fault("503", times=4)
        rest = RestClient(fb.url, pace_ms=0, sleep=fc.sleep, clock=fc.clock, rng=random.Random(0))
        got = sum(t.num_rows for t in rest.klines("BTCUSDT", "1m", AUG1, AUG1 + 500 * 60_000))
    assert got == 500 and rest.stats.retries == 4


def test_archive_refused_after_data_flowed_keeps_the_backoff(tmp_path):
    rows = synthetic_rows(AUG1, 1440)
    make_archive_zip(tmp_path, "spot", "BTCUSDT", "1m", 2023, 8, rows)
    sleeps: list[float] = []
    refused = requests.ConnectionError("refused")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    with FakeBinance(archive_root=tmp_path) as fb:
        session = FlakySession(refused, fail_from=2, times=3)  # the zip arrived; its CHECKSUM is refused 3 times
        t = ArchiveClient(fb.url, session=session, sleep=sleeps.append, max_retries=5).monthly("BTCUSDT", "1m", 2023, 8)
    assert t.num_rows == 1440 and len(sleeps) == 3
