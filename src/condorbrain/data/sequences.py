"""Zero-copy sequence windows over one memory-mapped feature array (seed 000 §2.1), samplers and augmentation.

Layout. ``features`` is one C-contiguous float32 array (N, F), normally ``np.load(path, mmap_mode="r")`` of a
``.npy`` file, so the rows live in the page cache, never twice in RAM. Sample ``k`` is the window
``features[s : s + L]`` for its start row ``s``; its target is ``targets[s + L - 1]`` (the window's last row) from a
separate (N,) or (N, T) array whose row ``t`` holds the label known for time ``t`` (e.g. the forward return from
``t``). Rows are grouped by segment (symbol / contract), in time order inside each segment.

Which windows exist. A start row ``s`` is valid when rows ``s .. s + L - 1``

* lie in one run of equal ``segment_ids`` (and of equal ``session_ids``, if given),
* contain no step between consecutive ``timestamps`` larger than ``max_gap`` (if given),
* hold only rows where ``row_mask`` is True (if given): e.g. rows whose features are all finite, so that no
  window feeds a NaN to the model, and
* end on a row where ``end_mask`` is True (if given): e.g. ``np.isfinite(targets)`` or the rows of one split.

The valid starts are kept as sorted, disjoint runs of consecutive rows (two small int64 arrays, one entry per
run), computed with vectorised interval arithmetic; sample ``k`` maps to its row by a binary search. So the
dataset's own memory is O(number of runs), not O(N), and nothing else is copied. (``row_mask`` is one more such
rule: a window of only True rows is a window inside one run of True rows, i.e. the count of False rows in
``[s, s + L)``, a difference of cumulative sums, is 0; the runs are found directly, without the (N,) cumulative
sum.)

Batches. :meth:`LazySequenceDataset.batch` gathers B windows by one fancy index into a strided (N - L + 1,
L * F) view of the array: each window is a contiguous block of L * F floats, copied once into the (B, L, F)
result. ``dataset[int]`` gives one window; ``dataset[array_of_ints]`` gives a batch, so a DataLoader fast path
is ``DataLoader(ds, sampler=RandomBatchSampler(len(ds), 1024), batch_size=None)``.

Augmentation (:func:`augment`, built from :func:`gaussian_noise`, :func:`magnitude_warp`,
:func:`feature_dropout`, :func:`mixup`) acts on torch batches with an explicit ``torch.Generator`` and only when
``training=True``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

__all__ = [
    "AugmentConfig",
    "Batch",
    "LazySequenceDataset",
    "RandomBatchSampler",
    "SequentialBatchSampler",
    "StratifiedBatchSampler",
    "augment",
    "feature_dropout",
    "gaussian_noise",
    "magnitude_warp",
    "mixup",
]


class Batch(NamedTuple):
    """One window or a batch of windows."""

    x: Tensor
    """(B, L, F) float32 windows, or (L, F) for a single sample."""
    y: Tensor | None
    """Targets at each window's last row: (B,) / (B, T), or () / (T,) for one sample; None without targets."""
    end_row: Tensor
    """(B,) int64 array row of each window's last row (its label time), or () for one sample."""


# ------------------------------------------------------------------------------------------------------------------
# Interval helpers (sorted, disjoint, half-open [lo, hi) row intervals held as two int64 arrays)
# ------------------------------------------------------------------------------------------------------------------

def _pair_positions(n: int, differs, chunk: int = 1 << 16) -> np.ndarray:
    """Positions p in [0, n - 1) where ``differs(a, b)`` (a bool array for the pairs (p, p + 1), p in [a, b)) holds.

    Pairs are compared ``chunk`` at a time, so temporaries stay small however large n is.
    """
    found = [np.flatnonzero(differs(a, min(a + chunk, n - 1))) + a for a in range(0, n - 1, chunk)]
    return np.concatenate(found).astype(np.int64) if found else np.empty(0, np.int64)


def _true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) intervals where the 1-D bool ``mask`` is True."""
    change = _pair_positions(mask.shape[0], lambda a, b: mask[a:b] != mask[a + 1:b + 1]) + 1
    bounds = np.concatenate(([0], change, [mask.shape[0]])).astype(np.int64)
    lo, hi = bounds[:-1], bounds[1:]
    keep = mask[lo]
    return lo[keep], hi[keep]


def _intersect(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Intersection of two lists of sorted, disjoint [lo, hi) intervals (an event sweep, no loops)."""
    pos = np.concatenate((a[0], a[1], b[0], b[1]))
    step = np.concatenate((np.ones_like(a[0]), -np.ones_like(a[1]), np.ones_like(b[0]), -np.ones_like(b[1])))
    order = np.lexsort((step, pos))  # at equal positions a closing (-1) comes before an opening (+1)
    pos, depth = pos[order], np.cumsum(step[order])
    k = np.flatnonzero(depth[:-1] == 2)  # both lists open from pos[k] to the next event
    lo, hi = pos[k], pos[k + 1]
    keep = hi > lo
    return lo[keep], hi[keep]


def _check_rows_array(name: str, a: np.ndarray, n: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape ({n},), got {type(a).__name__}")
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one entry per row of features), got {a.shape}")
    return a


def _check_mask(name: str, mask: np.ndarray, n: int) -> np.ndarray:
    _check_rows_array(name, mask, n)
    if mask.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean, got dtype {mask.dtype}")
    return mask


def _id_breaks(name: str, ids: np.ndarray, n: int) -> np.ndarray:
    """Positions p where ``ids`` changes between rows p and p + 1."""
    _check_rows_array(name, ids, n)
    if ids.dtype.kind not in "iubUS":
        raise ValueError(f"{name} must hold integer or string codes, got dtype {ids.dtype}")
    return _pair_positions(n, lambda a, b: ids[a:b] != ids[a + 1:b + 1])


def _time_breaks(ts: np.ndarray, max_gap: object | None, seg_breaks: np.ndarray, n: int) -> np.ndarray:
    """Check ``ts`` is sorted inside each segment; positions p where ts[p + 1] - ts[p] > max_gap (none if None)."""
    _check_rows_array("timestamps", ts, n)
    if ts.dtype.kind not in "iufM":
        raise ValueError(f"timestamps must be datetime64 or numeric, got dtype {ts.dtype}")
    missing = np.isnat(ts) if ts.dtype.kind == "M" else (~np.isfinite(ts) if ts.dtype.kind == "f" else None)
    if missing is not None and missing.any():
        raise ValueError(f"timestamps has NaT / non-finite values at rows {np.flatnonzero(missing)[:5].tolist()}")
    back = _pair_positions(n, lambda a, b: ts[a + 1:b + 1] < ts[a:b])
    back = np.setdiff1d(back, seg_breaks)  # each segment may start its own clock
    if back.size:
        raise ValueError(f"timestamps go backwards inside a segment at rows {(back + 1)[:5].tolist()}")
    if max_gap is None:
        return np.empty(0, np.int64)
    if ts.dtype.kind == "M":
        if not isinstance(max_gap, (datetime.timedelta, np.timedelta64)):
            raise ValueError(f"max_gap must be a timedelta for datetime64 timestamps, got {max_gap!r}")
        gap = np.timedelta64(max_gap)
        if np.isnat(gap) or gap < np.timedelta64(0):
            raise ValueError(f"max_gap must be >= 0, got {max_gap!r}")
        return _pair_positions(n, lambda a, b: (ts[a + 1:b + 1] - ts[a:b]) > gap)
    if isinstance(max_gap, (bool, datetime.timedelta, np.timedelta64)) or not np.isscalar(max_gap):
        raise ValueError(f"max_gap must be a number for numeric timestamps, got {max_gap!r}")
    if not max_gap >= 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap!r}")
    # compared without subtracting, so unsigned times cannot wrap
    return _pair_positions(n, lambda a, b: ts[a + 1:b + 1] > ts[a:b] + max_gap)


# ------------------------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------------------------

class LazySequenceDataset(Dataset):
    """Windows ``features[s : s + seq_len]`` over a memory-mapped (N, F) float32 array, never copied whole.

    Args:
        features: (N, F) float32, C-contiguous (a ``np.memmap`` / ``np.load(..., mmap_mode="r")`` result, or any
            ndarray); kept as is, never copied.
        seq_len: window length L >= 1.
        targets: optional (N,) or (N, T) array; sample targets are ``targets[s + L - 1]``.
        segment_ids: optional (N,) integer or string codes (symbol / contract); rows of one segment must be
            contiguous (a code that appears in two separate runs is an error: the rows are not grouped).
        session_ids: optional (N,) integer or string codes; windows never span two sessions.
        timestamps: optional (N,) times (datetime64 or numbers), non-decreasing inside each segment; needed for
            ``max_gap``.
        max_gap: optional largest allowed step between consecutive rows inside a window (``np.timedelta64`` /
            ``datetime.timedelta`` for datetime64 timestamps, a number otherwise), e.g. to stop windows at
            overnight gaps.
        row_mask: optional (N,) bool; every row of a window must be True (e.g. ``valid.npy``: all features finite).
        end_mask: optional (N,) bool; only rows where it is True may end a window (i.e. carry a sample's label).

    Raises:
        ValueError: naming the argument, for wrong shapes / dtypes, ungrouped segments, unsorted timestamps
            inside a segment, or when no window fits.
    """

    def __init__(self, features: np.ndarray, seq_len: int, *, targets: np.ndarray | None = None,
                 segment_ids: np.ndarray | None = None, session_ids: np.ndarray | None = None,
                 timestamps: np.ndarray | None = None, max_gap: object | None = None,
                 row_mask: np.ndarray | None = None, end_mask: np.ndarray | None = None) -> None:
        if not isinstance(features, np.ndarray) or features.ndim != 2:
            raise ValueError(f"features must be a 2-D numpy array (N, F), got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
        if features.dtype != np.float32:
            raise ValueError(f"features must be float32, got {features.dtype} (convert it once, on disk)")
        if not features.flags.c_contiguous:
            raise ValueError("features must be C-contiguous (one row after another), got a strided array")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")
        n, n_feat = features.shape
        seq_len = int(seq_len)
        if n < seq_len:
            raise ValueError(f"features has {n} rows, fewer than seq_len={seq_len}")
        if targets is not None:
            if not isinstance(targets, np.ndarray) or targets.ndim not in (1, 2) or targets.shape[0] != n:
                raise ValueError(f"targets must be a numpy array of shape ({n},) or ({n}, T), got "
                                 f"{getattr(targets, 'shape', type(targets).__name__)}")
            if targets.dtype.kind not in "biuf":
                raise ValueError(f"targets must be numeric, got dtype {targets.dtype}")
        self.features = features
        self.targets = targets
        self.seq_len = seq_len

        # Break positions p: rows p and p + 1 may not be in the same window.
        breaks: list[np.ndarray] = []
        seg_breaks = np.empty(0, np.int64)
        if segment_ids is not None:
            seg_breaks = _id_breaks("segment_ids", segment_ids, n)
            self._check_grouped(segment_ids, seg_breaks)
            breaks.append(seg_breaks)
        if session_ids is not None:
            breaks.append(_id_breaks("session_ids", session_ids, n))
        if max_gap is not None and timestamps is None:
            raise ValueError("max_gap needs timestamps")
        if timestamps is not None:
            breaks.append(_time_breaks(timestamps, max_gap, seg_breaks, n))
        cuts = np.unique(np.concatenate(breaks)) if breaks else np.empty(0, np.int64)
        run_lo = np.concatenate(([0], cuts + 1)).astype(np.int64)
        run_hi = np.concatenate((cuts + 1, [n])).astype(np.int64)
        # Rows that may end a window: at least L - 1 rows after the start of their run.
        ends = (run_lo + (seq_len - 1), run_hi)
        keep = ends[1] > ends[0]
        ends = (ends[0][keep], ends[1][keep])
        if row_mask is not None:
            # a window of True rows lies in one run [lo, hi) of True rows: it ends in [lo + L - 1, hi)
            lo, hi = _true_runs(_check_mask("row_mask", row_mask, n))
            lo = lo + (seq_len - 1)
            keep = hi > lo
            ends = _intersect(ends, (lo[keep], hi[keep]))
        if end_mask is not None:
            ends = _intersect(ends, _true_runs(_check_mask("end_mask", end_mask, n)))
        if ends[0].size == 0:
            raise ValueError(f"no window of seq_len={seq_len} fits: every run of rows between boundaries is shorter "
                             f"or row_mask / end_mask exclude them all")
        self._start_lo = ends[0] - (seq_len - 1)  # (R,) first valid start row of each run of starts
        counts = ends[1] - ends[0]
        self._cum = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)  # (R + 1,)
        self._n_samples = int(self._cum[-1])
        # (N - L + 1, L * F) read-only view: row s is the window starting at s, one contiguous block.
        item = features.itemsize
        self._windows = np.lib.stride_tricks.as_strided(
            features, shape=(n - seq_len + 1, seq_len * n_feat), strides=(n_feat * item, item), writeable=False)

    @staticmethod
    def _check_grouped(ids: np.ndarray, cuts: np.ndarray) -> None:
        heads = ids[np.concatenate(([0], cuts + 1))]
        values, counts = np.unique(heads, return_counts=True)
        if (counts > 1).any():
            j = int(np.argmax(counts > 1))
            runs = np.flatnonzero(heads == values[j])
            starts = np.concatenate(([0], cuts + 1))[runs]
            raise ValueError(f"segment_ids must be grouped (each segment's rows contiguous): segment "
                             f"{values[j].item()!r} appears in {counts[j]} separate runs starting at rows "
                             f"{starts[:5].tolist()}")

    @classmethod
    def from_npy(cls, path: str | PathLike[str], seq_len: int, **kwargs: object) -> LazySequenceDataset:
        """Memory-map the ``.npy`` file at ``path`` read-only and build the dataset on it (kwargs as for init)."""
        return cls(np.load(path, mmap_mode="r"), seq_len, **kwargs)  # type: ignore[arg-type]

    # --- indexing ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n_samples

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def overhead_bytes(self) -> int:
        """Bytes the dataset holds besides the arrays it was given (its index of valid starts)."""
        return self._start_lo.nbytes + self._cum.nbytes

    def start_rows(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Start rows of the samples ``indices`` (all samples if None, which materialises n int64)."""
        k = np.arange(self._n_samples) if indices is None else np.asarray(indices)
        if k.dtype.kind not in "iu":
            raise IndexError(f"sample indices must be integers, got dtype {k.dtype}")
        if k.size and (k.min() < 0 or k.max() >= self._n_samples):
            bad = k[(k < 0) | (k >= self._n_samples)]
            raise IndexError(f"sample indices out of range [0, {self._n_samples}): {bad[:5].tolist()}")
        run = np.searchsorted(self._cum, k, side="right") - 1
        return self._start_lo[run] + (k - self._cum[run])

    def window(self, index: int) -> np.ndarray:
        """Sample ``index``'s window as a (L, F) numpy *view* of ``features`` (no copy)."""
        s = int(self.start_rows([index])[0])
        return self.features[s:s + self.seq_len]

    def __getitem__(self, index: int | np.ndarray | Sequence[int]) -> Batch:
        """``ds[k]``: one sample (copied into tensors); ``ds[indices]`` (1-D ints): :meth:`batch`."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            s = int(self.start_rows([index])[0])
            end = s + self.seq_len - 1
            x = torch.from_numpy(np.array(self.features[s:end + 1]))
            y = None if self.targets is None else torch.from_numpy(np.array(self.targets[end]))
            return Batch(x, y, torch.tensor(end, dtype=torch.int64))
        return self.batch(index)

    def batch(self, indices: np.ndarray | Sequence[int]) -> Batch:
        """Gather samples ``indices`` (1-D ints) into a :class:`Batch` with x of shape (B, L, F).

        Each window is copied once, straight from the mapped array into the batch; nothing else is copied.
        """
        k = np.asarray(indices)
        if k.ndim != 1:
            raise IndexError(f"indices must be 1-D, got shape {k.shape}")
        starts = self.start_rows(k)
        # Fancy indexing of the strided view copies each window's contiguous block once. (np.take would first
        # make the whole overlapping view contiguous: a copy L times the array's size.)
        x = self._windows[starts].reshape(k.shape[0], self.seq_len, self.n_features)  # (B, L, F)
        ends = starts + (self.seq_len - 1)
        y = None if self.targets is None else torch.from_numpy(np.asarray(self.targets[ends]))
        return Batch(torch.from_numpy(x), y, torch.from_numpy(ends))

    def sample_targets(self, column: int | None = None, *, chunk: int = 1 << 20) -> np.ndarray:
        """(n,) targets of every sample (at its window's last row), e.g. to stratify on; ``column`` for (N, T)."""
        if self.targets is None:
            raise ValueError("the dataset has no targets")
        if self.targets.ndim == 2:
            if column is None or not 0 <= column < self.targets.shape[1]:
                raise ValueError(f"column must be in [0, {self.targets.shape[1]}) for (N, T) targets, got {column}")
            col = self.targets[:, column]
        else:
            if column is not None:
                raise ValueError(f"column must be None for 1-D targets, got {column}")
            col = self.targets
        out = np.empty(self._n_samples, dtype=col.dtype)
        for lo in range(0, self._n_samples, chunk):
            hi = min(lo + chunk, self._n_samples)
            out[lo:hi] = col[self.start_rows(np.arange(lo, hi)) + (self.seq_len - 1)]
        return out


# ------------------------------------------------------------------------------------------------------------------
# Samplers (each yields 1-D int64 arrays of sample indices: use with DataLoader(ds, sampler=..., batch_size=None))
# ------------------------------------------------------------------------------------------------------------------

def _check_batch_args(n_samples: int, batch_size: int, num_batches: int | None) -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")


class _EpochSeeded:
    """Epoch bookkeeping shared by the random samplers: epoch e draws from ``np.random.default_rng([seed, e])``.

    Each ``iter()`` uses the current epoch and then advances it, so successive epochs differ; ``set_epoch``
    replays any epoch exactly.
    """

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _next_rng(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return rng


class RandomBatchSampler(_EpochSeeded, Sampler[np.ndarray]):
    """Batches of ``batch_size`` distinct indices drawn uniformly from ``range(n_samples)``.

    Batches are independent draws (sampling with replacement *across* batches), so memory is O(batch_size)
    whatever ``n_samples`` is (a permutation of 10M samples would cost 80 MB). An epoch is ``num_batches``
    batches, by default ``n_samples // batch_size`` (at least 1).
    """

    def __init__(self, n_samples: int, batch_size: int, *, num_batches: int | None = None, seed: int = 0) -> None:
        _check_batch_args(n_samples, batch_size, num_batches)
        if batch_size > n_samples:
            raise ValueError(f"batch_size={batch_size} exceeds n_samples={n_samples}")
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.num_batches = num_batches if num_batches is not None else max(1, n_samples // batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = self._next_rng()
        for _ in range(self.num_batches):
            yield rng.choice(self.n_samples, size=self.batch_size, replace=False)


class SequentialBatchSampler(Sampler[np.ndarray]):
    """``range(n_samples)`` in order, in batches of ``batch_size`` (the last one shorter): for evaluation."""

    def __init__(self, n_samples: int, batch_size: int) -> None:
        _check_batch_args(n_samples, batch_size, None)
        self.n_samples, self.batch_size = n_samples, batch_size

    def __len__(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        for lo in range(0, self.n_samples, self.batch_size):
            yield np.arange(lo, min(lo + self.batch_size, self.n_samples))


class StratifiedBatchSampler(_EpochSeeded, Sampler[np.ndarray]):
    """Batches drawn equally from the quantile bins (deciles by default) of a per-sample value (seed 002).

    Bin edges are the ``1/n_bins .. (n_bins-1)/n_bins`` quantiles of ``values`` (numpy's default linear
    quantiles); sample i is in bin ``searchsorted(edges, values[i], side="right")``, so a value equal to an edge
    goes to the upper bin. Each batch takes ``batch_size // n_bins`` distinct samples from every bin, plus one
    more from ``batch_size % n_bins`` bins picked at random, then shuffles the batch. Heavily tied values give
    unequal bins (still drawn equally); an empty bin, or one smaller than its per-batch quota, is an error.

    Memory: 4 bytes per sample (8 beyond 2**31 samples) for the per-bin index lists.

    Args:
        values: (n_samples,) finite stratification values, e.g. ``dataset.sample_targets(column)``.
        batch_size, num_batches, seed: as for :class:`RandomBatchSampler`.
        n_bins: number of quantile bins, 2..255.
    """

    def __init__(self, values: np.ndarray, batch_size: int, *, n_bins: int = 10, num_batches: int | None = None,
                 seed: int = 0) -> None:
        values = np.asarray(values)
        if values.ndim != 1 or values.dtype.kind not in "iuf":
            raise ValueError(f"values must be a 1-D numeric array, got shape {values.shape} dtype {values.dtype}")
        _check_batch_args(values.shape[0], batch_size, num_batches)
        if not 2 <= n_bins <= 255:
            raise ValueError(f"n_bins must be in [2, 255], got {n_bins}")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"values has {bad.size} non-finite entries, first at samples {bad[:5].tolist()}; "
                             "restrict the dataset with end_mask first")
        self.batch_size, self.n_bins, self.seed = batch_size, n_bins, seed
        self.num_batches = num_batches if num_batches is not None else max(1, values.shape[0] // batch_size)
        self.edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
        bins = np.searchsorted(self.edges, values, side="right").astype(np.uint8)
        idx_dtype = np.int32 if values.shape[0] < 2**31 else np.int64
        members = [np.flatnonzero(bins == b).astype(idx_dtype) for b in range(n_bins)]
        del bins
        sizes = np.array([m.size for m in members])
        quota = -(-batch_size // n_bins)  # the most any bin gives to one batch
        if (sizes < quota).any():
            b = int(np.argmax(sizes < quota))
            raise ValueError(f"bin {b} of {n_bins} holds {sizes[b]} samples, fewer than the {quota} a batch of "
                             f"{batch_size} needs (edges {self.edges.tolist()}); use fewer bins or smaller batches")
        self.bin_sizes = sizes
        self._members = np.concatenate(members)
        self._offsets = np.concatenate(([0], np.cumsum(sizes)))

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value under this sampler's edges."""
        return np.searchsorted(self.edges, np.asarray(values), side="right")

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = self._next_rng()
        base, extra = divmod(self.batch_size, self.n_bins)
        for _ in range(self.num_batches):
            take = np.full(self.n_bins, base)
            take[rng.choice(self.n_bins, size=extra, replace=False)] += 1
            parts = [self._members[self._offsets[b] + rng.choice(self.bin_sizes[b], size=take[b], replace=False)]
                     for b in range(self.n_bins)]
            yield rng.permutation(np.concatenate(parts).astype(np.int64))


# ------------------------------------------------------------------------------------------------------------------
# Augmentation: functions on torch batches x of shape (B, L, F), randomness only from `generator`
# ------------------------------------------------------------------------------------------------------------------

def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (B, L, F) tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """``x + std * N(0, 1)`` elementwise (std in the units of x: z-scores after scaling)."""
    _check_x(x)
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std}")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + std * noise


def magnitude_warp(x: Tensor, sigma: float, generator: torch.Generator, n_knots: int = 4) -> Tensor:
    """Multiply each (sample, feature) series by a smooth random curve around 1 (Um et al., 2017).

    The curve takes N(1, sigma) values at ``n_knots`` evenly spaced knots over the window and is interpolated
    linearly between them (Um et al. use a cubic spline; linear keeps it monotone between knots).
    """
    _check_x(x)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if n_knots < 2:
        raise ValueError(f"n_knots must be >= 2, got {n_knots}")
    b, length, n_feat = x.shape
    knots = 1.0 + sigma * torch.randn((b, n_feat, n_knots), generator=generator, dtype=x.dtype, device=x.device)
    curve = F.interpolate(knots, size=length, mode="linear", align_corners=True)  # (B, F, L)
    return x * curve.transpose(1, 2)  # (B, L, F)


def feature_dropout(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Zero each (sample, feature) series over the whole window with probability ``p``.

    Zero is the training mean once features are z-scored; no 1 / (1 - p) rescaling.
    """
    _check_x(x)
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")
    keep = torch.rand((x.shape[0], 1, x.shape[2]), generator=generator, device=x.device) >= p  # (B, 1, F)
    return x * keep.to(x.dtype)


def mixup(x: Tensor, y: Tensor, alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al., 2018; seed 002): ``lam * a + (1 - lam) * b`` for x and y, b a shuffled partner.

    ``lam ~ Beta(alpha, alpha)`` per sample, drawn by numpy from a seed taken from ``generator`` (torch's Beta
    sampler accepts no generator).
    """
    _check_x(x)
    if not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1] or not y.is_floating_point():
        raise ValueError(f"y must be a floating tensor with the batch size {x.shape[0]} first, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    b = x.shape[0]
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=b))
    perm = torch.randperm(b, generator=generator, device=generator.device).to(x.device)
    lam_x = lam.to(device=x.device, dtype=x.dtype).view(b, 1, 1)
    lam_y = lam.to(device=y.device, dtype=y.dtype).view((b,) + (1,) * (y.dim() - 1))
    return lam_x * x + (1 - lam_x) * x[perm], lam_y * y + (1 - lam_y) * y[perm]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations :func:`augment` applies; 0 switches one off (all off by default)."""

    noise_std: float = 0.0
    """Gaussian noise std, in z-score units."""
    warp_sigma: float = 0.0
    """Magnitude-warp knot std (curves around 1)."""
    warp_knots: int = 4
    """Magnitude-warp knots per window."""
    dropout_p: float = 0.0
    """Probability of zeroing a feature for a whole window."""
    mixup_alpha: float = 0.0
    """Beta(alpha, alpha) parameter of mixup; needs floating targets."""

    def __post_init__(self) -> None:
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not self.warp_sigma >= 0:
            raise ValueError(f"warp_sigma must be >= 0, got {self.warp_sigma}")
        if self.warp_knots < 2:
            raise ValueError(f"warp_knots must be >= 2, got {self.warp_knots}")
        if not 0 <= self.dropout_p < 1:
            raise ValueError(f"dropout_p must be in [0, 1), got {self.dropout_p}")
        if not self.mixup_alpha >= 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")


def augment(batch: Batch, config: AugmentConfig, generator: torch.Generator, *, training: bool) -> Batch:
    """Apply noise, magnitude warp, feature dropout and mixup (in that order, each if on) to a training batch.

    With ``training=False`` the batch is returned unchanged (the same object), and ``generator`` is not used.
    ``end_row`` is kept; after mixup it names each sample's own (first) window.
    """
    if not training:
        return batch
    x, y = batch.x, batch.y
    if config.noise_std > 0:
        x = gaussian_noise(x, config.noise_std, generator)
    if config.warp_sigma > 0:
        x = magnitude_warp(x, config.warp_sigma, generator, config.warp_knots)
    if config.dropout_p > 0:
        x = feature_dropout(x, config.dropout_p, generator)
    if config.mixup_alpha > 0:
        if y is None:
            raise ValueError("mixup_alpha > 0 needs a batch with targets (batch.y is None)")
        x, y = mixup(x, y, config.mixup_alpha, generator)
    return Batch(x, y, batch.end_row)
