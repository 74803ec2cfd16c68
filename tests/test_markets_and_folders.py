"""Markets kept apart (`--market um` end to end), the warehouse lock taken before the work, an audit
that cannot be vacuous, and a research folder of its own with the SQL shipped in the package (issue 9:
deliverables 3, 8, 9 and 11)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from conftest import REAL_DATA, REPO, make_config, requires_real_data
from mscale.config import load_config
from mscale.errors import MscaleError

FUTURES = REAL_DATA / "binance-archive" / "data" / "futures" / "um" / "monthly" / "klines"
EXTRA_FEATURE = """\
-- grain: (symbol, ts)
-- reads: features_hourly
-- purpose: a researcher's own feature, kept in the research folder beside mscale.toml
select
    symbol,
    ts,
    rsi_14 / 100 as my_rsi_share,
from features_hourly
"""


def mscale(*args: str, cwd: Path, env: dict | None = None, exe: list[str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MSCALE_DATA_DIR", "MSCALE_WAREHOUSE")}
    return subprocess.run([*(exe or [sys.executable, "-m", "mscale"]), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**clean, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("INFO", "WARNING", "DEBUG"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def research_folder(tmp_path: Path, extra: str | None = None) -> Path:
    """An empty folder holding only `mscale.toml` (and, if given, one extra feature file)."""
    folder = tmp_path / "research"
    folder.mkdir()
    (folder / "mscale.toml").write_text("# a research folder of its own\n")
    if extra:
        (folder / "features" / "extra").mkdir(parents=True)
        (folder / "features" / "extra" / "feat_extra__mine.sql").write_text(extra)
    return folder


def parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet")) if folder.exists() else []


# --- 3. --market on every command, futures kept apart --------------------------------------------


@pytest.mark.parametrize("command", ["features", "sql", "audit", "report", "resample-hourly", "train", "backtest",
                                     "demo-data", "ingest", "import"])
def test_every_market_command_takes_market(command):
    from mscale.cli import build_parser

    required = {"sql": ["select 1"], "backtest": ["--run", "x"], "ingest": ["--symbols", "BTCUSDT", "--start", "2024-01-01"],
                "import": ["x.zip"]}
    args = build_parser().parse_args([command, *required.get(command, []), "--market", "um"])
    assert args.market == "um"


def test_um_has_its_own_default_warehouse(tmp_path, monkeypatch):
    monkeypatch.delenv("MSCALE_WAREHOUSE", raising=False)
    root = research_folder(tmp_path)
    assert load_config(project_root=root).warehouse == root / "warehouse" / "mscale.duckdb"
    um = load_config(project_root=root, market="um")
    assert um.warehouse == root / "warehouse" / "mscale_um.duckdb"
    assert um.derived_dir == root / "data" / "um" / "derived"
    # an explicit value wins, wherever it comes from
    assert load_config(project_root=root, market="um", warehouse=tmp_path / "x.duckdb").warehouse == tmp_path / "x.duckdb"
    monkeypatch.setenv("MSCALE_WAREHOUSE", str(tmp_path / "env.duckdb"))
    assert load_config(project_root=root, market="um").warehouse == tmp_path / "env.duckdb"
    monkeypatch.delenv("MSCALE_WAREHOUSE")
    (root / "mscale.toml").write_text('market = "um"\n')
    assert load_config(project_root=root).warehouse == root / "warehouse" / "mscale_um.duckdb"
    (root / "mscale.toml").write_text('market = "um"\nwarehouse = "w/futures.duckdb"\n')
    assert load_config(project_root=root).warehouse == root / "w" / "futures.duckdb"


def test_a_warehouse_holds_one_market(tmp_path):
    from mscale.demo import write_demo
    from mscale.warehouse.build import build_features

    spot = make_config(tmp_path)
    um = load_config(data_dir=tmp_path / "data", warehouse=spot.warehouse, project_root=REPO, market="um")
    for c in (spot, um):
        write_demo(c, symbols=("BTCUSDT",), start=date(2024, 1, 1), months=1, seed=3)
    build_features(spot)
    with pytest.raises(MscaleError, match="spot market.*--warehouse"):
        build_features(um)
    assert not parquet_files(um.derived_dir)  # refused before computing anything
    # reading the spot warehouse as um's is refused too: a query, the catalog, training
    from mscale.research.pipeline import load_plan
    from mscale.warehouse.catalog import read_catalog
    from mscale.warehouse.sqlcmd import run_sql

    for read in (lambda: run_sql(um, "select 1", stdout=io.StringIO()), lambda: read_catalog(um), lambda: load_plan(um)):
        with pytest.raises(MscaleError, match="spot market.*--warehouse"):
            read()


@requires_real_data()
@pytest.mark.real
def test_market_um_through_features_sql_audit_on_real_futures(tmp_path):
    folder = research_folder(tmp_path)
    zips = sorted(FUTURES.glob("*/1m/*.zip"))
    assert len(zips) == 6
    imported = mscale("import", *map(str, zips), "--market", "um", "-q", cwd=folder)
    assert imported.returncode == 0, imported.stderr
    resampled = mscale("resample-hourly", "--market", "um", "-q", cwd=folder)
    assert resampled.returncode == 0, resampled.stderr
    built = mscale("features", "--market", "um", "-q", cwd=folder)
    assert built.returncode == 0, built.stderr

    # futures data, cache and warehouse, and nothing of spot's
    assert (folder / "warehouse" / "mscale_um.duckdb").is_file()
    assert not (folder / "warehouse" / "mscale.duckdb").exists()
    assert len(parquet_files(folder / "data" / "um" / "derived" / "features")) == 6  # 2 symbols x 3 months
    assert not (folder / "data" / "minute").exists() and not (folder / "data" / "derived").exists()
    con = duckdb.connect(str(folder / "warehouse" / "mscale_um.duckdb"), read_only=True)
    try:
        counts = dict(con.execute("select symbol, count(*) from features group by symbol").fetchall())
        minutes = con.execute("select count(*) from klines_1m").fetchone()[0]
    finally:
        con.close()
    assert counts == {"FILUSDT": 92 * 24, "NEARUSDT": 92 * 24}  # Aug-Oct 2023, no gaps
    assert minutes == 2 * (44_640 + 43_200 + 44_640)

    queried = mscale("sql", "--market", "um", "select count(distinct symbol) as n_symbols from features", cwd=folder)
    assert queried.returncode == 0, queried.stderr
    assert "n_symbols" in queried.stdout and "2" in queried.stdout
    assert "no warehouse" in one_line_error(mscale("sql", "select 1", cwd=folder))  # spot's was never built

    audited = mscale("audit", "--market", "um", "--cuts", "1", "--symbols", "NEARUSDT", "-q", cwd=folder)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "NEARUSDT" in audited.stdout and "1 cut x" in audited.stdout and "0 leaking" in audited.stdout


# --- 8. the lock is taken before the work ---------------------------------------------------------


def test_features_fails_fast_when_the_warehouse_is_open_in_a_shell(tmp_path):
    data, wh = tmp_path / "data", tmp_path / "warehouse" / "mscale.duckdb"
    common = ["--data-dir", str(data), "--warehouse", str(wh)]
    assert mscale("demo-data", *common, "--symbols", "BTCUSDT", "--months", "2", "-q", cwd=tmp_path).returncode == 0
    wh.parent.mkdir()
    shell = subprocess.Popen([str(Path(sys.executable).parent / "duckdb"), str(wh)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        shell.stdin.write(".print ready\n")
        shell.stdin.flush()
        assert shell.stdout.readline().strip() == "ready"  # the shell holds the file read-write
        started = time.perf_counter()
        result = mscale("features", *common, cwd=tmp_path)
        elapsed = time.perf_counter() - started
    finally:
        shell.stdin.close()
        shell.wait(timeout=30)
    assert "lock" in one_line_error(result) and str(wh) in result.stderr
    assert not parquet_files(data / "derived")  # nothing computed
    assert "features BTCUSDT" not in result.stderr
    assert elapsed < 10


def test_readme_shows_a_readonly_shell():
    readme = (REPO / "README.md").read_text()
    assert "-readonly" in readme


# --- 9. an audit that cannot fail is an error -------------------------------------------------------


@pytest.mark.parametrize("cuts", ["0", "-2"])
def test_audit_refuses_fewer_than_one_cut(tmp_path, cuts):
    result = mscale("audit", "--cuts", cuts, "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert "--cuts" in one_line_error(result)


def test_audit_states_what_it_compared(demo_market):
    from mscale.warehouse.audit import audit, format_audit

    with pytest.raises(MscaleError, match="cuts"):
        audit(demo_market, cuts=0)
    result = audit(demo_market, cuts=2, symbols=["BTCUSDT"], seed=1)
    n_columns = len(result.columns)
    assert n_columns > 100 and result.comparisons == 2 * n_columns and result.rows_compared > 0
    assert f"2 cuts x {n_columns} columns = {2 * n_columns} comparisons" in format_audit(result)


# --- 11. a research folder of its own ---------------------------------------------------------------


def test_sql_dir_is_the_checkouts_from_anywhere(tmp_path):
    assert load_config(project_root=REPO).sql_dir == REPO / "sql"
    assert load_config(project_root=research_folder(tmp_path)).sql_dir == REPO / "sql"  # editable install


def test_research_folder_extra_feature_is_a_column(tmp_path):
    from mscale.demo import write_demo
    from mscale.warehouse.audit import audit
    from mscale.warehouse.build import build_features, materialise

    folder = research_folder(tmp_path, EXTRA_FEATURE)
    cfg = load_config(project_root=folder, quiet=True)
    write_demo(cfg, symbols=("BTCUSDT",), start=date(2024, 1, 1), months=2, seed=2)
    build_features(cfg)
    con = duckdb.connect(str(folder / "warehouse" / "mscale.duckdb"), read_only=True)
    try:
        share, rsi = con.execute("select avg(my_rsi_share), avg(rsi_14) from features").fetchone()
    finally:
        con.close()
    assert share == pytest.approx(rsi / 100)
    assert (folder / "data" / "derived" / "features").is_dir()
    # editing the folder's feature recomputes the cache, like editing the project's own
    (folder / "features" / "extra" / "feat_extra__mine.sql").write_text(EXTRA_FEATURE.replace("/ 100", "/ 50"))
    assert materialise(cfg).months_computed == 2
    assert ("feat_extra__mine", "my_rsi_share") in audit(cfg, cuts=1).columns  # and the audit sees it


def test_research_folder_extra_feature_may_not_shadow_a_project_view(tmp_path):
    from mscale.demo import write_demo
    from mscale.warehouse.build import build_features

    folder = research_folder(tmp_path)
    (folder / "features" / "extra").mkdir(parents=True)
    (folder / "features" / "extra" / "feat_cross.sql").write_text(EXTRA_FEATURE)
    cfg = load_config(project_root=folder, quiet=True)
    write_demo(cfg, symbols=("BTCUSDT",), start=date(2024, 1, 1), months=1, seed=2)
    with pytest.raises(MscaleError, match="feat_cross"):
        build_features(cfg)


def _copy_checkout(dest: Path) -> Path:
    """The checkout as a user would clone it: no virtualenv, data, warehouse, runs, build output or caches."""
    top = {".git", ".venv", "data", "warehouse", "_exp", "build", "mscale.toml"}
    anywhere = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.nbi", "*.nbc")

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(anywhere(folder, names)) | (top & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def test_non_editable_install_builds_features_in_an_empty_research_folder(tmp_path):
    """`pip install <checkout>` (not -e) into a fresh venv, then the demo and features in a folder
    holding only mscale.toml. The venv borrows pip and the project venv's third-party packages
    through a .pth line (that folder's own .pth files, the editable mscale among them, are not
    processed), so only the build backend comes from the package index, as in any `pip install`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": "", "VIRTUAL_ENV": str(venv)}
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(_copy_checkout(tmp_path / "checkout"))],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import mscale; print(mscale.__file__)"],
                           capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(purelib), where.stdout + where.stderr
    assert (package / "_sql" / "sources").is_dir() and (package / "_doc" / "features_multiscale.md").is_file()

    folder = research_folder(tmp_path, EXTRA_FEATURE)
    exe = [str(venv / "bin" / "mscale")]
    demo = mscale("demo-data", "--months", "1", "--symbols", "BTCUSDT", "-q", cwd=folder, env=env, exe=exe)
    assert demo.returncode == 0, demo.stderr
    built = mscale("features", "-q", cwd=folder, env=env, exe=exe)
    assert built.returncode == 0, built.stderr
    assert parquet_files(folder / "data" / "minute") and parquet_files(folder / "data" / "derived")
    con = duckdb.connect(str(folder / "warehouse" / "mscale.duckdb"), read_only=True)
    try:
        rows, shares = con.execute("select count(*), count(my_rsi_share) from features").fetchone()
        views = {v for (v,) in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    finally:
        con.close()
    assert rows > 700 and 0 < shares < rows  # January 2024 less the demo's outage hours; RSI needs its warm-up
    assert {"klines_1m", "features", "labels"} <= views
