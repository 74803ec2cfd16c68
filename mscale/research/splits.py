"""Calendar splitters with purge and embargo (CONTRACT §8): ``walk_forward``, ``final_fold``, ``dates``.

Pure numpy, no I/O. The inputs are per-row arrays over the rows of *all* symbols pooled, in any
order: ``ts_ms`` (int64 decision times, epoch ms) and ``label_end_ms`` (int64, ``>= ts_ms``: the last
decision time the row's labels read, CONTRACT §7). Folds are calendar blocks shared by all symbols:
blocks are defined on the sorted unique decision times and a row belongs to a block by its ``ts``, so
every symbol's test block covers the same hours. Each fold is a :class:`Fold` of row indices
(ascending) into the input arrays.

Semantics
---------
``walk_forward`` (:class:`WalkForward`): let ``U`` be the sorted unique decision times, ``m = len(U)``.
The test block size is ``b = m // (n_splits + 1)`` decision times; the ``n_splits`` test blocks are the
last ``n_splits * b`` decision times in consecutive blocks of ``b`` (the first ``m - n_splits * b``
times are only ever training). Fold ``k``'s training block is every decision time before its test
block (expanding window). Inside it, the most recent ``val_fraction`` of its decision times
(``floor(val_fraction * n)``, at least 1, at most ``n - 1``) is the validation slice; the rest is the fit
part. Needs ``m >= n_splits + 2`` (a test block of at least 1 time and a first training block of at
least 2: one to fit, one to validate).

``final_fold`` (:class:`FinalFold`): exactly ``walk_forward``'s last fold (``index = n_splits - 1``);
the earlier folds are neither yielded nor checked.

``dates`` (:class:`DateSplit`): explicit UTC day ranges, ``start→end`` inclusive; a range holds the
decision times of the bars opened on those days, ``start 00:00 < ts <= (end + 1 day) 00:00``. The
``tune`` range is the validation slice, ``train`` the fit part, ``oos`` the test block; an ``oos`` end of
``None`` runs to the last decision time. Ranges must be in order and must not overlap
(``train.end < tune.start``, ``tune.end < oos.start``); rows between or outside the ranges are in no
part.

Purge and embargo (every mode): with ``E = embargo_h`` hours, ``val_start`` / ``test_start`` the first
decision times (in the data, before purging) of the validation slice / test block:

* a fit row is kept only if ``label_end <= val_start - E``;
* a validation row is kept only if ``label_end <= test_start - E``;
* test rows are never dropped.

So a row whose labels read up to the first decision time of the block it is evaluated against, less
the embargo, is kept, and the gap between any kept row's ``label_end`` and that block is at least
``E``. (Fit rows also clear the test block by at least ``E``, as ``val_start < test_start``.) The rows
dropped are counted in ``Fold.purged_fit`` / ``Fold.purged_val``.

Guarantees: within a fold, ``fit``, ``val`` and ``test`` are disjoint; every fit ``ts`` < every val
``ts`` < every test ``ts``; every row whose ``ts`` lies in a test block's span is in that block. All
three parts are non-empty: ``split`` computes every fold it will yield before yielding the first,
and raises :class:`~mscale.errors.MscaleError` (one line) if any part is empty after purging, so a
long training run fails before its first fold, not in its last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np

from mscale.errors import MscaleError

HOUR_MS = 3_600_000
MODES = ("walk_forward", "final_fold", "dates")

# floor(val_fraction * n) with a tolerance, so 0.29 * 100 (= 28.999999999999996) counts as 29
_FLOOR_EPS = 1e-9


@dataclass(frozen=True)
class Fold:
    """One split: row indices (ascending) into the pooled input arrays, and what purging removed."""

    index: int                 # 0-based, in time order
    fit: np.ndarray            # rows models are fitted on (after purge + embargo)
    val: np.ndarray            # rows of the validation slice (threshold tuning; after purge + embargo)
    test: np.ndarray           # rows of the test (OOS) block
    fit_span: tuple[int, int]  # first and last decision time (ms) of the rows in fit; (-1, -1) if empty
    val_span: tuple[int, int]
    test_span: tuple[int, int]
    purged_fit: int            # rows of the fit part dropped by purge + embargo
    purged_val: int            # rows of the val part dropped by purge + embargo


class WalkForward:
    """Expanding-window walk-forward folds over calendar blocks, purged and embargoed.

    Like scikit-learn's ``TimeSeriesSplit``, but ``split(ts_ms, label_end_ms)`` yields :class:`Fold`
    objects (fit / val / test row indices) and the purge/embargo gap is explicit: fit rows end at
    least ``embargo_h`` hours (by ``label_end``) before the validation slice, validation rows at least
    ``embargo_h`` hours before the test block. See the module docstring for the exact rules.
    """

    def __init__(self, *, n_splits: int = 5, embargo_h: int = 24, val_fraction: float = 0.2):
        _check_n_splits(n_splits)
        _check_embargo(embargo_h)
        if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
            raise MscaleError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}; e.g. 0.2")
        self.n_splits = n_splits
        self.embargo_h = embargo_h
        self.val_fraction = val_fraction

    def get_n_splits(self, ts_ms=None, label_end_ms=None) -> int:
        """Number of folds ``split`` yields."""
        return self.n_splits

    def split(self, ts_ms, label_end_ms) -> Iterator[Fold]:
        """Yield the ``n_splits`` folds in time order (all computed and checked before the first)."""
        return iter(self._folds(ts_ms, label_end_ms, range(self.n_splits)))

    def _folds(self, ts_ms, label_end_ms, which) -> list[Fold]:
        ts, end = _check_arrays(ts_ms, label_end_ms)
        times = np.unique(ts)
        m, n = len(times), self.n_splits
        if m < n + 2:
            raise MscaleError(
                f"too few decision times for {n} walk-forward folds: there are {m}, at least {n + 2} are needed; "
                "use fewer splits (n_splits) or more data"
            )
        b = m // (n + 1)
        pos = np.searchsorted(times, ts)  # each row's index in the sorted unique decision times
        folds = []
        for k in which:
            test_lo = m - (n - k) * b
            n_train = test_lo
            n_val = min(max(1, math.floor(self.val_fraction * n_train + _FLOOR_EPS)), n_train - 1)
            val_lo = test_lo - n_val
            fold = _make_fold(
                k, ts, end,
                fit=pos < val_lo,
                val=(pos >= val_lo) & (pos < test_lo),
                test=(pos >= test_lo) & (pos < test_lo + b),
                val_start=int(times[val_lo]),
                test_start=int(times[test_lo]),
                embargo_h=self.embargo_h,
            )
            _check_nonempty(fold, f"walk-forward fold {k} of {n}", self.embargo_h,
                            "use fewer splits (n_splits) or a smaller embargo (embargo_h)")
            folds.append(fold)
        return folds

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_splits={self.n_splits}, embargo_h={self.embargo_h}, "
                f"val_fraction={self.val_fraction})")


class FinalFold(WalkForward):
    """``walk_forward``'s folds, but only the most recent one is yielded (``index = n_splits - 1``)."""

    def get_n_splits(self, ts_ms=None, label_end_ms=None) -> int:
        """Number of folds ``split`` yields: always 1."""
        return 1

    def split(self, ts_ms, label_end_ms) -> Iterator[Fold]:
        """Yield exactly ``WalkForward(...)``'s last fold."""
        return iter(self._folds(ts_ms, label_end_ms, [self.n_splits - 1]))


class DateSplit:
    """One fold from explicit UTC day ranges: ``train`` = fit part, ``tune`` = validation, ``oos`` = test.

    Ranges are ``(start, end)`` dates, inclusive; ``oos`` end ``None`` runs to the end of the data. A
    range holds the decision times ``start 00:00 < ts <= (end + 1 day) 00:00`` (the bars opened on those
    days). Purge and embargo as in :class:`WalkForward`.
    """

    def __init__(self, *, train: tuple[date, date], tune: tuple[date, date], oos: tuple[date, date | None],
                 embargo_h: int = 24):
        _check_embargo(embargo_h)
        for name, rng, open_end in (("train", train, False), ("tune", tune, False), ("oos", oos, True)):
            _check_range(name, rng, open_end)
        if not train[1] < tune[0]:
            raise MscaleError(f"dates split: train ({_fmt(train)}) must end before tune ({_fmt(tune)}) starts")
        if not tune[1] < oos[0]:
            raise MscaleError(f"dates split: tune ({_fmt(tune)}) must end before oos ({_fmt(oos)}) starts")
        self.train = tuple(train)
        self.tune = tuple(tune)
        self.oos = tuple(oos)
        self.embargo_h = embargo_h

    def get_n_splits(self, ts_ms=None, label_end_ms=None) -> int:
        """Number of folds ``split`` yields: always 1."""
        return 1

    def split(self, ts_ms, label_end_ms) -> Iterator[Fold]:
        """Yield exactly one fold (index 0)."""
        ts, end = _check_arrays(ts_ms, label_end_ms)
        fit, val, test = (_in_days(ts, r) for r in (self.train, self.tune, self.oos))
        for name, rng, mask in (("tune", self.tune, val), ("oos", self.oos, test), ("train", self.train, fit)):
            if not mask.any():
                raise MscaleError(
                    f"dates split: the {name} range {_fmt(rng)} holds no rows (data runs "
                    f"{_iso(int(ts.min()))} to {_iso(int(ts.max()))}); pick dates inside the data"
                )
        fold = _make_fold(0, ts, end, fit=fit, val=val, test=test,
                          val_start=int(ts[val].min()), test_start=int(ts[test].min()), embargo_h=self.embargo_h)
        _check_nonempty(fold, f"dates split (train {_fmt(self.train)}, tune {_fmt(self.tune)})", self.embargo_h,
                        "widen the range, leave a gap between ranges or use a smaller embargo (embargo_h)")
        return iter([fold])

    def __repr__(self) -> str:
        return (f"DateSplit(train={_fmt(self.train)!r}, tune={_fmt(self.tune)!r}, oos={_fmt(self.oos)!r}, "
                f"embargo_h={self.embargo_h})")


def make_splitter(mode: str, *, n_splits: int = 5, embargo_h: int = 24, val_fraction: float = 0.2,
                  train=None, tune=None, oos=None) -> WalkForward | DateSplit:
    """The splitter for ``mode`` (one of ``MODES``).

    ``train`` / ``tune`` / ``oos`` are used by ``dates`` only (required there), each a ``(start, end)``
    tuple of dates or a string ``parse_date_range`` accepts; ``n_splits`` / ``val_fraction`` are ignored
    by ``dates``.
    """
    if mode == "walk_forward":
        return WalkForward(n_splits=n_splits, embargo_h=embargo_h, val_fraction=val_fraction)
    if mode == "final_fold":
        return FinalFold(n_splits=n_splits, embargo_h=embargo_h, val_fraction=val_fraction)
    if mode == "dates":
        ranges = {}
        for name, value in (("train", train), ("tune", tune), ("oos", oos)):
            if value is None:
                raise MscaleError(f"split mode 'dates' needs a {name} range, e.g. 2024-04-01→2024-06-30")
            ranges[name] = parse_date_range(value) if isinstance(value, str) else tuple(value)
        return DateSplit(**ranges, embargo_h=embargo_h)
    raise MscaleError(f"unknown split mode {mode!r}; use one of: {', '.join(MODES)}")


_DAY = r"\d{4}-\d{2}-\d{2}"
_RANGE = re.compile(rf"^\s*({_DAY})\s*(?:→|\.\.)\s*({_DAY}|end|)\s*$", re.IGNORECASE)


def parse_date_range(text: str) -> tuple[date, date | None]:
    """Parse ``"2023-10-30→2024-03-31"`` or ``"2023-10-30..2024-03-31"`` (inclusive UTC days).

    An end of ``end`` or nothing (``"2024-07-01→end"``, ``"2024-07-01.."``) is ``None``: to the end of
    the data.
    """
    hint = "write START→END or START..END with YYYY-MM-DD dates, END may be 'end'"
    match = _RANGE.match(text) if isinstance(text, str) else None
    if match is None:
        raise MscaleError(f"cannot parse date range {text!r}; {hint}")
    try:
        start = date.fromisoformat(match.group(1))
        end = date.fromisoformat(match.group(2)) if match.group(2) and match.group(2).lower() != "end" else None
    except ValueError as exc:
        raise MscaleError(f"cannot parse date range {text!r} ({exc}); {hint}") from None
    if end is not None and end < start:
        raise MscaleError(f"date range {text!r} ends before it starts; {hint}")
    return start, end


# -- helpers ------------------------------------------------------------------------------------


def _make_fold(index, ts, end, *, fit, val, test, val_start, test_start, embargo_h) -> Fold:
    """Apply purge + embargo to the fit / val masks and package the fold."""
    gap = embargo_h * HOUR_MS
    fit_keep = fit & (end <= val_start - gap)
    val_keep = val & (end <= test_start - gap)
    fit_idx, val_idx, test_idx = (np.flatnonzero(x) for x in (fit_keep, val_keep, test))
    return Fold(
        index=index, fit=fit_idx, val=val_idx, test=test_idx,
        fit_span=_span(ts, fit_idx), val_span=_span(ts, val_idx), test_span=_span(ts, test_idx),
        purged_fit=int(fit.sum() - len(fit_idx)), purged_val=int(val.sum() - len(val_idx)),
    )


def _check_nonempty(fold: Fold, where: str, embargo_h: int, advice: str) -> None:
    for part, rows, purged in (("fit", fold.fit, fold.purged_fit), ("val", fold.val, fold.purged_val),
                               ("test", fold.test, 0)):
        if len(rows) == 0:
            raise MscaleError(
                f"{where}: the {part} part is empty after purging ({purged} rows dropped because their "
                f"label_end is within {embargo_h} h embargo of the next block); {advice}"
            )


def _span(ts: np.ndarray, idx: np.ndarray) -> tuple[int, int]:
    if len(idx) == 0:
        return (-1, -1)
    sel = ts[idx]
    return (int(sel.min()), int(sel.max()))


def _check_arrays(ts_ms, label_end_ms) -> tuple[np.ndarray, np.ndarray]:
    ts, end = np.asarray(ts_ms), np.asarray(label_end_ms)
    for name, a in (("ts_ms", ts), ("label_end_ms", end)):
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise MscaleError(
                f"{name} must be a 1-D array of integer epoch milliseconds, got {a.dtype} of shape {a.shape}"
            )
    if ts.shape != end.shape:
        raise MscaleError(f"ts_ms and label_end_ms differ in length ({len(ts)} vs {len(end)}); pass one value per row")
    if ts.size == 0:
        raise MscaleError("no rows to split; build the features and labels first")
    ts, end = ts.astype(np.int64, copy=False), end.astype(np.int64, copy=False)
    bad = int(np.count_nonzero(end < ts))
    if bad:
        raise MscaleError(f"{bad} rows have label_end_ms < ts_ms; label_end is ts + the label horizon (CONTRACT §7)")
    return ts, end


def _check_n_splits(n_splits) -> None:
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise MscaleError(f"n_splits must be an integer >= 1, got {n_splits!r}")


def _check_embargo(embargo_h) -> None:
    if isinstance(embargo_h, bool) or not isinstance(embargo_h, (int, np.integer)) or embargo_h < 0:
        raise MscaleError(f"embargo_h must be a whole number of hours >= 0, got {embargo_h!r}")


def _check_range(name: str, rng, open_end: bool) -> None:
    ok = (isinstance(rng, tuple) and len(rng) == 2 and _is_day(rng[0])
          and (_is_day(rng[1]) or (open_end and rng[1] is None)))
    if not ok:
        what = "(start, end) dates, end may be None" if open_end else "(start, end) dates"
        raise MscaleError(f"dates split: {name} must be {what}, got {rng!r}")
    if rng[1] is not None and rng[1] < rng[0]:
        raise MscaleError(f"dates split: the {name} range {_fmt(rng)} ends before it starts")


def _is_day(x) -> bool:
    return isinstance(x, date) and not isinstance(x, datetime)


def _day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) * 1000


def _in_days(ts: np.ndarray, rng: tuple[date, date | None]) -> np.ndarray:
    """Rows whose decision time belongs to a bar opened on one of the days: start 00:00 < ts <= (end+1) 00:00."""
    mask = ts > _day_ms(rng[0])
    if rng[1] is not None:
        mask &= ts <= _day_ms(rng[1] + timedelta(days=1))
    return mask


def _fmt(rng) -> str:
    return f"{rng[0]}→{'end' if rng[1] is None else rng[1]}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
