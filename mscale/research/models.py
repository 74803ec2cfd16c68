"""The model families (`--model logistic|lgbm|histgb`), with fixed seeds and deterministic settings.

One family trains every task of a run: the direction classifier (y_dir: -1, 0, +1) and the binary
auxiliary classifiers (y_vol_high, y_volm_up) whose probabilities feed the engine's filters.
Two fits on the same rows with the same seed give the same probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mscale.errors import MscaleError
from mscale.research.preprocess import Preprocessor

MODELS = ("logistic", "lgbm", "histgb")


def make_estimator(kind: str, *, seed: int):
    """An unfitted scikit-learn-style classifier of family `kind`. LightGBM is single-threaded here
    and the pipeline caps OpenMP/BLAS at one thread: runs parallelise across models instead (a
    fold's models are small, and OpenMP threads spinning on a busy 2-core machine made LightGBM
    10-40x slower)."""
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        # multinomial for three classes (lbfgs' default); mild L2 keeps it stable on correlated features
        return LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    if kind == "lgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(
            n_estimators=150, learning_rate=0.05, num_leaves=15, min_child_samples=100,
            subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
            random_state=seed, n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1,
        )
    if kind == "histgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=100, l2_regularization=1.0,
            early_stopping=False, random_state=seed,
        )
    raise MscaleError(f"unknown model {kind!r}: use one of {', '.join(MODELS)}")


@dataclass
class FittedModel:
    """A preprocessor and a classifier fitted on one fold's training rows for one task."""

    kind: str
    preprocessor: Preprocessor
    estimator: object
    classes: np.ndarray

    def predict_proba(self, X: np.ndarray, classes: tuple) -> np.ndarray:
        """Probabilities in the order of `classes`; a class the training rows lacked gets 0."""
        p = self.estimator.predict_proba(self.preprocessor.transform(X))
        out = np.zeros((len(X), len(classes)))
        for j, c in enumerate(self.classes):
            out[:, classes.index(c)] = p[:, j]
        return out

    def importance(self) -> dict[str, float]:
        """Gain per input column for trees, |coefficient| (summed over classes) for logistic."""
        names = self.preprocessor.feature_names_out_
        if self.kind == "logistic":
            values = np.abs(self.estimator.coef_).sum(axis=0)
        elif self.kind == "lgbm":
            values = self.estimator.booster_.feature_importance(importance_type="gain")
        else:
            values = np.zeros(len(names))
            for trees in self.estimator._predictors:  # one list of trees per iteration
                for tree in trees:
                    split = tree.nodes[~tree.nodes["is_leaf"].astype(bool)]
                    np.add.at(values, split["feature_idx"], split["gain"])
        return dict(zip(names, map(float, values)))


@dataclass
class PriorModel:
    """The training rows' class shares for every row: what an auxiliary task gets when a fold has
    too few labelled rows (or one class) to learn from. Recorded as model "prior" in folds.csv."""

    shares: dict[float, float]
    kind: str = "prior"

    def predict_proba(self, X: np.ndarray, classes: tuple) -> np.ndarray:
        return np.tile([self.shares.get(c, 0.0) for c in classes], (len(X), 1))

    def importance(self) -> dict[str, float]:
        return {}


def prior_model(y: np.ndarray) -> PriorModel:
    values, counts = np.unique(y, return_counts=True)
    return PriorModel({float(v): c / counts.sum() for v, c in zip(values, counts)} if len(y) else {0.0: 1.0})


def fit_model(kind: str, X: np.ndarray, y: np.ndarray, columns: list[str], *, seed: int) -> FittedModel:
    """Fit preprocessing and a classifier of family `kind` on training rows (X, y)."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise MscaleError(f"the training rows hold a single class ({classes.tolist()}): the fold cannot be learned; "
                          "use fewer splits or a longer history")
    pre = Preprocessor(impute=kind == "logistic").fit(X, columns)
    estimator = make_estimator(kind, seed=seed)
    estimator.fit(pre.transform(X), y)
    return FittedModel(kind, pre, estimator, np.asarray(estimator.classes_))
