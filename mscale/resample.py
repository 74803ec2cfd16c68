"""Hourly bars derived from minute bars, and the job that writes them as hourly shards.

An hourly bar at `open_time = H` (a UTC hour start) aggregates the minute bars with
`open_time ∈ [H, H + 1 h)`, i.e. `close_time ∈ (H, H + 1 h]` — exactly the minutes that belong to
decision time `ts = H + 1 h` under CONTRACT §3. Nothing is imputed: an hour with no minute bar
produces no row, and an hour with some minutes missing aggregates the minutes present.
"""

from __future__ import annotations

import logging

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mscale.config import Config
from mscale.schema import KLINE_SCHEMA, validate_symbol
from mscale.store import read_klines, symbols_with_data, write_klines

log = logging.getLogger(__name__)

# First open / last close are taken from the first / last minute by open_time even when that
# value is NULL (arg_*_null), so a hole in the data is never papered over by a later minute;
# max/min/sum ignore NULLs as SQL does, and are NULL only when every minute's value is NULL.
_HOURS_SQL = """
select
    symbol,
    date_trunc('hour', open_time) as open_time,
    date_trunc('hour', open_time) + interval 1 hour as close_time,
    arg_min_null(open, open_time) as open,
    max(high) as high,
    min(low) as low,
    arg_max_null(close, open_time) as close,
    sum(volume) as volume,
    sum(quote_volume) as quote_volume,
    cast(sum(trades) as bigint) as trades,
    sum(taker_buy_base) as taker_buy_base,
    sum(taker_buy_quote) as taker_buy_quote,
from minutes
group by all
order by symbol, open_time
"""


def hours_from_minutes(minutes: pa.Table) -> pa.Table:
    """Aggregate 1m bars (KLINE_SCHEMA, any symbols) into 1h bars in KLINE_SCHEMA.

    Guarantees: one row per (symbol, UTC hour) holding at least one minute; `open_time` is the
    hour start and `close_time = open_time + 1 h`; open = first minute's open and close = last
    minute's close (by open_time), high = max, low = min, volume, quote_volume, trades and taker
    volumes are sums; rows sorted by symbol then open_time. Input rows must have unique
    (symbol, open_time), as every shard reader guarantees.
    """
    minutes = minutes.select(KLINE_SCHEMA.names).cast(KLINE_SCHEMA)
    if minutes.num_rows == 0:
        return KLINE_SCHEMA.empty_table()
    con = duckdb.connect()
    try:
        # date_trunc on TIMESTAMPTZ truncates in the session time zone; pin it to UTC.
        con.execute("set TimeZone = 'UTC'")
        con.register("minutes", minutes)
        hours = con.execute(_HOURS_SQL).to_arrow_table()
    finally:
        con.close()
    return hours.select(KLINE_SCHEMA.names).cast(KLINE_SCHEMA)


def resample_hourly(cfg: Config, symbols: list[str] | None = None) -> dict[str, int]:
    """Write hourly shards derived from each symbol's minute shards; returns {symbol: hourly rows}.

    `symbols=None` means every symbol that has minute shards but no hourly shards (exchange bars
    are never replaced unless a symbol is named). The last hour is written only once its final
    minute is present: a trailing hour still being filled would otherwise become a fake bar.
    Written through `write_klines` with source "resampled", so re-running is idempotent. A symbol
    without minute shards maps to 0 and writes nothing.
    """
    if symbols is None:
        have_hours = set(symbols_with_data(cfg.market_dir, "1h"))
        todo = [s for s in symbols_with_data(cfg.market_dir, "1m") if s not in have_hours]
    else:
        todo = list(symbols)
    out: dict[str, int] = {}
    for symbol in todo:
        validate_symbol(symbol)
        minutes = read_klines(cfg.market_dir, "1m", symbol)
        if minutes.num_rows == 0:
            log.warning("%s: no minute shards under %s; nothing to resample", symbol, cfg.market_dir)
            out[symbol] = 0
            continue
        hours = _complete_tail(hours_from_minutes(minutes), minutes)
        write_klines(cfg.market_dir, "1h", hours, source="resampled")
        log.info("%s: %d minute bars -> %d hourly bars", symbol, minutes.num_rows, hours.num_rows)
        out[symbol] = hours.num_rows
    return out


def _complete_tail(hours: pa.Table, minutes: pa.Table) -> pa.Table:
    """Drop the last hourly bar when the minute closing at its end is not there (yet)."""
    if hours.num_rows == 0:
        return hours
    last_minute_close = pc.max(minutes.column("close_time")).cast(pa.int64()).as_py()
    last_hour_close = hours.column("close_time")[-1].cast(pa.int64()).as_py()
    return hours if last_minute_close >= last_hour_close else hours.slice(0, hours.num_rows - 1)
