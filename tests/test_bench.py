"""The benchmark plumbing (not the figures): `mscale bench` says how long it will take, prints each
figure marked against its target (quick mode too), works in one folder (`--work-dir`, default
beside the data dir) and removes it unless `--keep`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_config
from mscale.bench import MARKER, Report, default_work_dir, run_bench
from mscale.errors import MscaleError


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCALE_")}
    return subprocess.run([sys.executable, "-m", "mscale", "bench", "ingest", "--quick", "--data-dir",
                           str(tmp_path / "data"), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)


def test_quick_ingest_bench_states_its_duration_marks_figures_and_cleans_up(tmp_path):
    work = tmp_path / "scratch" / "bench"
    out = bench(tmp_path, "--work-dir", str(work))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.match(r"mscale bench ingest --quick: expected to take about \d+ s on 2 cores", lines[0]), lines[0]
    assert str(work) in lines[1] and "removed at the end" in lines[1]
    figures = [line for line in lines if "target " in line]
    assert len(figures) == 3 and all(line.rstrip().endswith((" ok", " MISSED")) for line in figures), out.stdout
    assert any(line.startswith("  .. ") for line in lines)  # progress lines before the figures
    assert lines[-1].startswith("3 figures against a target: ")
    assert not work.exists() and work.parent.exists()  # the work folder is gone, its parent stays


def test_keep_keeps_the_work_folder(tmp_path):
    work = tmp_path / "bench"
    out = bench(tmp_path, "--work-dir", str(work), "--keep")
    assert out.returncode == 0, out.stderr
    assert f"kept {work}" in out.stdout
    assert (work / MARKER).exists() and (work / "ingest").is_dir()


def test_a_folder_of_other_files_is_refused_and_left_alone(tmp_path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "thesis.tex").write_text("precious")
    with pytest.raises(MscaleError, match="holds files mscale bench did not make"):
        run_bench(make_config(tmp_path), "ingest", quick=True, work_dir=work)
    assert (work / "thesis.tex").read_text() == "precious" and not (work / MARKER).exists()


def test_the_default_work_folder_is_beside_the_data_dir_not_in_tmp(tmp_path):
    cfg = make_config(tmp_path)
    assert default_work_dir(cfg) == cfg.data_dir.parent / "bench-work"


def test_figures_are_marked_and_the_summary_names_the_misses(capsys):
    from mscale.bench_features import incremental_target, mark_rows

    report = Report()
    row = {"symbols": 1, "months": 4, "full_over_scan": 7.5, "speedup_vs_pandas": 0.5, "core_vs_pandas": 3.5,
           "incremental_pct": 30.0, "total_over_build": 1.2, "rows_per_s": 1e6, "peak_rss_mb": 300}
    mark_rows([row], report)
    marks = {r["benchmark"].split(",")[0]: r["ok"] for r in report.rows}
    assert marks == {"full build / DuckDB scan floor": False,
                     "core minute columns vs pandas (same template": True,
                     "whole build (every column) vs pandas core columns": None,
                     "mscale features (build + views + catalog + checks) / build": True,
                     "incremental refresh (one more month) / full build": 30.0 <= incremental_target(4),
                     "full build peak RSS": True}
    assert incremental_target(24) == 10.0
    assert report.summary().startswith("5 figures against a target: 4 ok, 1 MISSED (full build / DuckDB scan floor")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].rstrip().endswith("MISSED") and printed[-1].rstrip().endswith("ok")


def test_features_profile_names_every_step_with_shares_that_add_up(tmp_path):
    from mscale.bench_features import PROFILE_LAYERS

    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCALE_")}
    work = tmp_path / "bench"
    out = subprocess.run([sys.executable, "-m", "mscale", "bench", "features", "--profile", "--quick", "--data-dir",
                          str(tmp_path / "data"), "--work-dir", str(work)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("where a block's time goes:"))
    steps = lines[header + 1:header + 1 + len(PROFILE_LAYERS)]
    assert [line.split("  ")[1].strip() for line in steps] == list(PROFILE_LAYERS)
    shares = [float(re.search(r"s\s+([\d.]+)%", line).group(1)) for line in steps]
    seconds = [float(re.search(r"([\d.]+)s\s+[\d.]+%", line).group(1)) for line in steps]
    assert abs(sum(shares) - 100) < 0.5
    assert seconds[0] > 0 and seconds[5] > 0 and seconds[-1] > 0  # reading, the hourly block and the write took time
    assert not work.exists()


def test_profile_is_for_the_feature_build_only(tmp_path):
    with pytest.raises(MscaleError, match="mscale bench features --profile"):
        run_bench(make_config(tmp_path), "ingest", quick=True, work_dir=tmp_path / "w", profile=True)


def test_profile_charges_each_operator_of_a_query_to_its_step_and_all_of_its_time(tmp_path):
    """`_charge_profile` on a real DuckDB profile of a minute-bucket-shaped query: the scan, the lag
    window, the GROUP BY and the trailing-week window each land in their own step, nothing in the
    block's steps, and the steps add up to the query's whole latency."""
    import json

    import duckdb

    from mscale import bench_features as bf

    con = duckdb.connect()
    con.execute("set threads = 1")
    shard = tmp_path / "minutes.parquet"
    con.execute(f"""copy (select 'BTCUSDT' as symbol, i as open_time, 100 + sin(i / 50) as close, 1 + i % 7 as volume
                    from range(200000) r(i)) to '{shard}'""")
    query = f"""
        with minute_returns as (
            select *, ln(close / lag(close) over (partition by symbol order by open_time)) as r
            from read_parquet('{shard}')
        ),
        hour_buckets as (
            select symbol, open_time // 60 as hour_no, sum(r) as m_ret_60m, count(volume) as n_traded
            from minute_returns group by all
        )
        select *, sum(n_traded) over (partition by symbol order by hour_no range between 168 preceding and 1 preceding) as week_n
        from hour_buckets
    """
    profile = tmp_path / "profile.json"
    con.execute("pragma enable_profiling = 'json'")
    con.execute("set profiling_mode = 'detailed'")
    con.execute(f"pragma profiling_output = '{profile}'")
    con.execute(query).fetchall()
    con.execute("pragma disable_profiling")

    seconds = [0.0] * len(bf.PROFILE_LAYERS)
    bf._charge_profile(profile, True, "ROWS BETWEEN 168 PRECEDING AND 1 PRECEDING", seconds)
    for step in (bf.READ, bf.LAG, bf.GROUP_BY, bf.WEEK, bf.PLANNING):
        assert seconds[step] > 0, bf.PROFILE_LAYERS[step]
    for step in (bf.LONG_MINUTE, bf.HOURLY, bf.Z_SCORES, bf.MART, bf.WRITE):
        assert seconds[step] == 0, bf.PROFILE_LAYERS[step]
    assert sum(seconds) == pytest.approx(json.loads(profile.read_text())["latency"], rel=1e-9)

    # the block's hourly bars lag on the previous bar too: on the block's side that is the hourly step
    con.execute("pragma enable_profiling = 'json'")
    con.execute("set profiling_mode = 'detailed'")
    con.execute(f"pragma profiling_output = '{profile}'")
    con.execute(f"select *, lag(close) over (partition by symbol order by open_time) as prev_close from read_parquet('{shard}')").fetchall()
    con.execute("pragma disable_profiling")
    block = [0.0] * len(bf.PROFILE_LAYERS)
    bf._charge_profile(profile, False, "ROWS BETWEEN 168 PRECEDING AND 1 PRECEDING", block)
    assert block[bf.HOURLY] > 0 and block[bf.LAG] == 0 and block[bf.READ] > 0

    # a task stages its rows into a table (`stage_rows`): the insert is charged to the split and write
    con.execute("pragma enable_profiling = 'json'")
    con.execute("set profiling_mode = 'detailed'")
    con.execute(f"pragma profiling_output = '{profile}'")
    con.execute(f"create table task_rows as {query}")
    con.execute("pragma disable_profiling")
    staged = [0.0] * len(bf.PROFILE_LAYERS)
    bf._charge_profile(profile, True, "ROWS BETWEEN 168 PRECEDING AND 1 PRECEDING", staged)
    assert staged[bf.WRITE] > 0 and staged[bf.LAG] > 0 and staged[bf.GROUP_BY] > 0
    assert sum(staged) == pytest.approx(json.loads(profile.read_text())["latency"], rel=1e-9)


def test_the_core_only_query_gives_the_full_templates_core_columns(demo_market):
    """The bench's core-only mode stops feat_min__buckets at its hour buckets (no trailing-week
    volume reference, which no core column reads): the core columns must be the same bits as
    the whole template's."""
    from mscale.bench_features import CORE_COLUMNS, core_query
    from mscale.store import list_shards
    from mscale.warehouse import render as r
    from mscale.warehouse.executors import run_queries

    files = [s.path for s in list_shards(demo_market.market_dir, "1m")]
    macros = (demo_market.sql_dir / r.MACROS_FILE).read_text()
    core, whole = run_queries(macros, [core_query(demo_market, files), core_query(demo_market, files, core_only=False)])
    assert core.num_rows > 4000 and core.column_names == ["symbol", "ts", *CORE_COLUMNS]
    assert core.equals(whole)
    # and it does not compute the trailing week's window
    plans = []
    for core_only in (True, False):
        (plan,) = run_queries(macros, ["explain " + core_query(demo_market, files, core_only=core_only)])
        plans.append(" ".join(plan.column("explain_value").to_pylist()).upper())
    assert "PRECEDING" not in plans[0] and "PRECEDING" in plans[1]
    assert plans[0].count("WINDOW") == plans[1].count("WINDOW") - 1  # the minutes' lag is the one left
