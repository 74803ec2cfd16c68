"""The pooled portfolio (CONTRACT §9): equal weight over the tokens that have a bar that hour,
rebalanced hourly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def equal_weight(hour: np.ndarray, in_pool: np.ndarray, values: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hour, the equal-weight mean over the tokens in the pool that hour.

    `hour` keys each token-row by its decision hour; `in_pool` marks the rows whose token has a
    bar in the hour after the decision (the hour the pool holds it). Rows outside the pool (a
    token closing before a gap or at its end) are flat; their values (the closing costs) are
    added to the hour's total, which is divided by the tokens in the pool, so the pool pays them.
    An hour with no token in the pool (the final hour) averages its rows.
    Returns (hours ascending, tokens in the pool per hour, means (len(values), hours)).
    """
    hour = np.asarray(hour, dtype=np.int64)
    if len(hour) == 0:
        return hour, hour, np.empty((len(values), 0))
    low = int(hour.min())
    slot = hour - low  # hours are a dense range (years of hours), so a bincount beats sorting
    rows = np.bincount(slot)
    present = np.flatnonzero(rows)
    members = np.bincount(slot, weights=np.asarray(in_pool, dtype=float), minlength=len(rows))[present]
    divisor = np.where(members > 0, members, rows[present])
    means = np.empty((len(values), len(present)))
    for j, v in enumerate(values):
        means[j] = np.bincount(slot, weights=v, minlength=len(rows))[present] / divisor
    return present + low, members.astype(np.int64), means
