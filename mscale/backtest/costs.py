"""Trading costs: fee tiers (CONTRACT §9) and slippage, as rates per unit of |Δposition|."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from mscale.errors import MscaleError
from mscale.names import TIER_NAME_RE

# Binance spot fee levels the contract names (bps per side); others are given as NAME=BPS.
DEFAULT_FEES: dict[str, float] = {"gross": 0.0, "VIP9": 2.0, "VIP4": 5.4}
KNOWN_TIERS = dict(DEFAULT_FEES)

SPREAD_COLUMNS = {"cs": "spread_cs_60m", "ar": "spread_ar_60m"}


def parse_fees(fees: Mapping[str, float] | Iterable[str] | str | None) -> dict[str, float]:
    """Fee tiers as {name: bps}, in the given order.

    Accepts a mapping, or names and NAME=BPS items (a list, or one comma-separated string):
    `"gross,VIP9,taker=10"`. A bare name must be a known tier (gross, VIP9, VIP4).
    """
    if fees is None:
        return dict(DEFAULT_FEES)
    if isinstance(fees, str):
        fees = [item for item in fees.split(",") if item.strip()]
    items = list(fees.items()) if isinstance(fees, Mapping) else [_parse_item(item) for item in fees]
    tiers: dict[str, float] = {}
    for name, bps in items:
        if not isinstance(name, str) or not TIER_NAME_RE.match(name):
            raise MscaleError(f"fee tier name {name!r} must start with a letter and hold only letters, digits and _")
        if isinstance(bps, bool) or not isinstance(bps, (int, float)) or not math.isfinite(bps) or bps < 0:
            raise MscaleError(f"fee of tier {name} must be a number of bps >= 0, got {bps!r}")
        if name in tiers:
            raise MscaleError(f"fee tier {name} is given twice")
        tiers[name] = float(bps)
    if not tiers:
        raise MscaleError("no fee tiers given: name at least one, e.g. gross,VIP9 or taker=10")
    return tiers


def _parse_item(item: str) -> tuple[str, float]:
    item = item.strip()
    if "=" not in item:
        if item not in KNOWN_TIERS:
            raise MscaleError(f"unknown fee tier {item!r}: known tiers are {', '.join(KNOWN_TIERS)}; give others as NAME=BPS")
        return item, KNOWN_TIERS[item]
    name, _, value = item.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise MscaleError(f"fee {item!r} is not NAME=BPS with a number of basis points, e.g. taker=10") from None


def slippage_rates(slippage: float | str | None, spreads: Mapping[str, np.ndarray], first: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-row slippage rate per unit of |Δposition|, and the array step (0: one value for all rows).

    - None or 0: no slippage;
    - a number: that many bps per side;
    - "cs" / "ar": half the row's Corwin-Schultz / Abdi-Ranaldo spread estimate (a side crosses
      half the spread); estimates are past-only (close_time <= ts), a missing one takes the
      token's last known estimate, and 0 before the first.
    """
    if slippage is None:
        return np.zeros(1), 0
    if isinstance(slippage, str) and slippage not in SPREAD_COLUMNS:
        try:
            slippage = float(slippage)
        except ValueError:
            raise MscaleError(f"unknown slippage {slippage!r}: use a number of bps, cs or ar") from None
    if isinstance(slippage, (int, float)) and not isinstance(slippage, bool):
        if not math.isfinite(slippage) or slippage < 0:
            raise MscaleError(f"slippage must be a number of bps >= 0, got {slippage!r}")
        return np.array([slippage / 1e4]), 0
    if slippage not in SPREAD_COLUMNS:
        raise MscaleError(f"unknown slippage {slippage!r}: use a number of bps, cs or ar")
    column = SPREAD_COLUMNS[slippage]
    if column not in spreads:
        raise MscaleError(f"slippage {slippage} needs the prices' {column} column (the warehouse's fills view has it)")
    return _forward_fill(np.asarray(spreads[column], dtype=float), first) / 2.0, 1


def _forward_fill(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Each NaN takes the last finite value of its token (rows since the last `first`), else 0."""
    n = len(values)
    index = np.where(np.isfinite(values), np.arange(n), -1)
    starts = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    last = np.maximum.accumulate(index)
    known = last >= starts
    return np.where(known, values[np.maximum(last, 0)], 0.0)
