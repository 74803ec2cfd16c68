"""A Dask client for `--executor dask`: the scheduler at an address, or a local cluster.

Guarantees: the client (and a local cluster it started) is closed when the block exits, also on
an error or Ctrl-C; an address that cannot be reached, or dask[distributed] missing, is a one-line
MscaleError saying what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mscale.errors import MscaleError


@contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A `distributed.Client` of `scheduler` (e.g. "tcp://head:8786"), or with none, of a local
    cluster of `workers` single-threaded worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MscaleError("the dask executor needs dask[distributed]: pip install 'dask[distributed]'") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
    except OSError as e:
        if cluster is not None:
            cluster.close()
        raise MscaleError(f"cannot reach the Dask scheduler {scheduler} ({e}); start it with `dask-scheduler` "
                          "or leave --scheduler out for a local cluster") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
