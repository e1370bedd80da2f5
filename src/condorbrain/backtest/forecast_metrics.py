"""Forecast metrics: point errors, QLIKE for variance, direction, rank correlation, probability calibration.

Every metric takes a forecast and the realised value (``truth``) as 1-D arrays of one length, aligned row by row.
NaN handling is the same everywhere: a pair with a NaN on either side is dropped, and the number dropped is part of
the result (`Score.n_dropped`), never silent. A metric over zero pairs is NaN. +/-inf is an error.

Units are the caller's: MSE is in squared forecast units, MAE in forecast units. For volatility, pass *variances*
(vol^2) to `qlike` and to `mse` when comparing by the robust losses of Patton (2011).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray
from scipy.stats import spearmanr

__all__ = [
    "DirectionalScore",
    "QlikeScore",
    "ReliabilityCurve",
    "Score",
    "brier_score",
    "compare_forecasts",
    "directional_accuracy",
    "information_coefficient",
    "mae",
    "mse",
    "qlike",
    "reliability_curve",
]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Score:
    """A metric over the pairs where forecast and truth are both non-NaN."""

    value: float
    """The metric; NaN when no pair is left (or where the metric documents it)."""
    n: int
    """Pairs used."""
    n_dropped: int
    """Pairs dropped because the forecast or the truth was NaN."""


@dataclass(frozen=True)
class DirectionalScore(Score):
    """Directional accuracy; `n` counts the pairs that were scored (ties excluded)."""

    n_ties: int
    """Non-NaN pairs not scored because the forecast or the truth was exactly 0 (no direction)."""


@dataclass(frozen=True)
class QlikeScore(Score):
    """QLIKE; `n` counts the pairs that were scored (zeros excluded)."""

    n_zero: int
    """Non-NaN pairs not scored because the forecast or the realised variance was exactly 0 (log undefined)."""


@dataclass(frozen=True)
class ReliabilityCurve:
    """A reliability (calibration) curve: equal-width bins of the predicted probability on [0, 1]."""

    bin_edges: Array
    """Shape (n_bins + 1,); bin i is [edges[i], edges[i+1]), the last bin also holds 1.0."""
    count: NDArray[np.int64]
    """Pairs per bin, shape (n_bins,)."""
    mean_predicted: Array
    """Mean predicted probability per bin (NaN for an empty bin)."""
    observed_frequency: Array
    """Fraction of outcomes equal to 1 per bin (NaN for an empty bin)."""
    n_dropped: int
    """Pairs dropped because the probability or the outcome was NaN."""


def _pairs(forecast: ArrayLike, truth: ArrayLike) -> tuple[Array, Array, int]:
    """The non-NaN pairs as float64 arrays, and how many pairs were dropped."""
    f, y = np.asarray(forecast, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if f.ndim != 1 or f.shape != y.shape:
        raise ValueError(f"forecast and truth must be 1-D of one length, got shapes {f.shape} and {y.shape}")
    if np.isinf(f).any() or np.isinf(y).any():
        raise ValueError("forecast or truth holds +/-inf")
    keep = ~(np.isnan(f) | np.isnan(y))
    return f[keep], y[keep], int((~keep).sum())


def _mean(x: Array) -> float:
    return float(x.mean()) if len(x) else float("nan")


def mse(forecast: ArrayLike, truth: ArrayLike) -> Score:
    """Mean squared error mean((f - y)^2), squared units of the inputs."""
    f, y, dropped = _pairs(forecast, truth)
    return Score(_mean((f - y) ** 2), len(f), dropped)


def mae(forecast: ArrayLike, truth: ArrayLike) -> Score:
    """Mean absolute error mean(|f - y|), units of the inputs."""
    f, y, dropped = _pairs(forecast, truth)
    return Score(_mean(np.abs(f - y)), len(f), dropped)


def qlike(forecast_var: ArrayLike, realized_var: ArrayLike) -> QlikeScore:
    """Patton's (2011) robust QLIKE loss for variance forecasts: mean(s2 / h - ln(s2 / h) - 1).

    s2 is the realised variance (proxy), h the forecast variance; both variances, in one unit (e.g. fraction^2 over
    the horizon = `forward_realized_vol` squared). The loss is >= 0, = 0 iff h = s2, and its expectation over s2 is
    minimised at h = E[s2], so ranking by it is robust to noise in the proxy.

    Zeros: the loss is undefined where s2 = 0 or h = 0 (e.g. an unchanged close over a one-bar horizon); such pairs
    are left out and counted in `QlikeScore.n_zero` (`n` counts the pairs scored).

    Raises:
        ValueError: a negative variance (no variance is negative: a bug upstream).
    """
    h, s2, dropped = _pairs(forecast_var, realized_var)
    if (h < 0).any() or (s2 < 0).any():
        raise ValueError(f"qlike needs variances >= 0: {int((h < 0).sum())} forecast(s) and {int((s2 < 0).sum())} "
                         "realised value(s) are negative")  # fmt: skip
    scored = (h > 0) & (s2 > 0)
    ratio = s2[scored] / h[scored]
    return QlikeScore(_mean(ratio - np.log(ratio) - 1.0), int(scored.sum()), dropped, int((~scored).sum()))


def directional_accuracy(forecast: ArrayLike, truth: ArrayLike) -> DirectionalScore:
    """Share of pairs with sign(forecast) == sign(truth), over pairs where both are non-zero.

    Ties: a pair where the forecast or the truth is exactly 0 has no direction; it is neither a hit nor a miss, is
    left out of the denominator and counted in `n_ties`. The random walk (forecast 0 everywhere) therefore scores
    NaN with n_ties = every pair: it makes no directional call.
    """
    f, y, dropped = _pairs(forecast, truth)
    scored = (f != 0) & (y != 0)
    hits = np.sign(f[scored]) == np.sign(y[scored])
    return DirectionalScore(_mean(hits.astype(np.float64)), int(scored.sum()), dropped, int((~scored).sum()))


def information_coefficient(forecast: ArrayLike, truth: ArrayLike) -> Score:
    """Information coefficient: Spearman rank correlation of forecast and truth (ties get average ranks).

    NaN when fewer than 2 pairs remain or either side is constant (a rank correlation is undefined there; scipy
    would warn, so the case is decided here).
    """
    f, y, dropped = _pairs(forecast, truth)
    if len(f) < 2 or np.all(f == f[0]) or np.all(y == y[0]):
        return Score(float("nan"), len(f), dropped)
    return Score(float(spearmanr(f, y).statistic), len(f), dropped)


def _probabilities(prob: ArrayLike, outcome: ArrayLike) -> tuple[Array, Array, int]:
    p, y, dropped = _pairs(prob, outcome)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    return p, y, dropped


def brier_score(prob: ArrayLike, outcome: ArrayLike) -> Score:
    """Brier score mean((p - y)^2) for probabilities p in [0, 1] and outcomes y in {0, 1}; 0 is perfect."""
    p, y, dropped = _probabilities(prob, outcome)
    return Score(_mean((p - y) ** 2), len(p), dropped)


def reliability_curve(prob: ArrayLike, outcome: ArrayLike, n_bins: int = 10) -> ReliabilityCurve:
    """Calibration of probabilities: per equal-width bin of p, the count, mean p and observed frequency of y = 1.

    A calibrated forecast has mean_predicted ~= observed_frequency in every populated bin.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    p, y, dropped = _probabilities(prob, outcome)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # p = 1.0 goes to the last bin
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore"):  # 0 / 0 -> NaN for empty bins, by design
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return ReliabilityCurve(edges, count, mean_p, freq, dropped)


_KINDS = ("return", "volatility", "probability")


def compare_forecasts(
    truth: ArrayLike,
    forecasts: Mapping[str, ArrayLike],
    kind: Literal["return", "volatility", "probability"],
) -> pl.DataFrame:
    """One table comparing named forecasts of one target on the same rows.

    Rows used: those where the truth and *every* forecast are non-NaN, so each forecast is scored on identical
    rows; the others are dropped and counted in ``n_dropped`` (the same for every forecast).

    Columns: ``forecast``, ``n``, ``n_dropped``, then by kind:
    - "return" (log returns): ``mse``, ``mae``, ``directional_accuracy``, ``n_ties`` (see `directional_accuracy`),
      ``ic``.
    - "volatility" (vols, e.g. `forward_realized_vol`): ``mse_vol``, ``mae_vol`` on vols; ``mse_var`` and ``qlike``
      on variances (vol^2, Patton's robust pair), ``n_zero`` (rows QLIKE leaves out for a zero variance, see
      `qlike`; the other metrics use them); ``ic``.
    - "probability" (p in [0, 1] against outcomes 0 / 1): ``brier``.
    One row per forecast, in the mapping's order.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not forecasts:
        raise ValueError("forecasts is empty")
    y = np.asarray(truth, dtype=np.float64)
    fs = {name: np.asarray(f, dtype=np.float64) for name, f in forecasts.items()}
    for name, f in fs.items():
        if f.shape != y.shape or y.ndim != 1:
            raise ValueError(f"forecast {name!r} has shape {f.shape}, truth {y.shape}; both must be 1-D of one length")
    keep = ~np.isnan(y)
    for f in fs.values():
        keep &= ~np.isnan(f)
    dropped = int((~keep).sum())
    rows: list[dict[str, object]] = []
    for name, f in fs.items():
        fk, yk = f[keep], y[keep]
        row: dict[str, object] = {"forecast": name, "n": int(keep.sum()), "n_dropped": dropped}
        if kind == "return":
            da = directional_accuracy(fk, yk)
            row |= {"mse": mse(fk, yk).value, "mae": mae(fk, yk).value, "directional_accuracy": da.value,
                    "n_ties": da.n_ties, "ic": information_coefficient(fk, yk).value}  # fmt: skip
        elif kind == "volatility":
            ql = qlike(fk**2, yk**2)
            row |= {"mse_vol": mse(fk, yk).value, "mae_vol": mae(fk, yk).value, "mse_var": mse(fk**2, yk**2).value,
                    "qlike": ql.value, "n_zero": ql.n_zero, "ic": information_coefficient(fk, yk).value}  # fmt: skip
        else:
            row |= {"brier": brier_score(fk, yk).value}
        rows.append(row)
    return pl.DataFrame(rows)
