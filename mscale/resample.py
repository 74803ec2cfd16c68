"""Hourly bars derived from minute bars, and the job that writes them as hourly shards.

An hourly bar at `open_time = H` (a UTC hour start) aggregates the minute bars with
`open_time ∈ [H, H + 1 h)`, i.e. `close_time ∈ (H, H + 1 h]` — exactly the minutes that belong to
decision time `ts = H + 1 h` under CONTRACT §3. Nothing is imputed: an hour with no minute bar
produces no row, and an hour with some minutes missing aggregates the minutes present.
A derived bar never replaces one that came from elsewhere (the exchange, an import) unless forced.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscale.config import Config, with_market
from mscale.errors import MscaleError
from mscale.schema import KLINE_SCHEMA, validate_symbol
from mscale.store import SOURCE_COLUMN, read_klines, symbols_with_data, write_klines

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
        # date_trunc on TIMESTAMPTZ truncates in the session time zone; pin it to UTC. One thread:
        # parallel partial sums may differ in the last bit, and a re-run must see the same bars.
        con.execute("set TimeZone = 'UTC'")
        con.execute("set threads = 1")
        con.register("minutes", minutes)
        hours = con.execute(_HOURS_SQL).to_arrow_table()
    finally:
        con.close()
    return hours.select(KLINE_SCHEMA.names).cast(KLINE_SCHEMA)


@dataclass(frozen=True)
class ResampleResult:
    """What `resample_hourly` did for one symbol. Counts are hourly bars; `left` and `replaced`
    are by source and hold only bars at hours the minutes cover (the ones a derived bar competes with)."""

    symbol: str
    minutes: int  # minute bars read
    derived: int = 0  # hours that had no bar, now derived from the minutes
    updated: int = 0  # earlier resampled bars rewritten because their minutes changed
    left: dict[str, int] = field(default_factory=dict)  # bars not derived here, left as they were
    replaced: dict[str, int] = field(default_factory=dict)  # with force: such bars replaced
    hourly_bars: int = 0  # bars of the symbol stored now

    @property
    def written(self) -> int:
        return self.derived + self.updated + sum(self.replaced.values())

    def __str__(self) -> str:
        left = _by_source(self.left)
        if self.written == 0:
            kept = f"; left {left} as they were (--force replaces them)" if left else ""
            return f"{self.symbol}: nothing to derive: every hour with minutes already has a bar{kept}"
        parts = [f"derived {self.derived} missing hour(s) from {self.minutes:,} minute bars"]
        if self.updated:
            parts.append(f"updated {self.updated} resampled bar(s) whose minutes changed")
        if self.replaced:
            parts.append(f"replaced {_by_source(self.replaced)} with minute-derived ones (--force)")
        if left:
            parts.append(f"left {left} as they were (--force replaces them)")
        return f"{self.symbol}: " + "; ".join(parts) + f"; {self.hourly_bars:,} hourly bars now"


def _by_source(counts: dict[str, int]) -> str:
    """"3 exchange bars and 2 import bars"."""
    return " and ".join(f"{n:,} {src} bar{'s' if n != 1 else ''}" for src, n in sorted(counts.items()) if n)


def resample_hourly(cfg: Config, symbols: list[str] | None = None, *, force: bool = False) -> dict[str, ResampleResult]:
    """Derive hourly bars from each symbol's minute shards where no other bar stands; {symbol: result}.

    `symbols=None` means every symbol with minute shards. Guarantees:
    - a bar from the exchange, an import, or the demo is never replaced unless `force`; then each
      one replaced is counted by source and a warning names how many exchange bars went;
    - hours without a bar get one; a bar this job derived earlier is rewritten only when its
      minutes changed; a run with nothing to derive writes nothing;
    - the last hour is derived only once its final minute is present (a trailing hour still being
      filled would otherwise become a fake bar);
    - everything written goes through `write_klines` with source "resampled", so each derived bar
      says so in `klines_1h.source`;
    - no minute shards at all, or a named symbol without any, is a MscaleError before anything is written.
    """
    with_minutes = symbols_with_data(cfg.market_dir, "1m")
    todo = with_minutes if symbols is None else [validate_symbol(s) for s in symbols]
    missing = [s for s in todo if s not in with_minutes]
    if not with_minutes or missing:
        what = f"no minute shards of {', '.join(missing)}" if missing and with_minutes else "no minute shards"
        raise MscaleError(with_market(
            f"{what} under {cfg.minute_dir}: nothing to resample; hourly bars are derived from 1m klines "
            "(mscale ingest --interval 1m, or mscale import)", cfg.market))
    out: dict[str, ResampleResult] = {}
    for symbol in todo:
        minutes = read_klines(cfg.market_dir, "1m", symbol)
        hours = _complete_tail(hours_from_minutes(minutes), minutes)
        stored = read_klines(cfg.market_dir, "1h", symbol, with_source=True)
        plan = _plan(hours, stored, force=force)
        if plan["write"].num_rows:
            write_klines(cfg.market_dir, "1h", plan["write"], source="resampled")
        result = ResampleResult(
            symbol, minutes.num_rows, derived=plan["derived"], updated=plan["updated"], left=plan["left"],
            replaced=plan["replaced"], hourly_bars=stored.num_rows + plan["derived"],
        )
        if result.replaced:
            log.warning("%s: --force replaced %s with minute-derived ones", symbol, _by_source(result.replaced))
        log.info("%s: %d minute bars -> %d hourly bars written", symbol, minutes.num_rows, result.written)
        out[symbol] = result
    return out


def _plan(hours: pa.Table, stored: pa.Table, *, force: bool) -> dict:
    """Which derived `hours` to write over `stored` (with `source`), and the counts for the result."""
    h_ot = hours.column("open_time").cast(pa.int64()).to_numpy()
    s_ot = stored.column("open_time").cast(pa.int64()).to_numpy()
    pos = np.searchsorted(s_ot, h_ot)
    exists = pos < len(s_ot)
    exists[exists] = s_ot[pos[exists]] == h_ot[exists]
    source = np.full(len(h_ot), "", dtype=object)
    source[exists] = np.asarray(stored.column(SOURCE_COLUMN).to_pylist(), dtype=object)[pos[exists]]
    ours = exists & (source == "resampled")
    changed = np.zeros(len(h_ot), dtype=bool)
    if ours.any():
        changed[ours] = ~_same_rows(hours.filter(pa.array(ours)), stored.take(pa.array(pos[ours])))
    others = exists & ~ours
    counts = Counter(source[others].tolist())
    write = ~exists | changed | (others if force else np.zeros(len(h_ot), dtype=bool))
    return {
        "write": hours.filter(pa.array(write)),
        "derived": int(np.count_nonzero(~exists)),
        "updated": int(np.count_nonzero(changed)),
        "left": {} if force else dict(counts),
        "replaced": dict(counts) if force else {},
    }


def _same_rows(a: pa.Table, b: pa.Table) -> np.ndarray:
    """Row by row, True where every KLINE_SCHEMA column is equal (NULL equals NULL)."""
    same = np.ones(a.num_rows, dtype=bool)
    for name in KLINE_SCHEMA.names:
        x, y = a.column(name), b.column(name)
        eq = pc.fill_null(pc.equal(x, y), False).to_numpy(zero_copy_only=False)
        both_null = pc.and_(pc.is_null(x), pc.is_null(y)).to_numpy(zero_copy_only=False)
        same &= eq | both_null
    return same


def _complete_tail(hours: pa.Table, minutes: pa.Table) -> pa.Table:
    """Drop the last hourly bar when the minute closing at its end is not there (yet)."""
    if hours.num_rows == 0:
        return hours
    last_minute_close = pc.max(minutes.column("close_time")).cast(pa.int64()).as_py()
    last_hour_close = hours.column("close_time")[-1].cast(pa.int64()).as_py()
    return hours if last_minute_close >= last_hour_close else hours.slice(0, hours.num_rows - 1)
