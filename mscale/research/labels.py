"""Labels finished per fold in Python (CONTRACT §7): the ones whose threshold must come from the
fold's training rows, so that no test row shapes its own label."""

from __future__ import annotations

import numpy as np

from mscale.errors import MscaleError


def vol_high(fwd_rv: np.ndarray, training_rows: np.ndarray, *, quantile: float = 0.8) -> tuple[np.ndarray, float]:
    """y_vol_high for every row: 1.0 where fwd_rv > the `quantile` of fwd_rv over `training_rows`
    (linear interpolation, NULL values ignored), 0.0 otherwise, NaN where fwd_rv is NULL.
    Returns (labels, threshold). Rows outside `training_rows` never move the threshold."""
    train = fwd_rv[training_rows]
    train = train[np.isfinite(train)]
    if len(train) == 0:
        raise MscaleError("no training row has a forward realised volatility: the fold is too short for y_vol_high")
    threshold = float(np.quantile(train, quantile))
    labels = np.where(np.isfinite(fwd_rv), (fwd_rv > threshold).astype(float), np.nan)
    return labels, threshold
