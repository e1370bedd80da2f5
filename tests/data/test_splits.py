"""Splits against brute-force definitions: overlap of label windows checked pair by pair."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from condorbrain.data.splits import check_timestamps, chronological_split, purged_kfold, walk_forward


def random_times(n: int = 400, seed: int = 0) -> np.ndarray:
    """Sorted integer times with ties (several rows per time) and uneven gaps."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.choice([0, 0, 1, 1, 2, 7], size=n)).astype(np.int64)


def rows(r) -> set[int]:
    return set(range(r.start, r.stop)) if isinstance(r, range) else set().union(*(rows(x) for x in r))


def overlaps(ts: np.ndarray, i: int, test: set[int], h) -> bool:
    """Brute force: row i's closed label window [t_i, t_i + h] meets some test row's window."""
    return any(ts[i] <= ts[j] + h and ts[j] <= ts[i] + h for j in test)


# --- timestamps ------------------------------------------------------------------------------------------------

def test_unsorted_or_missing_times_are_errors():
    with pytest.raises(ValueError, match=r"row 3 \(1\) is earlier than row 2 \(5\); 1 such rows"):
        check_timestamps(np.array([0, 2, 5, 1, 6]))
    with pytest.raises(ValueError, match="missing / non-finite values at rows \\[1\\]"):
        check_timestamps(np.array(["2024-01-02", "NaT"], dtype="datetime64[s]"))
    with pytest.raises(ValueError, match="timestamps must be datetime64 or signed"):
        check_timestamps(np.array([1, 2], dtype=np.uint32))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        check_timestamps(np.zeros((2, 2)))
    for f in (lambda t: chronological_split(t, fractions=(0.6, 0.2, 0.2)),
              lambda t: list(walk_forward(t, train_period=2, test_period=1)),
              lambda t: purged_kfold(t, 2, horizon=0)):
        with pytest.raises(ValueError, match="must be sorted"):
            f(np.array([0, 2, 5, 1, 6, 7]))


# --- chronological ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h", [0, 3, 20])
def test_chronological_split_order_no_overlap_and_purge(h):
    ts = random_times()
    sp = chronological_split(ts, fractions=(0.6, 0.2, 0.2), horizon=h)
    tr, va, te = rows(sp.train), rows(sp.val), rows(sp.test)
    assert not (tr & va or tr & te or va & te)
    assert tr | va | te | rows(sp.purged) == set(range(len(ts)))  # every row accounted for
    assert ts[sp.train].max() < ts[sp.val].min() <= ts[sp.val].max() < ts[sp.test].min()  # no future in train
    assert sp.val.start == np.searchsorted(ts, ts[round(0.6 * len(ts))])  # boundary moved to the start of its tie
    # purge: exactly the train rows whose label window reaches a later row's window, brute force
    later = va | te | rows(sp.purged[1])
    assert rows(sp.purged[0]) == {i for i in range(sp.val.start) if overlaps(ts, i, later, h)}
    assert rows(sp.purged[1]) == {i for i in range(sp.val.start, sp.test.start) if overlaps(ts, i, te, h)}
    if h == 0:
        assert sp.purged == (range(sp.val.start, sp.val.start), range(sp.test.start, sp.test.start))


def test_chronological_split_by_dates():
    ts = np.arange(np.datetime64("2024-01-01T00:00"), np.datetime64("2024-01-11T00:00"), np.timedelta64(1, "h"))
    ts = ts.astype("datetime64[us]")
    utc = datetime.UTC
    sp = chronological_split(ts, boundaries=(datetime.datetime(2024, 1, 7, tzinfo=utc),
                                             np.datetime64("2024-01-09T00:00")),
                             horizon=datetime.timedelta(hours=5))
    assert ts[sp.val.start] == np.datetime64("2024-01-07T00:00")
    assert ts[sp.test.start] == np.datetime64("2024-01-09T00:00")
    assert len(sp.purged[0]) == 5 and len(sp.purged[1]) == 5  # the 5 hours whose labels reach the next part
    assert ts[sp.train.stop - 1] + np.timedelta64(5, "h") < ts[sp.val.start]
    # the same instant in another time zone gives the same split
    ny = datetime.timezone(datetime.timedelta(hours=-5))
    sp2 = chronological_split(ts, boundaries=(datetime.datetime(2024, 1, 6, 19, tzinfo=ny),
                                              np.datetime64("2024-01-09T00:00")),
                              horizon=datetime.timedelta(hours=5))
    assert sp2 == sp
    with pytest.raises(ValueError, match="boundaries\\[0\\] must be timezone-aware"):
        chronological_split(ts, boundaries=(datetime.datetime(2024, 1, 7), np.datetime64("2024-01-09")))
    with pytest.raises(ValueError, match="horizon must be a datetime.timedelta"):
        chronological_split(ts, fractions=(0.5, 0.25, 0.25), horizon=3)
    with pytest.raises(ValueError, match="boundaries must be in time order"):
        chronological_split(ts, boundaries=(np.datetime64("2024-01-09"), np.datetime64("2024-01-07")))
    with pytest.raises(ValueError, match="exactly one of fractions and boundaries"):
        chronological_split(ts)
    with pytest.raises(ValueError, match="fractions must be three shares"):
        chronological_split(ts, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="training part is empty"):
        chronological_split(ts, fractions=(0.0, 0.5, 0.5))


# --- walk-forward ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expanding", [True, False])
@pytest.mark.parametrize("h", [0, 4])
def test_walk_forward_windows(expanding, h):
    ts = random_times(600, seed=2)
    folds = list(walk_forward(ts, train_period=200, test_period=60, step=40, expanding=expanding, horizon=h))
    # brute force: test window k is [T_k, T_k + 60), T_k = t_0 + 200 + 40 k, for every k whose window holds rows
    cuts = [ts[0] + 200 + 40 * k for k in range(100) if ((ts >= ts[0] + 200 + 40 * k) &
                                                         (ts < ts[0] + 200 + 40 * k + 60)).any()]
    assert len(folds) == len(cuts) >= 5
    for f, t_cut in zip(folds, cuts, strict=True):
        (train,) = f.train
        test = rows(f.test)
        assert test == set(np.flatnonzero((ts >= t_cut) & (ts < t_cut + 60)).tolist())
        # no future data in training
        assert ts[train.stop - 1] < ts[f.test.start]
        # before purging, training is every row with t < T_k (expanding) or T_k - 200 <= t < T_k (sliding)
        natural = set(np.flatnonzero((ts < t_cut) & ((ts >= t_cut - 200) | expanding)).tolist())
        purged = {i for i in natural if overlaps(ts, i, test, h)}
        assert rows(f.purged) == purged
        assert rows(f.train) == natural - purged
        assert len(f.embargoed) == 0
    starts = [f.train[0].start for f in folds]
    sizes = [f.n_train for f in folds]
    if expanding:
        assert starts == [0] * len(folds) and sizes == sorted(sizes) and sizes[-1] > sizes[0]
    else:
        assert starts == sorted(starts) and starts[-1] > 0


def test_walk_forward_skips_empty_windows_and_truncates_the_last():
    ts = np.array([0, 1, 2, 3, 4, 20, 21, 22, 23], dtype=np.int64)  # a gap from 5 to 19
    folds = list(walk_forward(ts, train_period=3, test_period=2))
    assert [(f.test.start, f.test.stop) for f in folds] == [(3, 5), (5, 6), (6, 8), (8, 9)]
    # windows [3, 5), [5, 7), ..., [19, 21), [21, 23), [23, 25): [5, 7) .. [17, 19) hold no rows and yield no fold
    assert [int(ts[f.test.start]) for f in folds] == [3, 20, 21, 23]
    with pytest.raises(ValueError, match="test_period and step must be > 0"):
        list(walk_forward(ts, train_period=3, test_period=0))
    with pytest.raises(ValueError, match="has no training rows left after purging"):
        list(walk_forward(ts, train_period=3, test_period=2, expanding=False, horizon=5))


# --- purged k-fold ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,embargo", [(0, 0), (3, 0), (5, 4), (40, 10)])
def test_purged_kfold_against_brute_force(h, embargo):
    ts = random_times(300, seed=4)
    n = len(ts)
    folds = purged_kfold(ts, 5, horizon=h, embargo=embargo)
    assert len(folds) == 5
    all_test = [rows(f.test) for f in folds]
    assert set().union(*all_test) == set(range(n)) and sum(map(len, all_test)) == n  # the folds partition rows
    for f in folds:
        test = rows(f.test)
        a, b = f.test.start, f.test.stop
        # ties never straddle a fold boundary
        assert a == 0 or ts[a - 1] < ts[a]
        assert b == n or ts[b - 1] < ts[b]
        purged = {i for i in range(n) if i not in test and overlaps(ts, i, test, h)}
        last_label = ts[b - 1] + h
        embargoed = {i for i in range(b, n) if i not in purged and ts[i] <= last_label + embargo}
        assert rows(f.purged) == purged
        assert rows(f.embargoed) == embargoed
        assert rows(f.train) == set(range(n)) - test - purged - embargoed
        assert set(f.train_indices().tolist()) == rows(f.train) and f.n_train == len(rows(f.train))
        assert not any(overlaps(ts, i, test, h) for i in rows(f.train))
        if embargo == 0:
            assert len(f.embargoed) == 0
        # the embargo spans exactly `embargo` time units after the test fold's last label time
        if f.embargoed:
            assert ts[f.embargoed.stop - 1] <= last_label + embargo < (ts[f.embargoed.stop] if f.embargoed.stop < n
                                                                       else np.inf)


def test_purged_kfold_with_datetimes_and_errors():
    ts = np.arange(np.datetime64("2024-01-01T14:30"), np.datetime64("2024-01-01T21:00"),
                   np.timedelta64(1, "m")).astype("datetime64[us]")
    folds = purged_kfold(ts, 3, horizon=datetime.timedelta(minutes=10), embargo=np.timedelta64(5, "m"))
    mid = folds[1]
    assert len(mid.purged[0]) == 10 and len(mid.purged[1]) == 10 and len(mid.embargoed) == 5
    assert folds[0].purged[0] == range(0, 0) and folds[-1].embargoed == range(len(ts), len(ts))
    with pytest.raises(ValueError, match="n_splits must be an integer >= 2"):
        purged_kfold(ts, 1, horizon=datetime.timedelta(0))
    with pytest.raises(ValueError, match="embargo must be >= 0"):
        purged_kfold(ts, 3, horizon=datetime.timedelta(0), embargo=datetime.timedelta(minutes=-1))
    with pytest.raises(ValueError, match="leaves an empty fold"):
        purged_kfold(np.array([0, 0, 0, 0, 1, 1]), 3, horizon=0)
    with pytest.raises(ValueError, match="horizon must be finite and >= 0"):
        purged_kfold(np.arange(10), 2, horizon=-1)
