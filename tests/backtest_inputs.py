"""Builders of tiny prediction and price tables for the backtest tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def ts_array(ms) -> pa.Array:
    return pa.array(np.asarray(ms, dtype=np.int64) * 1000).cast(pa.timestamp("us", tz="UTC"))


def hours(*offsets, start: int = T0) -> np.ndarray:
    """Decision times at the given whole-hour offsets from `start`."""
    return start + HOUR * np.asarray(offsets, dtype=np.int64)


def predictions(symbol: str, ts_ms, score, *, p_vol=None, p_volm=None, **columns) -> pa.Table:
    """Direction probabilities with P(+1) - P(-1) = score and no flat class."""
    score = np.asarray(score, dtype=float)
    data = {
        "symbol": [symbol] * len(score),
        "ts": ts_array(ts_ms),
        "p_up": (1 + score) / 2,
        "p_down": (1 - score) / 2,
    }
    if p_vol is not None:
        data["p_vol_high"] = np.asarray(p_vol, dtype=float)
    if p_volm is not None:
        data["p_volm_up"] = np.asarray(p_volm, dtype=float)
    data.update(columns)
    return pa.table(data)


def prices(symbol: str, ts_ms, close, **columns) -> pa.Table:
    close = np.asarray(close, dtype=float)
    return pa.table({"symbol": [symbol] * len(close), "ts": ts_array(ts_ms), "close": close, **columns})


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def warehouse_prices(cfg) -> pa.Table:
    """The `fills` view over cfg's shards (the real sql/, live views in memory), via load_prices."""
    from mscale.backtest.market import load_prices
    from mscale.warehouse import render as r
    from mscale.warehouse.build import connect, create_views

    con = connect()
    try:
        create_views(con, cfg.sql_dir, r.params_from_config(cfg))
        return load_prices(con)
    finally:
        con.close()
