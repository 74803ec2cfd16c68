"""`mscale sql` as a research tool (counts, --max-rows, formats, --out, several statements) and the
`feature_catalog` view with `mscale features --list`."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import REPO, make_config
from mscale.cli import main
from mscale.config import load_config
from mscale.warehouse.build import build_features


@pytest.fixture(scope="module")
def built(demo_market, tmp_path_factory):
    """The demo market with its warehouse built (tests only read it)."""
    cfg = make_config(tmp_path_factory.mktemp("sql"))
    shutil.copytree(demo_market.data_dir, cfg.data_dir)
    build_features(cfg)
    return cfg


def _args(cfg) -> list[str]:
    return ["--data-dir", str(cfg.data_dir), "--warehouse", str(cfg.warehouse), "--quiet"]


def sql(cfg, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["sql", *args, *_args(cfg)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _feature_columns(cfg) -> list[str]:
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        return [row[0] for row in con.execute("describe features").fetchall()]
    finally:
        con.close()


def _body_lines(text: str, names: list[str]) -> list[str]:
    """Table lines that show one of `names` as their first cell."""
    return [line for line in text.splitlines() if line.strip("│| ").split(" ")[0] in names]


# --- row counts and --max-rows -----------------------------------------------------------------


def test_describe_features_shows_every_column_and_the_true_count(built, capsys):
    columns = _feature_columns(built)
    assert len(columns) == 72
    code, out, _ = sql(built, capsys, "describe features", "--max-rows", "0")
    assert code == 0
    assert len(_body_lines(out, columns)) == 72
    assert "72 rows" in out and "shown" not in out
    code, out, _ = sql(built, capsys, "describe features")  # the default shows 40 of them, and says so
    assert code == 0
    assert len(_body_lines(out, columns)) == 40
    assert "72 rows (40 shown" in out


@pytest.mark.parametrize("max_rows, shown", [("0", 100), ("100", 100), ("7", 7), ("1", 1)])
def test_max_rows_shows_that_many_rows(built, capsys, max_rows, shown):
    code, out, _ = sql(built, capsys, "select 'r' || range::varchar as k from range(100)", "--max-rows", max_rows)
    assert code == 0
    assert len(_body_lines(out, [f"r{i}" for i in range(100)])) == shown
    assert ("100 rows" in out) and (("shown" in out) == (shown < 100))


def test_timestamps_print_as_iso_utc(built, capsys):
    code, out, _ = sql(built, capsys, "select min(ts) as first_ts, date '2024-01-02' as d from features")
    assert code == 0
    assert "2024-01-01T01:00:00Z" in out and "2024-01-02" in out


@pytest.mark.parametrize("value", ["-1", "-3"])
def test_negative_max_rows_is_an_error(built, capsys, value):
    code, out, err = sql(built, capsys, "select 1", "--max-rows", value)
    assert code != 0 and out == ""
    assert err.startswith("error: ") and "--max-rows" in err and len(err.strip().splitlines()) == 1


# --- formats and --out ---------------------------------------------------------------------------

QUERY = "select symbol, ts, rsi_14, m_n_60m from features order by symbol, ts limit 50"


def _expected(cfg) -> list[dict]:
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        return con.execute(QUERY).to_arrow_table().to_pylist()
    finally:
        con.close()


def test_csv_to_stdout_parses_back(built, capsys):
    code, out, _ = sql(built, capsys, QUERY, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = _expected(built)
    assert len(rows) == 50 and list(rows[0]) == ["symbol", "ts", "rsi_14", "m_n_60m"]
    assert [r["symbol"] for r in rows] == [e["symbol"] for e in expected]
    assert [int(r["m_n_60m"]) for r in rows] == [e["m_n_60m"] for e in expected]
    assert [float(r["rsi_14"]) if r["rsi_14"] else None for r in rows] == [e["rsi_14"] for e in expected]
    assert rows[0]["ts"] == expected[0]["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")  # ISO 8601, UTC


def test_json_to_stdout_parses_back(built, capsys):
    code, out, _ = sql(built, capsys, QUERY, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    expected = _expected(built)
    assert len(rows) == 50 and set(rows[0]) == {"symbol", "ts", "rsi_14", "m_n_60m"}
    assert [r["rsi_14"] for r in rows] == [e["rsi_14"] for e in expected]
    assert rows[0]["ts"] == expected[0]["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "table"])
def test_out_writes_the_file_and_says_so(built, capsys, tmp_path, fmt):
    target = tmp_path / f"result.{fmt if fmt != 'table' else 'txt'}"
    code, out, _ = sql(built, capsys, QUERY, "--format", fmt, "--out", str(target))
    assert code == 0
    assert str(target) in out and "50 rows" in out
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left behind
    expected = _expected(built)
    if fmt == "parquet":
        table = pq.read_table(target)
        assert table.num_rows == 50 and table.column_names == ["symbol", "ts", "rsi_14", "m_n_60m"]
        assert table.to_pylist() == expected
    elif fmt == "csv":
        assert len(list(csv.DictReader(target.open()))) == 50
    elif fmt == "json":
        assert [r["rsi_14"] for r in json.loads(target.read_text())] == [e["rsi_14"] for e in expected]
    else:
        assert "50 rows" in target.read_text()


def test_out_takes_every_row_by_default(built, capsys, tmp_path):
    target = tmp_path / "all.parquet"
    assert sql(built, capsys, "select * from range(1000)", "--format", "parquet", "--out", str(target))[0] == 0
    assert pq.read_table(target).num_rows == 1000


@pytest.mark.parametrize("suffix", ["parquet", "csv", "json"])
def test_out_without_format_takes_the_files_extension(built, capsys, tmp_path, suffix):
    target = tmp_path / f"one.{suffix}"
    code, out, _ = sql(built, capsys, "select 1 as a", "--out", str(target))
    assert code == 0 and f"wrote 1 row x 1 column ({suffix})" in out
    if suffix == "parquet":
        assert pq.read_table(target).to_pylist() == [{"a": 1}]
    elif suffix == "csv":
        assert list(csv.DictReader(target.open())) == [{"a": "1"}]
    else:
        assert json.loads(target.read_text()) == [{"a": 1}]


def test_a_format_contradicting_the_out_extension_is_refused(built, capsys, tmp_path):
    code, _, err = sql(built, capsys, "select 1 as a", "--format", "csv", "--out", str(tmp_path / "x.parquet"))
    assert code != 0 and "--format csv contradicts --out x.parquet" in err
    assert not (tmp_path / "x.parquet").exists()


def test_parquet_needs_out(built, capsys):
    code, out, err = sql(built, capsys, "select 1", "--format", "parquet")
    assert code != 0 and "--out" in err and out == ""


def test_out_is_atomic_a_failing_query_keeps_the_old_file(built, capsys, tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("old contents\n")
    # the error is raised after the first rows were produced: nothing of them may reach the file
    # (one thread: with several, DuckDB may report the other threads' "Interrupted" instead of the cause)
    failing = "set threads = 1; select case when range < 150000 then range else error('boom') end as x from range(300000)"
    code, _, err = sql(built, capsys, failing, "--format", "csv", "--out", str(target))
    assert code != 0 and "boom" in err
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]


def test_out_file_follows_the_umask(built, capsys, tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "r.parquet"
        assert sql(built, capsys, "select 1 as a", "--format", "parquet", "--out", str(target))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


# --- several statements, empty queries ---------------------------------------------------------


def test_several_statements_run_in_order_each_printed(built, capsys):
    code, out, _ = sql(built, capsys, "select 'first' as a; select 'sec;ond' as b;\nselect 'third' as c")
    assert code == 0
    assert out.index("first") < out.index("sec;ond") < out.index("third")
    assert out.count("1 row") == 3


def test_a_temp_table_made_by_one_statement_is_read_by_the_next(built, capsys):
    code, out, _ = sql(built, capsys, "create temp table t as select range as x from range(5); select sum(x) as total from t")
    assert code == 0 and "10" in out


def test_out_with_several_results_is_refused(built, capsys, tmp_path):
    code, _, err = sql(built, capsys, "select 1; select 2", "--format", "csv", "--out", str(tmp_path / "x.csv"))
    assert code != 0 and "--out" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("query", ["", "   ", ";", "-- only a comment", " ; ; "])
def test_an_empty_query_is_an_error(built, capsys, query):
    code, out, err = sql(built, capsys, query)
    assert code != 0 and out == ""
    assert err.startswith("error: ") and "empty" in err


def test_a_dash_reads_the_statements_from_stdin(built, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("select 41 + 1 as answer;\nselect 'x' as y;\n"))
    code, out, _ = sql(built, capsys, "-")
    assert code == 0 and "42" in out and out.count("1 row") == 2


def test_a_failing_statement_names_itself_and_stops(built, capsys):
    code, out, err = sql(built, capsys, "select 1 as ok; select * from no_such_view; select 3")
    assert code != 0
    assert "no_such_view" in err and "statement 2" in err
    assert "ok" in out  # the first statement's result was printed before the failure


# --- feature_catalog ------------------------------------------------------------------------------


def _catalog(cfg) -> list[dict]:
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        return con.execute("select * from feature_catalog").to_arrow_table().to_pylist()
    finally:
        con.close()


def test_feature_catalog_has_a_row_per_feature_column(built):
    columns = [c for c in _feature_columns(built) if c not in ("symbol", "ts")]
    catalog = _catalog(built)
    assert [row["column_name"] for row in catalog] == columns  # the mart's order
    blocks = {row["column_name"]: row["block"] for row in catalog}
    assert {"hourly", "minute", "cross", "time", "normalise"} == set(blocks.values())
    assert blocks["rsi_14"] == "hourly" and blocks["m_ret_60m"] == "minute" and blocks["m_range_pct_30d"] == "minute"
    assert blocks["x_rv_ratio"] == "cross" and blocks["hod_sin"] == "time" and blocks["rsi_14_z"] == "normalise"
    for row in catalog:
        assert row["definition"] and "\n" not in row["definition"], row
        assert 0.0 <= row["null_share"] <= 1.0, row
        assert row["warmup_bars"] is None or row["warmup_bars"] >= 0


def test_feature_catalog_definitions_come_from_the_docs_and_stats_from_the_build(built):
    rows = {row["column_name"]: row for row in _catalog(built)}
    assert "Wilder" in rows["rsi_14"]["definition"]
    assert "volume" in rows["m_vol_sum_5m"]["definition"]  # m_vol_sum_{5,15,60}m in the doc
    assert rows["m_ret_15m"]["lookback"] == "W_15" and "W_15" in rows["m_ret_15m"]["definition"]  # W_w made concrete
    assert rows["ret_3h"]["lookback"] == "2 bars, 3 h apart" and "ts−3h" in rows["ret_3h"]["definition"]  # h too
    assert "|H − C_prev|" in rows["true_range"]["definition"]  # pipes inside code spans stay in the cell
    assert "z-score of ret_1h " in rows["ret_1h_z"]["definition"]  # z columns: from feat_norm's purpose line
    assert rows["ret_1h_z"]["lookback"] == "168 rows, current excluded"
    con = duckdb.connect(str(built.warehouse), read_only=True)
    try:
        n, nulls = con.execute("select count(*), count(*) - count(ret_24h) from features").fetchone()
        first = con.execute(
            "select max(k) from (select symbol, count(*) filter (where ts < (select min(ts) from features f2 "
            "where f2.symbol = f.symbol and ret_24h is not null)) as k from features f group by symbol)"
        ).fetchone()[0]
    finally:
        con.close()
    assert rows["ret_24h"]["null_share"] == pytest.approx(nulls / n)
    assert rows["ret_24h"]["warmup_bars"] == first == 24
    assert rows["hod_sin"]["null_share"] == 0.0 and rows["hod_sin"]["warmup_bars"] == 0


def test_features_list_prints_the_catalog(built, capsys):
    assert main(["features", "--list", *_args(built)]) == 0
    out = capsys.readouterr().out
    columns = [c for c in _feature_columns(built) if c not in ("symbol", "ts")]
    assert len(_body_lines(out, columns)) == len(columns)
    assert "block" in out and "null" in out and "70 feature columns" in out


def test_features_list_without_a_warehouse_is_a_one_line_error(tmp_path, capsys):
    cfg = make_config(tmp_path)
    assert main(["features", "--list", *_args(cfg)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mscale features" in err


def test_an_extra_feature_gets_its_catalog_row_from_its_sql(demo_market, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "sql", project / "sql")
    shutil.copytree(REPO / "doc", project / "doc")
    (project / "sql" / "features" / "extra" / "feat_extra__close_in_range.sql").write_text(
        "-- grain: (symbol, ts)\n-- reads: klines_1h\n"
        "-- purpose: where the close sits inside its hourly bar's high-low range (0 = at the low, 1 = at the high)\n"
        "with bars as (select symbol, close_time as ts, high, low, close from klines_1h),\n"
        "final as (select symbol, ts, (close - low) / nullif(high - low, 0) as x_close_in_range from bars)\n"
        "select * from final\n"
    )
    shutil.copytree(demo_market.data_dir, tmp_path / "data")
    cfg = load_config(data_dir=tmp_path / "data", warehouse=tmp_path / "w.duckdb", project_root=project)
    build_features(cfg)
    rows = {row["column_name"]: row for row in _catalog(cfg)}
    extra = rows["x_close_in_range"]
    assert extra["block"] == "extra" and extra["definition"].startswith("where the close sits")
    assert extra["null_share"] < 0.01
