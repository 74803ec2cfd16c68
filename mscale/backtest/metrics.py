"""Performance metrics: pure functions of per-bar return arrays (doc/backtest.md, "Metrics").

Returns are simple per-bar (hourly) returns, compounded; a year is 8,760 hourly bars or 365 days
(CONTRACT §9). An undefined ratio (no variance, no drawdown, too few bars) is NaN, never 0.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

HOURS_PER_YEAR = 8760
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def sharpe(returns: np.ndarray) -> float:
    """Annualised Sharpe ratio: mean / sample std (ddof 1) of the bar returns x sqrt(8760)."""
    r = np.asarray(returns, dtype=float)
    if len(r) < 2:
        return math.nan
    sd = r.std(ddof=1)
    return float(r.mean() / sd * math.sqrt(HOURS_PER_YEAR)) if sd > 0 else math.nan


def sortino(returns: np.ndarray) -> float:
    """Annualised Sortino ratio: mean / sqrt(mean(min(r, 0)^2)) x sqrt(8760) (target 0, all bars)."""
    r = np.asarray(returns, dtype=float)
    if len(r) < 2:
        return math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    return float(r.mean() / downside * math.sqrt(HOURS_PER_YEAR)) if downside > 0 else math.nan


def equity_curve(returns: np.ndarray) -> np.ndarray:
    """Equity after each bar, starting from 1 before the first."""
    return np.cumprod(1.0 + np.asarray(returns, dtype=float))


def max_drawdown(returns: np.ndarray, end_ms: np.ndarray, start_ms: int) -> tuple[float, float]:
    """(maximum drawdown as a positive fraction, its duration in hours).

    Equity starts at 1 at `start_ms` and is at `equity_curve(returns)[i]` at `end_ms[i]`. The
    duration runs from the last time equity stood at the peak before the deepest trough to the
    first time after it that equity is back at that peak (or to the last bar, if never).
    """
    equity = np.concatenate(([1.0], equity_curve(returns)))
    times = np.concatenate(([start_ms], np.asarray(end_ms, dtype=np.int64)))
    peak = np.maximum.accumulate(equity)
    drawdown = 1.0 - equity / peak
    trough = int(np.argmax(drawdown))
    depth = float(drawdown[trough])
    if depth <= 0:
        return 0.0, 0.0
    level = peak[trough]
    at_peak = np.flatnonzero(equity[: trough + 1] >= level)
    start = int(at_peak[-1])
    back = np.flatnonzero(equity[trough:] >= level)
    end = trough + int(back[0]) if len(back) else len(equity) - 1
    return depth, float(times[end] - times[start]) / HOUR_MS


def cagr(total_return: float, span_hours: float) -> float:
    """Compound annual growth over `span_hours` of calendar time (365-day years)."""
    if span_hours <= 0 or total_return <= -1:
        return math.nan if span_hours <= 0 else -1.0
    exponent = HOURS_PER_YEAR / span_hours * math.log1p(total_return)
    return math.expm1(exponent) if exponent < 700 else math.inf  # short spans annualise absurdly


def _moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """Per-bar Sharpe (ddof 1), skewness and (non-excess) kurtosis from population moments."""
    r = np.asarray(returns, dtype=float)
    n = len(r)
    if n < 3:
        return math.nan, math.nan, math.nan, n
    mean = r.mean()
    d = r - mean
    d2 = d * d
    m2 = float(d2.mean())
    if m2 <= 0:
        return math.nan, math.nan, math.nan, n
    skew = float(np.dot(d2, d)) / n / m2**1.5
    kurt = float(np.dot(d2, d2)) / n / m2**2
    return float(mean / math.sqrt(m2 * n / (n - 1))), skew, kurt, n


def probabilistic_sharpe(sr: float, skew: float, kurt: float, n: int, sr_benchmark: float = 0.0) -> float:
    """PSR (Bailey & López de Prado 2012): P(true Sharpe > sr_benchmark) given an observed per-bar
    Sharpe `sr` over `n` bars with returns of skewness `skew` and kurtosis `kurt` (3 = normal):

        PSR = Φ( (sr - sr*) sqrt(n - 1) / sqrt(1 - skew sr + (kurt - 1) / 4 sr²) )
    """
    if not all(map(math.isfinite, (sr, skew, kurt))) or n < 2:
        return math.nan
    denominator = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    if denominator <= 0:
        return math.nan
    return _NORMAL.cdf((sr - sr_benchmark) * math.sqrt(n - 1) / math.sqrt(denominator))


def expected_max_sharpe(trials: int, variance: float) -> float:
    """Expected maximum of `trials` Sharpe ratios with true value 0 and variance `variance`
    (Bailey & López de Prado 2014, the false-strategy theorem):

        E[max SR] ≈ sqrt(V) ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e))),  γ = Euler-Mascheroni
    """
    if trials < 1 or variance < 0:
        raise ValueError(f"trials must be >= 1 and variance >= 0, got {trials}, {variance}")
    if trials == 1 or variance == 0:
        return 0.0
    z1 = _NORMAL.inv_cdf(1.0 - 1.0 / trials)
    z2 = _NORMAL.inv_cdf(1.0 - 1.0 / (trials * math.e))
    return math.sqrt(variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2)


def psr(returns: np.ndarray, sr_benchmark: float = 0.0) -> float:
    """PSR of a return series against a per-bar benchmark Sharpe (default 0)."""
    return probabilistic_sharpe(*_moments(returns), sr_benchmark)


def deflated_benchmark(trials: int, trials_sharpe_var: float) -> float:
    """The per-bar Sharpe the best of `trials` configurations would show by luck alone, given the
    variance of the trials' annualised Sharpe ratios (converted to per-bar units: / 8760)."""
    return expected_max_sharpe(trials, trials_sharpe_var / HOURS_PER_YEAR)


def dsr(returns: np.ndarray, trials: int, trials_sharpe_var: float) -> float:
    """Deflated Sharpe ratio (Bailey & López de Prado 2014): the PSR against
    `deflated_benchmark(trials, trials_sharpe_var)`. One trial: DSR = PSR."""
    return psr_and_dsr(returns, trials, trials_sharpe_var)[1]


def psr_and_dsr(returns: np.ndarray, trials: int, trials_sharpe_var: float) -> tuple[float, float]:
    """(PSR against 0, DSR) of one series, its moments computed once."""
    moments = _moments(returns)
    return probabilistic_sharpe(*moments), probabilistic_sharpe(*moments, deflated_benchmark(trials, trials_sharpe_var))


def summarise(
    *,
    net: np.ndarray,
    gross: np.ndarray,
    exposure: np.ndarray,
    turnover: np.ndarray,
    end_ms: np.ndarray,
    start_ms: int,
    trade_net: np.ndarray,
    trade_bars: np.ndarray,
    trials: int = 1,
    trials_sharpe_var: float = 0.0,
) -> dict[str, float]:
    """Every metric of one return series (a token's or the pool's, at one fee tier).

    `exposure` and `turnover` are per bar (|position| and |Δposition|; for the pool, their means
    over the tokens present); `trade_net` and `trade_bars` describe the trades behind the series.
    """
    net = np.asarray(net, dtype=float)
    span_hours = (int(end_ms[-1]) - int(start_ms)) / HOUR_MS if len(net) else 0.0
    days = span_hours / 24.0
    total = float(np.prod(1.0 + net) - 1.0) if len(net) else 0.0
    total_gross = float(np.prod(1.0 + np.asarray(gross, dtype=float)) - 1.0) if len(net) else 0.0
    dd, dd_hours = max_drawdown(net, end_ms, start_ms) if len(net) else (0.0, 0.0)
    growth = cagr(total, span_hours)
    in_market = np.asarray(exposure) > 0
    sr, sr_gross = sharpe(net), sharpe(gross)
    psr_net, dsr_net = psr_and_dsr(net, trials, trials_sharpe_var)
    return {
        "n_bars": int(len(net)),
        "n_trades": int(len(trade_net)),
        "total_return": total,
        "cagr": growth,
        "sharpe": sr,
        "sortino": sortino(net),
        "max_drawdown": dd,
        "max_dd_duration_h": dd_hours,
        "calmar": growth / dd if dd > 0 and math.isfinite(growth) else math.nan,
        "hit_rate_trade": float(np.mean(np.asarray(trade_net) > 0)) if len(trade_net) else math.nan,
        "hit_rate_bar": float(np.mean(net[in_market] > 0)) if in_market.any() else math.nan,
        "exposure": float(np.mean(exposure)) if len(net) else math.nan,
        "turnover": float(np.sum(turnover) / span_hours * HOURS_PER_YEAR) if span_hours > 0 else math.nan,
        "trades_per_day": len(trade_net) / days if days > 0 else math.nan,
        "avg_hold_h": float(np.mean(trade_bars)) if len(trade_bars) else math.nan,
        "fee_drag_return": total_gross - total,
        "fee_drag_sharpe": sr_gross - sr,
        "psr": psr_net,
        "dsr": dsr_net,
    }
