"""Type and range checks of every setting of `[ingest]`, `[features]`, `[labels]` and `[train]`
(mscale.toml, and the flags that override its keys), run by `load_config` before any command works.

A failure is one MscaleError line naming the key, its value and what is allowed, and where the
value came from, e.g.

    [ingest] base_url must be an http(s) URL such as "https://data-api.binance.vision", got 42 (in mscale.toml)

Each key has one rule in RULES; keys that constrain each other (a range's two ends, the labels'
`horizon` among `horizons`) are checked after every key passed its own rule.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from mscale.errors import MscaleError
from mscale.names import SYMBOL_RE, TIER_NAME_RE, is_fill_mode

# a rule returns None when the value is fine, else what is allowed ("a whole number >= 1"), or that
# and how to show the offending part of the value
Rule = Callable[[Any], "str | tuple[str, str] | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole(low: int, high: int | None = None, unit: str = "") -> Rule:
    what = f"a whole number >= {low}" + (f" and <= {high}" if high is not None else "") + (f" ({unit})" if unit else "")
    return lambda v: None if _is_int(v) and v >= low and (high is None or v <= high) else what


def positive(unit: str = "") -> Rule:
    what = "a positive number" + (f" ({unit})" if unit else "")
    return lambda v: None if _is_number(v) and v > 0 else what


def number(low: float, high: float, *, open_low: bool = False, open_high: bool = False, unit: str = "") -> Rule:
    if open_low and open_high:
        what = f"a number strictly between {low:g} and {high:g}"
    else:
        what = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    what += f" ({unit})" if unit else ""

    def rule(v: Any) -> str | None:
        if not _is_number(v):
            return what
        ok_low = v > low if open_low else v >= low
        ok_high = v < high if open_high else v <= high
        return None if ok_low and ok_high else what

    return rule


def choice(*options: str) -> Rule:
    what = "one of " + ", ".join(f'"{o}"' for o in options)
    return lambda v: None if isinstance(v, str) and v in options else what


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def optional(rule: Rule) -> Rule:
    """`rule`, or None (the key left out of mscale.toml)."""

    def check(v: Any) -> str | None:
        if v is None:
            return None
        return rule(v)

    return check


def list_of(item: Rule, what: str, *, non_empty: bool = False) -> Rule:
    """A TOML list whose every item passes `item`; a string is refused (it is not a list of one).
    A bad item is reported as itself: (what the item must be, the item in its list)."""

    def rule(v: Any) -> str | tuple[str, str] | None:
        if not isinstance(v, (list, tuple)) or (non_empty and not v):
            return what
        for x in v:
            bad = item(x)
            if bad is not None:
                return f"{bad} for every item", f"{show(x)} in {show(v)}"
        return None

    return rule


def _url(v: Any) -> str | None:
    what = 'an http(s) URL such as "https://data-api.binance.vision"'
    if not isinstance(v, str) or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", v):
        return what
    return None


def _date(v: Any) -> str | None:
    what = 'a UTC date "YYYY-MM-DD"'
    if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        return what
    try:
        date.fromisoformat(v)
    except ValueError:
        return what
    return None


def _symbol(v: Any) -> str | None:
    ok = isinstance(v, str) and SYMBOL_RE.fullmatch(v)
    return None if ok else 'a symbol of 2-20 upper-case letters or digits such as "BTCUSDT"'


def _column(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v)
    return None if ok else 'a column name such as "rsi_14" (letters, digits, _)'



_MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


def _memory(v: Any) -> str | None:
    return None if isinstance(v, str) and _MEMORY_RE.match(v.strip()) else 'a size such as "4GB" or "512MB"'


def _scheduler(v: Any) -> str | None:
    ok = v == "" or (isinstance(v, str) and re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", v))
    return None if ok else 'a Dask scheduler address such as "tcp://head:8786" (or "" for a local cluster)'


def _minute_windows(v: Any) -> str | None:
    what = "a list of whole divisors of 60 minutes that includes 15 and 60, e.g. [5, 15, 60]"
    if not isinstance(v, (list, tuple)) or not all(_is_int(w) and 1 <= w <= 60 and 60 % w == 0 for w in v):
        return what
    return None if 15 in v and 60 in v else what


def _date_range(v: Any) -> str | None:
    what = 'a range of UTC days "YYYY-MM-DD→YYYY-MM-DD" (the end may be "end")'
    if not isinstance(v, str):
        return what
    from mscale.research.splits import parse_date_range  # only when a range is set: numpy

    try:
        parse_date_range(v)
    except MscaleError:
        return what
    return None


def _fee(v: Any) -> str | None:
    """A fee tier: a name (gross, VIP9, VIP4, checked against the known tiers when the run starts)
    or NAME=BPS with BPS a number >= 0."""
    what = 'a fee tier: a name (gross, VIP9, VIP4) or "NAME=BPS" with BPS a number >= 0'
    if not isinstance(v, str):
        return what
    name, eq, bps = v.partition("=")
    if not TIER_NAME_RE.fullmatch(name.strip()):
        return what
    if eq:
        try:
            value = float(bps)
        except ValueError:
            return what
        if not math.isfinite(value) or value < 0:
            return what
    return None


def _fill(v: Any) -> str | None:
    return None if is_fill_mode(v) else '"close", "next_minute" or "twap_<N>m" (e.g. "twap_5m")'


def _slippage(v: Any) -> str | None:
    what = 'a number of bps per side >= 0, "cs" or "ar" (or left out)'
    if v is None or v in ("cs", "ar"):
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return what
    return None if _is_number(v) and v >= 0 else what


RULES: dict[str, dict[str, Rule]] = {
    "ingest": {
        "base_url": _url,
        "archive_url": lambda v: None if _url(v) is None else 'an http(s) URL such as "https://data.binance.vision"',
        "pace_ms": whole(0, 60_000, "milliseconds"),
        "timeout_s": number(0, 600, open_low=True, unit="seconds"),
        "max_retries": whole(0, 100),
        "backoff_base_s": number(0, 3600, unit="seconds"),
        "backoff_max_s": number(0, 3600, unit="seconds"),
        "weight_limit": whole(1),
        "weight_slowdown": number(0, 1, open_low=True),
    },
    "features": {
        "minute_windows": _minute_windows,
        "z_window": whole(2, unit="hourly rows"),
        "minute_lag_hours": whole(0, 24 * 7, "hours"),
        "symbols": list_of(_symbol, 'a list of symbols such as ["BTCUSDT", "ETHUSDT"]'),
        "start": optional(_date),
        "end": optional(_date),
        "memory_limit": _memory,
        "threads": whole(1),
        "executor": choice("local", "dask"),
        "scheduler": _scheduler,
    },
    "labels": {
        "horizons": list_of(whole(1, unit="hours"), "a non-empty list of whole numbers >= 1 (hours)", non_empty=True),
        "horizon": whole(1, unit="hours"),
        "epsilon_vol_mult": positive(),
        "epsilon_window": whole(2, unit="hours"),
        "vol_window": whole(1, unit="hours"),
        "volm_quantile": number(0, 1),
        "volm_days": whole(1, unit="days"),
        "volm_min_days": whole(1, unit="days"),
        "range_factor": positive(),
        "big_move_mult": positive(),
    },
    "train": {
        "model": choice("logistic", "lgbm", "histgb"),
        "features": choice("hourly", "multiscale"),
        "columns": list_of(_column, 'a list of feature columns such as ["rsi_14", "m_rv_60m"]'),
        "compare": boolean,
        "fit": choice("per_token", "pooled"),
        "split_mode": choice("walk_forward", "final_fold", "dates"),
        "n_splits": whole(1),
        "embargo_h": optional(whole(0, unit="hours")),
        "val_fraction": number(0, 1, open_low=True, open_high=True),
        "train": optional(_date_range),
        "tune": optional(_date_range),
        "oos": optional(_date_range),
        "symbols": list_of(_symbol, 'a list of symbols such as ["BTCUSDT", "ETHUSDT"]'),
        "start": optional(_date),
        "end": optional(_date),
        "fees": list_of(_fee, 'a non-empty list of fee tiers such as ["gross", "VIP9", "taker=10"]', non_empty=True),
        "tune_fee": lambda v: None if isinstance(v, str) and TIER_NAME_RE.fullmatch(v) else 'a fee tier name such as "VIP9"',
        "fill": _fill,
        "slippage": _slippage,
        "filter": choice("none", "vol", "volm", "both"),
        "filter_exit": boolean,
        "long_only": boolean,
        "min_hold": whole(0),
        "cooldown": whole(0),
        "max_trades_per_day": optional(whole(0)),
        "min_trades": whole(0),
        "vol_high_quantile": number(0, 1, open_low=True, open_high=True),
        "seed": whole(0),
        "threads": whole(1),
        "shuffle_labels": boolean,
        "aux": boolean,
        "block_h": whole(1, unit="hours"),
        "executor": choice("local", "dask"),
        "scheduler": _scheduler,
    },
}


def show(value: Any) -> str:
    """A value as it is written in TOML: strings quoted, lists in brackets, true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def check_settings(cfg, raw: dict[str, Any] | None = None, toml_path: Path | None = None) -> None:
    """Raise a one-line MscaleError for the first setting of `cfg` that breaks its rule.

    `raw` is the parsed mscale.toml (if any): a value equal to the file's is reported as coming
    from it, any other value as coming from the flag of the same name.
    """
    raw = raw or {}
    where_file = f"in {toml_path}" if toml_path is not None else "in mscale.toml"

    def origin(section: str, key: str, value: Any) -> str:
        in_file = raw.get(section, {})
        if key in in_file:
            stored = in_file[key]
            if stored == value or (isinstance(stored, list) and tuple(stored) == value) or (
                    isinstance(stored, date) and stored.isoformat() == value):
                return where_file
        return "flag --" + key.replace("_", "-")

    for section, rules in RULES.items():
        settings = getattr(cfg, section)
        for key, rule in rules.items():
            value = getattr(settings, key)
            allowed = rule(value)
            if allowed is None:
                continue
            allowed, shown = allowed if isinstance(allowed, tuple) else (allowed, show(value))
            note = origin(section, key, value)
            if isinstance(value, str) and allowed.startswith(("a list", "a non-empty list")):
                note = f"a string, not a list; {note}"
            raise MscaleError(f"[{section}] {key} must be {allowed}, got {shown} ({note})")

    def cross(section: str, key: str, message: str) -> MscaleError:
        value = getattr(getattr(cfg, section), key)
        return MscaleError(f"[{section}] {key} {message}, got {show(value)} ({origin(section, key, value)})")

    i, f = cfg.ingest, cfg.features
    if i.backoff_max_s < i.backoff_base_s:
        raise cross("ingest", "backoff_max_s", f"must be >= backoff_base_s ({i.backoff_base_s:g})")
    if f.start is not None and f.end is not None and f.start >= f.end:
        raise cross("features", "start", f"must be before end ({f.end})")
    t = cfg.train
    if t.start is not None and t.end is not None and t.start >= t.end:
        raise cross("train", "start", f"must be before end ({t.end})")
    cfg.labels.validate()  # horizon among horizons, volm_min_days <= volm_days
    cfg.train.validate()  # the dates mode's ranges, filters that need the auxiliary models
