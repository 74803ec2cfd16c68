"""Shared fixtures: the repository root, the real data folder, and configs over temporary data dirs."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from mscale.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


def make_config(tmp: Path, **features) -> Config:
    """A Config whose data dir and warehouse live under `tmp`, using the repository's sql/."""
    return load_config(
        data_dir=tmp / "data",
        warehouse=tmp / "warehouse" / "mscale.duckdb",
        project_root=REPO,
        features=features or None,
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture(scope="session")
def demo_market(tmp_path_factory) -> Config:
    """A 2-symbol x 3-month synthetic market written once per session (read-only for tests)."""
    from mscale.demo import write_demo

    c = make_config(tmp_path_factory.mktemp("demo"))
    write_demo(c, symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 1, 1), months=3, seed=11)
    return c


def requires_real_data():
    return pytest.mark.skipif(
        not REAL_DATA.is_dir(), reason=f"real Binance files not found at {REAL_DATA} (../shared is absent)"
    )


def random_minutes(symbol: str, start_ms: int, n: int, *, seed: int = 0, keep=None):
    """A random-walk minute table (KLINE_SCHEMA) of n grid minutes from start_ms; `keep` masks rows out."""
    import numpy as np

    from mscale.schema import klines_from_arrays

    rng = np.random.default_rng(seed)
    open_ms = start_ms + 60_000 * np.arange(n, dtype=np.int64)
    close = 100 * np.exp(np.cumsum(rng.standard_normal(n) * 1e-3))
    open_ = np.r_[100.0, close[:-1]]
    spread = np.abs(rng.standard_normal(n)) * 5e-4 * close
    volume = rng.lognormal(0, 1, n)
    volume[rng.random(n) < 0.02] = 0.0
    table = klines_from_arrays(
        symbol, open_ms, "1m",
        open=open_, high=np.maximum(open_, close) + spread, low=np.minimum(open_, close) - spread, close=close,
        volume=volume, quote_volume=volume * close, trades=(volume * 10).astype(int),
        taker_buy_base=volume / 2, taker_buy_quote=volume * close / 2,
    )
    if keep is not None:
        import pyarrow as pa

        table = table.filter(pa.array(np.asarray(keep, dtype=bool)))
    return table


def write_market(cfg: Config, minutes) -> None:
    """Write minutes and the hourly bars derived from them into cfg's data dir."""
    from mscale.resample import hours_from_minutes
    from mscale.store import write_klines

    write_klines(cfg.market_dir, "1m", minutes)
    write_klines(cfg.market_dir, "1h", hours_from_minutes(minutes))


def run_config(root: Path, runs: str = "_exp", **train) -> Config:
    """A Config over a built demo warehouse under `root`, writing training runs into `root/runs`."""
    return load_config(data_dir=root / "data", warehouse=root / "w.duckdb", project_root=REPO, quiet=True,
                       train=train, exp_dir=root / runs)


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory) -> Path:
    """2 symbols x 4 months of the demo market with its warehouse built (tests only add runs to it)."""
    from mscale.demo import write_demo
    from mscale.warehouse.build import build_features

    root = tmp_path_factory.mktemp("train")
    cfg = run_config(root)
    write_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 1, 1), months=4, seed=5)
    build_features(cfg)
    return root


def on_a_new_thread(block):
    """`executors.build_block` on a thread of its own, so on a DuckDB connection no other task used
    (a worker thread keeps its connection from task to task)."""
    from concurrent.futures import ThreadPoolExecutor

    from mscale.warehouse.executors import build_block

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(build_block, block).result()
