"""The residual add and the next block's RMSNorm of a streaming step in one Triton launch.

In a pre-norm stack every block's step begins with ``x = x + h`` (the previous block's output joining the residual
stream) and ``u = norm(x)``: two kernels per block, each reading the whole row. Streaming at batch 1 is bound by
launches, not bytes (see :mod:`condorbrain.ssm.triton.step`), so :func:`add_rmsnorm_triton` does both in one: it
writes the new residual row and its normalised copy. Used by :meth:`condorbrain.ssm.blocks.Backbone.step` on the
Triton path under ``no_grad`` (no backward: training goes through the separate add and
:class:`condorbrain.ssm.blocks.RMSNorm`, whose own kernel has one). Hand-written because nothing in eager torch
fuses an add into a norm.

Precision is the eager pair's: the sum is rounded to the residual dtype first (as ``x + h`` in that dtype is), then
normalised in float32 and rounded to the output dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from condorbrain.ssm.triton.ssd import launch_options, on_device

__all__ = ["add_rmsnorm_triton"]

_ROWS = 4  # rows per program: a batch-1 step is one row; larger batches get fewer, fuller programs


@triton.jit
def _add_rmsnorm_fwd(
    x_ptr, h_ptr, w_ptr, res_ptr, out_ptr,
    rows, d, eps,
    s_x, s_h, s_r, s_o,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    # grid (cdiv(rows, ROWS),): res = x + h (rounded to res's dtype), out = res / rms(res) * w, per row of d.
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col = tl.arange(0, BLOCK)
    m = (r[:, None] < rows) & (col[None, :] < d)
    x = tl.load(x_ptr + r[:, None] * s_x + col[None, :], mask=m, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + r[:, None] * s_h + col[None, :], mask=m, other=0.0).to(tl.float32)
    res = (x + h).to(res_ptr.dtype.element_ty)
    tl.store(res_ptr + r[:, None] * s_r + col[None, :], res, mask=m)
    v = res.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / d + eps)  # (ROWS,)
    w = tl.load(w_ptr + col, mask=col < d, other=0.0).to(tl.float32)
    out = v * rstd[:, None] * w[None, :]
    tl.store(out_ptr + r[:, None] * s_o + col[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


def add_rmsnorm_triton(x: Tensor, h: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x + h, rmsnorm(x + h) * weight), both new tensors of x's shape and dtype, in one launch (no autograd).

    Args:
        x, h: (..., d), the same shape; x's dtype is the residual stream's (h is cast to it). weight: (d,).
    """
    if h.shape != x.shape:
        raise ValueError(f"x and h must have the same shape, got {tuple(x.shape)} and {tuple(h.shape)}")
    d = x.shape[-1]
    x2, h2 = x.reshape(-1, d), h.reshape(-1, d)  # (rows, d): views for the contiguous rows a step has
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    h2 = h2 if h2.stride(-1) == 1 else h2.contiguous()
    rows = x2.shape[0]
    res = torch.empty_like(x2, memory_format=torch.contiguous_format)
    out = torch.empty_like(res)
    BLOCK = max(16, triton.next_power_of_2(d))
    with on_device(x):
        _add_rmsnorm_fwd[(triton.cdiv(rows, _ROWS),)](
            x2, h2, weight, res, out, rows, d, eps, x2.stride(0), h2.stride(0), res.stride(0), out.stride(0),
            ROWS=_ROWS, BLOCK=BLOCK, **launch_options(_ROWS * BLOCK))
    return res.view(x.shape), out.view(x.shape)
