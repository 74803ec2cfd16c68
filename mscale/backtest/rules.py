"""The trading rules: how probabilities become positions (thresholds, filters, risk knobs)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np

from mscale.errors import MscaleError

FILTERS = ("none", "vol", "volm", "both")
# used where neither Rules nor the predictions give a threshold
THRESHOLD_DEFAULTS = {"theta_long": 0.0, "theta_short": 0.0, "theta_vol": 0.5, "theta_volm": 0.5}
# signal thresholds apply to P(+1) - P(-1) in [-1, 1], filter thresholds to a probability
_THRESHOLD_RANGES = {"theta_long": (0.0, 2.0), "theta_short": (0.0, 2.0), "theta_vol": (0.0, 1.0), "theta_volm": (0.0, 1.0)}


def check_thresholds(name: str, values, what: str | None = None):
    """`values` (a number or an array) if every value is a finite number in `name`'s range.

    Signal thresholds are >= 0 (a negative one would let the long and the short region overlap);
    filter thresholds are probabilities in [0, 1]."""
    low, high = _THRESHOLD_RANGES[name]
    array = np.asarray(values, dtype=float) if not isinstance(values, bool) else np.array(np.nan)
    bad = ~np.isfinite(array) | (array < low) | (array > high)
    if bad.any():
        shown = values if array.ndim == 0 else array[np.flatnonzero(bad)[0]]
        raise MscaleError(f"{what or name} must be a number in [{low:g}, {high:g}], got {shown!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class Rules:
    """Signal -> position rules, validated on construction (doc/backtest.md, "Signal → position").

    Thresholds left as None are read per row from the predictions' `theta_long`, `theta_short`,
    `theta_vol`, `theta_volm` columns (tuned per token and fold) and default to 0 (signal) and
    0.5 (filters) where those columns are absent; a number here overrides every row.
    """

    theta_long: float | None = None  # long when P(+1) - P(-1) > theta_long
    theta_short: float | None = None  # short when P(+1) - P(-1) < -theta_short
    long_only: bool = False
    filter: str = "none"  # none | vol | volm | both: a new position needs P(aux) > its threshold
    theta_vol: float | None = None
    theta_volm: float | None = None
    filter_exit: bool = False  # also close an open position when its filter stops passing
    min_hold: int = 0  # a position may not change before it has been held this many rows
    cooldown: int = 0  # rows that stay flat after every exit (and no flips when > 0)
    max_trades_per_day: int | None = None  # entries per UTC day; None = no cap

    def __post_init__(self) -> None:
        for name in THRESHOLD_DEFAULTS:
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, Real):
                    raise MscaleError(f"{name} must be a number, got {value!r}")
                object.__setattr__(self, name, float(check_thresholds(name, value)))
        if self.filter not in FILTERS:
            raise MscaleError(f"unknown filter {self.filter!r}: use one of {', '.join(FILTERS)}")
        for name in ("min_hold", "cooldown", "max_trades_per_day"):
            value = getattr(self, name)
            if value is None and name == "max_trades_per_day":
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 0:
                raise MscaleError(f"{name} must be a whole number >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("long_only", "filter_exit"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise MscaleError(f"{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))

    @property
    def use_vol(self) -> bool:
        return self.filter in ("vol", "both")

    @property
    def use_volm(self) -> bool:
        return self.filter in ("volm", "both")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
