"""A Mamba-2 branch output whose gated RMSNorm is not finished: the deferred norm of the fused inference forward.

Mamba-2's output is ``out_proj(rmsnorm(y * silu(z)) * w)``, and with one norm group and no out_proj bias the norm's
1/rms is one factor per row, so it commutes with out_proj::

    out_proj(u * r * w) = r * (u @ (W * w)^T),   u = y * silu(z),   r = 1 / sqrt(mean(u^2) + eps)   (per row).

The fused inference forward (``condorbrain.ssm.triton.fused.mamba2_deferred_forward``, no autograd) stores u from the
scan kernel with each row's sum of squares (partial sums, one per program that wrote part of the row) and runs
out_proj on u with the norm's weight folded into out_proj's: the norm's own kernel (read y and z, write its output
for out_proj to read back: 6 KB a token at the seed's d_ssm 1024 in bf16) is gone. What is left, r, is applied
where the branch's output is read next anyway: the next block's residual add and pre-norm, or the final norm
(``condorbrain.ssm.blocks.norm_then_mix`` and ``RMSNorm.add_forward`` take a :class:`PendingScaled` as their
``pending``). Anything else calls :func:`materialize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PendingScaled", "materialize"]


@dataclass(frozen=True, eq=False)
class PendingScaled:
    """``raw * r[row]`` not yet multiplied out, ``r = 1 / sqrt(ss.sum(-1) / group + eps)``.

    raw: (B, L, D), out_proj of the gated scan output with the norm's weight folded in (out_proj's dtype).
    ss: (B * L, K) float32, partial sums of squares of the gated output over its ``group`` channels, K of them.
    """

    raw: Tensor
    ss: Tensor
    group: int
    eps: float

    def __post_init__(self) -> None:
        rows = self.raw.shape[:-1].numel()
        if self.ss.dim() != 2 or self.ss.shape[0] != rows or self.ss.dtype != torch.float32:
            raise ValueError(f"ss must be ({rows}, K) float32 (one row per row of raw {tuple(self.raw.shape)}), got "
                             f"{tuple(self.ss.shape)} {self.ss.dtype}")

    @property
    def shape(self) -> torch.Size:
        return self.raw.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.raw.dtype

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def rstd(self) -> Tensor:
        """(B * L,) float32: each row's 1 / rms."""
        return torch.rsqrt(self.ss.sum(-1) / self.group + self.eps)

    def materialize(self) -> Tensor:
        """(B, L, D) in raw's dtype: raw * r, computed in float32 and rounded once."""
        r = self.rstd().view(*self.raw.shape[:-1], 1)
        return (self.raw.float() * r).to(self.raw.dtype)


def materialize(h: Tensor | PendingScaled | None) -> Tensor | None:
    """h as a tensor: a :class:`PendingScaled` multiplied out, anything else as it is."""
    return h.materialize() if isinstance(h, PendingScaled) else h
