"""The trading rules: how probabilities become positions (thresholds, filters, risk knobs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from mscale.errors import MscaleError

FILTERS = ("none", "vol", "volm", "both")


@dataclass(frozen=True)
class Rules:
    """Signal -> position rules, validated on construction (doc/backtest.md, "Knobs").

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
    min_hold: int = 0  # a position may not change before it has been held this many bars
    cooldown: int = 0  # rows that stay flat after every exit (and no flips when > 0)
    max_trades_per_day: int | None = None  # entries per UTC day; None = no cap

    def __post_init__(self) -> None:
        for name in ("theta_long", "theta_short", "theta_vol", "theta_volm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise MscaleError(f"{name} must be a finite number, got {value!r}")
        if self.filter not in FILTERS:
            raise MscaleError(f"unknown filter {self.filter!r}: use one of {', '.join(FILTERS)}")
        for name in ("min_hold", "cooldown", "max_trades_per_day"):
            value = getattr(self, name)
            if value is None and name == "max_trades_per_day":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MscaleError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("long_only", "filter_exit"):
            if not isinstance(getattr(self, name), bool):
                raise MscaleError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def use_vol(self) -> bool:
        return self.filter in ("vol", "both")

    @property
    def use_volm(self) -> bool:
        return self.filter in ("volm", "both")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
