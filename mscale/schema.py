"""The kline schema of CONTRACT §2 and the validators that guard names before they reach paths or SQL."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa

from mscale.errors import MscaleError
from mscale.names import SYMBOL_RE


INTERVALS: dict[str, timedelta] = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1)}
INTERVAL_MS: dict[str, int] = {k: int(v.total_seconds() * 1000) for k, v in INTERVALS.items()}

TS = pa.timestamp("ms", tz="UTC")

KLINE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("open_time", TS, nullable=False),
        pa.field("close_time", TS, nullable=False),
        pa.field("open", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("close", pa.float64()),
        pa.field("volume", pa.float64()),
        pa.field("quote_volume", pa.float64()),
        pa.field("trades", pa.int64()),
        pa.field("taker_buy_base", pa.float64()),
        pa.field("taker_buy_quote", pa.float64()),
    ]
)


def validate_symbol(symbol: str) -> str:
    """Return `symbol` if it matches the contract's pattern, else raise a one-line error."""
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise MscaleError(
            f"invalid symbol {symbol!r}: symbols are 2-20 upper-case letters or digits, e.g. BTCUSDT"
        )
    return symbol


def validate_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise MscaleError(f"unsupported interval {interval!r}: use one of {', '.join(INTERVALS)}")
    return interval


def empty_klines() -> pa.Table:
    return KLINE_SCHEMA.empty_table()


def klines_from_arrays(
    symbol: str,
    open_time_ms,
    interval: str,
    *,
    open,
    high,
    low,
    close,
    volume,
    quote_volume=None,
    trades=None,
    taker_buy_base=None,
    taker_buy_quote=None,
) -> pa.Table:
    """Build a table in KLINE_SCHEMA from column arrays.

    `close_time` is always `open_time + interval` (the contract's right edge), whatever the
    source said; fields a source lacks (e.g. freqtrade JSON) are NULL.
    """
    import numpy as np

    validate_symbol(symbol)
    ot = np.asarray(open_time_ms, dtype=np.int64)
    n = len(ot)

    def col(values, typ):
        if values is None:
            return pa.nulls(n, typ)
        return pa.array(np.asarray(values, dtype=np.float64 if typ == pa.float64() else np.int64), typ)

    return pa.table(
        {
            "symbol": pa.array([symbol] * n, pa.string()) if n else pa.array([], pa.string()),
            "open_time": pa.array(ot, pa.int64()).cast(TS),
            "close_time": pa.array(ot + INTERVAL_MS[interval], pa.int64()).cast(TS),
            "open": col(open, pa.float64()),
            "high": col(high, pa.float64()),
            "low": col(low, pa.float64()),
            "close": col(close, pa.float64()),
            "volume": col(volume, pa.float64()),
            "quote_volume": col(quote_volume, pa.float64()),
            "trades": col(trades, pa.int64()),
            "taker_buy_base": col(taker_buy_base, pa.float64()),
            "taker_buy_quote": col(taker_buy_quote, pa.float64()),
        },
        schema=KLINE_SCHEMA,
    )
