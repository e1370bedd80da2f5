"""CondorBrain's multi-task loss: Huber, pinball (quantile), binary and multi-class cross-entropy, NaN-masked.

Targets that run past the end of the data are NaN by design (:mod:`condorbrain.features.targets`). Every loss here
is a mean over the elements whose target is finite only; a NaN target contributes exactly 0 to the value and to the
gradient, and a head whose targets are all NaN in a batch contributes 0 (never NaN). A NaN *prediction* is not
masked: it propagates, so that the training loop can stop on it.

:func:`condor_loss` combines the heads of a :class:`~condorbrain.models.PolicyOutput`:

==========  =================  ==================================  ================================
target key  output field       target (shape as the output)        loss
==========  =================  ==================================  ================================
``ret``     ``ret``            (B, H) forward simple return        Huber on (pred - y) / scale
``vol``     ``vol``            (B,) forward realized vol           Huber on (pred - y) / scale
``up``      ``up_q``           (B,) upside excursion (mae_short)   pinball at the Q levels, / scale
``down``    ``down_q``         (B,) downside excursion (mae_long)  pinball at the Q levels, / scale
``wing``    ``wing``           (B,) target wing width              Huber on (pred - y) / scale
``pop``     ``pop_logit``      (B,) 1 if the condor made money     binary cross-entropy with logits
``roi``     ``roi``            (B,) realized ROI of the condor     Huber on (pred - y) / scale
``max_dd``  ``max_dd``         (B,) forward max drawdown           Huber on (pred - y) / scale
``regime``  ``regime_logits``  (B,) class 0 / 1 / 2, -1 unknown    cross-entropy
==========  =================  ==================================  ================================

With ``all_steps`` outputs every shape gains the L axis after B. ``scale`` is the head's typical size
(:meth:`CondorBrainConfig.target_scales`); it makes every regression error O(1), so the Huber threshold and the
weights mean the same for daily and for 5-minute data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from condorbrain.models.condorbrain import PolicyOutput
from condorbrain.models.config import CondorBrainConfig

__all__ = ["TARGET_KEYS", "LossWeights", "bce_with_logits", "condor_loss", "cross_entropy", "huber", "pinball"]

TARGET_KEYS: dict[str, str] = {
    "ret": "ret", "vol": "vol", "up": "up_q", "down": "down_q", "wing": "wing", "pop": "pop_logit", "roi": "roi",
    "max_dd": "max_dd", "regime": "regime_logits",
}  # fmt: skip
"""Target key of :func:`condor_loss` -> the :class:`PolicyOutput` field it supervises."""

Scale = float | Tensor
"""A head's typical size: a number, or a tensor broadcast against the target (e.g. (H,) per horizon)."""


def _masked_mean(elems: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``elems`` where ``mask`` (same shape); 0 (with a zero gradient) where the mask is empty."""
    total = torch.where(mask, elems, torch.zeros_like(elems)).sum()
    return total / mask.sum().clamp_min(1).to(total.dtype)


def huber(pred: Tensor, target: Tensor, delta: float = 1.0, scale: Scale = 1.0) -> Tensor:
    """Huber loss of the scaled error e = (pred - target) / scale, averaged over the finite targets.

    rho(e) = e^2 / 2 if |e| <= delta else delta * (|e| - delta / 2) (``torch.nn.functional.huber_loss``).

    Parameters
    ----------
    pred, target : Tensor
        Same shape; NaN targets are left out.
    delta : float
        Threshold between the quadratic and the linear part, in units of ``scale``.
    scale : float or Tensor
        Typical size of the target (broadcast against it, e.g. (H,) per horizon), in the target's unit.

    Returns
    -------
    Tensor
        0-d mean over the finite targets; 0 if there are none.
    """
    mask = torch.isfinite(target)
    t = torch.where(mask, target, pred.detach())  # a NaN target's element is 0 before masking, and has no gradient
    elems = F.huber_loss(pred / scale, t / scale, reduction="none", delta=delta)
    return _masked_mean(elems, mask.expand_as(elems))


def pinball(quantiles: Tensor, target: Tensor, levels: Sequence[float] | Tensor, scale: Scale = 1.0) -> Tensor:
    """Pinball (quantile) loss of predicted quantiles, averaged over the levels and the finite targets.

    rho_tau(u) = max(tau * u, (tau - 1) * u) with u = (y - q_tau) / scale: its minimiser over q is the tau-quantile
    of y. Under-prediction costs tau per unit, over-prediction 1 - tau.

    Parameters
    ----------
    quantiles : Tensor
        (..., Q) predicted quantiles q_tau.
    target : Tensor
        (...) observations y; NaN ones are left out.
    levels : sequence of float or Tensor
        (Q,) levels tau in (0, 1).
    scale : float or Tensor
        Typical size of y, broadcast against ``target``.

    Returns
    -------
    Tensor
        0-d mean over the finite targets and the Q levels; 0 if there are none.
    """
    tau = torch.as_tensor(levels, dtype=quantiles.dtype, device=quantiles.device)  # (Q,)
    if tau.dim() != 1 or tau.shape[0] != quantiles.shape[-1]:
        raise ValueError(f"levels must have shape (Q,) = ({quantiles.shape[-1]},), got {tuple(tau.shape)}")
    if tuple(quantiles.shape[:-1]) != tuple(target.shape):
        raise ValueError(f"quantiles (..., Q) must match target (...): got {tuple(quantiles.shape)} and "
                         f"{tuple(target.shape)}")
    s = torch.as_tensor(scale, dtype=quantiles.dtype, device=quantiles.device)
    mask = torch.isfinite(target)  # (...)
    t = torch.where(mask, target, torch.zeros_like(target))
    u = (t / s).unsqueeze(-1) - quantiles / s.unsqueeze(-1) if s.dim() else (t.unsqueeze(-1) - quantiles) / s
    elems = torch.maximum(tau * u, (tau - 1.0) * u)  # (..., Q)
    return _masked_mean(elems, mask.unsqueeze(-1).expand_as(elems))


def bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of probabilities ``target`` in [0, 1] given ``logits`` (same shape), mean over the
    finite targets; 0 if there are none. ``torch.nn.functional.binary_cross_entropy_with_logits`` per element."""
    mask = torch.isfinite(target)
    t = torch.where(mask, target, torch.zeros_like(target))
    elems = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return _masked_mean(elems, mask)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Multi-class cross-entropy, mean over the known labels; 0 if there are none (F.cross_entropy gives NaN).

    Parameters
    ----------
    logits : Tensor
        (..., C) class logits.
    target : Tensor
        (...) class indices in 0 .. C-1: an integer tensor with -1 for an unknown label, or a float tensor of
        integral values with NaN for an unknown label.
    """
    n_classes = logits.shape[-1]
    if tuple(logits.shape[:-1]) != tuple(target.shape):
        raise ValueError(f"logits (..., C) must match target (...): got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if target.is_floating_point():
        mask = torch.isfinite(target)
        labels = torch.where(mask, target, torch.full_like(target, -1.0))
        if bool((labels != labels.round()).any()):
            raise ValueError("float class labels must be integral values (or NaN for unknown)")
        labels = labels.long()
    else:
        labels = target.long()
        mask = labels >= 0
    if bool((labels < -1).any()) or bool((labels >= n_classes).any()):
        raise ValueError(f"class labels must be in 0..{n_classes - 1} or -1 (unknown)")
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    elems = F.cross_entropy(logits.reshape(-1, n_classes), safe.reshape(-1), reduction="none").reshape(safe.shape)
    return _masked_mean(elems, mask)


@dataclass(frozen=True)
class LossWeights:
    """Weights of :func:`condor_loss`'s heads, and the Huber threshold.

    Defaults. Every term is O(1) at a sensible fit (regression errors are divided by the head's scale; BCE of a
    coin flip is 0.69, cross-entropy over 3 regimes 1.10), so the weights express priorities, not unit fixes: 1 for
    what sets the trade (vol, the two excursion quantiles that place the short strikes, POP) and for the price head
    seed 001 puts first; 0.5 for what follows from those or is noisier (wing, ROI, drawdown, regime). Set a weight
    to 0 to train without that target (it may then be absent from the batch).
    """

    ret: float = 1.0
    """Forward return per horizon (Huber)."""
    vol: float = 1.0
    """Forward realized volatility (Huber)."""
    up: float = 1.0
    """Upside excursion quantiles (pinball)."""
    down: float = 1.0
    """Downside excursion quantiles (pinball)."""
    wing: float = 0.5
    """Wing width (Huber)."""
    pop: float = 1.0
    """Probability of profit (binary cross-entropy)."""
    roi: float = 0.5
    """Expected ROI (Huber)."""
    max_dd: float = 0.5
    """Maximum drawdown (Huber)."""
    regime: float = 0.5
    """Volatility regime (cross-entropy)."""
    huber_delta: float = 1.0
    """Huber threshold, in units of each head's scale (errors beyond it cost linearly)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if not any(getattr(self, k) > 0 for k in TARGET_KEYS):
            raise ValueError(f"at least one head weight must be > 0 ({', '.join(TARGET_KEYS)})")


def condor_loss(out: PolicyOutput, targets: Mapping[str, Tensor], weights: LossWeights,
                config: CondorBrainConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted multi-task loss of CondorBrain's outputs: total = sum_k weights.k * loss_k.

    Parameters
    ----------
    out : PolicyOutput
        The model's outputs (last step (B, ...) or all steps (B, L, ...)).
    targets : mapping of str to Tensor
        Keys of :data:`TARGET_KEYS` (see the module docstring for shapes and units). A head with a weight > 0 needs
        its target; an unknown key is an error (a misspelt key would otherwise train nothing).
    weights : LossWeights
        Head weights and the Huber threshold (``LossWeights()`` for the documented defaults).
    config : CondorBrainConfig
        The model's config: the excursion quantile levels (``quantiles``) and each regression head's scale
        (:meth:`CondorBrainConfig.target_scales`) come from it.

    Returns
    -------
    total : Tensor
        0-d float32, differentiable; finite whenever the predictions are.
    parts : dict of str to Tensor
        Each given head's unweighted loss (0-d, detached), for logging; heads with weight 0 included.
    """
    if not isinstance(out, PolicyOutput):
        raise ValueError(f"out must be a PolicyOutput, got {type(out).__name__}")
    unknown = sorted(set(targets) - set(TARGET_KEYS))
    if unknown:
        raise ValueError(f"unknown target key(s) {unknown}; known: {list(TARGET_KEYS)}")
    if not isinstance(weights, LossWeights):
        raise ValueError(f"weights must be a LossWeights, got {type(weights).__name__}")
    if not isinstance(config, CondorBrainConfig):
        raise ValueError(f"config must be a CondorBrainConfig, got {type(config).__name__}")
    H, Q, R = out.ret.shape[-1], out.up_q.shape[-1], out.regime_logits.shape[-1]
    if (H, Q, R) != (config.n_horizons, config.n_quantiles, config.n_regimes):
        raise ValueError(f"out has (horizons, quantiles, regimes) = {(H, Q, R)} but config has "
                         f"{(config.n_horizons, config.n_quantiles, config.n_regimes)}")
    scales = config.target_scales()
    total = out.ret.new_zeros((), dtype=torch.float32)
    parts: dict[str, Tensor] = {}
    for key, field in TARGET_KEYS.items():
        weight = getattr(weights, key)
        if key not in targets:
            if weight > 0:
                raise ValueError(f"targets has no {key!r} but its weight is {weight}; give it, or set "
                                 f"LossWeights({key}=0) to train without it")
            continue
        pred = getattr(out, field).float()
        expected = pred.shape[:-1] if key in ("up", "down", "regime") else pred.shape
        target = targets[key]
        if not isinstance(target, Tensor) or tuple(target.shape) != tuple(expected):
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"targets[{key!r}] must have shape {tuple(expected)} (as out.{field}), got {got}")
        target = target.to(pred.device)
        if key == "regime":
            part = cross_entropy(pred, target)
        elif key == "pop":
            part = bce_with_logits(pred, target.float())
        else:
            scale = torch.tensor(scales[key], dtype=torch.float32, device=pred.device)  # () or (H,)
            if key in ("up", "down"):
                part = pinball(pred, target.float(), config.quantiles, scale=scale)
            else:
                part = huber(pred, target.float(), delta=weights.huber_delta, scale=scale)
        parts[key] = part.detach()
        if weight > 0:
            total = total + weight * part
    return total, parts
