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
