"""Calendar splitters: purge/embargo gaps hold for every mode (property), hand-checked folds, one-line errors."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mscale.errors import MscaleError
from mscale.research.splits import (
    DateSplit,
    FinalFold,
    Fold,
    WalkForward,
    make_splitter,
    parse_date_range,
)

HOUR = 3_600_000
T0 = int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()) * 1000


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp()) * 1000


def day_ms(d: date) -> int:
    return ms(d.year, d.month, d.day)


# -- property: purge gaps and calendar blocks for every split mode ---------------------------------


@st.composite
def markets(draw):
    """Pooled, shuffled rows of 1-4 symbols with different first/last hours, random gaps and horizons."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    span_h = draw(st.integers(8, 24 * 60))
    gap_p = draw(st.sampled_from([0.0, 0.05, 0.3]))
    max_h = draw(st.sampled_from([1, 4, 24, 48]))
    start = T0 + HOUR * draw(st.integers(0, 23))  # blocks and day ranges start at any hour of day
    ts = []
    for _ in range(draw(st.integers(1, 4))):
        first = int(rng.integers(0, span_h // 3 + 1))
        last = span_h - int(rng.integers(0, span_h // 3 + 1))
        hours = np.arange(first, last + 1)
        if rng.random() < 0.3:  # an outage: a whole window missing
            a = int(rng.integers(first, last + 1))
            hours = hours[(hours < a) | (hours > a + int(rng.integers(1, 48)))]
        ts.append(hours[rng.random(len(hours)) >= gap_p])
    ts = start + HOUR * np.concatenate(ts).astype(np.int64)
    assume(len(ts) > 0)
    ts = ts[rng.permutation(len(ts))]
    end = ts + HOUR * rng.integers(1, max_h + 1, size=len(ts))
    return ts, end


@st.composite
def date_ranges(draw, ts):
    """In-order, non-overlapping inclusive day ranges around the data (some may miss it)."""
    first = datetime.fromtimestamp((int(ts.min()) - 1) / 1000, tz=timezone.utc).date()
    n_days = (int(ts.max()) - int(ts.min())) // (24 * HOUR) + 1
    cuts = sorted(draw(st.lists(st.integers(0, n_days), min_size=5, max_size=5)))
    d = [first + timedelta(days=c + i // 2) for i, c in enumerate(cuts)]  # shift so ranges never touch
    oos_end = draw(st.one_of(st.none(), st.integers(0, 3).map(lambda k: d[4] + timedelta(days=k))))
    return (d[0], d[1]), (d[2], d[3]), (d[4], oos_end)


def expected_parts(ts, end, *, fit, val, test, embargo_h):
    """Reference fold from block masks (before purging): kept rows and purged counts."""
    if not val.any() or not test.any():
        return None
    val_start, test_start = ts[val].min(), ts[test].min()
    e = embargo_h * HOUR
    return {
        "fit": np.flatnonzero(fit & (end <= val_start - e)),
        "val": np.flatnonzero(val & (end <= test_start - e)),
        "test": np.flatnonzero(test),
        "purged_fit": int(np.count_nonzero(fit & (end > val_start - e))),
        "purged_val": int(np.count_nonzero(val & (end > test_start - e))),
        "val_start": int(val_start),
        "test_start": int(test_start),
    }


def walk_forward_blocks(ts, n_splits, val_fraction_20ths):
    """Block masks per the documented rule: b = m // (n+1), last n*b times, val = floor(vf * n_train) >= 1."""
    times = np.unique(ts)
    m = len(times)
    b = m // (n_splits + 1)
    out = []
    for k in range(n_splits):
        lo = m - (n_splits - k) * b
        n_val = min(max(1, val_fraction_20ths * lo // 20), lo - 1)
        out.append({
            "fit": ts < times[lo - n_val],
            "val": (ts >= times[lo - n_val]) & (ts < times[lo]),
            "test": (ts >= times[lo]) & (ts < times[lo + b]) if lo + b < m else ts >= times[lo],
            "times": times[lo:lo + b],
        })
    return times, b, out


def check_fold(fold: Fold, ts, end, exp, embargo_h):
    e = embargo_h * HOUR
    for part in ("fit", "val", "test"):
        idx = getattr(fold, part)
        assert idx.dtype.kind == "i" and len(idx) > 0
        assert np.all(np.diff(idx) > 0), "indices sorted ascending, no duplicates"
        np.testing.assert_array_equal(idx, exp[part])
        assert getattr(fold, f"{part}_span") == (int(ts[idx].min()), int(ts[idx].max()))
    assert fold.purged_fit == exp["purged_fit"] and fold.purged_val == exp["purged_val"]
    assert not (set(fold.fit) & set(fold.val) or set(fold.fit) & set(fold.test) or set(fold.val) & set(fold.test))
    assert ts[fold.fit].max() < ts[fold.val].min() and ts[fold.val].max() < ts[fold.test].min()
    # the purge/embargo gap, against the block's first decision time and so against every row in it
    assert end[fold.fit].max() <= exp["val_start"] - e <= ts[fold.val].min() - e
    assert end[fold.val].max() <= exp["test_start"] - e <= ts[fold.test].min() - e
    assert end[fold.fit].max() <= ts[fold.test].min() - e
    # the test block is a calendar span: every row of every symbol inside it is in it
    lo, hi = fold.test_span
    np.testing.assert_array_equal(fold.test, np.flatnonzero((ts >= lo) & (ts <= hi)))


def run_or_skip(splitter, ts, end, should_fail: bool) -> list[Fold]:
    """Split; the only accepted errors are the documented too-few / empty-after-purging ones, when due."""
    try:
        folds = list(splitter.split(ts, end))
    except MscaleError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert "too few decision times" in msg or "empty after purging" in msg or "holds no rows" in msg, msg
        assert should_fail, f"raised although every part is non-empty: {msg}"
        assume(False)
    assert not should_fail, "an empty part was not reported"
    return folds


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    market=markets(),
    mode=st.sampled_from(["walk_forward", "final_fold", "dates"]),
    n_splits=st.integers(1, 5),
    embargo_h=st.one_of(st.integers(0, 6), st.integers(0, 48)),
    vf20=st.integers(1, 19),
)
def test_purge_gaps_and_blocks_hold_for_every_mode(data, market, mode, n_splits, embargo_h, vf20):
    ts, end = market
    if mode == "dates":
        train, tune, oos = data.draw(date_ranges(ts))
        splitter = make_splitter("dates", train=train, tune=tune, oos=oos, embargo_h=embargo_h)
        masks = []
        for lo_day, hi_day in (train, tune, oos):
            m = ts > day_ms(lo_day)
            if hi_day is not None:
                m &= ts <= day_ms(hi_day + timedelta(days=1))
            masks.append(m)
        exp = expected_parts(ts, end, fit=masks[0], val=masks[1], test=masks[2], embargo_h=embargo_h)
        should_fail = exp is None or not (len(exp["fit"]) and len(exp["val"]))
        folds = run_or_skip(splitter, ts, end, should_fail)
        assert len(folds) == 1 == splitter.get_n_splits() and folds[0].index == 0
        check_fold(folds[0], ts, end, exp, embargo_h)
        return

    splitter = make_splitter(mode, n_splits=n_splits, embargo_h=embargo_h, val_fraction=vf20 / 20)
    times = np.unique(ts)
    if len(times) < n_splits + 2:
        run_or_skip(splitter, ts, end, should_fail=True)
    times, b, blocks = walk_forward_blocks(ts, n_splits, vf20)
    exps = [expected_parts(ts, end, fit=x["fit"], val=x["val"], test=x["test"], embargo_h=embargo_h) for x in blocks]
    wanted = range(n_splits) if mode == "walk_forward" else [n_splits - 1]
    should_fail = any(not (len(exps[k]["fit"]) and len(exps[k]["val"])) for k in wanted)
    folds = run_or_skip(splitter, ts, end, should_fail)
    assert [f.index for f in folds] == list(wanted) and len(folds) == splitter.get_n_splits()
    for fold in folds:
        check_fold(fold, ts, end, exps[fold.index], embargo_h)
        # consecutive, equal-sized blocks of decision times, covering the last n_splits * b times
        np.testing.assert_array_equal(np.unique(ts[fold.test]), blocks[fold.index]["times"])
        assert len(blocks[fold.index]["times"]) == b == len(times) // (n_splits + 1)
    if mode == "walk_forward":
        np.testing.assert_array_equal(np.unique(np.concatenate([f.test for f in folds])),
                                      np.flatnonzero(ts >= times[len(times) - n_splits * b]))
        for a, c in zip(folds, folds[1:]):
            assert a.test_span[1] < c.test_span[0]
            assert np.searchsorted(times, c.test_span[0]) == np.searchsorted(times, a.test_span[1]) + 1
    else:
        try:
            last = list(WalkForward(n_splits=n_splits, embargo_h=embargo_h, val_fraction=vf20 / 20).split(ts, end))[-1]
        except MscaleError:
            return  # an earlier fold is empty after purging; final_fold never looks at it
        assert_same_fold(folds[0], last)


def assert_same_fold(a: Fold, b: Fold):
    assert a.index == b.index
    for part in ("fit", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert (a.fit_span, a.val_span, a.test_span, a.purged_fit, a.purged_val) == (
        b.fit_span, b.val_span, b.test_span, b.purged_fit, b.purged_val)


# -- hand-computed cases --------------------------------------------------------------------------


def tiny():
    """A: hours 0..11 (rows 0-11, horizon 1 h); B: hours 5..11 (rows 12-18, horizon 2 h)."""
    hours = np.r_[np.arange(12), np.arange(5, 12)]
    ts = T0 + HOUR * hours
    end = ts + HOUR * np.r_[np.ones(12, int), np.full(7, 2)]
    return ts, end


def test_walk_forward_tiny_span_by_hand():
    ts, end = tiny()
    # m = 12 times, b = 12 // 3 = 4: test blocks are hours 4-7 and 8-11; embargo 1 h, val = half the training
    f0, f1 = WalkForward(n_splits=2, embargo_h=1, val_fraction=0.5).split(ts, end)
    # fold 0: train hours 0-3, val = hours 2-3 (val_start h2), fit = hours 0-1
    #   fit keeps label_end <= h2 - 1 h = h1: A0 (ends h1); A1 (ends h2) purged
    #   val keeps label_end <= h4 - 1 h = h3: A2; A3 (ends h4) purged
    assert f0.index == 0
    assert f0.fit.tolist() == [0] and f0.purged_fit == 1
    assert f0.val.tolist() == [2] and f0.purged_val == 1
    assert f0.test.tolist() == [4, 5, 6, 7, 12, 13, 14]
    assert (f0.fit_span, f0.val_span, f0.test_span) == ((T0, T0), (T0 + 2 * HOUR,) * 2, (T0 + 4 * HOUR, T0 + 7 * HOUR))
    # fold 1: train hours 0-7, val = hours 4-7 (val_start h4), fit = hours 0-3
    #   fit keeps label_end <= h3: A0-A2; A3 purged
    #   val keeps label_end <= h7: A4-A6, B5 (ends h7); A7, B6, B7 purged
    assert f1.fit.tolist() == [0, 1, 2] and f1.purged_fit == 1
    assert f1.val.tolist() == [4, 5, 6, 12] and f1.purged_val == 3
    assert f1.test.tolist() == [8, 9, 10, 11, 15, 16, 17, 18]
    assert f1.val_span == (T0 + 4 * HOUR, T0 + 6 * HOUR) and f1.test_span == (T0 + 8 * HOUR, T0 + 11 * HOUR)


def test_row_order_does_not_matter():
    ts, end = tiny()
    perm = np.random.default_rng(3).permutation(len(ts))
    sorted_folds = list(WalkForward(n_splits=2, embargo_h=1, val_fraction=0.5).split(ts, end))
    shuffled = list(WalkForward(n_splits=2, embargo_h=1, val_fraction=0.5).split(ts[perm], end[perm]))
    for a, b in zip(sorted_folds, shuffled):
        for part in ("fit", "val", "test"):
            assert sorted(perm[getattr(b, part)].tolist()) == getattr(a, part).tolist()


def test_final_fold_is_walk_forwards_last_fold():
    ts, end = tiny()
    (final,) = FinalFold(n_splits=2, embargo_h=1, val_fraction=0.5).split(ts, end)
    assert_same_fold(final, list(WalkForward(n_splits=2, embargo_h=1, val_fraction=0.5).split(ts, end))[-1])
    assert final.index == 1
    assert FinalFold(n_splits=2).get_n_splits() == 1 and WalkForward(n_splits=2).get_n_splits() == 2


def test_final_fold_ignores_earlier_folds_emptied_by_purging():
    ts, end = tiny()
    with pytest.raises(MscaleError, match="fold 0 of 2: the fit part is empty after purging"):
        list(WalkForward(n_splits=2, embargo_h=2, val_fraction=0.5).split(ts, end))
    (final,) = FinalFold(n_splits=2, embargo_h=2, val_fraction=0.5).split(ts, end)
    assert final.index == 1 and final.fit.tolist() == [0, 1]


def test_dates_issue_example():
    # two symbols, bars opened 2023-10-30 .. 2024-09-30: decision times 2023-10-30 01:00 .. 2024-10-01 00:00
    one = np.arange(ms(2023, 10, 30, 1), ms(2024, 10, 1) + 1, HOUR, dtype=np.int64)
    ts = np.r_[one, one]
    end = ts + 24 * HOUR
    splitter = make_splitter("dates", train="2023-10-30→2024-03-31", tune="2024-04-01→2024-06-30",
                             oos="2024-07-01→end", embargo_h=24)
    assert isinstance(splitter, DateSplit) and splitter.get_n_splits() == 1
    (fold,) = splitter.split(ts, end)
    e = 24 * HOUR
    tune_start, oos_start = ms(2024, 4, 1, 1), ms(2024, 7, 1, 1)
    assert fold.fit_span == (ms(2023, 10, 30, 1), ms(2024, 3, 30, 1))
    assert end[fold.fit].max() == ms(2024, 3, 31, 1) <= tune_start - e
    assert fold.val_span == (tune_start, ms(2024, 6, 29, 1))
    assert end[fold.val].max() <= oos_start - e
    assert fold.test_span == (oos_start, ms(2024, 10, 1))
    # purged: the rows at (val_start - 48 h, val_start - 1 h], 47 hours per symbol; same before the oos
    assert fold.purged_fit == fold.purged_val == 2 * 47
    # the unpurged train part ends at 2024-04-01 00:00 (the close of the last bar opened on 2024-03-31)
    assert len(fold.fit) + fold.purged_fit == 2 * np.count_nonzero(one <= ms(2024, 4, 1))
    assert len(fold.test) == 2 * np.count_nonzero(one >= oos_start)


def test_dates_bounded_oos_and_rows_outside_ranges():
    one = np.arange(ms(2024, 1, 1, 1), ms(2024, 1, 11) + 1, HOUR, dtype=np.int64)  # 2024-01-01 .. 01-10
    ts, end = one, one + HOUR
    (fold,) = DateSplit(train=(date(2024, 1, 2), date(2024, 1, 3)), tune=(date(2024, 1, 5), date(2024, 1, 5)),
                        oos=(date(2024, 1, 7), date(2024, 1, 8)), embargo_h=0).split(ts, end)
    assert fold.fit_span == (ms(2024, 1, 2, 1), ms(2024, 1, 4))  # gap days 01-01, 01-04, 01-06, 01-09+ unused
    assert fold.val_span == (ms(2024, 1, 5, 1), ms(2024, 1, 6)) and fold.purged_fit == fold.purged_val == 0
    assert fold.test_span == (ms(2024, 1, 7, 1), ms(2024, 1, 9)) and len(fold.test) == 48


@pytest.mark.parametrize("train, tune, oos", [
    ("2024-01-01→2024-01-05", "2024-01-05→2024-01-08", "2024-01-10→end"),  # train and tune share a day
    ("2024-01-01→2024-01-05", "2024-01-06→2024-01-10", "2024-01-08→end"),  # tune and oos overlap
    ("2024-01-06→2024-01-10", "2024-01-01→2024-01-05", "2024-01-11→end"),  # reversed
])
def test_dates_overlapping_or_reversed_ranges_raise(train, tune, oos):
    with pytest.raises(MscaleError, match="must end before"):
        make_splitter("dates", train=train, tune=tune, oos=oos)


@pytest.mark.parametrize("text, expected", [
    ("2023-10-30→2024-03-31", (date(2023, 10, 30), date(2024, 3, 31))),
    ("2023-10-30..2024-03-31", (date(2023, 10, 30), date(2024, 3, 31))),
    (" 2023-10-30 → 2024-03-31 ", (date(2023, 10, 30), date(2024, 3, 31))),
    ("2024-07-01→end", (date(2024, 7, 1), None)),
    ("2024-07-01..end", (date(2024, 7, 1), None)),
    ("2024-07-01..", (date(2024, 7, 1), None)),
    ("2024-07-01→", (date(2024, 7, 1), None)),
    ("2024-07-01→2024-07-01", (date(2024, 7, 1), date(2024, 7, 1))),
])
def test_parse_date_range_forms(text, expected):
    assert parse_date_range(text) == expected


@pytest.mark.parametrize("text", [
    "2024-07-01", "2024-13-01→2024-12-31", "yesterday→today", "2024-07-01 - 2024-08-01",
    "2024-08-01→2024-07-01", "2024/07/01..2024/08/01", "",
])
def test_parse_date_range_rejects(text):
    with pytest.raises(MscaleError, match="date range") as exc:
        parse_date_range(text)
    assert "\n" not in str(exc.value)


# -- errors: one line, saying what to do ----------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"n_splits": 0}, "n_splits must be an integer >= 1"),
    ({"val_fraction": 0.0}, "val_fraction must be strictly between 0 and 1"),
    ({"val_fraction": 1.0}, "val_fraction must be strictly between 0 and 1"),
    ({"embargo_h": -1}, "embargo_h must be a whole number of hours >= 0"),
])
@pytest.mark.parametrize("mode", ["walk_forward", "final_fold"])
def test_bad_options_raise(mode, kwargs, match):
    with pytest.raises(MscaleError, match=match):
        make_splitter(mode, **kwargs)


def test_dates_negative_embargo_raises():
    with pytest.raises(MscaleError, match="embargo_h"):
        make_splitter("dates", train="2024-01-01..2024-01-02", tune="2024-01-03..2024-01-04",
                      oos="2024-01-05..", embargo_h=-1)


def test_too_few_decision_times():
    ts = T0 + HOUR * np.arange(4)
    with pytest.raises(MscaleError, match=r"too few decision times for 3 walk-forward folds: there are 4, "
                                          r"at least 5 are needed"):
        list(WalkForward(n_splits=3, embargo_h=0).split(ts, ts))
    assert len(list(WalkForward(n_splits=2, embargo_h=0).split(ts, ts))) == 2  # 4 = 2 + 2 is enough


def test_empty_after_purging_says_which_fold_and_how_many():
    ts, end = tiny()
    with pytest.raises(MscaleError) as exc:
        list(WalkForward(n_splits=2, embargo_h=48).split(ts, end))
    msg = str(exc.value)
    assert "walk-forward fold 0 of 2: the fit part is empty after purging (3 rows dropped" in msg
    assert "fewer splits" in msg and "smaller embargo" in msg and "\n" not in msg


def test_dates_empty_after_purging_and_empty_ranges():
    one = np.arange(ms(2024, 1, 1, 1), ms(2024, 1, 11) + 1, HOUR, dtype=np.int64)
    with pytest.raises(MscaleError, match="the val part is empty after purging \\(24 rows dropped"):
        list(make_splitter("dates", train="2024-01-01→2024-01-02", tune="2024-01-03→2024-01-03",
                           oos="2024-01-04→end", embargo_h=1).split(one, one + 24 * HOUR))
    with pytest.raises(MscaleError, match="the oos range 2024-02-01→end holds no rows .*pick dates inside the data"):
        list(make_splitter("dates", train="2024-01-01→2024-01-02", tune="2024-01-03→2024-01-03",
                           oos="2024-02-01→end").split(one, one))


def test_dates_needs_every_range_and_bounded_train():
    with pytest.raises(MscaleError, match="needs a tune range"):
        make_splitter("dates", train="2024-01-01..2024-01-02", oos="2024-01-05..")
    with pytest.raises(MscaleError, match="train must be \\(start, end\\) dates"):
        make_splitter("dates", train="2024-01-01..", tune="2024-01-03..2024-01-04", oos="2024-01-05..")


def test_unknown_mode_lists_the_modes():
    with pytest.raises(MscaleError, match="unknown split mode 'kfold'; use one of: walk_forward, final_fold, dates"):
        make_splitter("kfold")


@pytest.mark.parametrize("ts, end, match", [
    (np.arange(3), np.arange(2), "differ in length"),
    (np.arange(3), np.arange(3) - 1, "label_end_ms < ts_ms"),
    (np.array([], dtype=np.int64), np.array([], dtype=np.int64), "no rows to split"),
    (np.arange(3.0), np.arange(3.0), "integer epoch milliseconds"),
])
def test_bad_arrays_raise(ts, end, match):
    with pytest.raises(MscaleError, match=match):
        list(WalkForward(n_splits=1).split(ts, end))
