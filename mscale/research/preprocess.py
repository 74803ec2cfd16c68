"""Per-fold preprocessing, fitted on a fold's training rows only (CONTRACT §8).

`Preprocessor` follows scikit-learn: `__init__` stores options, `fit` learns from the training rows
and returns self, learned state ends in `_`, `transform` applies it unchanged to any rows (the
validation and test rows never influence what was learned).
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler

from mscale.errors import MscaleError


class Preprocessor:
    """Drop near-constant columns, prune one of each highly correlated pair, standardise.

    - near-constant: fewer than two distinct finite values, or a standard deviation below
      `min_std` × (1 + |mean|), on the training rows;
    - correlated: for each pair with |Pearson r| > `corr_threshold` on the training rows (NaN
      taken as the column's training median for this purpose), the later column is dropped;
    - StandardScaler on what is left; ±inf counts as missing;
    - `impute=True` (models that cannot take NaN, e.g. logistic): a missing value becomes the
      column's training median (0 after scaling is the mean, not the median) and every column
      that had a missing training value gets a 0/1 missing-indicator column. Without it, NaN
      passes through (LightGBM and HistGradientBoosting route it themselves).
    """

    def __init__(self, *, impute: bool = False, corr_threshold: float = 0.98, min_std: float = 1e-12):
        self.impute = impute
        self.corr_threshold = corr_threshold
        self.min_std = min_std

    def fit(self, X: np.ndarray, columns: list[str]) -> "Preprocessor":
        X = _finite(X)
        if X.shape[0] < 2:
            raise MscaleError(f"cannot fit preprocessing on {X.shape[0]} training rows: the fold needs more data")
        keep = [j for j in range(X.shape[1]) if not self._near_constant(X[:, j])]
        medians = np.array([np.nanmedian(X[:, j]) for j in keep]) if keep else np.empty(0)
        keep = self._uncorrelated(X, keep, medians)
        if not keep:
            raise MscaleError("every feature column is constant on the training rows of a fold: nothing to learn from")
        self.dropped_ = [columns[j] for j in range(X.shape[1]) if j not in set(keep)]
        self.keep_ = np.array(keep, dtype=np.int64)
        kept = X[:, self.keep_]
        self.scaler_ = StandardScaler().fit(kept)
        scaled = self.scaler_.transform(kept)
        self.medians_ = np.nanmedian(scaled, axis=0)
        self.indicators_ = np.flatnonzero(np.isnan(kept).any(axis=0)) if self.impute else np.empty(0, np.int64)
        names = [columns[j] for j in keep]
        self.feature_names_out_ = names + [f"{names[j]}__missing" for j in self.indicators_]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        kept = _finite(X)[:, self.keep_]
        scaled = self.scaler_.transform(kept)
        if not self.impute:
            return scaled
        missing = np.isnan(scaled)
        filled = np.where(missing, self.medians_, scaled)
        return np.hstack([filled, missing[:, self.indicators_].astype(float)])

    def _near_constant(self, column: np.ndarray) -> bool:
        values = column[np.isfinite(column)]
        if len(values) < 2 or values.min() == values.max():
            return True
        return bool(values.std() < self.min_std * (1.0 + abs(values.mean())))

    def _uncorrelated(self, X: np.ndarray, keep: list[int], medians: np.ndarray) -> list[int]:
        if len(keep) < 2:
            return keep
        filled = np.where(np.isnan(X[:, keep]), medians, X[:, keep])
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.abs(np.corrcoef(filled, rowvar=False))
        chosen: list[int] = []
        for i in range(len(keep)):
            if all(not corr[i, c] > self.corr_threshold for c in chosen):
                chosen.append(i)
        return [keep[i] for i in chosen]


def _finite(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    return np.where(np.isfinite(X), X, np.nan)
