"""Hourly vs multiscale: the difference of two arms' out-of-sample Sharpe ratios with a paired
block-bootstrap interval.

Both arms trade the same hours (same folds, same rows), so their hourly returns are resampled
jointly: each bootstrap replicate draws the same blocks of consecutive hours for both, which keeps
the two arms' correlation (they trade the same market) and the serial dependence inside a block
(volatility clustering, intraday seasonality). Blocks are 168 hours (one week) by default: longer
than a day's seasonality and the demo market's volatility half-life (about three days), short
enough that a year of OOS hours still holds about fifty blocks. Circular blocks (Politis & Romano's
circular block bootstrap) so every hour is equally likely to be drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mscale.backtest.metrics import HOURS_PER_YEAR, sharpe

DEFAULT_BLOCK_H = 168
DEFAULT_REPLICATES = 2000


@dataclass(frozen=True)
class Comparison:
    """Sharpe of each arm, their difference (a − b) and its bootstrap interval."""

    sharpe_a: float
    sharpe_b: float
    difference: float
    low: float
    high: float
    level: float
    block_h: int
    replicates: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {**self.__dict__, "significant": self.significant}


def paired_block_bootstrap(a: np.ndarray, b: np.ndarray, *, block_h: int = DEFAULT_BLOCK_H,
                           replicates: int = DEFAULT_REPLICATES, level: float = 0.95, seed: int = 0) -> Comparison:
    """Compare the annualised Sharpe ratios of two aligned hourly return series (same hours).

    The interval is the percentile interval of the replicates' differences. Deterministic for a
    given seed. With fewer than two blocks of hours the interval is (NaN, NaN).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"the two arms must cover the same hours, got {a.shape} and {b.shape}")
    n = len(a)
    point = sharpe(a) - sharpe(b)
    if n < 2 * block_h:
        return Comparison(sharpe(a), sharpe(b), point, math.nan, math.nan, level, block_h, 0)
    rng = np.random.default_rng(seed)
    blocks = -(-n // block_h)
    lengths = np.full(blocks, block_h)
    lengths[-1] = n - (blocks - 1) * block_h  # the replicate is cut to n hours
    starts = rng.integers(0, n, (replicates, blocks))
    diffs = _sharpe_of_blocks(a, starts, lengths) - _sharpe_of_blocks(b, starts, lengths)
    finite = diffs[np.isfinite(diffs)]
    tail = (1 - level) / 2
    low, high = np.quantile(finite, [tail, 1 - tail]) if len(finite) else (math.nan, math.nan)
    return Comparison(sharpe(a), sharpe(b), point, float(low), float(high), level, block_h, replicates)


def _sharpe_of_blocks(r: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Annualised Sharpe of each replicate made of circular blocks (starts[k, j], lengths[j]) of r,
    from block sums of r and r² (cumulative sums over r wrapped once), without building the series."""
    n = len(r)
    wrapped = np.concatenate([r, r])
    s1 = np.concatenate([[0.0], np.cumsum(wrapped)])
    s2 = np.concatenate([[0.0], np.cumsum(wrapped * wrapped)])
    total = (s1[starts + lengths] - s1[starts]).sum(axis=1)
    squares = (s2[starts + lengths] - s2[starts]).sum(axis=1)
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, mean / np.sqrt(np.maximum(var, 0)) * math.sqrt(HOURS_PER_YEAR), np.nan)
