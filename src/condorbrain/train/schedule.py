"""Learning-rate schedule and the decisions taken after each validation.

The learning rate of optimizer step ``s`` (``s`` = steps already taken, 0 for the first step) is::

    lr(s) = cfg.lr * cosine_with_warmup(s, warmup_steps, total_steps, min_ratio) * plateau.scale

- :func:`cosine_with_warmup` is a pure function of the step, usable as ``torch.optim.lr_scheduler.LambdaLR``'s
  ``lr_lambda`` (``functools.partial(cosine_with_warmup, warmup_steps=..., total_steps=...)``).
- :class:`ReduceOnPlateau` holds a multiplicative ``scale`` (1 at the start) that it lowers when the validation loss
  stops improving, with the semantics of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode "min", threshold mode
  "rel", no cooldown). torch's class rewrites the optimizer's lr, which a step-wise schedule overwrites at the next
  step; keeping the plateau as a factor that multiplies the schedule composes the two without either undoing the
  other, and makes the learning rate a function of (step, plateau state) that a resumed run recomputes exactly.
- :class:`EarlyStopping` counts validations without improvement.

Both classes have ``state_dict`` / ``load_state_dict`` with JSON-ready values (an infinite best is stored as None).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["cosine_with_warmup", "ReduceOnPlateau", "EarlyStopping"]


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up, then a half cosine from 1 down to ``min_ratio``.

    Args:
        step: optimizer steps already taken (0 for the first step; ``LambdaLR``'s ``last_epoch``).
        warmup_steps: W, steps of linear warm-up (0: none).
        total_steps: T, steps of the whole run; T > W.
        min_ratio: the multiplier reached at step T, in [0, 1].

    Returns:
        ``(s + 1) / W`` for ``s < W`` (the first step already moves, the W-th runs at the full rate), then with
        ``p = min(1, (s - W) / (T - W))``: ``min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi p))``, which is 1 at
        ``s = W`` and ``min_ratio`` from ``s = T`` on.
    """
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class ReduceOnPlateau:
    """A learning-rate scale lowered when the validation loss plateaus (see the module docstring).

    After each validation, :meth:`update` compares the loss with the best so far: ``loss < best * (1 - threshold)``
    is an improvement (the counter resets), anything else adds one bad validation; when the count exceeds
    ``patience`` the scale is multiplied by ``factor`` (floored at ``min_scale``) and the counter resets.
    """

    def __init__(self, patience: int, factor: float = 0.5, threshold: float = 1e-4, min_scale: float = 0.0) -> None:
        if patience < 0 or not 0.0 < factor < 1.0 or threshold < 0 or min_scale < 0:
            raise ValueError("need patience >= 0, 0 < factor < 1, threshold >= 0, min_scale >= 0")
        self.patience = patience
        self.factor = factor
        self.threshold = threshold
        self.min_scale = min_scale
        self.scale = 1.0
        self.best = math.inf
        self.bad_evals = 0

    def update(self, loss: float) -> bool:
        """Record one validation loss; True when this call lowered the scale."""
        if loss < self.best * (1.0 - self.threshold):
            self.best = loss
            self.bad_evals = 0
            return False
        self.bad_evals += 1
        if self.bad_evals <= self.patience:
            return False
        self.bad_evals = 0
        new_scale = max(self.scale * self.factor, self.min_scale)
        reduced = new_scale < self.scale
        self.scale = new_scale
        return reduced

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": _finite_or_none(self.best), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])


class EarlyStopping:
    """Stop when the validation loss has not improved by more than ``min_delta`` for ``patience`` validations."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1 or min_delta < 0:
            raise ValueError(f"need patience >= 1 and min_delta >= 0, got {patience} and {min_delta}")
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.bad_evals = 0

    def update(self, loss: float) -> bool:
        """Record one validation loss; True when training should stop."""
        if loss < self.best - self.min_delta:
            self.best = loss
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": _finite_or_none(self.best), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])
