"""CondorBrain: the parametric policy network of seeds 000 / 001, a thin composition of :mod:`condorbrain.ssm` parts.

::

    x (B, L, F) --InputEmbedding--> (B, L, D) --Backbone (N blocks + RMSNorm)--> h (B, L, D)
    h_t --RegimeDetector G--> regime logits (B, R)
    h_t --ExpertDecoder E_i--> a full policy per expert (B, P), i = 1 .. n_experts
    output = sum_i softmax(G(h_t))_i * E_i(h_t)                                  (seed 001 section 6.2)

The gate G *is* the RegimeDetector (seed 001: "a RegimeDetector that acts as a gating network"): the regime
head is supervised by regime labels, so expert i is steered to the i-th volatility regime (low / normal / high) and
its sub-policy can be read as "the condor for that regime"; the experts' losses flow back into the gate too, so the
gate is also shaped by which expert predicts best. A separate, unsupervised gate would be free to learn any split,
losing that reading, and could collapse onto one expert. With ``n_experts = 1`` there is no mixture (an ablation);
the regime head is still trained.

Each expert outputs a complete, valid policy (positive heads positive, quantiles non-crossing); a convex combination
of valid policies is valid, so the mixture keeps every constraint. Logits (POP) are mixed as logits.

Units: returns, vols, excursions, wing widths and drawdowns are fractions of the spot price at t (0.02 = 2%) over
their horizon (not annualised); ROI is a fraction of the condor's maximum risk; POP is a logit.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from condorbrain.models.config import CondorBrainConfig
from condorbrain.ssm import Backbone
from condorbrain.ssm._checks import all_finite, input_scanned

__all__ = [
    "CondorBrain",
    "ExpertDecoder",
    "InputEmbedding",
    "PolicyOutput",
    "RegimeDetector",
    "transformer_baseline",
]

InferenceCache = list[tuple[Tensor, ...]]


class PolicyOutput(NamedTuple):
    """CondorBrain's outputs for one decision point per sample (shapes (B, ...)), or for every step ((B, L, ...)).

    Shapes below are for one decision point; with ``all_steps=True`` an L axis follows B. H = len(horizons),
    Q = len(quantiles), R = n_regimes. Price-unit fields are fractions of the spot at the decision time.
    """

    ret: Tensor
    """(B, H) forward simple return close_{t+h} / close_t - 1 for each horizon h of ``config.horizons``."""
    vol: Tensor
    """(B,) realized volatility over the holding horizon, sqrt(sum of squared one-step log returns); > 0."""
    up_q: Tensor
    """(B, Q) quantiles at ``config.quantiles`` of the upside excursion max(close_{t+1..t+hold}) / close_t - 1;
    > 0 and non-decreasing along Q (the short call's distance from spot: K_upper = spot * (1 + up_q))."""
    down_q: Tensor
    """(B, Q) quantiles of the downside excursion 1 - min(close_{t+1..t+hold}) / close_t; > 0, non-decreasing along
    Q (K_lower = spot * (1 - down_q))."""
    wing: Tensor
    """(B,) wing width, the distance between each short strike and its long strike; > 0."""
    pop_logit: Tensor
    """(B,) probability of profit (close at t+hold between the short strikes) as a logit; sigmoid for a probability."""
    roi: Tensor
    """(B,) expected return on the condor's maximum risk, settled at t+hold (a fraction; -1 = the full loss)."""
    max_dd: Tensor
    """(B,) maximum drawdown of the path close_t .. close_{t+hold}; > 0 (``features.forward_max_drawdown``)."""
    regime_logits: Tensor
    """(B, R) logits over the volatility regimes low / normal / high; their softmax is the experts' gate."""

    @property
    def pop_prob(self) -> Tensor:
        """(B,) probability of profit, sigmoid(pop_logit)."""
        return torch.sigmoid(self.pop_logit)

    @property
    def regime_probs(self) -> Tensor:
        """(B, R) regime probabilities, softmax(regime_logits): the mixture weights of the experts."""
        return torch.softmax(self.regime_logits, dim=-1)


class InputEmbedding(nn.Module):
    """E_t = LayerNorm(W_in x_t + b_in), F -> D (seed 001 section 2.4), then dropout in training."""

    def __init__(self, n_features: int, d_model: int, eps: float = 1e-5, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, F) -> (B, L, D)."""
        return self.drop(self.norm(self.proj(x)))


class RegimeDetector(nn.Module):
    """Logits over the volatility regimes from a hidden state: Linear -> SiLU -> dropout -> Linear.

    Parameters
    ----------
    d_model : int
        Width of the hidden state.
    n_regimes : int
        Number of regimes R.
    d_hidden : int
        Hidden width.
    dropout : float
        Dropout probability in training.
    """

    def __init__(self, d_model: int, n_regimes: int, d_hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_hidden, n_regimes)

    def forward(self, h: Tensor) -> Tensor:
        """h: (..., D) -> logits (..., R)."""
        return self.fc2(self.drop(F.silu(self.fc1(h))))


class ExpertDecoder(nn.Module):
    """One expert: a multi-head decoder from a hidden state to a complete, valid policy, packed in one tensor.

    A shared trunk (Linear -> SiLU -> dropout) feeds one linear layer whose outputs are split into heads and
    constrained (seed 001 sections 5.2, 6.1)::

        ret    = step_vol * sqrt(h) * a_ret                          for each horizon h
        vol    = s * softplus+(a_vol)                                s = step_vol * sqrt(hold_horizon)
        up_q   = s * cumsum(softplus+(a_up))     (likewise down_q)   non-crossing: positive increments
        wing   = s * softplus+(a_wing);   max_dd = s * softplus+(a_dd)
        pop_logit = a_pop;   roi = a_roi

    with softplus+(a) = softplus(a) + 1e-6, so the positive heads stay > 0 and the quantile increments > 0 even where
    softplus underflows (float rounding may still merge two quantiles next to a very large one: non-decreasing).

    Packed layout along the last axis (``CondorBrain.PACKED_FIELDS`` order): ret (H), vol, up_q (Q), down_q (Q), wing,
    pop_logit, roi, max_dd; P = H + 2Q + 5 values. :meth:`CondorBrain.unpack` turns it into a :class:`PolicyOutput`.
    """

    def __init__(self, config: CondorBrainConfig) -> None:
        super().__init__()
        c = config
        self.n_horizons, self.n_quantiles = c.n_horizons, c.n_quantiles
        self.fc1 = nn.Linear(c.d_model, c.expert_width)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.expert_width, self.n_outputs)
        # Output units (derived from the config, not learned, not saved): see CondorBrainConfig.target_scales.
        scales = c.target_scales()
        self.register_buffer("ret_scale", torch.tensor(scales["ret"], dtype=torch.float32), persistent=False)  # (H,)
        self.price_scale = float(scales["vol"])

    @property
    def n_outputs(self) -> int:
        """Packed width P = H + 2Q + 5."""
        return self.n_horizons + 2 * self.n_quantiles + 5

    def forward(self, h: Tensor) -> Tensor:
        """h: (..., D) -> packed policy (..., P)."""
        a = self.out(self.drop(F.silu(self.fc1(h))))  # (..., P) unconstrained
        a = a.to(torch.promote_types(a.dtype, torch.float32))  # heads in float32 (or float64) under bf16 autocast
        H, Q, s = self.n_horizons, self.n_quantiles, self.price_scale
        a_ret, a_vol, a_up, a_down, a_rest = a.split([H, 1, Q, Q, 4], dim=-1)
        a_wing, a_pop, a_roi, a_dd = a_rest.unbind(-1)
        return torch.cat([
            a_ret * self.ret_scale.to(a.dtype),                       # (..., H)
            s * _positive(a_vol),                                     # (..., 1)
            s * torch.cumsum(_positive(a_up), dim=-1),                # (..., Q) increasing
            s * torch.cumsum(_positive(a_down), dim=-1),              # (..., Q) increasing
            torch.stack([s * _positive(a_wing), a_pop, a_roi, s * _positive(a_dd)], dim=-1),  # (..., 4)
        ], dim=-1)  # fmt: skip


def _positive(a: Tensor) -> Tensor:
    """softplus(a) + 1e-6: strictly positive even where softplus underflows to 0 (a < -100 in float32)."""
    return F.softplus(a) + _POSITIVE_FLOOR


_POSITIVE_FLOOR = 1e-6


class CondorBrain(nn.Module):
    """The CondorBrain policy network: embedding, SSM (or attention) backbone, regime-gated mixture of experts.

    ``forward(x)`` reads a window x (B, L, n_features) of normalised features and returns a :class:`PolicyOutput`
    for the last step (``all_steps=True``: for every step, each from the data up to that step only). Streaming:
    ``cache = allocate_inference_cache(B)``, then ``step(x_t, cache)`` per new bar returns the same numbers as the
    batch forward's last step over the bars seen so far, in O(1) time and memory per bar for the SSM mixers.

    Gradient checkpointing of the backbone blocks (recompute activations in backward): set
    ``model.gradient_checkpointing = True``; it acts in training mode only. Build on a device with
    ``model.to(device)``, or without allocating inside ``with torch.device("meta"):``.
    """

    PACKED_FIELDS: tuple[str, ...] = ("ret", "vol", "up_q", "down_q", "wing", "pop_logit", "roi", "max_dd")
    """The :class:`PolicyOutput` fields an expert produces, in packed order (all but ``regime_logits``).

    Outputs are float32 (float64 for a float64 model) even under bf16 autocast: strikes are set from them."""

    def __init__(self, config: CondorBrainConfig) -> None:
        super().__init__()
        if not isinstance(config, CondorBrainConfig):
            raise ValueError(f"config must be a CondorBrainConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embedding = InputEmbedding(c.n_features, c.d_model, eps=c.norm_eps, dropout=c.dropout)
        self.backbone = Backbone(c.backbone_config())
        self.regime = RegimeDetector(c.d_model, c.n_regimes, c.expert_width, dropout=c.dropout)
        self.experts = nn.ModuleList(ExpertDecoder(c) for _ in range(c.n_experts))
        self.gradient_checkpointing = False

    # --- batch -----------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, all_steps: bool = False) -> PolicyOutput:
        """x: (B, L, n_features) -> PolicyOutput with (B, ...) fields for the last step, or (B, L, ...) if all_steps."""
        h = self.hidden(x)  # (B, L, D)
        return self.decode(h if all_steps else h[:, -1])  # (B, [L,] ...)

    def hidden(self, x: Tensor) -> Tensor:
        """The backbone's final (RMS-normalised) hidden states: x (B, L, n_features) -> (B, L, d_model)."""
        self._check_input(x, seqlen=None)  # the one scan for NaN / inf: the backbone and its layers skip theirs
        with input_scanned():
            e = self.embedding(x)  # (B, L, D)
            if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
                return self.backbone(e)  # (B, L, D)
            for layer in self.backbone.layers:
                # the recompute in the backward runs the layer under input_scanned too, so that it does what the
                # forward did (checkpoint compares the tensors both save)
                e = checkpoint(_scanned_call, layer, e, use_reentrant=False)  # (B, L, D)
            return self.backbone.norm_f(e)

    def decode(self, h: Tensor) -> PolicyOutput:
        """Regime-gated mixture of the experts at hidden states h (..., d_model) -> PolicyOutput of (...) fields."""
        regime_logits = self.regime(h)  # (..., R)
        regime_logits = regime_logits.to(torch.promote_types(regime_logits.dtype, torch.float32))
        if len(self.experts) == 1:
            return self.unpack(self.experts[0](h), regime_logits)
        gate = torch.softmax(regime_logits, dim=-1)  # (..., E), E = R
        packed = torch.stack([expert(h) for expert in self.experts], dim=-1)  # (..., P, E)
        mixed = (packed * gate.unsqueeze(-2)).sum(dim=-1)  # (..., P)
        return self.unpack(mixed, regime_logits)

    def unpack(self, packed: Tensor, regime_logits: Tensor) -> PolicyOutput:
        """Packed expert output (..., P) (see :class:`ExpertDecoder`) and regime logits (..., R) -> PolicyOutput."""
        H, Q = self.config.n_horizons, self.config.n_quantiles
        ret, vol, up_q, down_q, rest = packed.split([H, 1, Q, Q, 4], dim=-1)
        wing, pop_logit, roi, max_dd = rest.unbind(-1)
        return PolicyOutput(ret=ret, vol=vol.squeeze(-1), up_q=up_q, down_q=down_q, wing=wing, pop_logit=pop_logit,
                            roi=roi, max_dd=max_dd, regime_logits=regime_logits)

    # --- streaming -------------------------------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, max_seqlen: int | None = None,
                                 dtype: torch.dtype | None = None) -> InferenceCache:
        """Per-layer states for :meth:`step`, zero (= no history), on the model's device.

        Parameters
        ----------
        batch_size : int
            Number of independent streams B.
        max_seqlen : int or None
            Longest stream, in steps; used by the attention mixer's KV cache only (None = ``config.lookback``).
            The SSM mixers' state has a fixed size whatever the length.
        dtype : torch.dtype or None
            State dtype; None = the parameters' dtype.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        max_seqlen = self.config.lookback if max_seqlen is None else max_seqlen
        return self.backbone.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)

    @torch.no_grad()
    def step(self, x_t: Tensor, cache: InferenceCache) -> PolicyOutput:
        """One new bar per stream: x_t (B, 1, n_features) -> PolicyOutput with (B, ...) fields; ``cache`` advances
        in place. Equals ``forward(x[:, :t + 1])`` after stepping through x[:, 0] .. x[:, t] (in eval mode: dropout
        and stochastic depth draw anew at each call in training mode). No gradients."""
        self._check_input(x_t, seqlen=1, name="x_t")  # the one scan: the backbone and its layers skip theirs
        with input_scanned():
            e = self.embedding(x_t)  # (B, 1, D)
            h = self.backbone.step(e, cache)  # (B, 1, D)
        return self.decode(h[:, 0])  # (B, ...)

    # --- helpers ---------------------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        """Number of parameters (trainable or not)."""
        return sum(p.numel() for p in self.parameters())

    def _check_input(self, x: Tensor, seqlen: int | None, name: str = "x") -> None:
        F_ = self.config.n_features
        expected = f"(batch, {'L' if seqlen is None else seqlen}, n_features={F_})"
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != F_ or x.shape[0] < 1 or x.shape[1] < 1 or (
                seqlen is not None and x.shape[1] != seqlen):
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
        if not all_finite(x):
            raise ValueError(f"{name} contains NaN or inf: leave out invalid rows (the dataset's valid.npy) first")


def _scanned_call(layer: nn.Module, x: Tensor) -> Tensor:
    """layer(x) inside :func:`input_scanned` (x, the model's scanned input transformed, is not scanned again)."""
    with input_scanned():
        return layer(x)


def transformer_baseline(config: CondorBrainConfig, match_params: bool = True) -> CondorBrainConfig:
    """Seed 002's Transformer baseline: the same model with ``mixer="attention"`` (causal SDPA with RoPE).

    With ``match_params`` a gated MLP is added after each attention mixer, of the width that brings one attention
    block's parameter count closest to one block of ``config`` (counted on the meta device, nothing allocated), so
    the two backbones compare at about equal size. ``n_heads`` must split ``d_model`` into heads of even size.
    """
    if config.mixer == "attention":
        return config
    base = dataclasses.replace(config, mixer="attention", d_intermediate=0)
    if not match_params:
        return base

    def block_params(cfg: CondorBrainConfig) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in Backbone(dataclasses.replace(cfg, n_layer=1).backbone_config()).layers[0]
                       .parameters())

    target, attn = block_params(config), block_params(base)
    d = config.d_model
    # A GatedMLP of width w adds an RMSNorm (d) and fc1 + fc2 without bias (3 * d * w).
    width = max(0, round((target - attn - d) / (3 * d)))
    return dataclasses.replace(base, d_intermediate=width)

