"""Time-ordered splits: chronological train/val/test, walk-forward, and purged + embargoed K-fold.

Every split is decided by timestamps. ``timestamps`` is the (N,) time of each row (its label time ``t``), sorted
non-decreasing: ``datetime64`` (e.g. polars' UTC ``ts`` column as numpy) or signed integers / floats. An unsorted
array is an error naming the first row that goes back in time; nothing is reordered. Rows that share a timestamp
always land in the same part (a boundary that would cut through a run of equal times moves to its start, so the
tie goes to the later part).

Durations (``horizon``, ``embargo``, periods) are ``datetime.timedelta`` / ``np.timedelta64`` for datetime64
timestamps, plain numbers for numeric ones. Points in time (``boundaries``) are ``np.datetime64``, or
timezone-aware ``datetime.datetime`` (converted to UTC), or numbers.

Purging (López de Prado, *Advances in Financial Machine Learning*, ch. 7). Row ``i``'s label is computed over
the closed window ``[t_i, t_i + horizon]``. A training row is *purged* when its window overlaps the window of any
test row: ``t_i <= t_j + horizon`` and ``t_j <= t_i + horizon`` for some test row ``j``. Rows after a test fold
are also *embargoed* while ``t_i <= max_j (t_j + horizon) + embargo`` (AFML's embargo, in time rather than in a
count of rows), to keep serially correlated features out of training.

Results are ``range`` objects of row indices (contiguous runs), so nothing of size N is allocated.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["ChronologicalSplit", "Fold", "check_timestamps", "chronological_split", "purged_kfold", "walk_forward"]


@dataclass(frozen=True)
class ChronologicalSplit:
    """Train, validation and test rows, in that time order."""

    train: range
    """Training rows (after purging)."""
    val: range
    """Validation rows (after purging their tail against the test rows)."""
    test: range
    """Test rows."""
    purged: tuple[range, range]
    """Rows removed from the end of train and from the end of val because their label windows reach the next part."""


@dataclass(frozen=True)
class Fold:
    """One train/test fold: training rows as up to two runs (before and after the test rows)."""

    train: tuple[range, ...]
    """Training rows, as contiguous runs in time order (empty runs left out)."""
    test: range
    """Test rows."""
    purged: tuple[range, ...]
    """Rows left out of training because their label window overlaps a test label window."""
    embargoed: range
    """Rows after the test rows left out by the embargo (empty for walk-forward, where training precedes test)."""

    @property
    def n_train(self) -> int:
        return sum(len(r) for r in self.train)

    def train_indices(self) -> np.ndarray:
        """(n_train,) int64 training rows, ascending."""
        return np.concatenate([np.arange(r.start, r.stop, dtype=np.int64) for r in self.train] or
                              [np.empty(0, np.int64)])


# ------------------------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------------------------

def check_timestamps(timestamps: np.ndarray) -> np.ndarray:
    """Return ``timestamps`` as a 1-D numpy array after checking it is datetime64 or signed numeric and sorted.

    Raises:
        ValueError: not 1-D, empty, a wrong dtype, NaT / NaN / inf, or a row earlier than the one before it.
    """
    ts = np.asarray(timestamps)
    if ts.ndim != 1 or ts.shape[0] == 0:
        raise ValueError(f"timestamps must be a non-empty 1-D array, got shape {ts.shape}")
    if ts.dtype.kind not in "Mif":
        raise ValueError(f"timestamps must be datetime64 or signed integers / floats, got dtype {ts.dtype}")
    bad = np.isnat(ts) if ts.dtype.kind == "M" else (~np.isfinite(ts) if ts.dtype.kind == "f" else None)
    if bad is not None and bad.any():
        raise ValueError(f"timestamps has missing / non-finite values at rows {np.flatnonzero(bad)[:5].tolist()}")
    back = np.flatnonzero(ts[1:] < ts[:-1])
    if back.size:
        r = int(back[0]) + 1
        raise ValueError(f"timestamps must be sorted (non-decreasing): row {r} ({ts[r]}) is earlier than row "
                         f"{r - 1} ({ts[r - 1]}); {back.size} such rows in all")
    return ts


def _delta(name: str, value: object, ts: np.ndarray) -> np.timedelta64 | float | int:
    """A non-negative duration in the units of ``ts``; None is a zero duration."""
    if value is None:
        return np.timedelta64(0) if ts.dtype.kind == "M" else 0
    if ts.dtype.kind == "M":
        if not isinstance(value, (datetime.timedelta, np.timedelta64)) or np.isnat(np.timedelta64(value)):
            raise ValueError(f"{name} must be a datetime.timedelta or np.timedelta64 for datetime64 timestamps, "
                             f"got {value!r}")
        d = np.timedelta64(value)
        if d < np.timedelta64(0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        return d
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number for numeric timestamps, got {value!r}")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def _point(name: str, value: object, ts: np.ndarray) -> np.datetime64 | float | int:
    """A point in time comparable with ``ts``."""
    if ts.dtype.kind == "M":
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware (or an np.datetime64 in UTC), got naive {value}")
            value = np.datetime64(value.astimezone(datetime.UTC).replace(tzinfo=None), "us")
        if not isinstance(value, np.datetime64) or np.isnat(value):
            raise ValueError(f"{name} must be a datetime.datetime or np.datetime64, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number for numeric timestamps, got {value!r}")
    return value


def _snap(ts: np.ndarray, row: int) -> int:
    """Move a boundary row back to the first row sharing its timestamp (ties go to the later part)."""
    return row if row >= ts.shape[0] else int(np.searchsorted(ts, ts[row], side="left"))


def _train_stop(ts: np.ndarray, test_lo: int, horizon: object) -> int:
    """First row before ``test_lo`` whose label window [t, t + horizon] reaches the first test time."""
    return min(test_lo, int(np.searchsorted(ts, ts[test_lo] - horizon, side="left")))


# ------------------------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------------------------

def chronological_split(timestamps: np.ndarray, *, fractions: tuple[float, float, float] | None = None,
                        boundaries: tuple[object, object] | None = None,
                        horizon: object | None = None) -> ChronologicalSplit:
    """Split rows into train < val < test by time.

    Args:
        timestamps: (N,) sorted row times.
        fractions: (train, val, test) shares of the rows, >= 0, summing to 1; a boundary lands on row
            ``round(share * N)`` and then moves back to the start of its run of equal timestamps.
        boundaries: (val_start, test_start) times instead: rows with ``t < val_start`` are train, rows with
            ``val_start <= t < test_start`` val, the rest test.
        horizon: label window length; train (val) rows whose window ``[t, t + horizon]`` reaches the first val
            (test) row's time are purged and reported in ``purged``. None (default) purges nothing.

    Raises:
        ValueError: not exactly one of fractions / boundaries, bad values, or an empty training part.
    """
    ts = check_timestamps(timestamps)
    n = ts.shape[0]
    h = _delta("horizon", horizon, ts)
    if (fractions is None) == (boundaries is None):
        raise ValueError("pass exactly one of fractions and boundaries")
    if fractions is not None:
        f = np.asarray(fractions, dtype=np.float64)
        if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or abs(f.sum() - 1) > 1e-9:
            raise ValueError(f"fractions must be three shares >= 0 summing to 1, got {fractions!r}")
        cut = [_snap(ts, int(round(f[0] * n))), _snap(ts, int(round((f[0] + f[1]) * n)))]
    else:
        if len(boundaries) != 2:
            raise ValueError(f"boundaries must be (val_start, test_start), got {boundaries!r}")
        t_val, t_test = _point("boundaries[0]", boundaries[0], ts), _point("boundaries[1]", boundaries[1], ts)
        if t_test < t_val:
            raise ValueError(f"boundaries must be in time order, got val_start {t_val} after test_start {t_test}")
        cut = [int(np.searchsorted(ts, t_val, side="left")), int(np.searchsorted(ts, t_test, side="left"))]
    a, b = cut
    # Purge each part's tail against the first row after it (row a starts val, or test when val is empty). A
    # train row that reaches a later test row reaches row a first, so one cut per part suffices.
    val_stop = max(a, _train_stop(ts, b, h)) if b < n else b
    train_stop = _train_stop(ts, a, h) if a < n else a
    if train_stop == 0:
        raise ValueError(f"the training part is empty (boundary rows {cut}, horizon {horizon!r})")
    return ChronologicalSplit(train=range(0, train_stop), val=range(a, val_stop), test=range(b, n),
                              purged=(range(train_stop, a), range(val_stop, b)))


def walk_forward(timestamps: np.ndarray, *, train_period: object, test_period: object, step: object | None = None,
                 expanding: bool = True, horizon: object | None = None) -> Iterator[Fold]:
    """Walk-forward folds: train on the past, test on the next ``test_period``, move on by ``step``.

    Test window k covers times ``[T_k, T_k + test_period)`` with ``T_k = t_0 + train_period + k * step``
    (``step`` defaults to ``test_period``); the last one may be cut short by the end of the data, and a window
    with no rows (a gap in the data) yields no fold. Training rows are, before purging,

    * expanding (default): every row with ``t < T_k`` (the first fold trains on exactly ``train_period``);
    * sliding (``expanding=False``): rows with ``T_k - train_period <= t < T_k``.

    Training rows whose label window ``[t, t + horizon]`` reaches the first test row's time are purged (None,
    the default, purges nothing).

    Yields:
        :class:`Fold` with one training run, the test rows and the purged rows.

    Raises:
        ValueError: bad periods, or a fold whose training part is empty.
    """
    ts = check_timestamps(timestamps)
    n = ts.shape[0]
    train_p = _delta("train_period", train_period, ts)
    test_p = _delta("test_period", test_period, ts)
    step_p = test_p if step is None else _delta("step", step, ts)
    h = _delta("horizon", horizon, ts)
    zero = type(test_p)(0)
    if test_p <= zero or step_p <= zero or train_p <= zero:
        raise ValueError("train_period, test_period and step must be > 0")
    k = 0
    while True:
        t_k = ts[0] + train_p + k * step_p
        lo = int(np.searchsorted(ts, t_k, side="left"))
        if lo >= n:
            return
        hi = int(np.searchsorted(ts, t_k + test_p, side="left"))
        k += 1
        if hi == lo:
            continue
        stop = _train_stop(ts, lo, h)
        start = 0 if expanding else int(np.searchsorted(ts, t_k - train_p, side="left"))
        if stop <= start:
            raise ValueError(f"fold {k - 1} (test from {ts[lo]}) has no training rows left after purging with "
                             f"horizon {horizon!r}")
        yield Fold(train=(range(start, stop),), test=range(lo, hi), purged=(range(stop, lo),),
                   embargoed=range(hi, hi))


def purged_kfold(timestamps: np.ndarray, n_splits: int, *, horizon: object,
                 embargo: object | None = None) -> list[Fold]:
    """Purged and embargoed K-fold cross-validation (López de Prado, AFML §7.4).

    The rows are cut into ``n_splits`` contiguous test folds of (nearly) equal row counts, each boundary moved
    back to the start of its run of equal timestamps. For test rows ``[a, b)``, with label windows
    ``[t, t + horizon]``:

    * rows before ``a`` are purged when ``t + horizon >= t_a``;
    * rows from ``b`` on are purged when ``t <= t_{b-1} + horizon`` (the test rows' last label time), and then
      embargoed when ``t <= t_{b-1} + horizon + embargo`` (None, the default: no embargo);
    * all other rows train.

    Raises:
        ValueError: ``n_splits`` < 2 or too large for the distinct timestamps, or bad durations.
    """
    ts = check_timestamps(timestamps)
    n = ts.shape[0]
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    h = _delta("horizon", horizon, ts)
    e = _delta("embargo", embargo, ts)
    cuts = [0] + [_snap(ts, (i * n) // n_splits) for i in range(1, n_splits)] + [n]
    if any(c1 <= c0 for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True)):
        raise ValueError(f"n_splits={n_splits} leaves an empty fold (fold boundaries {cuts} after keeping equal "
                         "timestamps together); use fewer splits")
    folds = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        before = _train_stop(ts, a, h) if a > 0 else 0
        last_label = ts[b - 1] + h
        purge_hi = max(b, int(np.searchsorted(ts, last_label, side="right")))
        embargo_hi = max(purge_hi, int(np.searchsorted(ts, last_label + e, side="right")))
        train = tuple(r for r in (range(0, before), range(embargo_hi, n)) if len(r))
        folds.append(Fold(train=train, test=range(a, b), purged=(range(before, a), range(b, purge_hi)),
                          embargoed=range(purge_hi, embargo_hi)))
    return folds
