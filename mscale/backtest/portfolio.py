"""The pooled portfolio (CONTRACT §9): equal weight over the tokens that have a bar that hour,
rebalanced hourly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def equal_weight(hour: np.ndarray, values: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hour, the mean over the rows of that hour.

    `hour` (n,) keys each token-row by its decision hour; `values` holds k per-row series (n,)
    (returns, exposures, ...). Returns (hours ascending, tokens present per hour, means (k, hours)).
    A token without a row at an hour is simply not in that hour's mean: weights are 1 / (tokens
    present), so the pooled return compounds the equal-weight mean of the present tokens' returns.
    """
    hour = np.asarray(hour, dtype=np.int64)
    if len(hour) == 0:
        return hour, hour, np.empty((len(values), 0))
    low = int(hour.min())
    slot = hour - low  # hours are a dense range (years of hours), so a bincount beats sorting
    counts = np.bincount(slot)
    present = np.flatnonzero(counts)
    means = np.empty((len(values), len(present)))
    for j, v in enumerate(values):
        means[j] = np.bincount(slot, weights=v, minlength=len(counts))[present] / counts[present]
    return present + low, counts[present], means
