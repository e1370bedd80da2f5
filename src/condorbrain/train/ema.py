"""Exponential moving average (EMA) of a model's weights, used for evaluation.

After every optimizer step, for each floating-point parameter::

    shadow = beta * shadow + (1 - beta) * param        (computed as shadow.lerp_(param, 1 - beta))

The shadow starts as a copy of the parameters. Training always updates the live parameters; evaluation swaps the
shadow in (:meth:`EMA.swapped_in`) and back out. Buffers (e.g. running statistics) are not averaged: the model's
own buffers are used in both modes. The shadow is kept in fp32 on the parameters' device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Shadow weights of ``model``'s floating-point parameters that require gradients."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self._params: dict[str, nn.Parameter] = {
            name: p for name, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32, copy=True) for name, p in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the current parameters (call after ``optimizer.step()``)."""
        shadows = list(self.shadow.values())
        params = [p.detach().to(torch.float32) for p in self._params.values()]
        torch._foreach_lerp_(shadows, params, 1.0 - self.decay)
        self.num_updates += 1

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model's parameters hold the shadow weights; the live weights come back on exit,
        also when the block raises."""
        live = {name: p.detach().clone() for name, p in self._params.items()}
        try:
            with torch.no_grad():
                for name, p in self._params.items():
                    p.copy_(self.shadow[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in self._params.items():
                    p.copy_(live[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors, keyed by parameter name (the same keys as the model's ``state_dict``)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int = 0) -> None:
        """Restore the shadow (strict: the same names and shapes as this model's parameters)."""
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the model: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for name, t in state.items():
                if t.shape != self.shadow[name].shape:
                    raise ValueError(f"EMA state {name!r} has shape {tuple(t.shape)}, "
                                     f"the model's is {tuple(self.shadow[name].shape)}")
                self.shadow[name].copy_(t)
        self.num_updates = num_updates

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with the parameters replaced by the shadow (what a predictor loads)."""
        out = {k: v.detach() for k, v in model.state_dict().items()}
        for name, t in self.shadow.items():
            out[name] = t.to(out[name].dtype)
        return out
