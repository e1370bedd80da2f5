"""Models of ``benchmarks/gpu.py`` and their analytic cost: FLOPs and a lower bound on the bytes moved.

Every model is the anchors' wrapper (``shared/bench/anchor_bench.py``): Linear(24 -> d), N pre-norm residual blocks
``h + mixer(norm(h))``, RMSNorm, Linear(d -> 8). Mixers:

* ``cb_m2``  this project's :class:`condorbrain.ssm.Mamba2` (d_state 64, headdim 64, expand 2, chunk 64: the anchors')
* ``cb_m2n`` the same, with this project's RMSNorm (:class:`condorbrain.ssm.blocks.RMSNorm`: one Triton kernel each
  way on a GPU) as the pre-norms and the final norm instead of the anchors' four-op one: the network as the library
  builds it. ``cb_m2`` is the like-for-like row against ``ref_m2``; this one shows what the library's norm adds.
* ``cb_m1``  this project's :class:`condorbrain.ssm.Mamba` (d_state 16, expand 2)
* ``ref_m2`` the official ``mamba_ssm`` Mamba2, same sizes, imported from ``$MAMBA_SSM_SRC`` (never vendored); its
  fused path (``use_mem_eff_path``) when the official ``causal_conv1d`` extension imports
* ``attn``   a Transformer block: causal torch SDPA, 8 heads, + 4x GELU MLP (the anchors' ``attn``)

Costs are per token of one forward pass; a training step is counted as 3 forward passes (backward ~ 2x forward).
FLOPs: 2 * in * out per Linear, plus the sequence mixing (SSD chunk contractions, the selective scan's update,
attention's QK^T and AV with the causal half). Bytes, a lower bound: every Linear's / scan's inputs read and outputs
written once per pass in the compute dtype, plus the parameters (and AdamW's fp32 traffic in training).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from condorbrain.ssm._checks import all_finite
from condorbrain.ssm.blocks import norm_then_mix, norm_then_step

try:
    from condorbrain.ssm._checks import input_scanned
except ImportError:  # an A/B run against a revision from before it (gpu_checks.sh's .baseline): every layer scans
    from contextlib import nullcontext as input_scanned

N_IN, N_OUT = 24, 8
# norm_then_mix may return a branch output with its gated norm pending (as the library's Backbone lets it), where
# the library has that (an A/B run against an older revision: not)
_DEFER = {"defer_norm": True} if "defer_norm" in inspect.signature(norm_then_mix).parameters else {}


class RMSNorm(nn.Module):
    """The anchors' RMSNorm: x * rsqrt(mean(x^2) + eps) * w."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w

    def add_forward(self, x: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + h, norm(x + h)), the interface of the library's RMSNorm (which fuses the two); h None: nothing to add."""
        x = x if h is None else x + h
        return x, self(x)


class Attn(nn.Module):
    """The anchors' Transformer block (attention output + 4x MLP on its own pre-norm), causal SDPA."""

    def __init__(self, d: int, heads: int = 8) -> None:
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.n2 = RMSNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, l, d = u.shape
        q, k, v = self.qkv(u).view(b, l, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)  # (B, h, L, hd) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        u2 = self.o(y.transpose(1, 2).reshape(b, l, d))
        return u2 + self.mlp(self.n2(u + u2))


class Net(nn.Module):
    """Linear(24 -> d), ``n_layers`` x (h + mixer(norm(h))), RMSNorm, Linear(d -> 8); streaming for SSM mixers."""

    def __init__(self, mixer, d: int, n_layers: int, norm=RMSNorm) -> None:
        super().__init__()
        self.emb = nn.Linear(N_IN, d)
        self.norms = nn.ModuleList(norm(d) for _ in range(n_layers))
        self.mixers = nn.ModuleList(mixer(d) for _ in range(n_layers))
        self.fn = norm(d)
        self.head = nn.Linear(d, N_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, 24) -> (B, L, 8). The input scanned for NaN / inf once, the layers' own scans skipped, as the
        library's Backbone does (one per layer cost 9% of the inference forward on an H200)."""
        if not all_finite(x):
            raise ValueError("x contains NaN or inf")
        with input_scanned():
            h, pending = self.emb(x), None  # each mixer's output is added by the next norm, as in the streaming step
            for n, m in zip(self.norms, self.mixers):
                h, pending = norm_then_mix(n, m, h, pending, **_DEFER)  # h += pending; pending = m(n(h)); the
                # library's norm joins a Mamba2's in_proj on the fused path, the add included (and, in inference,
                # the mixer's gated norm's 1/rms, pending with its output: condorbrain.ssm.pending)
            return self.head(self.fn.add_forward(h, pending)[1])

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int | None = None,
                                 dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(m.allocate_inference_cache(batch_size, max_seqlen or 1, dtype=dtype)) for m in self.mixers]

    def step(self, x: torch.Tensor, cache: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """x (B, 1, 24) -> (B, 1, 8); every mixer's (conv_state, ssm_state) advances in place."""
        if not all_finite(x):
            raise ValueError("x contains NaN or inf")
        with input_scanned():
            h, pending = self.emb(x), None  # each mixer's output is added by the next norm (add_forward)
            for n, m, layer_cache in zip(self.norms, self.mixers, cache):
                h, pending = norm_then_step(n, m, h, pending, layer_cache)  # h += pending; pending = m.step(n(h))
            return self.head(self.fn.add_forward(h, pending)[1])


@dataclass(frozen=True)
class Sizes:
    """Mixer sizes of one benchmark scale."""

    d_state_m2: int = 64
    headdim: int = 64
    chunk: int = 64
    d_state_m1: int = 16
    expand: int = 2
    d_conv: int = 4
    heads: int = 8


FULL = Sizes()
TINY = Sizes(d_state_m2=8, headdim=8, chunk=8, d_state_m1=4, heads=2)


def official_mamba2():
    """(the official ``mamba_ssm`` Mamba2 class, whether its fused path can run), or ImportError saying how to get it.

    Looked for on ``$MAMBA_SSM_SRC`` (a folder holding ``mamba_ssm/``, Python files only), as anchor_bench.py does.
    """
    src = os.environ.get("MAMBA_SSM_SRC")
    if src and src not in sys.path:
        sys.path.insert(0, src)
    try:
        from mamba_ssm.modules.mamba2 import Mamba2
    except Exception as err:  # ImportError, or an error inside its imports (a missing triton)
        raise ImportError(f"official mamba_ssm not importable ({type(err).__name__}: {err}); export its mamba_ssm/ "
                          "folder from state-spaces/mamba and set MAMBA_SSM_SRC=<folder holding it>") from None
    try:
        import causal_conv1d  # noqa: F401  (the official CUDA extension)
        fused = True
    except ImportError:
        fused = False
    return Mamba2, fused


def build(name: str, d: int, n_layers: int, sizes: Sizes = FULL) -> Net:
    """The wrapper network with mixer ``name`` (see the module docstring). ImportError for an unavailable peer."""
    s = sizes
    if name in ("cb_m2", "cb_m2n"):
        from condorbrain.ssm import Mamba2
        from condorbrain.ssm.blocks import RMSNorm as LibraryRMSNorm

        norm = (lambda dm: LibraryRMSNorm(dm, eps=1e-6)) if name == "cb_m2n" else RMSNorm  # the anchors' eps
        return Net(lambda dm: Mamba2(dm, d_state=s.d_state_m2, d_conv=s.d_conv, expand=s.expand, headdim=s.headdim,
                                     chunk_size=s.chunk), d, n_layers, norm)
    if name == "cb_m1":
        from condorbrain.ssm import Mamba

        return Net(lambda dm: Mamba(dm, d_state=s.d_state_m1, d_conv=s.d_conv, expand=s.expand), d, n_layers)
    if name == "ref_m2":
        Mamba2, fused = official_mamba2()
        return Net(lambda dm: Mamba2(d_model=dm, d_state=s.d_state_m2, d_conv=s.d_conv, expand=s.expand,
                                     headdim=s.headdim, chunk_size=s.chunk, use_mem_eff_path=fused), d, n_layers)
    if name == "attn":
        return Net(lambda dm: Attn(dm, heads=s.heads), d, n_layers)
    raise ValueError(f"unknown model {name!r}")


# --- analytic cost ------------------------------------------------------------------------------------------------
def linear_flops(n_in: int, n_out: int) -> int:
    """FLOPs of one token through Linear(n_in -> n_out): n_in * n_out multiply-adds = 2 * n_in * n_out."""
    return 2 * n_in * n_out


@dataclass(frozen=True)
class Cost:
    """Per token of one forward pass."""

    flops: float
    """Matmul FLOPs (Linears) plus the sequence mixing's (see the module docstring)."""
    act_elems: float
    """Activation elements read + written (each Linear's / the scan's inputs and outputs once)."""
    state_elems: float = 0.0
    """Recurrent state elements per stream (streaming: read and written once per step)."""


def layer_cost(name: str, d: int, L: int, s: Sizes = FULL, streaming: bool = False) -> Cost:
    """Cost of one block (its pre-norm, mixer and residual) per token, at sequence length L (or one streaming step)."""
    di = s.expand * d
    norm_res = 2 * d + 3 * d  # the pre-norm reads and writes d; the residual add reads 2d and writes d
    if name in ("cb_m2", "cb_m2n", "ref_m2"):
        N, Q, H = s.d_state_m2, s.chunk, di // s.headdim
        d_in_proj = 2 * di + 2 * N + H
        conv_dim = di + 2 * N
        lin = linear_flops(d, d_in_proj) + linear_flops(di, d)
        if streaming:  # state update dA * h + dt * x B^T, then y = h C: 3 multiply-adds per state element
            mix = 6 * di * N
            state = di * N + conv_dim * s.d_conv
        else:  # SSD chunks: C B^T within a chunk (2 Q N), its weights times X (2 Q P per head), states in and out
            mix = 2 * Q * N + 2 * Q * di + 4 * N * di
            state = 0
        acts = (d + d_in_proj) + 2 * conv_dim + (conv_dim + H + di) + 3 * di + (di + d) + norm_res
        return Cost(lin + mix, acts, state)
    if name == "cb_m1":
        N, R = s.d_state_m1, math.ceil(d / 16)
        lin = linear_flops(d, 2 * di) + linear_flops(di, R + 2 * N) + linear_flops(R, di) + linear_flops(di, d)
        mix = 6 * di * N  # exp(dt A) h + dt B x, then C h: the selective scan, 3 multiply-adds per state element
        state = di * N + di * s.d_conv if streaming else 0
        acts = (d + 2 * di) + 2 * di + (di + R + 2 * N) + (R + di) + (3 * di + 2 * N) + 3 * di + (di + d) + norm_res
        return Cost(lin + mix, acts, state)
    if name == "attn":
        lin = linear_flops(d, 3 * d) + linear_flops(d, d) + linear_flops(d, 4 * d) + linear_flops(4 * d, d)
        mix = 2 * L * d  # QK^T and AV: 2 * 2 * L * d per token, half of it under the causal mask
        acts = (d + 3 * d) + (3 * d + d) + (d + d) + 2 * d + (d + 4 * d) + 2 * 4 * d + (4 * d + d) + norm_res
        return Cost(lin + mix, acts, 0)
    raise ValueError(f"unknown model {name!r}")


def model_cost(name: str, d: int, n_layers: int, L: int, s: Sizes = FULL, streaming: bool = False) -> Cost:
    """Cost of the whole wrapper network per token of one forward pass."""
    c = layer_cost(name, d, L, s, streaming)
    io_flops = linear_flops(N_IN, d) + linear_flops(d, N_OUT)
    io_acts = (N_IN + d) + 2 * d + (d + N_OUT)
    return Cost(n_layers * c.flops + io_flops, n_layers * c.act_elems + io_acts, n_layers * c.state_elems)


def train_step_cost(cost: Cost, params: int, tokens: int, act_bytes: int = 2) -> tuple[float, float]:
    """(FLOPs, bytes) of one training step over ``tokens`` tokens.

    FLOPs: 3 forward passes. Bytes: activations once in each of the 3 passes at ``act_bytes`` each, and the
    parameters: the fp32 weights read in forward (4 B), the gradient written (4 B), AdamW reading weight, gradient and
    both moments and writing weight and moments (28 B) = 36 B per parameter.
    """
    return 3 * cost.flops * tokens, 3 * cost.act_elems * act_bytes * tokens + 36 * params


def forward_cost(cost: Cost, params: int, tokens: int, act_bytes: int = 2, param_bytes: int = 4) -> tuple[float, float]:
    """(FLOPs, bytes) of one forward pass over ``tokens`` tokens: activations once, parameters read once."""
    return cost.flops * tokens, cost.act_elems * act_bytes * tokens + param_bytes * params


def stream_step_cost(cost: Cost, params: int, batch: int, elem_bytes: int = 2) -> tuple[float, float]:
    """(FLOPs, bytes) of one streaming step of ``batch`` streams: the parameters read once, every stream's state read
    and written once, its activations once."""
    return cost.flops * batch, (params + batch * (2 * cost.state_elems + cost.act_elems)) * elem_bytes
