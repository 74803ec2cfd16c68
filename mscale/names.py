"""Names the project checks in several places (markets, symbols, fee tiers, fill modes), kept
free of heavy imports so the command line checks settings before loading pyarrow or duckdb."""

from __future__ import annotations

import re
from typing import Any

MARKETS = ("spot", "um")  # Binance spot and USDⓈ-M futures; coin-M is not supported
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")  # BTCUSDT
TIER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")  # a fee tier: gross, VIP9, taker
_TWAP_MODE = re.compile(r"^twap_[1-9]\d*m$")


def is_fill_mode(mode: Any) -> bool:
    """Whether `mode` names a fill mode at all: close, next_minute or twap_<N>m with N >= 1."""
    return isinstance(mode, str) and (mode in ("close", "next_minute") or bool(_TWAP_MODE.fullmatch(mode)))
