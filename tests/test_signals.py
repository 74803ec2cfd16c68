"""No tracebacks from the command line: a closed pipe exits quietly; Ctrl-C says "interrupted;
nothing partial was written", exits 130, and it is true (a real SIGINT to a real `mscale ingest`
and `mscale features`, then every data shard and the feature cache compared by hash); any other
exception is one line, with the traceback under -v."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from fakebinance import FakeBinance, synthetic_rows

from conftest import REPO, make_config
from mscale import cli
from mscale.config import Config
from mscale.ingest.rest import RestClient
from mscale.ingest.runner import ingest

MIN = 60_000
INTERRUPTED = "interrupted; nothing partial was written"


def mscale_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mscale", *args]


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MSCALE_")}, "PYTHONUNBUFFERED": "1"}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) -> sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def interrupt_when(proc: subprocess.Popen, ready, what: str, *, delay: float = 0.0, timeout: float = 60) -> None:
    """Send SIGINT to `proc` `delay` seconds after `ready()` became true; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{what} ended before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{what} never got under way"
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, f"{what} ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)


# ---- a closed pipe --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_market(tmp_path_factory) -> Config:
    from mscale.demo import write_demo

    cfg = make_config(tmp_path_factory.mktemp("pipe"))
    write_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 1, 1), months=1, seed=5)
    import duckdb

    cfg.warehouse.parent.mkdir(parents=True, exist_ok=True)
    duckdb.connect(str(cfg.warehouse)).close()  # an (empty) warehouse for `mscale sql`
    return cfg


@pytest.mark.parametrize("args", [["report"], ["sql", "select range as n from range(50000)"]], ids=["report", "sql"])
def test_a_closed_pipe_exits_quietly(small_market, args):
    """The reader is gone before mscale writes a byte: the Python-docs way, no traceback, exit 1."""
    proc = subprocess.Popen(mscale_cmd(*args, "--data-dir", str(small_market.data_dir), "--warehouse",
                                       str(small_market.warehouse), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert err == "", err


def test_head_one_in_a_shell_pipeline(small_market):
    common = f"--data-dir {small_market.data_dir} --warehouse {small_market.warehouse} --quiet"
    for command in ("report", "sql 'select range as n from range(200000)' --max-rows 200000"):
        out = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m mscale {command} {common} | head -1"],
                             capture_output=True, text=True, timeout=120, env=env())
        assert out.stderr == "" and out.stdout.count("\n") == 1, (command, out.stderr)


# ---- unexpected exceptions -------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line(small_market, monkeypatch, capsys):
    import mscale.report

    def broken(*a, **kw):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(mscale.report, "build_report", broken)
    common = ["--data-dir", str(small_market.data_dir), "--warehouse", str(small_market.warehouse)]
    assert cli.main(["report", *common]) == 1
    assert capsys.readouterr().err == "error: RuntimeError: disk on fire (run with -v for the traceback)\n"
    assert cli.main(["report", *common, "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("disk on fire' in err
    assert err.splitlines()[-1] == "error: RuntimeError: disk on fire"


# ---- Ctrl-C in the middle of an ingest --------------------------------------------------------

JUL30 = 1_690_675_200_000  # 2023-07-30 00:00 UTC
AUG17 = 1_692_230_400_000  # 2023-08-17 00:00 UTC
ROWS = synthetic_rows(JUL30, 33 * 1440, seed=21)  # 2023-07-30 .. 2023-08-31, every minute


def _ingest(root: Path, url: str, start: date, end: date) -> None:
    cfg = Config(project_root=root, data_dir=root / "data", warehouse=root / "wh.duckdb", quiet=True)
    ingest(cfg, symbols=["BTCUSDT"], start=start, end=end, source="rest", rest=RestClient(url, pace_ms=0),
           progress=False)


def test_ctrl_c_mid_ingest_leaves_each_shard_as_before_or_as_after(tmp_path):
    """July gets finished (marked complete) before the interrupt, August is interrupted after a
    10,000-row batch was written into the shard it already had: July must be as after a complete
    run, August exactly as before it."""
    before_dir, run_dir, after_dir = tmp_path / "before", tmp_path / "run", tmp_path / "after"
    with FakeBinance({("BTCUSDT", "1m"): ROWS}) as fb:
        _ingest(before_dir, fb.url, date(2023, 7, 30), date(2023, 8, 16))  # July 30-31 and August 1-16 stored
        shutil.copytree(before_dir, run_dir)
        shutil.copytree(before_dir, after_dir)
        args = ["--symbols", "BTCUSDT", "--start", "2023-07-01", "--end", "2023-08-31", "--source", "rest",
                "--base-url", fb.url, "--pace-ms", "0"]
        _ingest(after_dir, fb.url, date(2023, 7, 1), date(2023, 8, 31))  # the same command, uninterrupted
        before, after = snapshot(before_dir / "data"), snapshot(after_dir / "data")
        assert sorted(before) == sorted(after) and all(before[k] != after[k] for k in before)

        stall = f"startTime={AUG17 + 10 * 1000 * MIN}&"  # August's 11th page: the first batch is on disk
        fb.add_fault("slow", delay=60, path_contains=stall)
        fb.requests.clear()  # the uninterrupted run asked for that page too
        proc = subprocess.Popen(mscale_cmd("ingest", *args, "--data-dir", str(run_dir / "data")), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
        try:
            interrupt_when(proc, lambda: fb.count(stall) > 0, "ingest")
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in err, err
    got = snapshot(run_dir / "data")
    assert sorted(got) == sorted(before), "no file added or left behind"
    july = "minute/binance_BTCUSDT_1m_202307.parquet"
    august = "minute/binance_BTCUSDT_1m_202308.parquet"
    assert got[july] == after[july]  # finished before the interrupt
    assert got[august] == before[august]  # interrupted: as it was


# ---- Ctrl-C in the middle of a feature build --------------------------------------------------


def test_ctrl_c_mid_feature_build_leaves_the_cache_as_before(tmp_path):
    """`mscale features --full` drops the old cache and computes every block again: interrupted
    after the first block started, the cache and the shards must be exactly as before the run (a
    complete run gives the same bytes, checked at the end)."""
    from mscale.demo import write_demo
    from mscale.warehouse.build import materialise

    cfg = make_config(tmp_path, threads=1)
    write_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 1, 1), months=6, seed=3)
    materialise(cfg)
    before = snapshot(cfg.data_dir)
    assert any(k.startswith("derived/features/") for k in before)

    proc = subprocess.Popen(
        mscale_cmd("features", "--full", "--threads", "1", "--data-dir", str(cfg.data_dir), "--warehouse",
                   str(cfg.warehouse)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    lines: list[str] = []

    def started() -> bool:  # the build logs one line per block as the block starts
        line = proc.stderr.readline()
        lines.append(line)
        return "mscale.warehouse.build: features BTCUSDT" in line

    try:
        interrupt_when(proc, started, "mscale features", delay=random.uniform(0.1, 0.5))  # inside the first block
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in err, err
    assert snapshot(cfg.data_dir) == before

    materialise(cfg, full=True)  # the complete run: the same bytes
    assert snapshot(cfg.data_dir) == before


# ---- the same guarantees, in process (fast, and through every path) ----------------------------


class InterruptingSession:
    """A requests session that raises KeyboardInterrupt (as Ctrl-C would) on call number `at`."""

    def __init__(self, at: int) -> None:
        import requests

        self.session, self.at, self.calls = requests.Session(), at, 0

    def get(self, *a, **kw):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.session.get(*a, **kw)


def test_interrupted_hourly_ingest_puts_the_renamed_shard_back(tmp_path):
    """Hourly shards are renamed as they grow (..._20230801_20230810 -> ..._20230815): Ctrl-C
    after a batch was written brings back the old file under its old name."""
    hours = synthetic_rows(1_690_848_000_000, 20 * 24, interval="1h", seed=4)  # 2023-08-01 .. 08-20
    cfg = Config(project_root=tmp_path, data_dir=tmp_path / "data", warehouse=tmp_path / "wh.duckdb", quiet=True)
    with FakeBinance({("BTCUSDT", "1h"): hours}) as fb:
        def run(end: date, session=None) -> None:
            rest = RestClient(fb.url, pace_ms=0, page_limit=100, session=session)
            ingest(cfg, symbols=["BTCUSDT"], start=date(2023, 7, 20), end=end, interval="1h", source="rest",
                   rest=rest, progress=False, batch_rows=100)

        run(date(2023, 8, 10))
        before = snapshot(cfg.data_dir)
        assert "hourly/binance_BTCUSDT_1h_20230801_20230810.parquet" in before
        with pytest.raises(KeyboardInterrupt):
            run(date(2023, 8, 31), InterruptingSession(at=4))  # July (1), August pages 1 and 2 (written), 3
        assert snapshot(cfg.data_dir) == before
        run(date(2023, 8, 31))  # a re-run completes it
        assert "hourly/binance_BTCUSDT_1h_20230801_20230820.parquet" in snapshot(cfg.data_dir)


def test_an_interrupted_writing_command_puts_every_file_back(tmp_path, monkeypatch, capsys):
    """demo-data writes the minute shards, then the hourly ones: Ctrl-C in between restores the
    minute shards it had replaced and removes the ones it had added."""
    import mscale.demo

    data = tmp_path / "data"
    assert cli.main(["demo-data", "--symbols", "BTCUSDT", "--months", "1", "--seed", "1", "--data-dir", str(data),
                     "--quiet"]) == 0
    before = snapshot(data)
    real = mscale.demo.write_klines

    def write_then_interrupt(market_dir, interval, *a, **kw):
        if interval == "1h":
            raise KeyboardInterrupt
        return real(market_dir, interval, *a, **kw)

    monkeypatch.setattr(mscale.demo, "write_klines", write_then_interrupt)
    capsys.readouterr()
    code = cli.main(["demo-data", "--symbols", "BTCUSDT", "ETHUSDT", "--months", "2", "--seed", "2", "--data-dir",
                     str(data), "--quiet"])
    assert code == 130 and capsys.readouterr().err == INTERRUPTED + "\n"
    assert snapshot(data) == before
    assert not [p for p in data.rglob("*") if p.is_dir() and not any(p.iterdir())]  # no empty folders left


def test_undo_restores_replaced_removed_and_new_files(tmp_path):
    from mscale.interrupts import Undo, rollback_on_interrupt

    a, b = tmp_path / "x" / "a", tmp_path / "x" / "b"
    a.parent.mkdir()
    a.write_text("old a")
    b.write_text("old b")
    before = snapshot(tmp_path)
    with pytest.raises(KeyboardInterrupt), rollback_on_interrupt(tmp_path, ["x", "y"]):
        tmp = a.with_name(".a.tmp")
        tmp.write_text("new a")
        tmp.replace(a)  # replaced atomically, as the store does
        b.unlink()
        (tmp_path / "x" / "c").write_text("new")
        (tmp_path / "y" / "deep").mkdir(parents=True)
        (tmp_path / "y" / "deep" / "d").write_text("new")
        raise KeyboardInterrupt
    assert snapshot(tmp_path) == before and not (tmp_path / "y").exists()
    with rollback_on_interrupt(tmp_path, ["x"]):  # no interrupt: the changes stay, no links left
        a.write_text("kept")
    assert a.read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    undo = Undo(lambda: [a], tmp_path)
    undo.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_an_error_the_interrupt_caused_counts_as_the_interrupt(tmp_path, monkeypatch, capsys):
    """A library that swallowed the KeyboardInterrupt (pyarrow importing pandas lazily) may fail
    later with another error (a half-imported module): still "interrupted", exit 130, files put back."""
    import mscale.demo
    import mscale.interrupts

    data = tmp_path / "data"
    real = mscale.demo.write_klines

    def swallowed_then_broken(market_dir, interval, *a, **kw):
        if interval == "1h":
            monkeypatch.setattr(mscale.interrupts, "_requested", True)  # Ctrl-C arrived, its exception was lost
            raise AttributeError("partially initialized module 'pandas' has no attribute 'x'")
        return real(market_dir, interval, *a, **kw)

    monkeypatch.setattr(mscale.demo, "write_klines", swallowed_then_broken)
    code = cli.main(["demo-data", "--symbols", "BTCUSDT", "--months", "1", "--data-dir", str(data), "--quiet"])
    assert code == 130 and capsys.readouterr().err == INTERRUPTED + "\n"
    assert not data.exists() or snapshot(data) == {}  # nothing of the interrupted market is left
