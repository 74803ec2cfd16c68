"""The synthetic demo market: determinism, layout, exact hourly reconciliation and the stylized facts
that later features and labels rely on, measured on the default market (3 symbols x 6 months)."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mscale.config import load_config
from mscale.demo import DEFAULT_SYMBOLS, generate_minutes, write_demo
from mscale.resample import hours_from_minutes
from mscale.errors import MscaleError
from mscale.schema import KLINE_SCHEMA
from mscale.store import (
    META_SOURCE,
    is_complete,
    list_shards,
    read_klines,
    shard_metadata,
    write_klines,
)

MIN_MS = 60_000
HOUR_MS = 3_600_000
GRID_MINUTES = 182 * 1440  # 2024-01-01 .. 2024-07-01


@pytest.fixture(scope="module")
def market() -> tuple[pa.Table, pa.Table]:
    """The default demo market (generation takes about a second)."""
    minutes = generate_minutes()
    return minutes, hours_from_minutes(minutes)


def _sym(table: pa.Table, symbol: str) -> pa.Table:
    return table.filter(pc.equal(table["symbol"], symbol))


def _ms(table: pa.Table, col: str = "open_time") -> np.ndarray:
    return table[col].cast(pa.int64()).to_numpy()


def _hourly_returns(hours: pa.Table, symbol: str) -> tuple[np.ndarray, np.ndarray]:
    """(decision-time ms, log close-to-close return) over consecutive hourly bars only."""
    h = _sym(hours, symbol)
    ot, close = _ms(h), h["close"].to_numpy()
    ok = np.diff(ot) == HOUR_MS
    return ot[1:][ok], np.diff(np.log(close))[ok]


def _acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


def _anova_f(values: np.ndarray, groups: np.ndarray) -> float:
    """One-way ANOVA F statistic of `values` across `groups`."""
    labels = np.unique(groups)
    grand = values.mean()
    between = sum(len(v) * (v.mean() - grand) ** 2 for v in (values[groups == g] for g in labels))
    within = sum(((v - v.mean()) ** 2).sum() for v in (values[groups == g] for g in labels))
    return float((between / (len(labels) - 1)) / (within / (len(values) - len(labels))))


def _cfg(tmp_path):
    return load_config(data_dir=tmp_path / "data", warehouse=tmp_path / "w.duckdb", project_root=tmp_path)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_is_identical_and_other_seed_differs():
    a = generate_minutes(("BTCUSDT", "ETHUSDT"), months=1, seed=3)
    b = generate_minutes(("BTCUSDT", "ETHUSDT"), months=1, seed=3)
    c = generate_minutes(("BTCUSDT", "ETHUSDT"), months=1, seed=4)
    assert a.equals(b)
    assert not a.equals(c)
    n = min(a.num_rows, c.num_rows)
    assert not np.allclose(a["close"].to_numpy()[:n], c["close"].to_numpy()[:n])


def test_a_symbol_does_not_depend_on_the_others_or_their_order():
    alone = generate_minutes(("ETHUSDT",), months=1, seed=5)
    together = generate_minutes(("SOLUSDT", "ETHUSDT", "BTCUSDT"), months=1, seed=5)
    assert _sym(together, "ETHUSDT").equals(alone)
    assert together["symbol"].unique().to_pylist() == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def test_any_symbol_name_gets_a_plausible_market():
    t = generate_minutes(("DOGEUSDT", "XYZ123"), months=1, seed=1)
    for s in ("DOGEUSDT", "XYZ123"):
        part = _sym(t, s)
        assert 0.98 * 31 * 1440 < part.num_rows < 31 * 1440
        assert pc.min(part["low"]).as_py() > 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(symbols=("btc",)), dict(symbols=()), dict(months=0), dict(seed=-1), dict(start=date(2024, 1, 15))],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(MscaleError):
        generate_minutes(**kwargs)


# --- size, schema, time alignment --------------------------------------------------------------


def test_default_market_size_and_time_grid(market):
    minutes, hours = market
    assert minutes.schema.equals(KLINE_SCHEMA) and hours.schema.equals(KLINE_SCHEMA)
    assert sorted(minutes["symbol"].unique().to_pylist()) == sorted(DEFAULT_SYMBOLS)
    start = int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
    for s in DEFAULT_SYMBOLS:
        m, h = _sym(minutes, s), _sym(hours, s)
        assert 0.99 * GRID_MINUTES < m.num_rows < GRID_MINUTES  # ~260k rows, some missing
        ot = _ms(m)
        assert ot[0] >= start and ot[-1] < start + GRID_MINUTES * MIN_MS
        assert np.all(np.diff(ot) > 0) and np.all(ot % MIN_MS == 0)
        assert np.all(_ms(m, "close_time") - ot == MIN_MS)
        hot = _ms(h)
        assert np.all(np.diff(hot) > 0) and np.all(hot % HOUR_MS == 0)
        assert np.all(_ms(h, "close_time") - hot == HOUR_MS)
    firsts = {s: _sym(minutes, s)["open"][0].as_py() for s in DEFAULT_SYMBOLS}
    assert firsts == {"BTCUSDT": 42_000.0, "ETHUSDT": 2_300.0, "SOLUSDT": 100.0}


# --- writing ----------------------------------------------------------------------------------


def test_write_demo_layout_and_readback(tmp_path):
    cfg = _cfg(tmp_path)
    summary = write_demo(cfg, symbols=("ETHUSDT", "BTCUSDT"), start=date(2024, 2, 1), months=2, seed=11)
    assert summary["minute_shards"] == 4 and summary["hourly_shards"] == 4
    assert summary["symbols"] == ["BTCUSDT", "ETHUSDT"] and summary["end"] == "2024-04-01"
    assert summary["outage_hours"]

    minute = list_shards(cfg.market_dir, "1m")
    assert [(s.symbol, s.year, s.month) for s in minute] == [
        ("BTCUSDT", 2024, 2), ("BTCUSDT", 2024, 3), ("ETHUSDT", 2024, 2), ("ETHUSDT", 2024, 3)
    ]
    assert minute[0].path.name == "binance_BTCUSDT_1m_202402.parquet"
    assert minute[0].path.parent == cfg.market_dir / "minute"
    hourly = list_shards(cfg.market_dir, "1h")
    assert hourly[0].path.name == "binance_BTCUSDT_1h_20240201_20240229.parquet"
    assert hourly[1].path.name == "binance_BTCUSDT_1h_20240301_20240331.parquet"
    for s in minute + hourly:
        assert is_complete(s.path)
        assert shard_metadata(s.path)[META_SOURCE] == b"synthetic"

    minutes = generate_minutes(("BTCUSDT", "ETHUSDT"), start=date(2024, 2, 1), months=2, seed=11)
    hours = hours_from_minutes(minutes)
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert read_klines(cfg.market_dir, "1m", sym).equals(_sym(minutes, sym))
        assert read_klines(cfg.market_dir, "1h", sym).equals(_sym(hours, sym))
    assert summary["minute_rows"] == minutes.num_rows and summary["hourly_rows"] == hours.num_rows


def test_rewriting_with_another_seed_replaces_instead_of_mixing(tmp_path):
    cfg = _cfg(tmp_path)
    write_demo(cfg, symbols=("BTCUSDT",), months=1, seed=1)
    write_demo(cfg, symbols=("BTCUSDT",), months=1, seed=2)
    fresh = generate_minutes(("BTCUSDT",), months=1, seed=2)
    assert read_klines(cfg.market_dir, "1m", "BTCUSDT").equals(fresh)
    assert read_klines(cfg.market_dir, "1h", "BTCUSDT").equals(hours_from_minutes(fresh))


def test_write_demo_refuses_to_overwrite_real_data(tmp_path):
    cfg = _cfg(tmp_path)
    real = generate_minutes(("BTCUSDT",), months=1, seed=1).slice(0, 10)
    write_klines(cfg.market_dir, "1m", real, source="rest")
    with pytest.raises(MscaleError, match="not synthetic"):
        write_demo(cfg, symbols=("BTCUSDT",), months=1)
    assert read_klines(cfg.market_dir, "1m", "BTCUSDT").equals(real)


# --- exact reconciliation, field consistency ---------------------------------------------------


def test_hourly_bars_reconcile_exactly_with_the_minutes(market):
    minutes, hours = market
    con = duckdb.connect()
    con.register("m", minutes)
    expected = con.sql(
        """
        select symbol,
               epoch_ms(time_bucket(interval 1 hour, open_time)) as hour_ms,
               arg_min(open, open_time) as open, max(high) as high, min(low) as low,
               arg_max(close, open_time) as close, sum(volume) as volume,
               sum(quote_volume) as quote_volume, sum(trades)::bigint as trades,
               sum(taker_buy_base) as taker_buy_base, sum(taker_buy_quote) as taker_buy_quote,
               count(*) as n
        from m group by all order by symbol, hour_ms
        """
    ).arrow()
    if isinstance(expected, pa.RecordBatchReader):
        expected = expected.read_all()
    assert hours.num_rows == expected.num_rows
    assert hours["symbol"].equals(expected["symbol"])
    assert np.array_equal(_ms(hours), expected["hour_ms"].to_numpy())
    for col in ("open", "high", "low", "close", "trades"):
        assert np.array_equal(hours[col].to_numpy(), expected[col].to_numpy()), col
    for col in ("volume", "quote_volume", "taker_buy_base", "taker_buy_quote"):
        np.testing.assert_allclose(hours[col].to_numpy(), expected[col].to_numpy(), rtol=1e-12, err_msg=col)
    assert pc.min(expected["n"]).as_py() >= 1


@pytest.mark.parametrize("which", ["minutes", "hours"])
def test_all_fields_are_mutually_consistent(market, which):
    t = market[0] if which == "minutes" else market[1]
    o, h, l, c = (t[k].to_numpy() for k in ("open", "high", "low", "close"))
    v, q, n = t["volume"].to_numpy(), t["quote_volume"].to_numpy(), t["trades"].to_numpy()
    tb, tq = t["taker_buy_base"].to_numpy(), t["taker_buy_quote"].to_numpy()
    assert all(t[k].null_count == 0 for k in t.column_names)
    assert np.all(l > 0) and np.all(l <= np.minimum(o, c)) and np.all(h >= np.maximum(o, c))
    assert np.all(v > 0) and np.all(n > 0) and t["trades"].type == pa.int64()
    vwap = q / v
    assert np.all(vwap >= l * (1 - 1e-12)) and np.all(vwap <= h * (1 + 1e-12))
    assert np.all(tb >= 0) and np.all(tb <= v)
    assert np.all(tq >= 0) and np.all(tq <= q * (1 + 1e-12))
    tvwap = tq[tb > 0] / tb[tb > 0]
    assert np.all(tvwap >= l[tb > 0] * (1 - 1e-12)) and np.all(tvwap <= h[tb > 0] * (1 + 1e-12))


def test_minute_bars_chain_and_volume_behaves(market):
    minutes, _ = market
    for s in DEFAULT_SYMBOLS:
        m = _sym(minutes, s)
        ot, o, c = _ms(m), m["open"].to_numpy(), m["close"].to_numpy()
        v, n = m["volume"].to_numpy(), m["trades"].to_numpy()
        consecutive = np.diff(ot) == MIN_MS
        assert np.all(o[1:][consecutive] == c[:-1][consecutive])  # open = previous close
        assert np.mean(o[1:] == c[:-1]) > 0.99
        assert np.corrcoef(n, v)[0, 1] > 0.9  # trades roughly proportional to volume
        r = np.abs(np.diff(np.log(c)))[consecutive]
        assert np.corrcoef(v[1:][consecutive], r)[0, 1] > 0.2  # volume goes with |return|
        assert np.mean(v) > 1.1 * np.median(v) and np.max(v) > 10 * np.median(v)  # heavy right tail


# --- gaps ------------------------------------------------------------------------------------


def test_missing_minutes_are_rare_and_outages_hit_minutes_and_hours(market):
    minutes, hours = market
    start = int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
    grid_hours = GRID_MINUTES // 60
    missing_hours = {}
    for s in DEFAULT_SYMBOLS:
        hidx = (_ms(_sym(hours, s)) - start) // HOUR_MS
        missing_hours[s] = set(range(grid_hours)) - set(hidx.tolist())
    outages = missing_hours["BTCUSDT"]
    assert all(m == outages for m in missing_hours.values())  # exchange-wide
    assert 2 <= len(outages) <= 12
    runs = np.split(np.array(sorted(outages)), np.flatnonzero(np.diff(sorted(outages)) > 1) + 1)
    assert 2 <= len(runs) <= 4 and all(1 <= len(r) <= 3 for r in runs)
    for s in DEFAULT_SYMBOLS:
        midx = (_ms(_sym(minutes, s)) - start) // MIN_MS
        assert not set((midx // 60).tolist()) & outages  # no minute inside an outage
        scattered = GRID_MINUTES - 60 * len(outages) - len(midx)
        assert 0 < scattered < 0.01 * GRID_MINUTES
        assert scattered / GRID_MINUTES == pytest.approx(0.001, rel=0.5)


# --- stylized facts --------------------------------------------------------------------------


def test_volatility_clusters(market):
    _, hours = market
    for s in DEFAULT_SYMBOLS:
        _, r = _hourly_returns(hours, s)
        acfs = [_acf(np.abs(r), k) for k in range(1, 25)]
        assert min(acfs) > 0.05, (s, np.round(acfs, 3))


def test_hourly_returns_are_fat_tailed(market):
    _, hours = market
    for s in DEFAULT_SYMBOLS:
        _, r = _hourly_returns(hours, s)
        z = (r - r.mean()) / r.std()
        assert np.mean(z**4) - 3 > 1, s


def test_no_free_money_in_signed_returns(market):
    _, hours = market
    for s in DEFAULT_SYMBOLS:
        _, r = _hourly_returns(hours, s)
        assert abs(_acf(r, 1)) < 0.1, s
        assert abs(r.mean() / (r.std() / np.sqrt(len(r)))) < 3, s  # no significant drift


def test_symbols_are_correlated(market):
    _, hours = market
    rets = {s: _hourly_returns(hours, s) for s in DEFAULT_SYMBOLS}
    for a, b in itertools.combinations(DEFAULT_SYMBOLS, 2):
        _, ia, ib = np.intersect1d(rets[a][0], rets[b][0], return_indices=True)
        rho = np.corrcoef(rets[a][1][ia], rets[b][1][ib])[0, 1]
        assert 0.3 <= rho <= 0.9, (a, b, rho)


def test_intraday_seasonality_of_volume_and_volatility(market):
    _, hours = market
    for s in DEFAULT_SYMBOLS:
        h = _sym(hours, s)
        hour_of_day = (_ms(h) // HOUR_MS) % 24
        v = h["volume"].to_numpy()
        by_hour = np.array([v[hour_of_day == k].mean() for k in range(24)])
        assert by_hour.max() / by_hour.min() > 1.3, s
        assert _anova_f(np.log(v), hour_of_day) > 10, s  # F(23, ~4300) at p = 0.001 is ~2.3
        ts, r = _hourly_returns(hours, s)
        hod = ((ts - HOUR_MS) // HOUR_MS) % 24  # hour of the bar that produced the return
        abs_by_hour = np.array([np.abs(r[hod == k]).mean() for k in range(24)])
        assert abs_by_hour.max() / abs_by_hour.min() > 1.3, s


def test_weekends_are_quieter(market):
    _, hours = market
    for s in DEFAULT_SYMBOLS:
        h = _sym(hours, s)
        weekday = ((_ms(h) // 86_400_000) + 3) % 7  # Monday = 0
        v = h["volume"].to_numpy()
        assert v[weekday >= 5].mean() < 0.85 * v[weekday < 5].mean(), s
        assert _anova_f(np.log(v), weekday) > 10, s
        # Volatility: weekend vs weekdays of the same week, so slow volatility regimes cancel out.
        ts, r = _hourly_returns(hours, s)
        day = (ts - HOUR_MS) // 86_400_000
        wd, week, a = (day + 3) % 7, (day + 3) // 7, np.abs(r)
        ratios = []
        for w in np.unique(week):
            weekend, weekdays = (week == w) & (wd >= 5), (week == w) & (wd < 5)
            if weekend.sum() >= 24 and weekdays.sum() >= 48:
                ratios.append(a[weekend].mean() / a[weekdays].mean())
        assert len(ratios) >= 20 and np.median(ratios) < 0.9, s


