"""The feature cache built through Dask (issue 10, deliverable 3): on a LocalCluster of 2 worker
processes it is byte-identical to the local executor's, survives a worker killed mid-block, and a
block that fails for its data stops the build with one line naming the symbol and block."""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
from datetime import date
from pathlib import Path

import cloudpickle
import pytest

from conftest import make_config, on_a_new_thread
from mscale.errors import MscaleError
from mscale.warehouse.build import materialise
from mscale.warehouse.executors import Block, BlockDone, build_block

distributed = pytest.importorskip("distributed")

# the worker processes cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    """A scheduler with 2 worker processes (one thread each), shared by the tests of this module."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as c:
        yield c


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """2 symbols x 5 months (4 blocks), and the local executor's cache of it, for comparison."""
    from mscale.demo import write_demo

    root = tmp_path_factory.mktemp("scale-out")
    cfg = make_config(root / "local")
    write_demo(cfg, symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 2, 1), months=5, seed=5)
    result = materialise(cfg, full=True, executor="local")
    assert result.months_computed == 10
    return cfg, cache_bytes(cfg)


def cache_bytes(cfg) -> dict[str, bytes]:
    """Every file under the cache folder (manifest included), by relative path."""
    root = cfg.derived_dir / "features"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_market(cfg, dest: Path):
    """A config over a copy of `cfg`'s shards, with no cache yet."""
    shutil.copytree(cfg.data_dir, dest / "data", ignore=shutil.ignore_patterns("derived"))
    return make_config(dest)


def kill_worker_once(block: Block, marker: str) -> BlockDone:
    """A block task whose first attempt leaves half a temp file in the staging folder and then
    kills its own worker process; later attempts build the block normally."""
    if not os.path.exists(marker):
        Path(marker).write_text(block.label)
        staged = Path(block.staged[0])
        staged.parent.mkdir(parents=True, exist_ok=True)
        (staged.parent / f".{staged.name}.partial.tmp").write_bytes(b"PAR1 half a file")
        os._exit(1)
    return build_block(block)


def test_dask_cache_is_byte_identical_to_the_local_executor(cluster, market, tmp_path):
    local_cfg, local_bytes = market
    cfg = copy_market(local_cfg, tmp_path)
    result = materialise(cfg, full=True, executor="dask", scheduler=cluster.scheduler_address)
    assert result.months_computed == 10
    assert cache_bytes(cfg) == local_bytes
    # a refresh through Dask with nothing new computes nothing
    again = materialise(cfg, executor="dask", scheduler=cluster.scheduler_address)
    assert (again.months_computed, again.months_skipped) == (0, 10)


def test_a_worker_killed_mid_block_is_retried_and_leaves_no_partial_file(cluster, market, tmp_path):
    local_cfg, local_bytes = market
    cfg = copy_market(local_cfg, tmp_path)
    marker = tmp_path / "killed-once"
    task = functools.partial(kill_worker_once, marker=str(marker))
    result = materialise(cfg, full=True, executor="dask", scheduler=cluster.scheduler_address, task=task)
    assert marker.exists()  # a worker really died
    assert result.months_computed == 10
    assert cache_bytes(cfg) == local_bytes
    leftovers = [p for p in cfg.derived_dir.rglob("*") if p.name.endswith(".tmp") or ".staging" in p.parts]
    assert leftovers == []
    cluster.wait_for_workers(2, timeout=30)  # the nanny restarted it, for the next test


def test_a_block_with_bad_data_stops_the_build_naming_symbol_and_block(cluster, market, tmp_path):
    local_cfg, local_bytes = market
    cfg = copy_market(local_cfg, tmp_path)
    assert materialise(cfg, full=True, executor="dask", scheduler=cluster.scheduler_address).months_computed == 10
    before = cache_bytes(cfg)
    shard = sorted((cfg.market_dir / "minute").glob("*ETHUSDT*_202405.parquet"))[0]
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(MscaleError) as err:
        materialise(cfg, executor="dask", scheduler=cluster.scheduler_address)
    message = str(err.value)
    # the task of Q2's minute buckets: May's, and June's (whose trailing week reaches back into May)
    assert "\n" not in message
    assert re.match(r"features ETHUSDT 2024-05\.\.06 minute buckets: .*binance_ETHUSDT_1m_202405\.parquet", message), message
    assert cache_bytes(cfg) == before  # nothing published, nothing half-written
    assert not (cfg.derived_dir / ".staging").exists()


def test_the_local_executor_names_the_bad_block_too(market, tmp_path):
    cfg = copy_market(market[0], tmp_path)
    shard = sorted((cfg.market_dir / "minute").glob("*BTCUSDT*_202404.parquet"))[0]
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(MscaleError, match=r"^features BTCUSDT 2024-04\.\.06 minute buckets: .*binance_BTCUSDT_1m_202404\.parquet"):
        materialise(cfg, full=True, executor="local")
    assert not list(cfg.derived_dir.rglob("*.parquet"))  # nothing published, nothing staged


def test_an_unreachable_scheduler_is_one_line(market, tmp_path):
    cfg = copy_market(market[0], tmp_path)
    with pytest.raises(MscaleError, match="cannot reach the Dask scheduler tcp://127.0.0.1:9"):
        materialise(cfg, full=True, executor="dask", scheduler="tcp://127.0.0.1:9")


# --- training's fits on the same cluster (deliverable 4) ------------------------------------------


def test_training_through_dask_gives_the_local_runs_results(demo_warehouse, cluster):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from conftest import run_config
    from mscale.research.pipeline import run_training

    local = run_training(run_config(demo_warehouse, "dask-compare", model="lgbm", n_splits=2))
    dask = run_training(run_config(demo_warehouse, "dask-compare", model="lgbm", n_splits=2, executor="dask",
                                   scheduler=cluster.scheduler_address))
    assert local.path != dask.path
    assert "fit" in cluster.scheduler.task_prefixes  # the fits really ran as tasks on the cluster
    a = pq.read_table(local.path / "predictions.parquet").drop(["run_id"])
    b = pq.read_table(dask.path / "predictions.parquet").drop(["run_id"])
    assert a.num_rows > 0 and a.equals(b)
    folds_a = pacsv.read_csv(local.path / "folds.csv")
    folds_b = pacsv.read_csv(dask.path / "folds.csv")
    assert folds_a.equals(folds_b)  # the same models, so the same tuned thresholds and fold figures


def test_the_cache_does_not_depend_on_the_connections_tasks_share(market, tmp_path):
    """The local executor keeps each worker thread's DuckDB connection from task to task: the
    cache must be byte-identical to one where every task has a connection of its own, and to one
    where a single thread runs every task on one connection."""
    from dataclasses import replace

    local_cfg, local_bytes = market
    cfg = copy_market(local_cfg, tmp_path / "fresh")
    materialise(cfg, full=True, executor="local", task=on_a_new_thread)
    assert cache_bytes(cfg) == local_bytes
    cfg = copy_market(local_cfg, tmp_path / "one")
    one_thread = replace(cfg, features=replace(cfg.features, threads=1))
    materialise(one_thread, full=True, executor="local")
    assert cache_bytes(one_thread) == local_bytes
