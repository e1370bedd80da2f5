"""A Mamba-2 layer's gated RMSNorm and out_proj in one Triton kernel (forward only; no autograd).

    out = (rmsnorm_g(y * silu(z)) * w) @ W^T + bias      (or rmsnorm_g(y) * w * silu(z) with norm_before_gate)

with rmsnorm_g the RMS over each group of ``group_size`` channels. Its 1/rms is one factor per row and group, so it
commutes with the matmul over the group's channels::

    out[r] = sum_g rstd[r, g] * (v[r, G] * w[G]) @ W[:, G]^T + bias,      v = y * silu(z),   G the group's channels

A program takes a (BM rows, BN outputs) tile and loops over the channels in BK blocks: it loads y and z, forms v
(float32), adds up the rows' sums of squares and, with tl.dot, the product of v * w (rounded to the matmul dtype
once, as the norm's output is in the unfused path) with W's block; at a group's end the group's product is scaled
by its 1/rms. The norm's output, (rows, d_ssm), is neither written nor read back by a GEMM: at the seed (d_ssm 1024,
d_model 512, bf16) the unfused pair moves 1.26 GB a layer (y, z read, the norm's output written and read, out
written), this 0.63 GB. The price: the elementwise part is redone by each of the N / BN column blocks of a row
block (the reads of y and z after the first are L2 hits: column blocks are next to each other in launch order) and
the matmul is Triton's, not cuBLAS's.

Rounding against ``_rmsnorm_forward`` then ``F.linear``: there the norm's output v * rstd * w is rounded to the
matmul dtype, here v * w is, and rstd scales the float32 product: one rounding of the same operand's scale either
way, not the same bits (nor is the order of cuBLAS's float32 sums).

Written here, not taken from a library: neither cuBLAS(Lt) nor torch has a GEMM whose A operand is formed from two
tensors with a per-row scale found along K; and, like the other kernels of :mod:`condorbrain.ssm.triton`, it runs
under Triton's interpreter on the CPU, where CI checks it against the float64 norm and Linear.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from condorbrain.ssm.triton import interpreting
from condorbrain.ssm.triton.ssd import _mm, launch_options, on_device, sigmoid

__all__ = ["gated_rmsnorm_linear"]

# The tile: BM rows x BN outputs, BK channels a step, on _WARPS warps with _STAGES pipelining stages. 64 x 256 at the
# seed (d_model 512): two column blocks a row block, so the elementwise part runs twice a row where 128 x 128 runs
# it four times; the float32 accumulator is 64 registers a thread on 8 warps. benchmarks/gpu_sweep.py tries others
_BM, _BN, _BK, _WARPS, _STAGES = 64, 256, 64, 8, 3


@triton.jit
def _group_product(y_ptr, z_ptr, nw_ptr, W_ptr, yrow, zrow, mr, nn, mn, k_lo, k_hi, s_W_n, s_W_k,
                   HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                   BK: tl.constexpr, BF16_DOT: tl.constexpr, PREC: tl.constexpr):
    # (v * w)[:, k_lo:k_hi] @ W[nn, k_lo:k_hi]^T (BM, BN) float32 and the rows' sums of squares of what the norm
    # normalises (y * silu(z), or y before the gate), over one group's channels k_lo .. k_hi - 1
    part = tl.zeros([BM, BN], dtype=tl.float32)
    ss = tl.zeros([BM], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + tl.arange(0, BK)
        mk = kk < k_hi
        m = mr[:, None] & mk[None, :]
        v = tl.load(y_ptr + yrow[:, None] + kk[None, :], mask=m, other=0.0).to(tl.float32)  # (BM, BK)
        if HAS_Z:
            zz = tl.load(z_ptr + zrow[:, None] + kk[None, :], mask=m, other=0.0).to(tl.float32)
            if NORM_BEFORE_GATE:
                ss += tl.sum(v * v, axis=1)
                v = v * (zz * sigmoid(zz))
            else:
                v = v * (zz * sigmoid(zz))
                ss += tl.sum(v * v, axis=1)
        else:
            ss += tl.sum(v * v, axis=1)
        v = v * tl.load(nw_ptr + kk, mask=mk, other=0.0).to(tl.float32)[None, :]
        Wt = tl.load(W_ptr + nn[None, :] * s_W_n + kk[:, None] * s_W_k, mask=mk[:, None] & mn[None, :],
                     other=0.0)  # (BK, BN)
        part += _mm(v, Wt, BF16_DOT, PREC)
    return part, ss


@triton.jit
def _gated_norm_linear_fwd(
    y_ptr, z_ptr, nw_ptr, W_ptr, bias_ptr, out_ptr, rstd_ptr,
    rows, L, K, N, gs, eps,
    s_y_b, s_y_l, s_z_b, s_z_l, s_W_n, s_W_k,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, ONE_GROUP: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BF16_DOT: tl.constexpr, PREC: tl.constexpr,
):
    # grid (cdiv(N, BN), cdiv(rows, BM)): the column blocks of a row block are next to each other in launch order,
    # so that y and z come from memory once and from L2 for the others. A row is one (batch, step); y, z: unit
    # channel stride, rows at s_*_b, s_*_l (64-bit offsets: z is a slice of zxbcdt, whose rows are ~2.3k wide).
    # out (rows, N) contiguous; rstd (rows, K // gs) float32, stored by the first column block.
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    r = pid_m * BM + tl.arange(0, BM)
    mr = r < rows
    bi, li = (r // L).to(tl.int64), (r % L).to(tl.int64)
    yrow, zrow = bi * s_y_b + li * s_y_l, bi * s_z_b + li * s_z_l
    nn = pid_n * BN + tl.arange(0, BN)
    mn = nn < N
    ngroups = K // gs
    if ONE_GROUP:  # one accumulator, not a group's and the sum's
        acc, ss = _group_product(y_ptr, z_ptr, nw_ptr, W_ptr, yrow, zrow, mr, nn, mn, 0, K, s_W_n, s_W_k,
                                 HAS_Z, NORM_BEFORE_GATE, BM, BN, BK, BF16_DOT, PREC)
        rstd = 1.0 / tl.sqrt(ss / gs + eps)
        acc = acc * rstd[:, None]
        if pid_n == 0:
            tl.store(rstd_ptr + r, rstd, mask=mr)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for gi in range(ngroups):
            part, ss = _group_product(y_ptr, z_ptr, nw_ptr, W_ptr, yrow, zrow, mr, nn, mn, gi * gs, gi * gs + gs,
                                      s_W_n, s_W_k, HAS_Z, NORM_BEFORE_GATE, BM, BN, BK, BF16_DOT, PREC)
            rstd = 1.0 / tl.sqrt(ss / gs + eps)
            acc += part * rstd[:, None]
            if pid_n == 0:
                tl.store(rstd_ptr + r * ngroups + gi, rstd, mask=mr)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + nn, mask=mn, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + r.to(tl.int64)[:, None] * N + nn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mr[:, None] & mn[None, :])


def supported(dtype: torch.dtype) -> bool:
    """The matmul dtypes this kernel takes: bfloat16 (bf16 operands, as cuBLAS's bf16 GEMM) and float32."""
    return dtype in (torch.bfloat16, torch.float32)


def _dot_flags(dtype: torch.dtype) -> dict:
    """tl.dot's operands for a Linear in ``dtype``: bf16 (under the interpreter, bf16-rounded float32 operands:
    its bf16 dot multiplies the raw bits), or float32 in full precision unless PyTorch's own float32 matmuls may
    use tf32 (``torch.backends.cuda.matmul.allow_tf32``), as F.linear's do."""
    if dtype == torch.bfloat16:
        return {"BF16_DOT": 2 if interpreting() else 1, "PREC": "tf32"}
    return {"BF16_DOT": 0, "PREC": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"}


def gated_rmsnorm_linear(
    y: Tensor, z: Tensor | None, norm_weight: Tensor, eps: float, group_size: int, norm_before_gate: bool,
    weight: Tensor, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``F.linear(rmsnorm_gated(y, z) * norm_weight, weight, bias)`` in one kernel, and the norm's 1/rms.

    Args:
        y: (b, L, K) with unit channel stride (any row strides). z: y's shape, unit channel stride (e.g. a column
            slice of zxbcdt), or None (no gate). norm_weight: (K,). group_size: channels per norm group (divides
            K). weight: (N, K), the Linear's, in the matmul dtype (bfloat16 or float32: :func:`supported`); bias:
            (N,) or None.

    Returns:
        out (b, L, N) contiguous in weight's dtype, and rstd (b * L, K // group_size) float32, the rows' 1/rms
        (what ``_rmsnorm_forward`` returns beside its output, which the norm's backward reads).
    """
    b, L, K = y.shape
    N = weight.shape[0]
    if not supported(weight.dtype):
        raise ValueError(f"weight: bfloat16 or float32, got {weight.dtype}")
    if weight.shape != (N, K) or norm_weight.shape != (K,) or (bias is not None and bias.shape != (N,)):
        raise ValueError(f"shapes: y (b, L, {K}) needs norm_weight ({K},), weight (N, {K}), bias (N,); got "
                         f"{tuple(norm_weight.shape)}, {tuple(weight.shape)}, "
                         f"{None if bias is None else tuple(bias.shape)}")
    if group_size <= 0 or K % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {K} channels")
    if y.stride(-1) != 1 or (z is not None and (z.shape != y.shape or z.stride(-1) != 1)):
        raise ValueError(f"y, z: the same shape {tuple(y.shape)}, unit channel stride; got y strides {y.stride()}, "
                         f"z {None if z is None else (tuple(z.shape), z.stride())}")
    rows = b * L
    out = torch.empty(b, L, N, device=y.device, dtype=weight.dtype)
    rstd = torch.empty(rows, K // group_size, device=y.device, dtype=torch.float32)
    with on_device(y):
        _gated_norm_linear_fwd[(triton.cdiv(N, _BN), triton.cdiv(rows, _BM))](
            y, z if z is not None else y, norm_weight, weight, bias if bias is not None else weight, out, rstd,
            rows, L, K, N, group_size, eps, y.stride(0), y.stride(1), *(z.stride()[:2] if z is not None else (0, 0)),
            *weight.stride(),
            HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, HAS_BIAS=bias is not None,
            ONE_GROUP=group_size == K, BM=_BM, BN=_BN, BK=_BK, **_dot_flags(weight.dtype),
            **launch_options(num_warps=_WARPS, num_stages=_STAGES))
    return out, rstd
