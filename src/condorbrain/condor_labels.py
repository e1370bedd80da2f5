"""The iron condor a policy proposes and the labels it is trained on: the one strike rule (:func:`condor_strikes`,
which the predictor and the backtests use too), the probability-of-profit / ROI labels of the proposal
(:func:`condor_labels`), the wing label (:func:`wing_label`) and the training loss that labels on the fly
(:func:`make_loss`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

from condorbrain.features import black_scholes_torch
from condorbrain.models import LossWeights, PolicyOutput, condor_loss
from condorbrain.run_config import RunConfig

__all__ = ["MIN_WING", "CondorStrikes", "condor_labels", "condor_strikes", "make_loss", "wing_label"]


class CondorStrikes(NamedTuple):
    """The iron condor a policy proposes, as fractions of the spot at the decision time (shapes as the policy's)."""

    k_lower: torch.Tensor
    """Short put strike / spot; the long put is ``wing`` below it."""
    k_upper: torch.Tensor
    """Short call strike / spot; the long call is ``wing`` above it."""
    wing: torch.Tensor
    """Distance between each short strike and its long strike / spot."""


def condor_strikes(out: PolicyOutput, cfg: RunConfig) -> CondorStrikes:
    """The strike rule, the one place it lives (training labels and the predictor both call it).

    K_lower / S = 1 - down_q(pop_level), floored at 1e-3; K_upper / S = 1 + up_q(pop_level): the short strikes sit at
    the ``pop_level`` quantiles of the predicted down / up excursions over the holding horizon. Wing = ``wing``,
    floored at 1e-4 (fractions of spot). Gradients flow through (detach for labels).
    """
    j = cfg.model.quantiles.index(cfg.pop_level)
    return CondorStrikes(k_lower=(1.0 - out.down_q[..., j]).clamp_min(1e-3), k_upper=1.0 + out.up_q[..., j],
                         wing=out.wing.clamp_min(1e-4))


def condor_labels(out: PolicyOutput, term: torch.Tensor, iv: torch.Tensor, cfg: RunConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """POP and ROI labels of the condor the model proposes (strikes and wings detached), per sample.

    Strikes from :func:`condor_strikes`: short put at 1 - down_q, short call at 1 + up_q (the ``pop_level``
    quantiles, as fractions of spot), long legs ``wing`` further out; credit from Black-Scholes at the entry iv with
    ``target_dte`` days to expiry, settled at the holding horizon's close (intrinsic value). POP = 1 if the close
    ends between the short strikes; ROI = P&L / max loss (width - credit). NaN where the horizon runs past the data.
    """
    k_put, k_call, wing = (t.detach() for t in condor_strikes(out, cfg))
    s = torch.ones_like(k_put)
    T = torch.full_like(k_put, cfg.target_dte / 365.0)
    r, q = cfg.rate, cfg.dividend_yield

    def price(k: torch.Tensor, is_call: bool) -> torch.Tensor:
        return black_scholes_torch(s, k, T, r, iv, is_call, q).price

    credit = (price(k_put, False) - price((k_put - wing).clamp_min(1e-4), False)
              + price(k_call, True) - price(k_call + wing, True))
    s_T = 1.0 + term
    loss = ((k_put - s_T).clamp_min(0) - (k_put - wing - s_T).clamp_min(0)
            + (s_T - k_call).clamp_min(0) - (s_T - k_call - wing).clamp_min(0))
    max_loss = (wing - credit).clamp_min(1e-6)
    roi = (credit - loss) / max_loss
    pop = ((s_T > k_put) & (s_T < k_call)).float()
    missing = ~torch.isfinite(term)
    return pop.masked_fill(missing, math.nan), roi.masked_fill(missing, math.nan)


MIN_WING = 0.005
"""Narrowest wing label, a fraction of spot (0.5%: about two strike steps of a $5-grid SPX chain near 2,000)."""


def wing_label(out: PolicyOutput, up: torch.Tensor, down: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """The protection the proposed condor needed: how far the price went beyond a short strike during the holding
    horizon, floored at :data:`MIN_WING` (fractions of spot; strikes detached).

    With ``up`` / ``down`` the realized max up / down excursions over the horizon (``targets["up"]``, ``["down"]``),
    label = max(MIN_WING, up - (K_upper - 1), down - (1 - K_lower)). The wing head thus learns the expected breach
    size: wide wings where the tails run far past the short strikes, the narrowest where they do not. NaN where the
    horizon runs past the data.
    """
    k_put, k_call, _ = (t.detach() for t in condor_strikes(out, cfg))
    breach = torch.maximum(up - (k_call - 1.0), down - (1.0 - k_put))
    return breach.clamp_min(MIN_WING)  # NaN stays NaN (clamp keeps NaN)


def make_loss(cfg: RunConfig, weights: LossWeights):
    """``loss_fn(out, targets)`` for :func:`fit`: labels POP / ROI / wing from the proposal, then
    :func:`condor_loss`."""

    def loss_fn(out: PolicyOutput, targets: Mapping[str, torch.Tensor]):
        t = dict(targets)
        term, iv = t.pop("_term"), t.pop("_iv")
        t["pop"], t["roi"] = condor_labels(out, term, iv, cfg)
        t["wing"] = wing_label(out, t["up"], t["down"], cfg)
        return condor_loss(out, t, weights, cfg.model)

    return loss_fn
