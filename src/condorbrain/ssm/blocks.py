"""Building blocks around the mixers: RMSNorm, gated MLP, drop-path, a pre-norm residual block, an attention
mixer for comparisons, and a ``Backbone`` that stacks N blocks.

Names follow state-spaces/mamba where it has the same piece (``GatedMLP.fc1/fc2``, ``Block.norm/mixer/norm2/mlp``,
``Backbone.layers/norm_f`` as in ``MixerModel``), so weights map one to one. Every mixer has the same interface::

    mixer(x, state=None, return_state=False)      # (B, L, D) -> (B, L, D) [, new state]; windows of a long series
    mixer.allocate_inference_cache(batch_size, max_seqlen, dtype)  -> cache (a tuple of tensors)
    mixer.step(x_t, *cache)                        # (B, 1, D) -> (out, *cache), cache updated in place

and the ``Backbone`` threads a list of per-layer states / caches through its blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from condorbrain.ssm._checks import input_scanned
from condorbrain.ssm.mamba import Mamba, check_hidden_states, check_state, records_grad
from condorbrain.ssm.mamba2 import Mamba2, RMSNormGated
from condorbrain.ssm.pending import PendingScaled, materialize
from condorbrain.ssm.scans import scan_backend

__all__ = [
    "RMSNorm",
    "norm_then_mix",
    "norm_then_step",
    "RMSNormGated",
    "GatedMLP",
    "DropPath",
    "CausalSelfAttention",
    "Block",
    "BackboneConfig",
    "Backbone",
]

MixerKind = Literal["mamba", "mamba2", "attention"]
LayerState = tuple[Tensor, ...]


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, ``mamba_ssm.ops.triton.layer_norm.RMSNorm``'s parameters (``weight``).

    y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (float64 for float64 inputs) and cast back.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., hidden_size) -> (..., hidden_size)."""
        if x.dtype != torch.float64 and scan_backend(x.device) == "triton":
            return self._forward_triton(x)
        return self._forward_reference(x)

    def _forward_reference(self, x: Tensor) -> Tensor:
        """The PyTorch twin of the Triton path (and the CPU path): four ops, each a kernel on a GPU."""
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        xc = x.to(cdt)
        y = xc * torch.rsqrt(xc.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight.to(cdt)
        return y.to(x.dtype)

    def _forward_triton(self, x: Tensor) -> Tensor:
        """One kernel forward (and one backward) instead of the reference's four: the gated-norm kernel of the fused
        Mamba-2 layer with no gate and one group. It keeps x and one float32 1/rms per row for the backward (the
        reference keeps float32 copies), and a streaming step through N blocks launches N norms, not 4N."""
        from condorbrain.ssm.triton.fused import rmsnorm_gated_triton

        rows = x.reshape(-1, 1, x.shape[-1])  # (N, 1, D): the kernel's (batch, length, channels)
        return rmsnorm_gated_triton(rows, None, self.weight, self.eps).view(x.shape)

    def add_forward(self, x: Tensor, h: Tensor | PendingScaled | None) -> tuple[Tensor, Tensor]:
        """(x + h, norm(x + h)): a residual add and this norm, as a pre-norm block's streaming step begins; h None
        means nothing to add, h a :class:`~condorbrain.ssm.pending.PendingScaled` a deferred gated norm's output.
        One Triton launch on the Triton path when nothing needs a gradient (a streaming step under ``no_grad``:
        :func:`condorbrain.ssm.triton.fused.add_rmsnorm_triton`, which also applies a pending 1/rms), else the add
        and ``forward``."""
        if h is None:
            return x, self(x)
        if (x.dtype == h.dtype != torch.float64 and x.shape == h.shape and scan_backend(x.device) == "triton"
                and not records_grad(self, x, *([h] if isinstance(h, Tensor) else []))):
            from condorbrain.ssm.triton.fused import add_rmsnorm_triton

            return add_rmsnorm_triton(x, h, self.weight, self.eps)
        x = x + materialize(h)
        return x, self(x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_then_mix(norm: nn.Module, mixer: nn.Module, x: Tensor, pending: Tensor | PendingScaled | None = None,
                  defer_norm: bool = False) -> tuple[Tensor, Tensor | PendingScaled]:
    """(x + pending, mixer(norm(x + pending))) over a whole sequence, no carried state: a pre-norm block's mixer
    branch with the previous branch's residual add pending. x, pending: (B, L, D); pending None: nothing to add.

    Where the mixer is a :class:`Mamba2` on its fused Triton path and the norm an :class:`RMSNorm`, the add and the
    norm run inside in_proj's autograd node (``Mamba2.forward_prenormed``): the same values, the normalised input
    recomputed in the backward instead of kept (1 KB per token and layer at d_model 512 in bf16: ~2.8 GiB of the
    seed config's training activations) and no add kernel of its own, either way. Elsewhere: the add and the norm
    (``RMSNorm.add_forward``), then the mixer.

    defer_norm: the caller passes the returned branch output on only as the ``pending`` of another
    ``norm_then_mix`` or of :meth:`RMSNorm.add_forward` (or multiplies it out with
    :func:`condorbrain.ssm.pending.materialize`), so it may be a :class:`~condorbrain.ssm.pending.PendingScaled`:
    a Mamba-2 inference forward without its gated norm's kernel (``Mamba2.defers_norm``). pending may be one
    either way."""
    if (type(norm) is RMSNorm and isinstance(mixer, Mamba2) and mixer._fused_path(x)
            and (pending is None or (pending.shape == x.shape and pending.dtype == x.dtype))):
        return mixer.forward_prenormed(x, norm.weight, norm.eps, pending, defer_norm=defer_norm)
    x, u = _add_then_norm(norm, x, pending)
    return x, mixer(u)


def _add_then_norm(norm: nn.Module, x: Tensor, pending: Tensor | PendingScaled | None) -> tuple[Tensor, Tensor]:
    """(x + pending, norm(x + pending)), pending None: nothing to add. An :class:`RMSNorm` does both with
    ``add_forward`` (one launch on the Triton path when no gradient is wanted); another norm, the add then itself."""
    if hasattr(norm, "add_forward"):
        return norm.add_forward(x, pending)
    x = x if pending is None else x + materialize(pending)
    return x, norm(x)


STEP_GEMV_MAX_BATCH = 8
"""Rows up to which a Mamba-2 block's streaming step joins its norm and projections into Triton GEMVs
(:func:`norm_then_step`); above it, the projections are cuBLAS matmuls."""


def norm_then_step(norm: nn.Module, mixer: nn.Module, x: Tensor, pending: Tensor | None,
                   cache: LayerState) -> tuple[Tensor, Tensor]:
    """(x + pending, mixer.step(norm(x + pending))): a pre-norm block's streaming step with its residual add
    pending (``Block.step_pending``). x, pending: (B, 1, D); the mixer's ``cache`` advances in place.

    Where the mixer is a :class:`Mamba2` on its Triton step path, the norm an :class:`RMSNorm`, everything in one
    dtype and at most ``STEP_GEMV_MAX_BATCH`` rows, the add, the norm and in_proj are one kernel and the gated norm
    and out_proj another (``Mamba2.step_prenormed``): three launches per layer instead of five, the same sums up to
    the order of the float32 accumulation. Elsewhere: the add, the norm (``RMSNorm.add_forward``) and
    ``mixer.step``."""
    if (type(norm) is RMSNorm and isinstance(mixer, Mamba2) and x.shape[0] <= STEP_GEMV_MAX_BATCH
            and x.dtype == mixer.in_proj.weight.dtype == mixer.out_proj.weight.dtype
            and (pending is None or pending.dtype == x.dtype) and mixer._fused_step_path(x, *cache)
            and not records_grad(norm, x, *([] if pending is None else [pending]))):
        return mixer.step_prenormed(x, pending, norm.weight, norm.eps, *cache)
    x, u = _add_then_norm(norm, x, pending)
    return x, mixer.step(u, *cache)[0]


class GatedMLP(nn.Module):
    """SwiGLU MLP, ``mamba_ssm.modules.mlp.GatedMLP``: fc2(y * act(gate)) with (y, gate) = fc1(x).chunk(2).

    Parameters
    ----------
    in_features : int
        Input width.
    hidden_features : int or None
        Hidden width before rounding; None = int(8 * in_features / 3).
    out_features : int or None
        Output width; None = in_features.
    activation : callable
        Applied to the gate (SiLU).
    bias : bool
        Biases in fc1 and fc2.
    multiple_of : int
        The hidden width is rounded up to a multiple of this (128 in ``mamba_ssm``).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        activation: Callable[[Tensor], Tensor] = F.silu,
        bias: bool = False,
        multiple_of: int = 128,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        out_features = out_features if out_features is not None else in_features
        hidden_features = hidden_features if hidden_features is not None else int(8 * in_features / 3)
        hidden_features = (hidden_features + multiple_of - 1) // multiple_of * multiple_of
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias, **factory_kwargs)
        self.activation = activation
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **factory_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        y, gate = self.fc1(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.fc2(y * self.activation(gate))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's branch with probability ``p`` and scale the kept ones
    by 1 / (1 - p), so the expectation is unchanged; the identity in eval mode (and when p = 0)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, ...) -> (B, ...), one keep/drop draw per sample."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _rope(x: Tensor, start: int, base: float) -> Tensor:
    """Rotary position embedding (rotate-half form) of x (B, h, T, hd) at positions start, start + 1, ...

    Angles are computed in float64 (exact for long series), then cast to x's dtype.
    """
    hd, T = x.shape[-1], x.shape[-2]
    inv_freq = base ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=x.device) / hd)  # (hd/2,)
    positions = torch.arange(start, start + T, dtype=torch.float64, device=x.device)
    angles = positions[:, None] * inv_freq[None, :]  # (T, hd/2)
    cos = torch.cos(angles).repeat(1, 2).to(x.dtype)  # (T, hd)
    sin = torch.sin(angles).repeat(1, 2).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with rotary embeddings, a mixer slot for comparisons with the SSMs.

    Uses ``torch.nn.functional.scaled_dot_product_attention``. ``step`` runs on a preallocated KV cache
    (``allocate_inference_cache`` needs ``max_seqlen``); a windowed ``forward`` carries the past keys and values,
    so its state grows with the series (O(L) memory, unlike the SSMs).

    Parameters
    ----------
    d_model : int
        Width; must be divisible by ``n_heads`` with an even head size.
    n_heads : int
        Number of heads.
    rope_base : float
        Base of the rotary frequencies.
    bias : bool
        Biases in in_proj (q, k, v together) and out_proj.
    """

    def __init__(self, d_model: int, n_heads: int = 4, rope_base: float = 10000.0, bias: bool = False,
                 layer_idx: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model={d_model} must split into n_heads={n_heads} heads of even size")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **factory_kwargs)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory_kwargs)
        self.rope_base = rope_base

    def _qkv(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) at positions start.. -> q, k (rotated), v: (B, h, T, hd)."""
        q, k, v = self.in_proj(x).unflatten(-1, (3, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return _rope(q, start, self.rope_base), _rope(k, start, self.rope_base), v

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, L, d_model) -> (B, L, d_model); ``state`` = (keys, values) of the past, each (B, h, T, hd)."""
        check_hidden_states("x", x, self.d_model)
        batch, seqlen, _ = x.shape
        past = 0
        if state is not None:
            k_past, v_past = state
            past = k_past.shape[2]
            shape = (batch, self.n_heads, past, self.head_dim)
            check_state("state keys", k_past, shape, "(batch, n_heads, T, head_dim)")
            check_state("state values", v_past, shape, "(batch, n_heads, T, head_dim)")
        q, k, v = self._qkv(x, past)  # (B, h, L, hd) each
        if state is not None:
            k = torch.cat([state[0].to(k.dtype), k], dim=2)  # (B, h, T + L, hd)
            v = torch.cat([state[1].to(v.dtype), v], dim=2)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, L, hd)
        else:
            # query i (absolute position past + i) sees keys 0 .. past + i
            allowed = torch.ones(seqlen, past + seqlen, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = self.out_proj(y.transpose(1, 2).flatten(-2))  # (B, L, d_model)
        return (out, (k, v)) if return_state else out

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int | None = None,
                                 dtype: torch.dtype | None = None, **kwargs: object) -> tuple[Tensor, Tensor, Tensor]:
        """KV cache for ``step``: keys, values (B, h, max_seqlen, hd) and the filled length (a 0-d long tensor)."""
        if max_seqlen is None or max_seqlen < 1:
            raise ValueError(f"max_seqlen must be a positive int for the attention KV cache, got {max_seqlen}")
        dtype = self.out_proj.weight.dtype if dtype is None else dtype
        device = self.out_proj.weight.device
        shape = (batch_size, self.n_heads, max_seqlen, self.head_dim)
        k_cache = torch.zeros(shape, device=device, dtype=dtype)
        v_cache = torch.zeros(shape, device=device, dtype=dtype)
        return k_cache, v_cache, torch.zeros((), dtype=torch.long, device=device)

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor,
             seqlen: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (B, 1, d_model) -> (out (B, 1, d_model), k_cache, v_cache, seqlen), caches updated in place."""
        check_hidden_states("x", x, self.d_model, seqlen=1)
        pos = int(seqlen)
        if pos >= k_cache.shape[2]:
            raise ValueError(f"KV cache is full (max_seqlen={k_cache.shape[2]}); allocate a longer one")
        q, k, v = self._qkv(x, pos)  # (B, h, 1, hd) each
        k_cache[:, :, pos] = k[:, :, 0]
        v_cache[:, :, pos] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, k_cache[:, :, : pos + 1].to(q.dtype),
                                           v_cache[:, :, : pos + 1].to(q.dtype))  # (B, h, 1, hd)
        seqlen.add_(1)
        return self.out_proj(y.transpose(1, 2).flatten(-2)), k_cache, v_cache, seqlen


class Block(nn.Module):
    """Pre-norm residual block: x + drop_path(mixer(norm(x))), then x + drop_path(mlp(norm2(x))) if an MLP.

    Same sums as ``mamba_ssm.modules.block.Block`` (which reorders them as add -> norm -> mixer for kernel fusion)
    and the same parameter names (norm, mixer, norm2, mlp).

    Parameters
    ----------
    dim : int
        Width D.
    mixer : nn.Module
        A sequence mixer with the interface described in this module's docstring.
    mlp : nn.Module or None
        Optional channel MLP (e.g. :class:`GatedMLP`).
    drop_path : float
        Stochastic-depth probability of each residual branch in training.
    norm_eps : float
        RMSNorm epsilon.
    """

    def __init__(self, dim: int, mixer: nn.Module, mlp: nn.Module | None = None, drop_path: float = 0.0,
                 norm_eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps=norm_eps, device=device, dtype=dtype)
        self.mixer = mixer
        if mlp is not None:
            self.norm2 = RMSNorm(dim, eps=norm_eps, device=device, dtype=dtype)
            self.mlp = mlp
        else:
            self.mlp = None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, state: LayerState | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, LayerState]:
        """x: (B, L, D) -> (B, L, D) [, the mixer's new state]."""
        if state is None and not return_state:
            x, h = self.forward_pending(x, None)
            return x + h
        h = self.mixer(self.norm(x), state=state, return_state=return_state)  # (B, L, D) [, state]
        h, new_state = h if return_state else (h, None)
        x = x + self.drop_path(h)
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, L, D)
        return (x, new_state) if return_state else x

    def forward_pending(self, x: Tensor, pending: Tensor | PendingScaled | None,
                        defer_norm: bool = False) -> tuple[Tensor, Tensor | PendingScaled]:
        """``forward`` (no state) with the residual adds left pending, as :meth:`step_pending`: (x, pending) ->
        (x', h) with x' + h = ``forward(x + pending)``, each add done by the next norm (:func:`norm_then_mix`:
        inside the Mamba-2 in_proj's node on the fused path). x, pending, x', h: (B, L, D); pending None = nothing
        to add. defer_norm: h may be a :class:`~condorbrain.ssm.pending.PendingScaled` (see :func:`norm_then_mix`;
        not where drop-path would act on it)."""
        defer_norm = defer_norm and (self.drop_path.p == 0.0 or not self.drop_path.training)
        x, h = norm_then_mix(self.norm, self.mixer, x, pending, defer_norm)  # x += pending; h = mixer(norm(x))
        return self._mlp_pending(x, self.drop_path(h))  # (drop-path the identity where h is pending)

    def step(self, x: Tensor, cache: LayerState) -> Tensor:
        """x: (B, 1, D) -> (B, 1, D), advancing the mixer's ``cache`` in place."""
        x, h = self.step_pending(x, None, cache)
        return x + h

    def step_pending(self, x: Tensor, pending: Tensor | None, cache: LayerState) -> tuple[Tensor, Tensor]:
        """``step`` with the residual adds left pending: (x, pending) -> (x', h) with x' + h = ``step(x + pending)``.

        The add of a branch's output h is done by the next norm (:meth:`RMSNorm.add_forward`: one launch for both
        on the Triton path), so a stack of blocks streams with one kernel fewer per residual branch. x, pending,
        x', h: (B, 1, D); pending None = nothing to add."""
        x, h = norm_then_step(self.norm, self.mixer, x, pending, cache)  # x += pending; h = mixer(norm(x))
        return self._mlp_pending(x, self.drop_path(h))  # (B, 1, D) each

    def _mlp_pending(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The MLP branch after the mixer's, its add pending too: (x, h) -> (x + h, mlp(norm2(x + h))), or (x, h)
        as they are without an MLP. The tail of :meth:`forward_pending` and :meth:`step_pending` both."""
        if self.mlp is None:
            return x, h
        x, u = self.norm2.add_forward(x, h)
        return x, self.drop_path(self.mlp(u))


@dataclass(frozen=True)
class BackboneConfig:
    """A stack of pre-norm residual blocks with one kind of mixer and a final RMSNorm."""

    d_model: int
    """Width D of the hidden states (input and output of the backbone)."""
    n_layer: int
    """Number of blocks."""
    mixer: MixerKind = "mamba2"
    """Sequence mixer of every block: "mamba" (S6), "mamba2" (SSD) or "attention" (causal MHA with RoPE)."""
    d_state: int | None = None
    """SSM state size; None = the mixer's own default (16 for Mamba, 128 for Mamba-2). Ignored by attention."""
    d_conv: int = 4
    """Causal convolution width of the SSM mixers."""
    expand: int = 2
    """SSM inner width = expand * d_model."""
    headdim: int = 64
    """Mamba-2 channels per head; must divide expand * d_model."""
    ngroups: int = 1
    """Mamba-2 B/C groups; must divide the number of heads expand * d_model / headdim."""
    chunk_size: int = 256
    """Mamba-2 SSD chunk length (speed / memory only)."""
    n_heads: int = 4
    """Attention heads; d_model / n_heads must be even (RoPE)."""
    rope_base: float = 10000.0
    """Attention rotary-embedding base."""
    d_intermediate: int = 0
    """Hidden width of a gated MLP after each mixer (exactly this width); 0 = no MLP, as in mamba_ssm's default."""
    drop_path: float = 0.0
    """Stochastic depth: block i drops each residual branch with probability drop_path * i / (n_layer - 1)."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    rescale_prenorm_residual: bool = True
    """mamba_ssm's init: zero Linear biases, scale out_proj / fc2 weights by 1/sqrt(residuals per layer * n_layer)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.mixer not in ("mamba", "mamba2", "attention"):
            raise ValueError(f"mixer must be 'mamba', 'mamba2' or 'attention', got {self.mixer!r}")
        if self.d_state is not None and (not isinstance(self.d_state, int) or self.d_state < 1):
            raise ValueError(f"d_state must be None or a positive int, got {self.d_state!r}")
        if not isinstance(self.d_intermediate, int) or self.d_intermediate < 0:
            raise ValueError(f"d_intermediate must be an int >= 0, got {self.d_intermediate!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.mixer == "mamba2":
            d_inner = self.expand * self.d_model
            if d_inner % self.headdim:
                raise ValueError(f"headdim={self.headdim} must divide expand * d_model = {d_inner}")
            if (d_inner // self.headdim) % self.ngroups:
                raise ValueError(f"ngroups={self.ngroups} must divide the number of heads {d_inner // self.headdim}")
        if self.mixer == "attention" and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            raise ValueError(f"n_heads={self.n_heads} must split d_model={self.d_model} into heads of even size")


class Backbone(nn.Module):
    """N pre-norm residual blocks of one mixer kind and a final RMSNorm: (B, L, d_model) -> (B, L, d_model).

    Parameter names match ``mamba_ssm``'s ``MixerModel`` without its embedding (``layers.{i}.norm``,
    ``layers.{i}.mixer``, ``layers.{i}.norm2`` / ``mlp`` if an MLP, ``norm_f``). Windows of a long series:
    ``forward(x, state, return_state=True)`` with a list of per-layer states; step by step:
    ``allocate_inference_cache`` then ``step`` (a KV cache for the attention mixer, which needs ``max_seqlen``).
    """

    def __init__(self, config: BackboneConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        rates = [c.drop_path * i / max(c.n_layer - 1, 1) for i in range(c.n_layer)]
        self.layers = nn.ModuleList(
            Block(c.d_model, self._mixer(i, device, dtype),
                  GatedMLP(c.d_model, hidden_features=c.d_intermediate, out_features=c.d_model, multiple_of=1,
                           device=device, dtype=dtype) if c.d_intermediate > 0 else None,
                  drop_path=rates[i], norm_eps=c.norm_eps, device=device, dtype=dtype)
            for i in range(c.n_layer)
        )
        self.norm_f = RMSNorm(c.d_model, eps=c.norm_eps, device=device, dtype=dtype)
        if c.rescale_prenorm_residual:
            self._rescale_init(n_residuals_per_layer=2 if c.d_intermediate > 0 else 1)

    def _mixer(self, layer_idx: int, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Module:
        c = self.config
        kw = {"layer_idx": layer_idx, "device": device, "dtype": dtype}
        state = {} if c.d_state is None else {"d_state": c.d_state}
        if c.mixer == "mamba":
            return Mamba(c.d_model, d_conv=c.d_conv, expand=c.expand, **state, **kw)
        if c.mixer == "mamba2":
            return Mamba2(c.d_model, d_conv=c.d_conv, expand=c.expand, headdim=c.headdim, ngroups=c.ngroups,
                          chunk_size=c.chunk_size, **state, **kw)
        return CausalSelfAttention(c.d_model, n_heads=c.n_heads, rope_base=c.rope_base, **kw)

    @torch.no_grad()
    def _rescale_init(self, n_residuals_per_layer: int) -> None:
        """mamba_ssm's ``_init_weights``: zero Linear biases (except dt_proj's) and rescale residual outputs."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                p /= math.sqrt(n_residuals_per_layer * self.config.n_layer)

    def forward(self, x: Tensor, state: list[LayerState] | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, list[LayerState]]:
        """x: (B, L, d_model) -> (B, L, d_model) [, list of per-layer states to continue from]."""
        check_hidden_states("x", x, self.config.d_model)  # the one scan for NaN / inf: the layers skip theirs
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"state must hold one entry per layer ({len(self.layers)}), got {len(state)}")
        with input_scanned():
            if state is None and not return_state:  # the residual adds pending, each done by the next norm
                pending = None
                for layer in self.layers:
                    # pending: (B, L, D), or a Mamba-2 inference forward's with its gated norm's 1/rms still to apply
                    x, pending = layer.forward_pending(x, pending, defer_norm=True)  # (B, L, D) each
                return self.norm_f.add_forward(x, pending)[1]
            new_states: list[LayerState] = []
            for i, layer in enumerate(self.layers):
                x = layer(x, state=None if state is None else state[i], return_state=return_state)  # (B, L, D)
                if return_state:
                    x, s = x
                    new_states.append(s)
        out = self.norm_f(x)  # (B, L, D)
        return (out, new_states) if return_state else out

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int | None = None,
                                 dtype: torch.dtype | None = None) -> list[LayerState]:
        """One cache per layer for ``step`` (see each mixer's ``allocate_inference_cache``)."""
        return [layer.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype) for layer in self.layers]

    def step(self, x: Tensor, cache: list[LayerState]) -> Tensor:
        """x: (B, 1, d_model) -> (B, 1, d_model), advancing every layer's cache in place."""
        check_hidden_states("x", x, self.config.d_model, seqlen=1)  # the one scan: the layers skip theirs
        if len(cache) != len(self.layers):
            raise ValueError(f"cache must hold one entry per layer ({len(self.layers)}), got {len(cache)}")
        pending = None  # the last branch's output, added by the next norm (Block.step_pending)
        with input_scanned():
            for layer, layer_cache in zip(self.layers, cache):
                x, pending = layer.step_pending(x, pending, layer_cache)  # (B, 1, D) each
        return self.norm_f.add_forward(x, pending)[1]
