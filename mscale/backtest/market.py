"""Market prices for the backtest, read from the warehouse's `fills` view (CONTRACT §4, §9).

The I/O edge of the backtest: the engine never reads DuckDB, it gets the Arrow table returned here.
Time, per row keyed by the decision time ts (the close of an hourly bar):
  - `close`, `spread_cs_60m`, `spread_ar_60m` use only bars with close_time <= ts (known at ts);
  - `fill_next_minute`, `next_minute_close_time`, `fill_twap_{N}m`, `fill_minutes_60m` come from
    the minute bars closing in (ts, ts + 60 min]: fill prices for the trade decided at ts, never
    inputs to that decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from mscale.errors import MscaleError
from mscale.schema import validate_symbol

VIEW = "fills"
_TWAP = re.compile(r"^fill_twap_(\d+)m$")
_UTC_US = pa.timestamp("us", tz="UTC")


def _epoch_ms(value: datetime, name: str) -> int:
    """Epoch milliseconds of a datetime; a naive datetime is taken as UTC (never the local zone)."""
    if not isinstance(value, datetime):
        raise MscaleError(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def load_prices(
    con: duckdb.DuckDBPyConnection,
    *,
    symbols: Iterable[str] | str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pa.Table:
    """The `fills` rows with start < ts <= end of `symbols`, sorted by (symbol, ts).

    `symbols=None` reads every symbol (an empty list reads none); `start` / `end` None means
    unbounded, naive datetimes are UTC. Every timestamp column comes back as timestamp[us, tz=UTC]
    whatever the session TimeZone. A row at ts holds prices known at ts (`close`, the spreads) and
    fill prices from minutes that close after ts (see the module docstring); the caller must use
    the latter only to execute the trade decided at ts.
    """
    where, args = ["true"], []
    if symbols is not None:
        wanted = [symbols] if isinstance(symbols, str) else list(symbols)
        for s in wanted:
            validate_symbol(s)
        if not wanted:
            where.append("false")
        else:
            where.append(f"symbol in ({', '.join('?' for _ in wanted)})")
            args += wanted
    if start is not None:
        where.append("epoch_ms(ts) > ?")
        args.append(_epoch_ms(start, "start"))
    if end is not None:
        where.append("epoch_ms(ts) <= ?")
        args.append(_epoch_ms(end, "end"))
    query = f"select * from {VIEW} where {' and '.join(where)} order by symbol, ts"
    try:
        if not con.execute("select count(*) from information_schema.tables where table_name = ?", [VIEW]).fetchone()[0]:
            raise MscaleError(f"no `{VIEW}` view in this warehouse: run `mscale features` first")
        table = con.execute(query, args).to_arrow_table()
    except duckdb.Error as e:
        raise MscaleError(f"reading `{VIEW}` failed: {str(e).splitlines()[0]}") from None
    # DuckDB labels TIMESTAMPTZ with the session zone; same instants, labelled UTC
    columns = [c.cast(_UTC_US) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


def fill_columns(names) -> dict[str, str]:
    """Fill mode -> price column, for the columns in `names`: "close" always, "next_minute" with
    `fill_next_minute`, "twap_{N}m" for each `fill_twap_{N}m` (ascending N)."""
    modes = {"close": "close"}
    if "fill_next_minute" in names:
        modes["next_minute"] = "fill_next_minute"
    for n in sorted(int(m.group(1)) for m in map(_TWAP.match, names) if m):
        modes[f"twap_{n}m"] = f"fill_twap_{n}m"
    return modes


def fill_modes(table: pa.Table | pa.Schema) -> list[str]:
    """The fill modes `table` supports (see `fill_columns`)."""
    return list(fill_columns(table.names if isinstance(table, pa.Schema) else table.schema.names))
