"""The synthetic demo market: realistic-looking 1m and 1h klines, made offline from a seed.

What the generated market guarantees (tests/test_demo.py measures each):
- time: minute bars on the UTC minute grid `[start, start + months)`, `close_time = open_time + 1 min`;
  hourly bars derived from those minutes by `mscale.resample.hours_from_minutes`, so the two reconcile exactly;
- deterministic: the same (symbols, start, months, seed) gives byte-identical tables; each symbol's
  rows depend only on (seed, symbol, start, months), not on which other symbols are generated;
- gaps like a real feed: ~0.1% of minutes missing at random per symbol, and a few exchange-wide
  outages of 1-3 whole hours (about 2-4 per six months, at least one) with neither minutes nor hours;
- stylized facts: GARCH(1,1) volatility clustering at hourly resolution on top of a slow common
  volatility regime, Student-t tails (hourly and minute innovations), intraday (Asia/EU/US sessions)
  and weekday (quiet weekend) seasonality of both volume and volatility, a common market factor
  (hourly return correlation ~0.6), volume tied to volatility and to each minute's |return|;
- no free money: log returns have zero mean and no built-in autocorrelation of their sign.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa

from mscale.config import Config
from mscale.errors import MscaleError
from mscale.resample import hours_from_minutes
from mscale.schema import INTERVAL_MS, klines_from_arrays, validate_symbol
from mscale.store import META_SOURCE, list_shards, minute_shard_path, shard_metadata, write_klines

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
SOURCE = "synthetic"

_MINUTE_MS = INTERVAL_MS["1m"]
_HOUR_MS = INTERVAL_MS["1h"]

# (start price, hourly volatility, quote notional per minute, mean trade notional)
_KNOWN = {
    "BTCUSDT": (42_000.0, 0.0050, 900_000.0, 600.0),
    "ETHUSDT": (2_300.0, 0.0065, 600_000.0, 400.0),
    "SOLUSDT": (100.0, 0.0090, 400_000.0, 250.0),
}

# Model constants. Hourly GARCH(1,1) on deseasonalised returns; persistence 0.98.
_GARCH_ALPHA = 0.10
_GARCH_BETA = 0.88
_HOUR_T_DF = 6.0  # hourly variance mixing: sqrt(v) * N is Student-t(6)
_MINUTE_T_DF = 4.0  # minute innovations
_FACTOR_LOADING = 0.65  # share of minute shock variance that is the common market factor
_REGIME_PHI = 0.99  # slow common log-volatility regime, per hour (half-life ~3 days)
_REGIME_SD = 0.40  # its stationary standard deviation (log scale)
_MISSING_MINUTE_P = 0.001


def _symbol_seed(symbol: str) -> int:
    return int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")


def _symbol_params(symbol: str) -> tuple[float, float, float, float]:
    """(start price, hourly vol, quote notional per minute, trade notional); hash-derived if unknown."""
    if symbol in _KNOWN:
        return _KNOWN[symbol]
    u = np.frombuffer(hashlib.sha256(b"params:" + symbol.encode()).digest()[:16], dtype=np.uint32) / 2.0**32
    price = float(10 ** (-1.0 + 4.5 * u[0]))  # 0.1 .. ~3e3
    vol = 0.006 + 0.008 * float(u[1])
    notional = float(10 ** (4.3 + 1.4 * u[2]))  # ~20k .. 500k per minute
    trade = 50.0 + 450.0 * float(u[3])
    return price, vol, notional, trade


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    return date(d.year + y, m + 1, 1)


def month_list(start: date, months: int) -> list[tuple[int, int]]:
    """(year, month) of `months` calendar months from `start`'s."""
    return [(_add_months(start, i).year, _add_months(start, i).month) for i in range(months)]


def _check_args(symbols: Iterable[str], start: date, months: int, seed: int) -> tuple[str, ...]:
    if isinstance(symbols, str):
        symbols = (symbols,)
    syms = tuple(sorted({validate_symbol(s) for s in symbols}))
    if not syms:
        raise MscaleError("demo market needs at least one symbol")
    if not isinstance(months, int) or months < 1 or months > 120:
        raise MscaleError(f"months must be an integer from 1 to 120, got {months!r}")
    if not isinstance(seed, int) or seed < 0:
        raise MscaleError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(start, date) or start.day != 1:
        raise MscaleError(f"start must be the first day of a month (shards are calendar months), got {start!r}")
    return syms


def _t_standard(rng: np.random.Generator, df: float, size: int) -> np.ndarray:
    """Student-t draws scaled to unit variance."""
    return rng.standard_t(df, size) * np.sqrt((df - 2.0) / df)


_WEEKDAY_VOLUME = np.array([1.0, 1.05, 1.05, 1.05, 1.0, 0.6, 0.7])  # Monday first
_WEEKDAY_VOL = np.array([1.0, 1.02, 1.02, 1.02, 1.0, 0.7, 0.75])


def _seasonality(open_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(volume profile, volatility profile) at each minute: Asia, EU and US session peaks, quiet
    weekends. Normalised over a week: mean volume profile 1, mean squared volatility profile 1."""

    def raw(ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hour = ((ms // _MINUTE_MS) % 1440) / 60.0 + 0.5 / 60.0
        weekday = ((ms // 86_400_000) + 3) % 7  # 1970-01-01 was a Thursday
        intraday = np.full(ms.shape, 0.55)
        for centre, amp, width in ((1.5, 0.25, 1.5), (8.0, 0.35, 1.5), (14.5, 0.90, 2.0)):
            d = np.abs(hour - centre)
            d = np.minimum(d, 24.0 - d)
            intraday += amp * np.exp(-0.5 * (d / width) ** 2)
        return intraday * _WEEKDAY_VOLUME[weekday], np.sqrt(intraday) * _WEEKDAY_VOL[weekday]

    week_volume, week_vol = raw(_MINUTE_MS * np.arange(7 * 1440, dtype=np.int64))
    volume, vol = raw(open_ms)
    return volume / week_volume.mean(), vol / np.sqrt(np.mean(week_vol**2))


class _Common:
    """Everything shared by all symbols: the minute grid, seasonality, market factor, regime, outages."""

    def __init__(self, start: date, months: int, seed: int):
        t0 = int(datetime(start.year, start.month, 1, tzinfo=timezone.utc).timestamp() * 1000)
        end = _add_months(start, months)
        t1 = int(datetime(end.year, end.month, 1, tzinfo=timezone.utc).timestamp() * 1000)
        self.n_min = (t1 - t0) // _MINUTE_MS
        self.n_hour = self.n_min // 60
        self.open_ms = t0 + _MINUTE_MS * np.arange(self.n_min, dtype=np.int64)
        self.volume_profile, self.vol_profile = _seasonality(self.open_ms)

        rng = np.random.default_rng([seed, 0])
        self.factor = _t_standard(rng, _MINUTE_T_DF, self.n_min)
        df = _HOUR_T_DF
        self.mix = (df - 2.0) / rng.chisquare(df, self.n_hour)  # mean 1: hourly "news" variance multiplier
        shocks = rng.standard_normal(self.n_hour) * _REGIME_SD * np.sqrt(1.0 - _REGIME_PHI**2)
        x = np.empty(self.n_hour)
        prev = rng.standard_normal() * _REGIME_SD
        for i, e in enumerate(shocks.tolist()):
            prev = _REGIME_PHI * prev + e
            x[i] = prev
        self.regime = np.exp(2.0 * x - 2.0 * _REGIME_SD**2)  # variance multiplier, mean 1

        # Outages: about 3 per six months, one per equal segment so they never overlap.
        n_out = max(1, round(int(rng.integers(2, 5)) * months / 6))
        seg = self.n_hour // n_out
        keep = np.ones(self.n_min, dtype=bool)
        for k in range(n_out):
            length = int(rng.integers(1, 4))
            lo, hi = k * seg + 24, (k + 1) * seg - 24 - length
            h0 = int(rng.integers(lo, max(lo + 1, hi)))
            keep[h0 * 60 : (h0 + length) * 60] = False
        self.keep = keep


def _one_symbol(symbol: str, c: _Common, seed: int) -> pa.Table:
    rng = np.random.default_rng([seed, 1, _symbol_seed(symbol)])
    price0, hour_vol, notional, trade_notional = _symbol_params(symbol)
    n, nh = c.n_min, c.n_hour

    eps = np.sqrt(_FACTOR_LOADING) * c.factor + np.sqrt(1.0 - _FACTOR_LOADING) * _t_standard(rng, _MINUTE_T_DF, n)
    u = np.exp(0.3 * rng.standard_normal(n) - 0.045)  # within-hour variance noise, mean 1
    mix = np.repeat(c.mix, 60)
    w = np.sqrt(mix * u / 60.0) * eps  # deseasonalised minute shocks; each hour sums to ~t(6)
    z2 = (w.reshape(nh, 60).sum(axis=1) ** 2).tolist()

    # GARCH(1,1) on the unit-variance hourly shock: ~4,400 steps for six months, cheap in Python.
    q = np.empty(nh)
    omega, alpha, beta = 1.0 - _GARCH_ALPHA - _GARCH_BETA, _GARCH_ALPHA, _GARCH_BETA
    qt = 1.0
    for i in range(nh):
        q[i] = qt
        qt = omega + (alpha * z2[i] + beta) * qt
    level = np.repeat(hour_vol * np.sqrt(q * c.regime), 60)  # hourly vol, before seasonality
    season = c.vol_profile
    r = level * season * w
    sd = level * season * np.sqrt(mix * u / 60.0)  # each minute's conditional sd

    log_close = np.log(price0) + np.cumsum(r)
    close = np.exp(log_close)
    open_ = np.empty(n)
    open_[0] = price0
    open_[1:] = close[:-1]
    # Extremes of a Brownian bridge from 0 to r with variance sd^2 (exact sampling).
    root_up = np.sqrt(r * r - 2.0 * sd * sd * np.log(rng.random(n)))
    root_dn = np.sqrt(r * r - 2.0 * sd * sd * np.log(rng.random(n)))
    high = np.maximum(open_ * np.exp(0.5 * (r + root_up)), np.maximum(open_, close))
    low = np.minimum(open_ * np.exp(0.5 * (r - root_dn)), np.minimum(open_, close))

    activity_now = np.sqrt(np.repeat(q * c.regime, 60) * mix)  # more volume when volatile
    volume = (
        (notional / price0)
        * c.volume_profile
        * activity_now
        * np.exp(0.6 * rng.standard_normal(n) - 0.18)
        * (0.4 + 0.6 * np.abs(eps) / 0.8)
    )
    frac = np.clip(0.5 + 0.12 * rng.standard_normal(n), 0.1, 0.9)
    vwap = low * (high / low) ** frac  # strictly inside [low, high]
    quote_volume = volume * vwap
    trade_size = (trade_notional / price0) * np.exp(0.25 * rng.standard_normal(n))  # varies bar to bar
    trades = np.maximum(1, rng.poisson(volume / trade_size))
    buy_share = np.clip(0.5 + 0.08 * np.clip(eps, -2.0, 2.0) + 0.08 * rng.standard_normal(n), 0.02, 0.98)
    taker_buy_base = volume * buy_share
    taker_buy_quote = taker_buy_base * vwap

    keep = c.keep & (rng.random(n) >= _MISSING_MINUTE_P)
    return klines_from_arrays(
        symbol,
        c.open_ms[keep],
        "1m",
        open=open_[keep],
        high=high[keep],
        low=low[keep],
        close=close[keep],
        volume=volume[keep],
        quote_volume=quote_volume[keep],
        trades=trades[keep],
        taker_buy_base=taker_buy_base[keep],
        taker_buy_quote=taker_buy_quote[keep],
    )


def generate_minutes(
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    *,
    start: date = date(2024, 1, 1),
    months: int = 6,
    seed: int = 7,
) -> pa.Table:
    """1m klines of the synthetic market, all symbols, in KLINE_SCHEMA. Pure (no I/O).

    Rows are sorted by (symbol, open_time); open_times lie on the UTC minute grid of the calendar
    months `[start, start + months)`, unique per symbol, `close_time = open_time + 1 min`.
    Missing minutes and outage hours are absent rows (never imputed). A minute's open is the
    previous grid minute's close, so it equals the previous row's close except after a gap.
    """
    syms = _check_args(symbols, start, months, seed)
    common = _Common(start, months, seed)
    return pa.concat_tables([_one_symbol(s, common, seed) for s in syms])


def _clear_previous_demo(cfg: Config, symbols: Sequence[str], months: list[tuple[int, int]]) -> None:
    """Remove earlier synthetic shards of these symbol-months so a new seed never mixes with an old one;
    refuse to touch shards from any other source."""
    targets = [minute_shard_path(cfg.market_dir, s, y, m) for s in symbols for (y, m) in months]
    wanted = set(months)
    for s in symbols:
        targets += [sh.path for sh in list_shards(cfg.market_dir, "1h", s) if (sh.year, sh.month) in wanted]
    existing = [p for p in targets if p.exists()]
    for p in existing:
        source = shard_metadata(p).get(META_SOURCE, b"").decode()
        if source != SOURCE:
            raise MscaleError(
                f"{p} holds {source or 'unlabelled'} data, not synthetic; write the demo market to another --data-dir"
            )
    for p in existing:
        p.unlink()


def write_demo(
    cfg: Config,
    *,
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    start: date = date(2024, 1, 1),
    months: int = 6,
    seed: int = 7,
) -> dict:
    """Generate the demo market and write it under `cfg.market_dir` (minute/ and hourly/ shards).

    Both intervals go through `write_klines(..., source="synthetic")` with every month marked
    complete; hourly bars are `hours_from_minutes(minutes)`. Earlier synthetic shards of the same
    symbol-months are replaced, not merged; shards from a real source are never overwritten
    (MscaleError instead). Returns a summary: symbols, months, seed, row and shard counts (in all
    and per symbol), missing minutes, outage hours, seconds taken; `format_summary` prints it.
    """
    t0 = time.perf_counter()
    syms = _check_args(symbols, start, months, seed)
    months_written = month_list(start, months)
    minutes = generate_minutes(syms, start=start, months=months, seed=seed)
    hours = hours_from_minutes(minutes)
    _clear_previous_demo(cfg, syms, months_written)
    wm = write_klines(cfg.market_dir, "1m", minutes, source=SOURCE, complete_months=months_written)
    wh = write_klines(cfg.market_dir, "1h", hours, source=SOURCE, complete_months=months_written)
    end = _add_months(start, months)
    grid_minutes = (end - start).days * 1440
    return {
        "symbols": list(syms),
        "start": start.isoformat(),
        "end": end.isoformat(),  # exclusive
        "months": months,
        "seed": seed,
        "minute_rows": minutes.num_rows,
        "hourly_rows": hours.num_rows,
        "missing_minutes": grid_minutes * len(syms) - minutes.num_rows,
        "by_symbol": {
            s: {"minute_rows": n_min, "hourly_rows": n_hour, "missing_minutes": grid_minutes - n_min}
            for s, n_min, n_hour in zip(syms, _rows_per_symbol(minutes, syms), _rows_per_symbol(hours, syms))
        },
        "outage_hours": _outage_hours(hours, start, end),
        "minute_shards": len(wm.shards),
        "hourly_shards": len(wh.shards),
        "data_dir": str(cfg.market_dir),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _rows_per_symbol(table: pa.Table, symbols: Sequence[str]) -> list[int]:
    counts = dict(zip(*table.group_by("symbol").aggregate([("symbol", "count")]).to_pydict().values()))
    return [int(counts.get(s, 0)) for s in symbols]


def format_summary(summary: dict) -> str:
    """What `mscale demo-data` prints: the span, a short table per symbol, where it wrote, what next."""
    from datetime import timedelta

    last_day = date.fromisoformat(summary["end"]) - timedelta(days=1)
    months = summary["months"]
    lines = [
        f"demo market: {len(summary['symbols'])} symbols, {summary['start']} to {last_day.isoformat()} "
        f"({months} month{'s' if months != 1 else ''}, UTC), seed {summary['seed']}, {summary['seconds']:.1f} s"
    ]
    header = ("symbol", "minute bars", "hourly bars", "missing minutes")
    rows = [(s, f"{v['minute_rows']:,}", f"{v['hourly_rows']:,}", f"{v['missing_minutes']:,}")
            for s, v in summary["by_symbol"].items()]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    outages = summary["outage_hours"]
    if outages:
        shown = ", ".join(outages[:4]) + (f", ... ({len(outages)} in all)" if len(outages) > 4 else "")
        lines.append(f"outage hours (no bar for any symbol): {shown}")
    lines.append(f"wrote {summary['minute_shards']} minute and {summary['hourly_shards']} hourly shards "
                 f"under {summary['data_dir']}")
    lines.append("next: mscale report (data quality) or mscale features (build the warehouse)")
    return "\n".join(lines)


def _outage_hours(hours: pa.Table, start: date, end: date) -> list[str]:
    """UTC hours (ISO) absent for every symbol."""
    t0 = int(datetime(start.year, start.month, start.day, tzinfo=timezone.utc).timestamp() * 1000)
    n = (end - start).days * 24
    seen = np.zeros(n, dtype=np.int64)
    idx = (hours.column("open_time").cast(pa.int64()).to_numpy() - t0) // _HOUR_MS
    np.add.at(seen, idx, 1)
    missing = np.flatnonzero(seen == 0)
    stamps = (t0 + missing * _HOUR_MS).astype("datetime64[ms]")
    return [f"{str(t)[:16]}Z" for t in stamps]
