"""A run's charts and report.html, `mscale backtest --run`, and `make demo`'s steps on a small market."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_config
from mscale.cli import main as mscale
from mscale.report import charts
from mscale.report.html import SECTIONS
from mscale.research import pipeline


@pytest.fixture(scope="module")
def compare_run(demo_warehouse) -> Path:
    return pipeline.run_training(run_config(demo_warehouse, "report", model="logistic", n_splits=3, compare=True)).path


@pytest.fixture(scope="module")
def single_run(demo_warehouse) -> Path:
    """One feature set and no auxiliary models."""
    return pipeline.run_training(run_config(demo_warehouse, "report", model="logistic", n_splits=3, aux=False)).path


class _Page(HTMLParser):
    """Ids, image sources, links, and the header / cell texts of every section."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.links, self.text = set(), [], [], []
        self.section, self.cell = None, None
        self.headers: dict[str, list[str]] = {}
        self.cells: dict[str, list[str]] = {}
        self.rows: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "section":
            self.section = attrs.get("id")
        if tag in ("th", "td"):
            self.cell = (tag, [])
        if tag == "tr" and self.section:
            self.rows[self.section] = self.rows.get(self.section, 0) + 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell:
            kind, parts = self.cell
            target = self.headers if kind == "th" else self.cells
            target.setdefault(self.section, []).append("".join(parts).strip())
            self.cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self.cell:
            self.cell[1].append(data)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.mark.parametrize("which", ["compare_run", "single_run"])
def test_the_report_is_self_contained_and_has_every_section(which, request):
    run = request.getfixturevalue(which)
    page = _page(run / "report.html")
    assert set(SECTIONS) <= page.ids
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:
        width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width >= 600 and height >= 250
    assert not [link for link in page.links if link.lower().startswith(("http://", "https://", "//"))]
    text = " ".join(page.text)
    assert {"symbol", "strategy", "total return", "Sharpe", "max DD", "fee drag", "PSR", "DSR"} <= set(page.headers["metrics"])
    assert "buy and hold" in page.cells["metrics"] and "pooled" in page.cells["metrics"]
    assert {"test_start", "fold_purged_fit", "share_flat", "accuracy", "log_loss", "auc_vol_high", "theta_long",
            "theta_volm", "trades_per_day", "avg_hold_h", "net_sharpe_VIP9"} <= set(page.headers["folds"])
    assert {"BTCUSDT", "ETHUSDT"} <= set(page.cells["data"]) and "% missing" in page.headers["data"]
    assert "synthetic" in page.cells["data"]  # the ingestion summary's sources column
    importance_rows = page.rows["importance"]
    assert 2 < importance_rows <= 3 * 22  # at most 20 features per task, with two header rows each
    shares = [c for c in page.cells["importance"] if c.endswith("%")]  # the share column, in percent
    assert shares and all(0 <= float(c[:-1]) <= 100 for c in shares)
    charts_made = {p.stem for p in (run / "charts").glob("*.png")}
    assert {"fee_curve", "drawdown", "equity_tier_VIP9", "equity_multiscale_pooled"} <= charts_made
    if which == "compare_run":
        assert "comparison" in charts_made and "vol_high_rate" in charts_made
        assert "multiscale beats hourly on" in text and "chart-comparison" in page.ids
    else:
        assert "comparison" not in charts_made and "vol_high_rate" not in charts_made
        assert "trained one feature set" in text and "no evidence of an edge" in text
        predictions = pq.read_table(run / "predictions.parquet")
        assert "p_vol_high" not in predictions.column_names


def test_the_two_panel_figure_and_the_per_tier_artifacts(compare_run):
    import matplotlib.dates as mdates

    pnl = pq.read_table(compare_run / "pnl/multiscale/tokens.parquet")
    trades = pq.read_table(compare_run / "trades.parquet")
    spans = [("2024-02-01 00:00Z", "2024-03-01 00:00Z"), ("2024-03-01 01:00Z", "2024-04-01 00:00Z")]
    fig = charts.two_panel(charts.frame(pnl, "BTCUSDT"), charts.frame(trades, "BTCUSDT"), ["gross", "VIP9", "VIP4"],
                           spans, title="BTCUSDT", fee_drag={"VIP9": 0.05, "VIP4": 0.12})
    top, bottom = fig.axes
    assert top.get_title() == "BTCUSDT: equity per fee tier"
    assert bottom.get_title() == "trades per day (entries, UTC days)"
    assert top.get_ylabel() == "equity (start = 1)" and bottom.get_ylabel() == "trades"
    assert [line.get_label() for line in top.get_lines()] == ["net of gross", "net of VIP9", "net of VIP4", "buy and hold"]
    assert len(top.patches) == len(spans)  # one shaded block per fold
    assert "total return lost to costs: VIP9 5.0%, VIP4 12.0%" in [t.get_text() for t in top.texts]
    assert isinstance(top.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)  # dates on the x axis
    assert bottom.patches  # trades per day were drawn
    curve = charts.fee_curve(charts.frame(pq.read_table(compare_run / "fee_curve.parquet")), title="x",
                             marked={"VIP9": 2.0, "VIP4": 5.4})
    for ax in curve.axes:
        verticals = {line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1}
        assert {2.0, 5.4} <= verticals
        assert ax.get_xlabel() == "fee per side (bps)"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert _png_size(buffer.getvalue()) == (1000, 620)
    for name in ("pnl/multiscale/BTCUSDT.csv", "pnl/multiscale/pooled.csv", "pnl/hourly/ETHUSDT.csv"):
        assert (compare_run / name).stat().st_size > 10_000
    for tier in ("gross", "VIP9", "VIP4"):
        assert (compare_run / "charts" / f"equity_tier_{tier}.png").stat().st_size > 20_000


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and "backtests" not in p.parts}


def test_backtest_rerun_reproduces_the_run_and_writes_other_knobs_beside_it(compare_run, capsys):
    before = _digest(compare_run)
    assert mscale(["backtest", "--run", str(compare_run), "--quiet"]) == 0
    printed = capsys.readouterr().out
    (same,) = list((compare_run / "backtests").iterdir())
    assert f"report: {same / 'report.html'}" in printed and "multiscale beats hourly on" in printed
    for arm in ("hourly", "multiscale"):
        for name in ("tokens", "pooled"):
            stored = pq.read_table(compare_run / f"pnl/{arm}/{name}.parquet")
            assert pq.read_table(same / f"pnl/{arm}/{name}.parquet").equals(stored)
    assert pq.read_table(same / "trades.parquet").equals(pq.read_table(compare_run / "trades.parquet"))

    args = ["backtest", "--run", str(compare_run), "--quiet", "--fees", "gross,taker=10", "--min-hold", "4",
            "--cooldown", "2", "--max-trades-per-day", "3", "--long-only", "--fill", "next_minute"]
    assert mscale(args) == 0
    other = next(p for p in (compare_run / "backtests").iterdir() if p != same)
    pnl = pq.read_table(other / "pnl/multiscale/tokens.parquet")
    assert "ret_net_taker" in pnl.column_names and pc.min(pnl.column("position")).as_py() >= 0
    assert _png_size((other / "charts" / "fee_curve.png").read_bytes())[0] > 0
    assert "ret_net_VIP9" in pnl.column_names  # the tier thresholds were tuned at stays the headline
    other_page = _page(other / "report.html")
    assert "taker" in " ".join(other_page.text) and "net_sharpe_VIP9" not in other_page.headers["folds"]
    assert "at VIP9" in capsys.readouterr().out
    assert _digest(compare_run) == before  # the run itself is untouched


def test_backtest_rerun_errors_are_one_line(compare_run, tmp_path, capsys):
    assert mscale(["backtest", "--run", str(tmp_path), "--quiet"]) == 2
    assert "is not a complete training run folder" in capsys.readouterr().err
    assert mscale(["backtest", "--run", str(compare_run), "--quiet", "--min-hold", "-1"]) == 2
    assert "min_hold must be a whole number >= 0, got -1" in capsys.readouterr().err
    assert mscale(["backtest", "--run", str(compare_run), "--quiet", "--fill", "twap_7m"]) == 2
    assert "fill mode 'twap_7m' needs minute fill prices" in capsys.readouterr().err


def test_demo_command_refuses_too_short_a_market(capsys):
    assert mscale(["demo", "--months", "2", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "error: --months must be at least 3 for walk-forward folds, got 2"


def test_make_demo_steps_on_a_small_market(tmp_path):
    from mscale.config import load_config
    from mscale.demo_run import run_demo

    cfg = load_config(data_dir=tmp_path / "data", warehouse=tmp_path / "w.duckdb", project_root=REPO, quiet=True,
                      exp_dir=tmp_path / "_exp")
    lines: list[str] = []
    first = run_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), months=3, n_splits=2, echo=lines.append)
    output = "\n".join(lines)
    assert first["report"].is_absolute() and first["report"].is_file()
    assert f"report: {first['report']}" in output
    assert "multiscale - hourly" in output and "pooled" in output and "VIP4" in output
    lines.clear()
    second = run_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), months=3, n_splits=2, echo=lines.append)
    assert lines[0].startswith("demo market: reusing 2 symbols x 3 months")
    assert "features: 0 symbol-months computed, 6 reused" in "\n".join(lines)
    assert second["report"] != first["report"] and second["steps"]["demo market"] == 0.0
