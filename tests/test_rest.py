"""The REST klines client (mscale.ingest.rest) against FakeBinance on 127.0.0.1: parsing, paging,
every fault the brief names, waits (through an injected clock, never real sleeping)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
import requests
from fakebinance import FakeBinance, FakeClock, month_start_ms, rows_table, synthetic_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mscale.errors import DownloadError, MscaleError, UnknownSymbolError
from mscale.ingest.rest import MalformedPageError, RestClient, parse_klines_page

SYM = "BTCUSDT"
T0 = month_start_ms(2023, 8)
ROWS = synthetic_rows(T0, 2500, seed=1)
END = T0 + 10**10  # far after the fixture
NOW_S = (T0 + 30 * 86_400_000) / 1000  # long after every fixture row has closed
FAULTS = ["429", "418", "500", "503", "slow", "truncated", "reset", "overlap", "shuffle", "weight"]


def client(fb: FakeBinance, fc: FakeClock, **kw) -> RestClient:
    kw.setdefault("pace_ms", 0)
    # 1 s: the "slow" fault (2 s) sleeps past it, while a healthy page on a loaded 2-core machine
    # (a fresh clone's test run) never takes that long, so it is not retried
    kw.setdefault("timeout_s", 1.0)
    return RestClient(fb.url, sleep=fc.sleep, clock=fc.clock, rng=random.Random(0), **kw)


def fetch(c: RestClient, start: int = T0, end: int = END, symbol: str = SYM) -> pa.Table:
    pages = list(c.klines(symbol, "1m", start, end))
    return pa.concat_tables(pages) if pages else rows_table([], symbol, "1m")


def add_fault(fb: FakeBinance, fault: str, **kw) -> None:
    if fault in ("429", "418"):
        kw.setdefault("retry_after", 3)
    if fault == "slow":
        kw.setdefault("delay", 2)
    fb.add_fault(fault, **kw)


# ---- parsing ----------------------------------------------------------------------------------

def test_parse_matches_an_independent_rowwise_conversion():
    expected = rows_table(ROWS[:1000], SYM, "1m")
    body = json.dumps(ROWS[:1000], separators=(",", ":")).encode()
    assert parse_klines_page(body, SYM, "1m").equals(expected)  # fast path
    assert parse_klines_page(ROWS[:1000], SYM, "1m").equals(expected)  # already-parsed list
    assert parse_klines_page(json.dumps(ROWS[:1000]), SYM, "1m").equals(expected)  # spaces: checked path
    t = parse_klines_page(body, SYM, "1m")
    ot = t.column("open_time").cast(pa.int64()).to_numpy()
    ct = t.column("close_time").cast(pa.int64()).to_numpy()
    assert (ct - ot == 60_000).all()  # right edge, not Binance's open + 59 999 ms


def test_parse_hourly_and_numbers_instead_of_strings():
    rows = synthetic_rows(T0, 30, "1h", seed=3)
    numeric = [[float(x) if isinstance(x, str) else x for x in r] for r in rows]
    body = json.dumps(numeric, separators=(",", ":")).encode()
    assert parse_klines_page(body, SYM, "1h").equals(rows_table(rows, SYM, "1h"))


@given(st.lists(st.tuples(st.integers(0, 10**6), st.floats(1e-8, 1e6), st.floats(0, 1e9), st.integers(0, 10**7)),
                max_size=40))
@settings(max_examples=60, deadline=None)
def test_parse_fast_and_checked_paths_agree(values):
    rows = [[T0 + i * 60_000, repr(p), repr(p), repr(p), repr(p), repr(v), T0 + i * 60_000 + 59_999, repr(v * p),
             n, repr(v), repr(v * p), "0"] for i, (_, p, v, n) in enumerate(values)]
    body = json.dumps(rows, separators=(",", ":")).encode()
    fast = parse_klines_page(body, SYM, "1m")
    assert fast.equals(parse_klines_page(json.loads(body), SYM, "1m"))
    assert fast.equals(rows_table(rows, SYM, "1m"))


def test_parse_empty_page():
    for body in (b"[]", b" [] ", [], "[]"):
        t = parse_klines_page(body, SYM, "1m")
        assert t.num_rows == 0 and t.schema == rows_table([], SYM, "1m").schema


GOOD = json.dumps(ROWS[:3], separators=(",", ":"))


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":-1121,"msg":"Invalid symbol."}',
        GOOD[: len(GOOD) // 2].encode(),  # truncated
        b"",
        b"[1,2,3]",
        b"[[1,2]]",
        b"[[]]",
        json.dumps([ROWS[0], ROWS[1][:11]]).encode(),  # ragged
        json.dumps([ROWS[0] + ["x"]]).encode(),  # 13 fields
        json.dumps([ROWS[0], [], ROWS[1]], separators=(",", ":")).encode(),
        json.dumps([ROWS[0][:1] + ["abc"] + ROWS[0][2:]], separators=(",", ":")).encode(),
        json.dumps([ROWS[0][:5] + [""] + ROWS[0][6:]], separators=(",", ":")).encode(),
        json.dumps([[None] * 12]).encode(),
        json.dumps([[1.5] + ROWS[0][1:]]).encode(),
        b"<html>502 Bad Gateway</html>",
    ],
)
def test_parse_rejects_malformed_bodies_with_a_retriable_error(body):
    with pytest.raises(MalformedPageError) as e:
        parse_klines_page(body, SYM, "1m")
    assert isinstance(e.value, MscaleError) and "\n" not in str(e.value)


# ---- paging -----------------------------------------------------------------------------------

def test_pages_every_row_once_in_order():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        c = client(fb, fc)
        pages = list(c.klines(SYM, "1m", T0, END))
        assert [p.num_rows for p in pages] == [1000, 1000, 500]
        assert pa.concat_tables(pages).equals(rows_table(ROWS, SYM, "1m"))
        assert fb.count("/api/v3/klines") == 3  # the short third page ends the iteration
        assert "limit=1000" in fb.requests[0] and f"startTime={T0}" in fb.requests[0]
        assert f"startTime={T0 + 1000 * 60_000}" in fb.requests[1]


def test_window_is_half_open_and_ends_at_end_ms():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        c = client(fb, fc, page_limit=100)
        start, end = ROWS[150][0], ROWS[420][0]
        assert fetch(c, start, end).equals(rows_table(ROWS[150:420], SYM, "1m"))
        assert f"endTime={end - 1}" in fb.requests[0]
        assert fb.count() == 3  # 150..250, 250..350, 350..420: stops at end_ms without a 4th request


def test_pacing_between_requests():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        c = client(fb, fc, pace_ms=250)
        fetch(c)
        assert fc.sleeps == [pytest.approx(0.25), pytest.approx(0.25)]


def test_still_open_candle_is_dropped():
    now_ms = ROWS[1800][0] + 25_000  # ROWS[1800] is open, at 25 s of its minute
    fc = FakeClock(now_ms / 1000)
    with FakeBinance({(SYM, "1m"): ROWS}, now_ms=now_ms) as fb:
        c = client(fb, fc)
        got = fetch(c)
        assert got.equals(rows_table(ROWS[:1800], SYM, "1m"))
        assert c.stats.open_dropped == 1
        assert fb.count("/api/v3/klines") == 2  # the open candle ends paging: nothing later exists


def test_open_candle_dropped_by_client_clock_even_if_server_serves_it_as_final():
    now_ms = ROWS[999][0] + 1  # the client's clock says ROWS[999] has not closed yet
    fc = FakeClock(now_ms / 1000)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:  # a server without notion of now
        got = fetch(client(fb, fc))
        assert got.equals(rows_table(ROWS[:999], SYM, "1m"))


@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_still_gives_exactly_the_fixture(fault):
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        if fault in ("overlap", "shuffle", "weight"):  # every page is served that way
            add_fault(fb, fault, times=3)
        else:  # the second page fails twice
            add_fault(fb, fault, times=2, path_contains=f"startTime={T0 + 1000 * 60_000}")
        c = client(fb, fc)
        got = fetch(c)
        assert got.equals(rows_table(ROWS, SYM, "1m"))
        assert fb.pending_faults == 0
        if fault in ("overlap", "shuffle", "weight"):
            assert c.stats.retries == 0
        else:
            assert c.stats.retries == 2


def test_overlap_rows_are_dropped_and_counted():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("overlap", rows=7, times=5)
        c = client(fb, fc)
        assert fetch(c).equals(rows_table(ROWS, SYM, "1m"))
        assert c.stats.overlap_dropped == 14  # pages 2 and 3 (page 1 has nothing before it)


def test_a_full_page_without_a_row_at_or_after_starttime_is_asked_again():
    """A server (or cache) answering with the full page before startTime: paging must not end there."""
    fc = FakeClock(NOW_S)
    page2 = f"startTime={T0 + 1000 * 60_000}&"
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("overlap", rows=1000, times=2, path_contains=page2)  # ROWS[0:1000] again, twice
        c = client(fb, fc)
        assert fetch(c).equals(rows_table(ROWS, SYM, "1m"))
        assert fb.count(page2) == 3 and c.stats.retries == 2 and len(fc.sleeps) == 2
        assert c.stats.overlap_dropped == 0  # the refused pages are asked again, not dropped as overlap


def test_a_full_page_without_a_row_at_or_after_starttime_for_good_is_a_download_error():
    fc = FakeClock(NOW_S)
    page2 = f"startTime={T0 + 1000 * 60_000}&"
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("overlap", rows=1000, times=100, path_contains=page2)
        c = client(fb, fc, max_retries=3)
        got = []
        with pytest.raises(DownloadError) as e:
            for page in c.klines(SYM, "1m", T0, END):
                got.append(page)
        msg = str(e.value)
        assert f"{fb.url}/api/v3/klines?symbol={SYM}" in msg and "no row at or after startTime" in msg
        assert "\n" not in msg and fb.count(page2) == 4
        assert pa.concat_tables(got).equals(rows_table(ROWS[:1000], SYM, "1m"))  # the first page only


def test_a_short_page_of_older_rows_ends_paging():
    """A short page says the server has nothing more, even when its rows are all before startTime."""
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("overlap", rows=5, path_contains=f"startTime={ROWS[-1][0] + 60_000}&")
        c = client(fb, fc)
        assert list(c.klines(SYM, "1m", ROWS[-1][0] + 60_000, END)) == []
        assert fb.count() == 1 and c.stats.overlap_dropped == 5 and c.stats.retries == 0


class ClockedSession(requests.Session):
    """Records the fake clock's time at every request."""

    def __init__(self, fc: FakeClock) -> None:
        super().__init__()
        self.fc = fc
        self.times: list[float] = []

    def get(self, url, **kw):
        self.times.append(self.fc.clock())
        return super().get(url, **kw)


@pytest.mark.parametrize("status,retry_after", [("418", 120), ("429", 7), ("418", 0.25)])
def test_retry_after_is_waited_in_full_before_any_next_request(status, retry_after):
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault(status, retry_after=retry_after, times=1, path_contains=f"startTime={T0 + 1000 * 60_000}")
        s = ClockedSession(fc)
        c = client(fb, fc, session=s, backoff_base_s=0.001)
        assert fetch(c).equals(rows_table(ROWS, SYM, "1m"))
        assert len(s.times) == 4  # page 1, page 2 refused, page 2 again, page 3
        assert s.times[2] - s.times[1] >= retry_after
        assert c.stats.rate_limited == 1


def test_418_with_a_ban_longer_than_allowed_stops_with_a_clear_error():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("418", retry_after=7200)
        c = client(fb, fc, max_wait_s=900)
        with pytest.raises(DownloadError, match="HTTP 418 and asks to wait 7200s"):
            fetch(c)
        assert fb.count() == 1 and fc.sleeps == []


def test_weight_header_near_the_limit_pauses_until_the_next_minute():
    minute = 1_699_999_980.0  # a multiple of 60
    fc = FakeClock(minute + 20)  # 20 s into the minute
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("weight", value=5000)  # 5000 >= 0.8 * 6000
        s = ClockedSession(fc)
        c = client(fb, fc, session=s)
        assert fetch(c).equals(rows_table(ROWS, SYM, "1m"))
        assert c.stats.weight_waits == 1
        assert s.times[1] >= minute + 60  # the second request waited for the next minute
        assert max(fc.sleeps) >= 40


def test_weight_below_threshold_does_not_pause():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.used_weight = 4000
        c = client(fb, fc)
        fetch(c)
        assert c.stats.weight_waits == 0 and fc.sleeps == []


def test_backoff_is_exponential_with_full_jitter_and_capped():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("503", times=6)
        c = client(fb, fc, backoff_base_s=1.0, backoff_max_s=8.0, max_retries=6)
        assert fetch(c).equals(rows_table(ROWS, SYM, "1m"))
        assert len(fc.sleeps) == 6
        for attempt, s in enumerate(fc.sleeps):
            assert 0 <= s <= min(8.0, 2**attempt)


def test_gives_up_after_max_retries_naming_the_url():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        fb.add_fault("500", times=100)
        c = client(fb, fc, max_retries=3)
        with pytest.raises(DownloadError) as e:
            fetch(c)
        assert fb.count() == 4
        msg = str(e.value)
        assert f"{fb.url}/api/v3/klines?symbol={SYM}" in msg and "HTTP 500" in msg and "\n" not in msg


def test_unknown_symbol_raises_at_once_naming_it():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        c = client(fb, fc)
        with pytest.raises(UnknownSymbolError) as e:
            fetch(c, symbol="NOPEUSDT")
        assert "NOPEUSDT" in str(e.value) and "\n" not in str(e.value)
        assert fb.count() == 1  # not retried


def test_other_rejections_are_not_retried():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        c = client(fb, fc)
        with pytest.raises(DownloadError, match="-1120"):
            c.page(SYM, "1m", {"symbol": SYM, "interval": "7m", "startTime": T0})
        assert fb.count() == 1


def test_default_hosts():
    from mscale.config import DEFAULT_BASE_URL, IngestSettings
    from mscale.ingest.rest import FUTURES_BASE_URL

    assert DEFAULT_BASE_URL == "https://data-api.binance.vision"  # the public market-data host
    assert RestClient().base_url == DEFAULT_BASE_URL
    assert RestClient.from_settings(IngestSettings()).base_url == DEFAULT_BASE_URL
    um = RestClient.from_settings(IngestSettings(), market="um")
    assert um.base_url == FUTURES_BASE_URL == "https://fapi.binance.com" and um.klines_path == "/fapi/v1/klines"
    for spot_host in ("https://api.binance.com", "https://api.binance.com/", "https://data-api.binance.vision/"):
        assert RestClient.from_settings(IngestSettings(base_url=spot_host), market="um").base_url == FUTURES_BASE_URL
        assert RestClient.from_settings(IngestSettings(base_url=spot_host)).base_url == spot_host.rstrip("/")
    own = RestClient.from_settings(IngestSettings(base_url="http://127.0.0.1:9"), market="um")
    assert own.base_url == "http://127.0.0.1:9" and own.klines_path == "/fapi/v1/klines"


def test_futures_endpoint():
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): ROWS}) as fb:
        from mscale.config import IngestSettings

        c = RestClient.from_settings(IngestSettings(base_url=fb.url, pace_ms=0), market="um", sleep=fc.sleep,
                                     clock=fc.clock)
        assert fetch(c).equals(rows_table(ROWS, SYM, "1m"))
        assert all(r.startswith("/fapi/v1/klines") for r in fb.requests)


fault_lists = st.lists(
    st.tuples(st.sampled_from(FAULTS), st.integers(0, 6), st.integers(1, 2)),  # (fault, page, times)
    max_size=8,
)


@given(faults=fault_lists, page_limit=st.sampled_from([100, 333, 1000]))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_fault_sequences_give_the_same_rows(faults, page_limit):
    rows = ROWS[:1500]
    fc = FakeClock(NOW_S)
    with FakeBinance({(SYM, "1m"): rows}) as fb:
        for fault, page, times in faults:
            kw = {"retry_after": 2} if fault in ("429", "418") else {}
            fb.add_fault(fault, times=times, path_contains=f"startTime={T0 + page * page_limit * 60_000}&", delay=1,
                         **kw)
        c = client(fb, fc, page_limit=page_limit, timeout_s=0.1, max_retries=20)
        got = fetch(c)
        assert got.equals(rows_table(rows, SYM, "1m"))
