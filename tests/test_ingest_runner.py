"""`mscale ingest` orchestration (mscale.ingest.runner) against FakeBinance on 127.0.0.1.

Fixture market: "today" is 2023-09-02, "now" 05:00:30 UTC. BTCUSDT lists on 2023-08-30 12:00,
ETHUSDT on 2023-08-31 20:00 (and stops 2023-09-02 10:00). `--start 2023-08-01` therefore gives a
complete August shard (a past month fetched to its end) and a partial September shard.
Every test compares the shard files with tables built row-wise from the fixture.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests
from fakebinance import FakeBinance, FakeClock, day_ms, make_archive_zip, rows_table, synthetic_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mscale.config import Config
from mscale.errors import ChecksumError, DownloadError, MscaleError, UnknownSymbolError
from mscale.ingest.rest import RestClient
from mscale.ingest.runner import IngestSummary, ingest, missing_spans
from mscale.store import is_complete, list_shards, minute_shard_path, read_shard, shard_metadata, write_atomic

TODAY = date(2023, 9, 2)
START = date(2023, 8, 1)
NOW_MS = day_ms(TODAY) + 5 * 3_600_000 + 30_000
MIN = 60_000
SEP = day_ms(date(2023, 9, 1))
BTC = synthetic_rows(day_ms(date(2023, 8, 30)) + 12 * 3_600_000, int(3.5 * 1440), seed=11)
ETH = synthetic_rows(day_ms(date(2023, 8, 31)) + 20 * 3_600_000, 38 * 60, seed=12)
MARKET = {("BTCUSDT", "1m"): BTC, ("ETHUSDT", "1m"): ETH}
PAGE, BATCH = 500, 1000  # small pages and batches: more pages, faults and writes per run
FAULTS = ["429", "418", "500", "503", "slow", "truncated", "reset", "overlap", "shuffle", "weight"]


def make_cfg(root: Path) -> Config:
    return Config(project_root=root, data_dir=root / "data", warehouse=root / "wh.duckdb", quiet=True)


def rest_client(fb: FakeBinance, fc: FakeClock, **kw) -> RestClient:
    kw.setdefault("pace_ms", 0)
    kw.setdefault("timeout_s", 0.2)
    kw.setdefault("page_limit", PAGE)
    return RestClient(fb.url, sleep=fc.sleep, clock=fc.clock, rng=random.Random(0), **kw)


def run(cfg: Config, fb: FakeBinance, fc: FakeClock, symbols=("BTCUSDT", "ETHUSDT"), rest=None, **kw) -> IngestSummary:
    kw.setdefault("source", "rest")
    kw.setdefault("start", START)
    kw.setdefault("end", None)
    kw.setdefault("today", TODAY)
    kw.setdefault("batch_rows", BATCH)
    return ingest(cfg, symbols=list(symbols), rest=rest or rest_client(fb, fc), progress=False, **kw)


def expected(rows: list[list], now_ms: int = NOW_MS, start_ms: int = day_ms(START), interval_ms: int = MIN,
             interval: str = "1m", symbol: str | None = None, name=None) -> dict[str, pa.Table]:
    """Shard file name -> the rows it must hold: closed candles from start, split by UTC month."""
    symbol = symbol or ("BTCUSDT" if rows is BTC else "ETHUSDT")
    keep = [r for r in rows if r[0] >= start_ms and r[0] + interval_ms <= now_ms]
    out: dict[str, list] = {}
    for r in keep:
        d = date(1970, 1, 1) + timedelta(milliseconds=r[0])
        out.setdefault(name(symbol, d) if name else f"binance_{symbol}_1m_{d:%Y%m}.parquet", []).append(r)
    return {k: rows_table(v, symbol, interval) for k, v in out.items()}


def shards(cfg: Config, symbol: str, interval: str = "1m") -> dict[str, pa.Table]:
    return {s.path.name: read_shard(s.path) for s in list_shards(cfg.market_dir, interval, symbol)}


def assert_market(cfg: Config, now_ms: int = NOW_MS, symbols=("BTCUSDT", "ETHUSDT")) -> None:
    for sym in symbols:
        got, want = shards(cfg, sym), expected(BTC if sym == "BTCUSDT" else ETH, now_ms)
        assert sorted(got) == sorted(want), sym
        for name in want:
            assert got[name].equals(want[name]), name


def aug_path(cfg: Config, sym: str = "BTCUSDT") -> Path:
    return minute_shard_path(cfg.market_dir, sym, 2023, 8)


def sep_path(cfg: Config, sym: str = "BTCUSDT") -> Path:
    return minute_shard_path(cfg.market_dir, sym, 2023, 9)


@pytest.fixture
def fb():
    with FakeBinance(MARKET, now_ms=NOW_MS) as server:
        yield server


@pytest.fixture
def fc():
    return FakeClock(NOW_MS / 1000)


# ---- REST ---------------------------------------------------------------------------------------

def test_rest_ingest_writes_exactly_the_fixture(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    summary = run(cfg, fb, fc)
    assert_market(cfg)
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert is_complete(aug_path(cfg, sym)) and not is_complete(sep_path(cfg, sym))
        assert shard_metadata(aug_path(cfg, sym))[b"mscale.source"] == b"rest"
    n_btc = sum(t.num_rows for t in expected(BTC).values())
    s = summary.symbols["BTCUSDT"]
    assert s.rows_written == s.rows_fetched == n_btc and s.sources == {"rest"} and s.months_skipped == 0
    assert s.months_completed == 1 and summary.unknown == [] and summary.rest_requests == fb.count("/api/v3/klines")
    assert not list((cfg.market_dir / "minute").glob(".*.tmp"))  # no temp files left behind


@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_gives_exactly_the_fixture(tmp_path, fb, fc, fault):
    cfg = make_cfg(tmp_path)
    kw = {"retry_after": 5} if fault in ("429", "418") else {"delay": 2} if fault == "slow" else {}
    rest = rest_client(fb, fc, timeout_s=0.05)
    if fault in ("overlap", "shuffle", "weight"):
        fb.add_fault(fault, times=100, **kw)  # every page
    else:  # two pages in a row fail twice each: one in August, one in September
        fb.add_fault(fault, times=2, path_contains=f"startTime={BTC[0][0] + PAGE * MIN}&", **kw)
        fb.add_fault(fault, times=2, path_contains=f"startTime={SEP + 2 * PAGE * MIN}&", **kw)
    summary = run(cfg, fb, fc, rest=rest)
    assert_market(cfg)
    assert fb.pending_faults == (100 - fb.count("/api/v3/klines") if fault in ("overlap", "shuffle", "weight") else 0)
    assert is_complete(aug_path(cfg)) and not is_complete(sep_path(cfg))
    if fault == "overlap":
        assert summary.symbols["BTCUSDT"].duplicates_dropped > 0


def test_overlap_rows_dropped_by_the_client_are_counted_in_the_summary_and_the_shards(tmp_path, fb, fc):
    """Every served row the REST client drops (before startTime, repeated) is a duplicate dropped: in
    the summary line and in the shard metadata the report reads; the shards themselves stay exact."""
    cfg = make_cfg(tmp_path)
    fb.add_fault("overlap", rows=7, times=100)  # every page starts 7 rows early
    rest = rest_client(fb, fc)
    summary = run(cfg, fb, fc, rest=rest)
    assert_market(cfg)
    syms = ("BTCUSDT", "ETHUSDT")
    in_meta = {sym: sum(int(shard_metadata(s.path)[b"mscale.duplicates_dropped"])
                        for s in list_shards(cfg.market_dir, "1m", sym)) for sym in syms}
    in_summary = {sym: summary.symbols[sym].duplicates_dropped for sym in syms}
    assert in_meta == in_summary and in_meta["BTCUSDT"] > 0 and in_meta["ETHUSDT"] > 0
    assert sum(in_summary.values()) == rest.stats.overlap_dropped
    s = summary.symbols["BTCUSDT"]
    assert s.rows_written == s.rows_fetched == sum(t.num_rows for t in expected(BTC).values())
    assert f"{s.duplicates_dropped} duplicates dropped" in str(summary)

    again = run(cfg, fb, fc)  # September again: one page of 7 older rows, nothing new to write
    assert again.symbols["BTCUSDT"].duplicates_dropped == 7 and again.rows_written == 0
    assert_market(cfg)


def test_a_full_page_of_older_rows_is_asked_again_and_never_completes_a_month(tmp_path, fb, fc):
    """A server ignoring startTime (a full page, every row before it) must not end August early."""
    page2 = f"symbol=BTCUSDT&interval=1m&startTime={BTC[0][0] + PAGE * MIN}&"
    fb.add_fault("overlap", rows=PAGE, times=1, path_contains=page2)  # the 500 rows before startTime
    cfg = make_cfg(tmp_path / "once")
    rest = rest_client(fb, fc)
    run(cfg, fb, fc, symbols=["BTCUSDT"], rest=rest)
    assert_market(cfg, symbols=["BTCUSDT"])
    assert is_complete(aug_path(cfg)) and rest.stats.retries == 1 and fb.count(page2) == 2

    fb.add_fault("overlap", rows=PAGE, times=100, path_contains=page2)  # for good
    cfg = make_cfg(tmp_path / "always")
    with pytest.raises(DownloadError, match="no row at or after startTime") as e:
        run(cfg, fb, fc, symbols=["BTCUSDT"], rest=rest_client(fb, fc, max_retries=3))
    assert "\n" not in str(e.value) and fb.count(page2) == 2 + 4
    assert not is_complete(aug_path(cfg))
    assert read_shard(aug_path(cfg)).num_rows == PAGE  # the page before it is kept
    fb.clear_faults()
    run(cfg, fb, fc, symbols=["BTCUSDT"])
    assert_market(cfg, symbols=["BTCUSDT"])
    assert is_complete(aug_path(cfg))


def test_418_waits_retry_after_before_the_next_request(tmp_path, fb, fc):
    """After a ban no request at all leaves before Retry-After has passed (measured on the fake clock)."""
    cfg = make_cfg(tmp_path)
    times: list[float] = []

    class Clocked(requests.Session):
        def get(self, url, **kw):
            times.append(fc.clock())
            return super().get(url, **kw)

    fb.add_fault("418", retry_after=300, path_contains=f"startTime={BTC[0][0] + PAGE * MIN}&")
    run(cfg, fb, fc, rest=rest_client(fb, fc, session=Clocked()))
    ban = next(i for i, r in enumerate(fb.requests) if f"startTime={BTC[0][0] + PAGE * MIN}&" in r)
    assert times[ban + 1] - times[ban] >= 300
    assert_market(cfg)


# the page requests of a BTCUSDT run, in order: August from --start, then from the page after the
# listing's first 500 rows; September in pages of 500 from its first minute
PAGE_STARTS = [day_ms(START), BTC[0][0] + PAGE * MIN] + [SEP + k * PAGE * MIN for k in range(4)]
fault_plan = st.lists(st.tuples(st.sampled_from(FAULTS), st.integers(0, len(PAGE_STARTS) - 1), st.integers(1, 3)),
                      max_size=10)


@given(plan=fault_plan)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_fault_sequences_give_identical_shards(plan):
    """Whatever faults hit whichever requests, the shards end up holding exactly the fixture."""
    fc = FakeClock(NOW_MS / 1000)
    with FakeBinance(MARKET, now_ms=NOW_MS) as fb, tempfile.TemporaryDirectory() as tmp:
        # errors fail a request and are consumed by its retries; a modifier (overlap, shuffle,
        # weight) changes the one successful response of a page, so it is registered after the
        # errors and at most one per page
        modifiers: dict[int, str] = {}
        for fault, page, times in plan:
            if fault in ("overlap", "shuffle", "weight"):
                modifiers.setdefault(page, fault)
            else:
                fb.add_fault(fault, times=times, path_contains=f"startTime={PAGE_STARTS[page]}&", retry_after=2, delay=1)
        for page, fault in modifiers.items():
            fb.add_fault(fault, path_contains=f"startTime={PAGE_STARTS[page]}&")
        cfg = make_cfg(Path(tmp))
        run(cfg, fb, fc, symbols=["BTCUSDT"], rest=rest_client(fb, fc, timeout_s=0.05, max_retries=40))
        if not any(f[0] == "overlap" for f in plan):  # an overlapping page shifts the later page starts
            assert fb.pending_faults == 0  # every planned fault was served
        assert_market(cfg, symbols=["BTCUSDT"])
        assert is_complete(aug_path(cfg))


def test_second_run_fetches_nothing_for_complete_months_and_appends_only_new_rows(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc)
    aug_before = {s: aug_path(cfg, s).stat().st_mtime_ns for s in ("BTCUSDT", "ETHUSDT")}

    fb.requests.clear()
    again = run(cfg, fb, fc)  # same now: nothing new exists
    assert all(f"startTime={SEP}" not in r for r in fb.requests)
    assert all(int(r.split("startTime=")[1].split("&")[0]) >= SEP for r in fb.requests)
    assert fb.count("/api/v3/klines") == 2  # one request per symbol, from the last stored row
    assert again.symbols["BTCUSDT"].months_skipped == 1 and again.rows_written == 0
    assert_market(cfg)

    later = NOW_MS + 90 * MIN  # 90 more minutes have closed
    fb.now_ms, fc.now = later, later / 1000
    fb.requests.clear()
    third = run(cfg, fb, fc)
    assert all(int(r.split("startTime=")[1].split("&")[0]) >= SEP for r in fb.requests)
    last_btc = expected(BTC)[sep_path(cfg).name].column("open_time").cast(pa.int64())[-1].as_py()
    assert f"startTime={last_btc + MIN}&" in fb.requests[0]
    assert third.symbols["BTCUSDT"].rows_written == 90 and third.symbols["BTCUSDT"].rows_replaced == 0
    assert third.symbols["ETHUSDT"].rows_written == 90
    assert {s: aug_path(cfg, s).stat().st_mtime_ns for s in aug_before} == aug_before  # untouched
    assert_market(cfg, now_ms=later)


def test_force_fetches_complete_months_again_without_changing_them(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc)
    fb.requests.clear()
    summary = run(cfg, fb, fc, force=True)
    assert any(f"startTime={day_ms(START)}&" in r for r in fb.requests)
    assert summary.symbols["BTCUSDT"].rows_written == 0 and summary.symbols["BTCUSDT"].rows_replaced > 0
    assert_market(cfg)


def test_holes_in_a_partial_shard_are_filled(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc, end=date(2023, 9, 1))  # August complete, September 1 only
    path = sep_path(cfg)
    stored = read_shard(path)
    ot = stored.column("open_time").cast(pa.int64()).to_numpy()
    holed = stored.filter(pa.array((ot < SEP + 100 * MIN) | (ot >= SEP + 700 * MIN)))  # lose 600 minutes
    write_atomic(holed, path, shard_metadata(path))
    run(cfg, fb, fc)
    assert_market(cfg)


def test_earlier_start_fetches_the_months_before(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc, start=date(2023, 9, 1))
    assert not aug_path(cfg).exists()
    run(cfg, fb, fc)
    assert_market(cfg)
    assert is_complete(aug_path(cfg))


def test_a_month_requested_in_part_is_not_marked_complete(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc, start=date(2023, 8, 31))
    assert aug_path(cfg).exists() and not is_complete(aug_path(cfg))


def test_hourly_interval(tmp_path, fc):
    hourly = synthetic_rows(day_ms(date(2023, 8, 30)) + 12 * 3_600_000, 84, "1h", seed=4)
    with FakeBinance({("BTCUSDT", "1h"): hourly}, now_ms=NOW_MS) as fb:
        cfg = make_cfg(tmp_path)
        run(cfg, fb, fc, symbols=["BTCUSDT"], interval="1h")
        want = expected(hourly, interval_ms=3_600_000, interval="1h", symbol="BTCUSDT",
                        name=lambda s, d: f"{d:%Y%m}")
        got = {s.path.name: read_shard(s.path) for s in list_shards(cfg.market_dir, "1h", "BTCUSDT")}
        assert sorted(got) == ["binance_BTCUSDT_1h_20230830_20230831.parquet",
                               "binance_BTCUSDT_1h_20230901_20230902.parquet"]
        assert got["binance_BTCUSDT_1h_20230830_20230831.parquet"].equals(want["202308"])
        assert got["binance_BTCUSDT_1h_20230901_20230902.parquet"].equals(want["202309"])
        assert is_complete(cfg.market_dir / "hourly" / "binance_BTCUSDT_1h_20230830_20230831.parquet")
        fb.requests.clear()
        run(cfg, fb, fc, symbols=["BTCUSDT"], interval="1h")
        assert fb.count("/api/v3/klines") == 1  # August skipped, September from its last row


# ---- crash and resume -------------------------------------------------------------------------

class Crash(Exception):
    """Stands for the process dying: not a network error, so nothing catches it."""


class CrashingSession(requests.Session):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.left = after

    def get(self, url, **kw):
        if self.left == 0:
            raise Crash(url)
        self.left -= 1
        return super().get(url, **kw)


@given(after=st.integers(0, 13))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_crash_then_rerun_gives_the_uninterrupted_shards(after):
    fc = FakeClock(NOW_MS / 1000)
    with FakeBinance(MARKET, now_ms=NOW_MS) as fb, tempfile.TemporaryDirectory() as tmp:
        cfg = make_cfg(Path(tmp))
        rest = rest_client(fb, fc, session=CrashingSession(after))
        try:
            run(cfg, fb, fc, rest=rest)
        except Crash:
            pass  # (a run needs about 13 requests: large `after`s do not crash)
        stored = sum(t.num_rows for s in ("BTCUSDT", "ETHUSDT") for t in shards(cfg, s).values())
        assert stored >= rest.stats.rows - BATCH  # at most the batch in flight is lost
        for sym in ("BTCUSDT", "ETHUSDT"):  # what is stored is a subset of the truth
            want = pa.concat_tables(expected(BTC if sym == "BTCUSDT" else ETH).values())
            for t in shards(cfg, sym).values():
                ot = t.column("open_time").cast(pa.int64()).to_numpy()
                idx = np.searchsorted(want.column("open_time").cast(pa.int64()).to_numpy(), ot)
                assert want.take(pa.array(idx)).equals(t)
        run(cfg, fb, fc)
        assert_market(cfg)
        assert is_complete(aug_path(cfg)) and is_complete(aug_path(cfg, "ETHUSDT"))


_CHILD = textwrap.dedent(
    """
    import sys
    from datetime import date
    from pathlib import Path
    from mscale.config import Config
    from mscale.ingest.rest import RestClient
    from mscale.ingest.runner import ingest

    url, root, now_s = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    cfg = Config(project_root=root, data_dir=root / "data", warehouse=root / "wh.duckdb", quiet=True)
    rest = RestClient(url, pace_ms=0, timeout_s=60, page_limit=500, clock=lambda: now_s)
    ingest(cfg, symbols=["BTCUSDT", "ETHUSDT"], start=date(2023, 8, 1), end=None, source="rest",
           rest=rest, today=date(2023, 9, 2), progress=False, batch_rows=1000)
    """
)


def test_killed_process_then_rerun_gives_the_uninterrupted_shards(tmp_path, fb, fc):
    """SIGKILL a real `ingest` process while it waits for a page, then run again."""
    stall = f"startTime={SEP + 2 * PAGE * MIN}&"  # BTCUSDT, September, third page
    fb.add_fault("slow", delay=60, path_contains=stall)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), fb.url, str(tmp_path), str(NOW_MS / 1000)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not fb.count(stall) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fb.count(stall) == 1, proc.stderr.read().decode() if proc.poll() is not None else "timed out"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    cfg = make_cfg(tmp_path)
    assert is_complete(aug_path(cfg))  # finished before the kill
    got = read_shard(sep_path(cfg))
    assert got.num_rows == 1000  # the first 1000 September rows, batch-written; the in-flight page is lost
    assert not shards(cfg, "ETHUSDT")
    fb.clear_faults()
    fb.requests.clear()
    run(cfg, fb, fc)
    assert not fb.count(f"symbol=BTCUSDT&interval=1m&startTime={day_ms(START)}&")  # August not fetched again
    assert_market(cfg)


# ---- unknown symbols and bad input --------------------------------------------------------------

def test_unknown_symbol_writes_nothing_for_it_and_the_others_are_ingested(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    with pytest.raises(UnknownSymbolError) as e:
        run(cfg, fb, fc, symbols=["NOPEUSDT", "BTCUSDT"])
    msg = str(e.value)
    assert "NOPEUSDT" in msg and "BTCUSDT ingested" in msg and "\n" not in msg
    assert not list_shards(cfg.market_dir, "1m", "NOPEUSDT")
    assert fb.count("symbol=NOPEUSDT") == 1
    assert_market(cfg, symbols=["BTCUSDT"])
    summary = e.value.summary
    assert summary.unknown == ["NOPEUSDT"] and summary.symbols["BTCUSDT"].rows_written > 0


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(start=date(2023, 9, 5), end=date(2023, 9, 1)), "--start 2023-09-05 is after --end 2023-09-01"),
        (dict(start=date(2023, 9, 5), end=None, today=date(2023, 9, 2)), "--start 2023-09-05 is after --end 2023-09-02"),
        (dict(start=date(2023, 9, 5), end=date(2023, 9, 9)), r"--start 2023-09-05 is in the future \(today is 2023-09-02"),
        (dict(symbols=["btc/usdt"]), "invalid symbol 'btc/usdt'"),
        (dict(symbols=["BTCUSDT", "x"]), "invalid symbol 'x'"),
        (dict(symbols=[]), "no symbols"),
        (dict(interval="5m"), "unsupported interval '5m'"),
        (dict(source="ftp"), "unknown source 'ftp'"),
    ],
)
def test_bad_input_is_rejected_before_any_request(tmp_path, fb, fc, kw, message):
    cfg = make_cfg(tmp_path)
    symbols = kw.pop("symbols", ["BTCUSDT"])
    with pytest.raises(MscaleError, match=message):
        run(cfg, fb, fc, symbols=symbols, **kw)
    assert fb.requests == [] and not (tmp_path / "data" / "minute").exists()


def test_unwritable_data_dir_is_rejected_before_any_request(tmp_path, fb, fc):
    (tmp_path / "data").write_text("a file, not a folder")
    with pytest.raises(MscaleError, match="not writable"):
        run(make_cfg(tmp_path), fb, fc)
    assert fb.requests == []


def test_ingest_refuses_a_data_dir_holding_demo_shards(tmp_path, fb, fc):
    """The demo marks its months complete: ingesting real data there would skip them and mix the two."""
    from mscale.demo import write_demo

    cfg = make_cfg(tmp_path)
    write_demo(cfg, symbols=["SOLUSDT", "BTCUSDT"], start=START, months=1, seed=3)
    before = {p: p.stat().st_mtime_ns for p in cfg.market_dir.rglob("*.parquet")}
    archive = full_archive()
    for source, symbols, shard in [("rest", ["BTCUSDT"], "binance_BTCUSDT_1m_202308.parquet"),
                                   ("bulk", ["BTCUSDT"], "binance_BTCUSDT_1m_202308.parquet"),
                                   ("auto", ["ETHUSDT"], "binance_BTCUSDT_1m_202308.parquet")]:
        with pytest.raises(MscaleError) as e:
            run(cfg, fb, fc, symbols=symbols, source=source, archive=archive)
        msg = str(e.value)
        assert f"{cfg.market_dir / 'minute' / shard} holds synthetic demo data" in msg, msg
        assert "another --data-dir" in msg and "\n" not in msg
    with pytest.raises(MscaleError, match="binance_SOLUSDT_1h_.* holds synthetic demo data"):
        run(cfg, fb, fc, symbols=["SOLUSDT"], interval="1h")
    assert fb.requests == [] and archive.calls == []
    assert {p: p.stat().st_mtime_ns for p in cfg.market_dir.rglob("*.parquet")} == before


def test_end_in_the_future_is_clipped_to_today(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc, end=date(2024, 1, 1))
    assert_market(cfg)


# ---- bulk and auto ------------------------------------------------------------------------------

class StubArchive:
    """An in-memory ArchiveClient: files exist for the (symbol, month) / (symbol, day) keys given."""

    def __init__(self, monthly=None, daily=None, broken=()):
        self.monthly_files = monthly or {}
        self.daily_files = daily or {}
        self.broken = set(broken)
        self.calls: list[tuple] = []

    def monthly(self, symbol, interval, year, month):
        self.calls.append(("monthly", symbol, year, month))
        if (symbol, year, month) in self.broken:
            raise ChecksumError(f"{symbol}-{interval}-{year}-{month:02d}.zip: sha256 mismatch")
        rows = self.monthly_files.get((symbol, year, month))
        return None if rows is None else rows_table(rows, symbol, interval)

    def daily(self, symbol, interval, day):
        self.calls.append(("daily", symbol, day))
        rows = self.daily_files.get((symbol, day))
        return None if rows is None else rows_table(rows, symbol, interval)


def month_rows(rows, y, m):
    lo, hi = day_ms(date(y, m, 1)), day_ms(date(y + (m == 12), m % 12 + 1, 1))
    return [r for r in rows if lo <= r[0] < hi]


def day_rows(rows, d):
    return [r for r in rows if day_ms(d) <= r[0] < day_ms(d) + 86_400_000] or None


def full_archive(symbols=("BTCUSDT", "ETHUSDT")) -> StubArchive:
    """What data.binance.vision holds on 2023-09-02: August's monthly file, daily files up to Sep 1."""
    monthly, daily = {}, {}
    for sym in symbols:
        rows = BTC if sym == "BTCUSDT" else ETH
        monthly[(sym, 2023, 8)] = month_rows(rows, 2023, 8)
        for d in (date(2023, 8, 30), date(2023, 8, 31), date(2023, 9, 1)):
            if day_rows(rows, d):
                daily[(sym, d)] = day_rows(rows, d)
    return StubArchive(monthly, daily)


def test_bulk_uses_the_monthly_file_for_past_months_and_daily_files_before_today(tmp_path):
    cfg = make_cfg(tmp_path)
    archive = full_archive()
    summary = ingest(cfg, symbols=["BTCUSDT", "ETHUSDT"], start=START, end=None, source="bulk", archive=archive,
                     today=TODAY, progress=False)
    assert_market(cfg, now_ms=day_ms(TODAY))  # bulk stops at the last published day
    assert is_complete(aug_path(cfg)) and not is_complete(sep_path(cfg))
    assert ("monthly", "BTCUSDT", 2023, 8) in archive.calls and ("daily", "BTCUSDT", date(2023, 9, 1)) in archive.calls
    assert not any(c[0] == "daily" and c[2] < date(2023, 9, 1) for c in archive.calls)
    assert summary.symbols["BTCUSDT"].sources == {"bulk"} and summary.rest_requests == 0
    archive.calls.clear()
    again = ingest(cfg, symbols=["BTCUSDT", "ETHUSDT"], start=START, end=None, source="bulk", archive=archive,
                   today=TODAY, progress=False)
    assert archive.calls == [] and again.rows_written == 0  # nothing missing before today


def test_bulk_next_day_fetches_only_the_new_daily_file(tmp_path):
    cfg = make_cfg(tmp_path)
    archive = full_archive(["BTCUSDT"])
    ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="bulk", archive=archive, today=TODAY, progress=False)
    archive.daily_files[("BTCUSDT", TODAY)] = day_rows(BTC, TODAY)
    archive.calls.clear()
    ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="bulk", archive=archive,
           today=TODAY + timedelta(days=1), progress=False)
    assert archive.calls == [("daily", "BTCUSDT", TODAY)]
    assert_market(cfg, now_ms=day_ms(TODAY + timedelta(days=1)), symbols=["BTCUSDT"])


def test_bulk_falls_back_to_daily_files_while_last_months_file_is_unpublished(tmp_path):
    cfg = make_cfg(tmp_path)
    archive = full_archive(["BTCUSDT"])
    del archive.monthly_files[("BTCUSDT", 2023, 8)]
    ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="bulk", archive=archive, today=TODAY, progress=False)
    assert_market(cfg, now_ms=day_ms(TODAY), symbols=["BTCUSDT"])
    assert not is_complete(aug_path(cfg))  # days before the listing have no files: cannot tell


def test_bulk_with_a_symbol_the_archive_lacks_is_an_error_naming_it(tmp_path):
    cfg = make_cfg(tmp_path)
    archive = full_archive(["BTCUSDT"])
    with pytest.raises(UnknownSymbolError) as e:
        ingest(cfg, symbols=["NOPEUSDT", "BTCUSDT"], start=START, end=None, source="bulk", archive=archive,
               today=TODAY, progress=False)
    msg = str(e.value)
    assert msg.startswith("unknown symbol NOPEUSDT: the archive") and "\n" not in msg
    assert "no 1m files for it from 2023-08-01 to 2023-09-02" in msg and "misspelt, or not listed yet" in msg
    assert "--source auto" in msg and "(BTCUSDT ingested)" in msg
    assert not list_shards(cfg.market_dir, "1m", "NOPEUSDT")
    assert_market(cfg, now_ms=day_ms(TODAY), symbols=["BTCUSDT"])  # the other symbol is still ingested
    summary = e.value.summary
    assert summary.unknown == ["NOPEUSDT"] and summary.symbols["NOPEUSDT"].missing[0] == "2023-08"
    assert ("monthly", "NOPEUSDT", 2023, 8) in archive.calls


def test_bulk_without_files_for_a_symbol_with_stored_rows_is_no_error(tmp_path, fb, fc):
    """Known from an earlier run: archive 404s alone do not make it unknown."""
    cfg = make_cfg(tmp_path)
    run(cfg, fb, fc, symbols=["BTCUSDT"], start=date(2023, 8, 31), end=date(2023, 8, 31))  # August in part
    archive = StubArchive()
    summary = ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="bulk", archive=archive, today=TODAY,
                     progress=False)
    s = summary.symbols["BTCUSDT"]
    assert summary.unknown == [] and s.archive_files == len(s.missing) > 1 and s.rows_fetched == 0


def test_bulk_checksum_error_stops_the_run(tmp_path):
    archive = full_archive(["BTCUSDT"])
    archive.broken.add(("BTCUSDT", 2023, 8))
    with pytest.raises(ChecksumError):
        ingest(make_cfg(tmp_path), symbols=["BTCUSDT"], start=START, end=None, source="bulk", archive=archive,
               today=TODAY, progress=False)


def test_auto_takes_what_the_archive_lacks_from_rest(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    archive = full_archive()
    del archive.monthly_files[("BTCUSDT", 2023, 8)]  # not published yet: daily files, then REST
    del archive.daily_files[("BTCUSDT", date(2023, 8, 31))]  # missing day: REST
    del archive.daily_files[("ETHUSDT", date(2023, 9, 1))]  # missing day: REST
    archive.broken.add(("ETHUSDT", 2023, 8))  # corrupt monthly file: REST
    summary = run(cfg, fb, fc, source="auto", archive=archive)
    assert_market(cfg)  # today's rows came from REST too
    assert is_complete(aug_path(cfg)) and is_complete(aug_path(cfg, "ETHUSDT"))
    assert summary.symbols["BTCUSDT"].sources == {"bulk", "rest"}
    assert fb.count(f"symbol=BTCUSDT&interval=1m&startTime={day_ms(date(2023, 8, 31))}&") == 1
    fb.requests.clear()
    archive.calls.clear()
    run(cfg, fb, fc, source="auto", archive=archive)
    assert not any(c[0] == "monthly" for c in archive.calls) and fb.count("/api/v3/klines") == 2


def test_auto_with_an_unknown_symbol(tmp_path, fb, fc):
    cfg = make_cfg(tmp_path)
    with pytest.raises(UnknownSymbolError, match="NOPEUSDT"):
        run(cfg, fb, fc, symbols=["NOPEUSDT"], source="auto", archive=StubArchive())
    assert not list_shards(cfg.market_dir, "1m")


def test_bulk_through_the_real_archive_client(tmp_path, fc):
    bulk = pytest.importorskip("mscale.ingest.bulk")
    root = tmp_path / "archive"
    make_archive_zip(root, "spot", "BTCUSDT", "1m", 2023, 8, month_rows(BTC, 2023, 8))
    for d in (date(2023, 8, 30), date(2023, 8, 31), date(2023, 9, 1)):
        make_archive_zip(root, "spot", "BTCUSDT", "1m", d.year, d.month, day_rows(BTC, d), daily=d, micros=True)
    with FakeBinance(MARKET, archive_root=root, now_ms=NOW_MS) as fb:
        fb.add_fault("reset", path_contains="2023-08.zip")
        archive = bulk.ArchiveClient(fb.url, sleep=fc.sleep, timeout_s=1)
        cfg = make_cfg(tmp_path)
        run(cfg, fb, fc, symbols=["BTCUSDT"], source="auto", archive=archive)
        assert_market(cfg, symbols=["BTCUSDT"])
        assert is_complete(aug_path(cfg))
        assert fb.count("/api/v3/klines") == 1, fb.requests  # only today, from the end of Sep 1's daily file


# ---- helpers and progress -----------------------------------------------------------------------

def test_missing_spans():
    ot = np.array([10, 11, 12, 15, 16, 20], dtype=np.int64) * MIN
    assert missing_spans(ot, 0, 30 * MIN, MIN) == [(0, 10 * MIN), (13 * MIN, 15 * MIN), (17 * MIN, 20 * MIN),
                                                    (21 * MIN, 30 * MIN)]
    assert missing_spans(ot, 10 * MIN, 17 * MIN, MIN) == [(13 * MIN, 15 * MIN)]
    assert missing_spans(ot[:0], 0, 5 * MIN, MIN) == [(0, 5 * MIN)]
    assert missing_spans(np.arange(0, 100, 2, dtype=np.int64) * MIN, 0, 100 * MIN, MIN) == [(MIN, 100 * MIN)]


def test_progress_bar_only_on_a_terminal(tmp_path, fb, fc, capsys, monkeypatch):
    cfg = Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "wh.duckdb")
    ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="rest", rest=rest_client(fb, fc), today=TODAY)
    assert capsys.readouterr().err == ""  # not a terminal under pytest
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="rest", rest=rest_client(fb, fc), today=TODAY,
           force=True)
    err = capsys.readouterr().err
    assert "BTCUSDT 2023-09" in err and "rows" in err


def test_quiet_hides_the_progress_bar_even_on_a_terminal(tmp_path, fb, fc, capsys, monkeypatch):
    cfg = Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "wh.duckdb", quiet=True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert sys.stderr.isatty()
    ingest(cfg, symbols=["BTCUSDT"], start=START, end=None, source="rest", rest=rest_client(fb, fc), today=TODAY)
    assert capsys.readouterr().err == ""
    assert_market(cfg, symbols=["BTCUSDT"])
