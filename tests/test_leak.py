"""The leak test: features at ts never change when anything after ts changes (CONTRACT §3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import make_config, random_minutes, write_market
from mscale.warehouse.audit import POISON_FACTOR, _cut_tables
from mscale.warehouse.build import compute_features
from mscale.warehouse.render import params_from_config

START_MS = 1_706_745_600_000  # 2024-02-01 00:00 UTC: the data crosses a month boundary
DAYS = 20
N = DAYS * 1440


def _features(minutes: pa.Table, z_window: int) -> pa.Table:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(Path(tmp), z_window=z_window)
        write_market(cfg, minutes)
        return compute_features(cfg.sql_dir, params_from_config(cfg))


def _upto(table: pa.Table, cut_ms: int) -> pa.Table:
    ts = table.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    return table.filter(pa.array(ts <= cut_ms))


def _assert_same(expected: pa.Table, actual: pa.Table, what: str) -> None:
    assert expected.num_rows == actual.num_rows, f"{what}: {expected.num_rows} rows vs {actual.num_rows}"
    for name in expected.column_names:
        a, b = expected.column(name), actual.column(name)
        assert a.equals(b), f"{what}: column {name} changed at or before the cut"


gaps = st.lists(st.tuples(st.integers(0, N - 1), st.integers(1, 180)), max_size=6)


# each example builds the features three times; shrinking would rebuild them hundreds of times
@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), gap_list=gaps, cut_hour=st.integers(24, DAYS * 24 - 2))
def test_features_at_or_before_the_cut_ignore_everything_after_it(seed, gap_list, cut_hour):
    keep = np.ones(N, dtype=bool)
    for start, length in gap_list:
        keep[start : start + length] = False
    minutes = random_minutes("LEAKUSDT", START_MS, N, seed=seed, keep=keep)
    cut_ms = START_MS + cut_hour * 3_600_000
    full = _upto(_features(minutes, z_window=24), cut_ms)
    assert full.num_rows > 0

    truncated = _upto(_features(_cut_tables(minutes, cut_ms, "truncated"), z_window=24), cut_ms)
    _assert_same(full, truncated, "truncated after the cut")

    poisoned = _upto(_features(_cut_tables(minutes, cut_ms, "poisoned"), z_window=24), cut_ms)
    _assert_same(full, poisoned, f"prices and volumes x{POISON_FACTOR:g} after the cut")


def test_the_harness_catches_a_planted_leak(tmp_path):
    """The same truncation comparison, run on a copy of sql/ with a feature that reads the next bar,
    reports that feature and only that feature."""
    import shutil

    from conftest import REPO
    from mscale.warehouse.render import params_from_config

    sql_dir = tmp_path / "sql"
    shutil.copytree(REPO / "sql", sql_dir)
    (sql_dir / "features" / "extra" / "feat_extra__peek.sql").write_text(
        "-- grain: (symbol, ts)\n-- reads: klines_1h\n-- purpose: planted leak\n"
        "select symbol, close_time as ts, lead(close) over (partition by symbol order by close_time) as peek\n"
        "from klines_1h\n"
    )
    minutes = random_minutes("LEAKUSDT", START_MS, 3 * 1440, seed=1)
    cut_ms = START_MS + 40 * 3_600_000

    def build(table):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_config(Path(tmp), z_window=24)
            write_market(cfg, table)
            return _upto(compute_features(sql_dir, params_from_config(cfg)), cut_ms)

    full, truncated = build(minutes), build(_cut_tables(minutes, cut_ms, "truncated"))
    changed = [c for c in full.column_names if not full.column(c).equals(truncated.column(c))]
    assert changed == ["peek"]
