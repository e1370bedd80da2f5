"""Clipped z-score scaling (seed 000 §2.2), fitted on the training rows only.

.. math::

    x_{scaled} = \\operatorname{clip}\\left(\\frac{x - \\mu}{\\sigma + \\epsilon}, -c, c\\right), \\qquad c = 10

* :math:`\\mu, \\sigma` are the per-column mean and population standard deviation (``ddof=0``) of the **training
  rows only** (a boolean mask or a row range); rows outside them never enter the statistics, so validation and
  test data cannot leak into the scaling. They are accumulated in float64, chunk by chunk (Chan et al.'s pairwise
  update), so a memory-mapped array is never copied whole.
* :math:`\\epsilon` = ``DEFAULT_EPS`` = 1e-8 (the seed's formula names an epsilon without a value): it only
  guards the division for tiny but non-zero :math:`\\sigma`; it is small against any real feature's spread.
* A column that is constant on the training rows (:math:`\\sigma = 0` exactly) is **centred, not scaled**: its
  divisor is 1 instead of :math:`\\epsilon`, so it maps to 0 wherever it keeps its training value and to
  ``clip(x - mu, -c, c)`` (in the column's own units) wherever it departs from it. Dividing by
  :math:`\\epsilon` alone would turn any later departure into :math:`\\pm c` noise. ``constant_columns`` lists such
  columns so a caller can drop them explicitly.
* Non-finite input (NaN or inf) raises a ``ValueError`` that names the column (index and name) and its first
  offending rows; nothing is filled or skipped.
* The fitted statistics are plain data: :meth:`ClippedZScore.to_dict` gives a JSON-able dict (float64 values
  survive ``json`` exactly) and :meth:`ClippedZScore.from_dict` also accepts numpy arrays, e.g. read back from a
  safetensors file. Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClippedZScore", "DEFAULT_CLIP", "DEFAULT_EPS", "SCHEMA"]

DEFAULT_CLIP = 10.0
"""Seed 000 §2.2: scaled values are clipped to [-10, 10]."""
DEFAULT_EPS = 1e-8
"""Added to sigma in the divisor; see the module docstring."""
SCHEMA = "condorbrain.clipped_zscore/1"
"""Schema tag written by :meth:`ClippedZScore.to_dict` and checked by :meth:`ClippedZScore.from_dict`."""

_DEFAULT_CHUNK_ROWS = 1 << 16
_MAX_REPORTED_ROWS = 5

RowSelection = slice | range | np.ndarray


def _column_label(j: int, names: Sequence[str] | None) -> str:
    return f"column {j} ({names[j]!r})" if names is not None else f"column {j}"


def _check_2d(name: str, x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (N, F), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, F), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")


def _check_finite(x: np.ndarray, row0: int, names: Sequence[str] | None, what: str,
                  rows: np.ndarray | None = None) -> None:
    """Raise naming the first non-finite column and its first rows; ``rows`` maps chunk rows to array rows."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    j = int(np.flatnonzero(bad.any(axis=0))[0])
    local = np.flatnonzero(bad[:, j])
    where = rows[local] if rows is not None else local + row0
    kind = "NaN" if np.isnan(x[local[0], j]) else "inf"
    raise ValueError(f"{what} has non-finite values ({kind} first) in {_column_label(j, names)}, "
                     f"first rows {where[:_MAX_REPORTED_ROWS].tolist()}")


def _row_chunks(n_rows: int, train_rows: RowSelection, chunk_rows: int):
    """Yield (lo, hi, mask_or_None) chunks of the training selection over ``range(n_rows)``."""
    if isinstance(train_rows, (slice, range)):
        start, stop, step = train_rows.start, train_rows.stop, train_rows.step
        if step not in (None, 1):
            raise ValueError(f"train_rows must be a contiguous range (step 1), got step {step}")
        start = 0 if start is None else start
        stop = n_rows if stop is None else stop
        if not 0 <= start <= stop <= n_rows:
            raise ValueError(f"train_rows [{start}, {stop}) must lie within the array's {n_rows} rows")
        for lo in range(start, stop, chunk_rows):
            yield lo, min(lo + chunk_rows, stop), None
        return
    mask = np.asarray(train_rows)
    if mask.dtype != np.bool_ or mask.shape != (n_rows,):
        raise ValueError(f"train_rows must be a range, a slice or a boolean mask of shape ({n_rows},), "
                         f"got dtype {mask.dtype} and shape {mask.shape}")
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        yield lo, hi, mask[lo:hi]


@dataclass(frozen=True, eq=False)
class ClippedZScore:
    """Fitted clipped z-score statistics; build with :meth:`fit` or :meth:`from_dict`."""

    mean: np.ndarray
    """(F,) float64, the training rows' column means."""
    std: np.ndarray
    """(F,) float64, the training rows' population standard deviations (``ddof=0``); 0 for constant columns."""
    n_fit_rows: int
    """How many rows the statistics were fitted on."""
    eps: float = DEFAULT_EPS
    """Added to ``std`` in the divisor of non-constant columns."""
    clip: float = DEFAULT_CLIP
    """Scaled values are clipped to ``[-clip, clip]``."""
    feature_names: tuple[str, ...] | None = None
    """Column names, kept with the statistics so a checkpoint says what it scales."""

    def __post_init__(self) -> None:
        mean = np.array(self.mean, dtype=np.float64)
        std = np.array(self.std, dtype=np.float64)
        if mean.ndim != 1 or std.shape != mean.shape:
            raise ValueError(f"mean and std must be 1-D of the same length, got {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        if (std < 0).any():
            raise ValueError(f"std must be >= 0, got a negative value in column {int(np.argmax(std < 0))}")
        if not (np.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {self.eps}")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be finite and > 0, got {self.clip}")
        if self.n_fit_rows < 1:
            raise ValueError(f"n_fit_rows must be >= 1, got {self.n_fit_rows}")
        names = None if self.feature_names is None else tuple(str(n) for n in self.feature_names)
        if names is not None and len(names) != mean.shape[0]:
            raise ValueError(f"feature_names has {len(names)} names for {mean.shape[0]} columns")
        mean.flags.writeable = False
        std.flags.writeable = False
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "feature_names", names)

    # --- fitting ---------------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, x: np.ndarray, train_rows: RowSelection, *, feature_names: Sequence[str] | None = None,
            eps: float = DEFAULT_EPS, clip: float = DEFAULT_CLIP,
            chunk_rows: int = _DEFAULT_CHUNK_ROWS) -> ClippedZScore:
        """Fit mean and std on ``x[train_rows]`` only.

        Args:
            x: (N, F) float array, e.g. a ``np.memmap``; read ``chunk_rows`` rows at a time.
            train_rows: the training rows: a ``range`` / ``slice`` (step 1) or a boolean mask of shape (N,).
            feature_names: F column names, used in error messages and saved with the statistics.
            eps, clip: see the module docstring.
            chunk_rows: rows read per step.

        Raises:
            ValueError: bad shapes or arguments, no training rows, or a non-finite training value (the message
                names the column and its first rows).
        """
        _check_2d("x", x)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        names = None if feature_names is None else tuple(feature_names)
        if names is not None and len(names) != x.shape[1]:
            raise ValueError(f"feature_names has {len(names)} names for x's {x.shape[1]} columns")
        n_features = x.shape[1]
        count = 0
        mean = np.zeros(n_features)
        m2 = np.zeros(n_features)  # sum of squared deviations from the running mean
        first: np.ndarray | None = None  # the first training row, to decide constancy exactly
        constant = np.ones(n_features, dtype=bool)
        for lo, hi, mask in _row_chunks(x.shape[0], train_rows, chunk_rows):
            if mask is None:
                chunk = np.asarray(x[lo:hi], dtype=np.float64)
                rows = None
            else:
                rows = np.flatnonzero(mask) + lo
                if rows.size == 0:
                    continue
                chunk = np.asarray(x[rows], dtype=np.float64)
            _check_finite(chunk, lo, names, "x (training rows)", rows)
            if first is None:
                first = chunk[0].copy()
            constant &= (chunk == first).all(axis=0)
            n_b = chunk.shape[0]
            mean_b = chunk.mean(axis=0)
            m2_b = ((chunk - mean_b) ** 2).sum(axis=0)
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
        if count == 0:
            raise ValueError("train_rows selects no rows")
        # Constancy is decided from the values themselves, not from a rounded m2 that may be a hair above 0.
        std = np.where(constant, 0.0, np.sqrt(m2 / count))
        mean = np.where(constant, first, mean)  # exact, so a constant column maps to exactly 0
        return cls(mean=mean, std=std, n_fit_rows=count, eps=eps, clip=clip, feature_names=names)

    # --- applying --------------------------------------------------------------------------------------------

    @property
    def constant_columns(self) -> np.ndarray:
        """Indices of the columns that were constant on the training rows (centred only, never scaled)."""
        return np.flatnonzero(self.std == 0)

    @property
    def divisor(self) -> np.ndarray:
        """(F,) float64: ``std + eps``, or 1 for constant columns."""
        return np.where(self.std == 0, 1.0, self.std + self.eps)

    def transform(self, x: np.ndarray, out: np.ndarray | None = None, *,
                  chunk_rows: int = _DEFAULT_CHUNK_ROWS) -> np.ndarray:
        """Scale ``x`` chunk by chunk into ``out`` (float32) and return ``out``.

        Args:
            x: (N, F) float array, e.g. a read-only ``np.memmap`` of the raw features.
            out: (N, F) float32 destination. ``None`` allocates one in memory. To scale a memory-mapped array
                without a second full copy, pass ``out=x`` (in place, if ``x`` is a writable float32 map) or
                ``np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=x.shape)``.
            chunk_rows: rows processed per step (each step holds one float64 chunk).

        Raises:
            ValueError: wrong shapes or dtypes, ``out`` overlapping ``x`` other than exactly, or a non-finite value
                in ``x`` (the message names the column and its first rows). In place, every row is checked before
                any is written; into a separate ``out``, the chunks before the bad one are already written.
        """
        _check_2d("x", x)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x has {x.shape[1]} columns, the scaler was fitted on {self.mean.shape[0]}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if out is None:
            out = np.empty(x.shape, dtype=np.float32)
        else:
            if not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != np.float32:
                raise ValueError(f"out must be a float32 array of shape {x.shape}, got "
                                 f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
            if not out.flags.writeable:
                raise ValueError("out is read-only (open the memmap with mode 'r+' or 'w+')")
            in_place = (out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
                        and out.strides == x.strides)
            if not in_place and np.may_share_memory(out, x):
                raise ValueError("out overlaps x without being the same array; pass out=x or a separate array")
            if in_place:  # check every row before overwriting any, so an error never leaves x half-scaled
                for lo in range(0, x.shape[0], chunk_rows):
                    _check_finite(x[lo:lo + chunk_rows], lo, self.feature_names, "x")
        mean = self.mean
        div = self.divisor
        for lo in range(0, x.shape[0], chunk_rows):
            hi = min(lo + chunk_rows, x.shape[0])
            chunk = np.asarray(x[lo:hi], dtype=np.float64)
            _check_finite(chunk, lo, self.feature_names, "x")
            chunk -= mean
            chunk /= div
            np.clip(chunk, -self.clip, self.clip, out=chunk)
            out[lo:hi] = chunk
        return out

    # --- plain-data round trip -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able statistics (python floats round-trip float64 exactly through ``json``)."""
        return {
            "schema": SCHEMA,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "n_fit_rows": int(self.n_fit_rows),
            "eps": float(self.eps),
            "clip": float(self.clip),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClippedZScore:
        """Inverse of :meth:`to_dict`; ``mean`` and ``std`` may be lists or numpy arrays (e.g. from safetensors)."""
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"d['schema'] must be {SCHEMA!r}, got {d.get('schema')!r}")
        missing = [k for k in ("mean", "std", "n_fit_rows", "eps", "clip") if k not in d]
        if missing:
            raise ValueError(f"d lacks the keys {missing}")
        names = d.get("feature_names")
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), std=np.asarray(d["std"], dtype=np.float64),
                   n_fit_rows=int(d["n_fit_rows"]), eps=float(d["eps"]), clip=float(d["clip"]),
                   feature_names=None if names is None else tuple(names))
