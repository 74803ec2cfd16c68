"""Commands say what happened: no-ops, missing minute data, the demo-data table, --version, --help,
option help with units, what each command wrote and the next step, and files written with the
user's umask."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import stat
from datetime import date

import pyarrow as pa
import pytest

from conftest import make_config
from mscale import __version__
from mscale.cli import build_parser, main


def _args(cfg) -> list[str]:
    return ["--data-dir", str(cfg.data_dir), "--warehouse", str(cfg.warehouse), "--quiet"]


@pytest.fixture
def umask():
    """Set a umask for one test (files must follow it, not 0600); restored afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- features: no-op, missing minute data, what it wrote ----------------------------------------


def test_a_build_with_nothing_to_recompute_says_so(demo_market, tmp_path, capsys):
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    assert main(["features", *_args(cfg)]) == 0
    first = capsys.readouterr().out
    assert "nothing changed" not in first and "computed" in first
    assert str(cfg.warehouse) in first  # what it wrote ...
    assert "next: mscale sql" in first and "mscale train" in first  # ... and the next step
    assert main(["features", *_args(cfg)]) == 0
    second = capsys.readouterr().out
    assert "nothing changed since the last build" in second
    assert second.rstrip().splitlines()[-1].startswith("next: ")


def _hourly_only(demo_market, cfg, keep_minutes: tuple[str, ...] = ()) -> None:
    shutil.copytree(demo_market.data_dir / "hourly", cfg.data_dir / "hourly")
    (cfg.data_dir / "minute").mkdir()
    for symbol in keep_minutes:
        for shard in (demo_market.data_dir / "minute").glob(f"binance_{symbol}_1m_*.parquet"):
            shutil.copy(shard, cfg.data_dir / "minute" / shard.name)


def test_a_symbol_without_minute_data_is_named_in_a_warning(demo_market, tmp_path, capsys, caplog):
    cfg = make_config(tmp_path)
    _hourly_only(demo_market, cfg, keep_minutes=("BTCUSDT",))
    with caplog.at_level(logging.WARNING):
        assert main(["features", *_args(cfg)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "ETHUSDT" in warnings[0] and "BTCUSDT" not in warnings[0]
    assert "minute" in warnings[0] and "NULL" in warnings[0]


def test_hourly_only_data_names_every_symbol(demo_market, tmp_path, capsys, caplog):
    cfg = make_config(tmp_path)
    _hourly_only(demo_market, cfg)
    with caplog.at_level(logging.WARNING):
        assert main(["features", *_args(cfg)]) == 0
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "BTCUSDT" in text and "ETHUSDT" in text and "NULL" in text


# --- demo-data ----------------------------------------------------------------------------------


def test_demo_data_prints_a_short_table(tmp_path, capsys):
    cfg = make_config(tmp_path)
    assert main(["demo-data", "--symbols", "BTCUSDT", "ETHUSDT", "--months", "1", *_args(cfg)]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "'" not in out  # not a Python dict
    lines = out.rstrip().splitlines()
    assert len(lines) <= 12
    header = next(line for line in lines if line.startswith("symbol"))
    assert "minute bars" in header and "hourly bars" in header
    rows = [line for line in lines if line.startswith(("BTCUSDT", "ETHUSDT"))]
    assert len(rows) == 2 and all(re.search(r"\d{2},\d{3}", row) for row in rows)  # thousands separators
    assert "2024-01-01" in out and "2024-01-31" in out  # ISO dates, the last day inclusive
    assert str(cfg.data_dir) in out
    assert lines[-1].startswith("next: mscale")


# --- --version, --help, option help -------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"mscale {__version__}")


def test_top_level_help_describes_the_product(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "Config" not in out and "Parses flags" not in out  # not the module's internals
    for word in ("Binance", "DuckDB", "walk-forward", "mscale demo-data", "mscale features", "mscale sql", "--version"):
        assert word in out, word


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


UNITS = re.compile(
    r"\b(ms|s|seconds?|hours?|days?|months?|rows?|bars?|bps|threads?|folds?|cuts?|trades?|entries|"
    r"fraction|probability|share|seed|per day|[0-9]+)\b"
)


def test_every_option_has_help_and_numbers_say_their_unit():
    missing, unitless = [], []
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {action.option_strings[-1]}"
            if not action.help or action.help == argparse.SUPPRESS or len(action.help) < 8:
                missing.append(flag)
            elif action.type in (int, float) and not UNITS.search(action.help):
                unitless.append(f"{flag}: {action.help}")
        for action in sub._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                if not action.help:
                    missing.append(f"{name} {action.dest}")
    assert not missing, missing
    assert not unitless, unitless


# --- files follow the umask -----------------------------------------------------------------------


def test_shards_cache_and_reports_follow_the_umask(tmp_path, umask, capsys):
    umask(0o027)
    cfg = make_config(tmp_path)
    assert main(["demo-data", "--symbols", "BTCUSDT", "--months", "1", *_args(cfg)]) == 0
    assert main(["report", *_args(cfg)]) == 0
    assert main(["features", *_args(cfg)]) == 0
    written = [*cfg.data_dir.rglob("*.parquet"), *cfg.data_dir.rglob("*.json"), *cfg.data_dir.rglob("*.csv")]
    assert len(written) >= 6
    assert {p.name: _mode(p) for p in written} == {p.name: 0o640 for p in written}
    assert _mode(cfg.warehouse) == 0o640


def test_run_files_follow_the_umask(tmp_path, umask):
    from mscale.research.runs import RunFolder

    umask(0o002)
    run = RunFolder(tmp_path / "_exp", "20240101T000000Z-abcdef")
    run.json("metrics.json", {"a": 1})
    run.parquet("predictions.parquet", pa.table({"x": [1]}))
    run.csv("folds.csv", pa.table({"x": [1]}))
    run.text("charts/x.svg", "<svg/>")
    final = run.publish()
    files = [p for p in final.rglob("*") if p.is_file()]
    assert len(files) == 4 and all(_mode(p) == 0o664 for p in files), {p.name: oct(_mode(p)) for p in files}
    assert all(_mode(d) == 0o775 for d in [final, *[p for p in final.rglob("*") if p.is_dir()]])


def test_store_writes_follow_the_umask(tmp_path, umask):
    from mscale.store import write_atomic, write_text_atomic

    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        umask(mask)
        write_atomic(pa.table({"x": [1]}), tmp_path / f"t{mask}.parquet")
        write_text_atomic(tmp_path / f"t{mask}.json", "{}")
        assert _mode(tmp_path / f"t{mask}.parquet") == mode and _mode(tmp_path / f"t{mask}.json") == mode


def test_demo_data_dates_are_iso_in_the_summary(tmp_path):
    from mscale.demo import format_summary, write_demo

    cfg = make_config(tmp_path)
    text = format_summary(write_demo(cfg, symbols=("BTCUSDT",), start=date(2024, 2, 1), months=1, seed=3))
    assert "2024-02-01" in text and "2024-02-29" in text and "datetime" not in text


def test_hints_and_next_steps_keep_the_market():
    from mscale.config import with_market

    text = 'next: mscale sql "select 1" (mscale features --list), or mscale train; run `mscale resample-hourly` first'
    assert with_market(text, "spot") == text
    assert with_market(text, "um") == ('next: mscale sql --market um "select 1" (mscale features --market um --list), '
                                       "or mscale train --market um; run `mscale resample-hourly --market um` first")
    assert with_market("mscale report --market um", "um") == "mscale report --market um"  # never twice


def test_an_errors_hint_names_commands_for_the_market_in_use(tmp_path, capsys):
    """Hints are raised without knowing the market (here warehouse/audit.py's); the command line
    adds `--market um` to every mscale command they name."""
    cfg = make_config(tmp_path)
    assert main(["audit", "--market", "um", *_args(cfg)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "mscale demo-data --market um" in err
    assert not re.search(r"mscale (?:report|features|sql|train|backtest|audit|resample-hourly|import|ingest|demo-data)\b(?! --market um)", err), err


def test_report_of_a_symbol_without_data_keeps_the_saved_report(demo_market, tmp_path, capsys):
    cfg = make_config(tmp_path)
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    assert main(["report", *_args(cfg)]) == 0
    saved = (cfg.reports_dir / "ingestion_report.json").read_text()
    capsys.readouterr()
    assert main(["report", *_args(cfg), "--symbols", "XRPUSDT"]) != 0
    err = capsys.readouterr().err
    assert "no shards of XRPUSDT" in err and "left as it was" in err
    assert (cfg.reports_dir / "ingestion_report.json").read_text() == saved
