"""The fused Mamba-2 layer training path in Triton: in_proj output -> conv+SiLU -> SSD -> gated RMSNorm -> out_proj.

:func:`mamba2_fused_forward` computes what :meth:`condorbrain.ssm.mamba2.Mamba2.forward` computes after ``in_proj``
(no carried state), outputs and gradients, as one autograd node (``_Mamba2Fused``), with no copies in between:

1. conv + SiLU: ``_conv_fwd`` writes silu(conv(xBC)) once, bias and SiLU fused, no pre-activation stored, reading
   xBC as a strided view of the in_proj output. (The SSD's kernels applying it to what they load instead, so that
   its output is never written, did its work twice in latency-bound kernels: slower on an H100, removed.)
2. the SSD scan (:mod:`condorbrain.ssm.triton.ssd`'s kernels): dt a view of the in_proj output; dt + dt_bias,
   softplus and the D skip applied inside its kernels, so no processed copy of dt, x or the output is made.
3. the gated RMSNorm (y * silu(z), z read in place from the in_proj output, the per-group RMS, the weight):
   ``_rmsnorm_fwd`` after the scan, one pass. (Inside the SSD's last kernel, or joined to out_proj in one Triton
   GEMM, it was slower on an H100: benchmarks/results/h100-2026-11-26/NOTES.md.)
4. out_proj (cuBLAS), inside the node, so that its input is recomputed in the backward rather than kept.

With no gradient recorded (inference), :func:`mamba2_deferred_forward` drops 3.: the scan's last kernel gates
its output by silu(z) and stores each row's sum of squares, out_proj runs on that with the norm's weight folded into
its own, and the norm's 1/rms (one factor a row) is left to the next norm (:mod:`condorbrain.ssm.pending`).

The node keeps zxbcdt, the scan's output before the norm and the norm's 1/rms (4 bytes per row and group), as the
official ``mamba_split_conv1d_scan_combined`` does, and the conv's output (``_SAVE_CONV_OUT``, on: 2.3 KB a token at
the seed, for 3.5% of the training step on an H100). Per token and layer at the seed sizes (bf16 autocast, d_model
512, d_state 64, headdim 64) that is 8.7 KB (6.4 without the conv output; + in_proj's 1 KB input) where three
chained autograd functions and an nn.Linear kept 10.9 KB: the norm's output, float32 dt and decay sums as well
(``benchmarks/activation_memory.py``). The backward recomputes the scan's dt and decay sums (one small kernel) and,
with ``_SAVE_CONV_OUT`` off, the conv output (``_conv_fwd``); the norm's backward (``_rmsnorm_bwd``) stores the
norm's output for out_proj's weight gradient as it goes (``_NORM_OUT_IN_BWD``; else ``_rmsnorm_fwd`` reruns for it);
the SSD's backward kernels; the conv's backward, ``_conv_bwd_gate`` (the SiLU's derivative; with ``_DSILU_IN_SSD``
applied where the SSD's kernels store their gradients instead) then ``_conv_bwd`` (with ``_CONV_BWD_SLIDE`` both as
one kernel, ``_conv_bwd_slide``). Each piece of the input gradient is written straight into its columns of dzxbcdt.
The switches are module constants, tried side by side by ``benchmarks/gpu_sweep.py``; the tests run every way. The
remaining small pieces (A = -exp(A_log) in the backward, the d_mlp gated-MLP branch when d_ssm < d_inner, a dt_limit
clamp, sums of per-block partial gradients, out_proj's matmuls) stay in PyTorch; in the forward, A is formed inside
the scan's first kernel, and where no gradient is recorded the weights in the matmul dtype come from
:mod:`condorbrain.ssm.casts` (made once). The conv and the norms are also exposed on their own
(``causal_conv1d_silu_triton``, ``rmsnorm_gated_triton``, and the pre-norm block's ``rmsnorm_linear_triton`` /
``add_rmsnorm_linear_triton``).

Like :mod:`condorbrain.ssm.triton.ssd`, host code uses one fixed launch config (no autotuner, no device queries),
so the same code runs under ``TRITON_INTERPRET=1`` on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from condorbrain.ssm import casts
from condorbrain.ssm.pending import PendingScaled
from condorbrain.ssm.triton import ssd
from condorbrain.ssm.triton.ssd import _conv_pre, _dsilu, launch_options, on_device, sigmoid

__all__ = ["add_rmsnorm_linear_triton", "add_rmsnorm_triton", "causal_conv1d_silu_triton", "mamba2_deferred_forward",
           "mamba2_fused_forward", "rmsnorm_gated_triton", "rmsnorm_linear_triton"]

_BLOCK_L = 16  # time steps per conv program
# channels per program of _conv_fwd and _conv_bwd_gate: 128 (H100 run 8f, ms a seed layer's training step /
# inference forward: 7.80 / 1.81; 64: 8.94 / 2.21; 256: 7.87 / 1.83)
_CONV_BC = 128
# warps of _conv_fwd and _conv_bwd_gate; None: by the tile's size (launch_options: 4 at 16 x 128). H100 run 9c (ms a
# seed layer's inference forward): 2 warps 1.742 against 1.742 / 1.757 (noise), 8 warps 2.715
_CONV_WARPS: int | None = None
# _conv_bwd's tile: three (K, BL, BC)-sized float32 arrays live; BC 128 was 3% faster than 64 on an H200
# (benchmarks/gpu_sweep.py, 2026-11-26 run 3: 12.90 against 13.26 and 13.43 ms a layer), on 4 warps (252 registers,
# two blocks an SM, as run 5 timed it). On 8 warps (sm_90, ptxas): 128 registers, two blocks an SM (16 warps where 4
# gave 8), no barrier in its loop (8 on 4), but 34% more instructions a tile (benchmarks/sass_counts.py): 9.38
# against 8.53 ms a layer's training step on an H100 (benchmarks/results/h100-2026-11-26/, run 6)
# Now (H100 run 10, benchmarks/gpu_sweep.py, ms a seed layer's training step): its loop over a row's steps
# software-pipelined (tl.range num_stages: the next tile's loads in flight as async copies to shared memory while
# this one is computed), 8 steps a tile: 120 registers, four blocks an SM. 3 stages on 8 steps 7.52 / 7.52, 2 on 16
# 7.55, 2 on 8 7.60, 4 on 8 7.52, against 7.78 / 7.80 unpipelined on 16 (8 unpipelined: 7.75; ptxas' register
# cap at 128 on 16: no better). The loads were the kernel's latency: 8 warps an SM, one tile's loads at a time
_CONV_BWD_BL, _CONV_BWD_BC, _CONV_BWD_WARPS, _CONV_BWD_STAGES = 8, 128, 4, 3
# (The two as one kernel, g never written: dy and x read once, the rows of g shifted for dx by 0/1 matmuls on the
# tensor cores from a tile and the next one kept in registers; bit for bit the two kernels' dx in bf16. H100 run
# 10e: 7.52 against 7.00 ms a seed layer's training step (16 x 64 tiles, 162 registers, three 4-warp blocks an SM;
# 32-step tiles 7.47, 128 channels on 8 warps 7.81), the seed step 180.7 ms against 169.2: removed.)
_CONV_BWD_PROGRAMS = 8192  # _conv_bwd splits a row's steps over programs only where rows x channel blocks are fewer
# The conv's backward as one kernel that walks a row's steps last first, one channel a thread, the taps' windows of
# the input and of g = dL/dpre carried in registers (_conv_bwd_slide, d_conv <= 4): dy and x read once, dx written
# once, and no g buffer, where _conv_bwd_gate then _conv_bwd move ~13.8 KB a token and layer at the seed (19.5 ms of
# run 10d's 166.9 ms step, ~70% of their copy floor) and read their inputs' shifted tiles K times through L1: ~6.9
# KB, ~6.9 ms at the floor. (Run 10e's one kernel shifted its tiles' rows with 0/1 matmuls on the tensor cores and
# lost.) The steps of a program are sequential, so its loads are the pipeliner's to put in flight (_CONV_BWD_STAGES)
# and there are b x cdiv(C, _CONV_SLIDE_BC) programs of 120 steps at the seed (9216). Off until a GPU times it
# (benchmarks/gpu_sweep.py)
_CONV_BWD_SLIDE = False
_CONV_SLIDE_BC, _CONV_SLIDE_WARPS = 128, 2  # _conv_bwd_slide's channels a program, on 2 warps: 2 channels a thread
_BLOCK_ROWS = 16  # rows (batch * time) per program of the RMSNorm's forward
# The RMSNorm's backward: tiles of _NORM_BWD_ROWS rows, a program over a run of them with its partial weight
# gradient in registers, about _NORM_BWD_PROGRAMS programs. Here no cap: one 16-row tile a program, the weight
# gradient's partials per 16 rows, as run 5 had it (ptxas, sm_90, the seed's gated norm: 255 registers on 8 warps
# and 4 B of spills a thread, one block an SM). Timed side by side on an H100 (benchmarks/gpu_sweep.py, 2026-11-26,
# benchmarks/results/h100-2026-11-26/): 8.14 ms a layer's training step where 4-row tiles in runs over 4096
# programs (128 registers, two blocks an SM, fewer instructions a row by sm_90's SASS) took 8.53, and 23.6 ms of
# the step in run 7's profile where those took 30.7: the static counts priced the small tiles faster, but this
# kernel streams 1.5 GB a seed layer and more rows a tile keep more bytes in flight.
# Now (H100 run 10, benchmarks/gpu_sweep.py, ms a seed layer's training step): 4-row tiles in runs over ~4096
# programs again, but the loop over a run's tiles software-pipelined (tl.range num_stages: the next tiles' y, z,
# dout in flight while this one is reduced; the gated norm at 188 registers on 4 warps, two blocks an SM). With the
# conv's backward pipelined too: 3 stages 7.30, 2 stages 7.33, 2 over 2048 programs 7.36, 2-row tiles 7.43,
# against 7.52 with 16-row tiles unpipelined; with the conv output kept as well, 3 stages 7.03, 4 stages 7.15. Alone:
# 7.59 against 7.78 (8-row tiles on 8 warps 7.86). So bytes in flight were what it lacked, and the pipeliner keeps
# them in flight without the large tile
_NORM_BWD_ROWS, _NORM_BWD_PROGRAMS, _NORM_BWD_WARPS, _NORM_BWD_STAGES = 4, 4096, 4, 3
# The norms' backward kernels store the forward's output (which the next Linear's weight gradient needs) rather
# than the forward kernel rerunning for it first: y and z (or the block's input) are read once, not twice
# (benchmarks/gpu_sweep.py tries both)
_NORM_OUT_IN_BWD = True
# The SSD's gradients in the backward (its output gradient dy from the norm, and dx, dB, dC, which the conv's backward
# reads) stored in the activations' dtype when that is half precision, as the official layer stores them (its dxBC is
# empty_like(xBC)), rather than float32: every kernel still computes in float32 and rounds once where it stores. A
# (B, L, conv_dim) buffer written twice and read four times a layer (the norm's backward, then _state_bwd,
# _chunk_bwd_bc, _chunk_bwd_dx, the conv's backward), 2.3 KB per token at the seed instead of 4.6
# (benchmarks/gpu_sweep.py tries both)
_GRADS_IN_ACT_DTYPE = True
# The fused layer's forward keeps the conv's output for the backward (2.3 KB a token and layer at the seed in bf16:
# +6.3 GiB at the seed's 24 layers x 1024 x 120) rather than the backward rerunning _conv_fwd for it (0.29 ms a seed
# layer on an H100, run 9's profile): H100 run 10, 7.51 against 7.78 ms a seed layer's training step, 7.03 against
# 7.30 with the two pipelined backward kernels above. Off: the layer keeps what the official one keeps, no more
_SAVE_CONV_OUT = True
# The conv's SiLU derivative applied by the SSD's backward kernels where they store dx, dB, dC (ssd._backward's
# conv: silu'(pre) with pre, the conv before its SiLU, recomputed there from the conv's input, K loads a tile), so
# that _conv_bwd_gate is not run: it streamed the conv's output gradient in and out and the conv's input again, ~6.9
# KB a token and layer at the seed (8.1 ms of run 10d's 166.9 ms step on an H100, ~85% of the copy floor), where the
# SSD's kernels read the conv's input once more, ~2.3 KB (the taps' overlap from L1/L2), in the epilogue of
# _chunk_bwd_dx (a head's tile) and _chunk_bwd_bc (B, C once a program). Bit for bit the gate kernel's result (the
# same operations in the same order: ssd._dsilu_store). The price, sm_90 with triton 3.6 (benchmarks/sass_counts.py):
# a head in _chunk_bwd_dx's loop 808 -> 1203 instructions (26 global loads where 8; 244 registers, still two blocks
# an SM; no barrier more), _chunk_bwd_bc +984 a program (of 16 heads). Priced at run 7's issue rates that is a loss
# (dx +11.2 ms, bc +2.2, the gate -8.1: +5.3 ms a seed step); but those kernels are latency-bound, at ~20% of the
# issue rate, and the added work is independent of their loop's chains. (The SiLU itself applied by the SSD's kernels
# to what they load, so that the conv's output is kept before it and the derivative needs no conv, compiled to a
# sigmoid an element in every kernel that reads x, B or C, and several where the compiler recomputes it in each
# layout the tile is used in: a head in _chunk_bwd_bc's loop 577 -> 1009 instructions, _chunk_scan_fwd at 169
# registers, one block an SM where two; not kept.) Off until a GPU times it (benchmarks/gpu_sweep.py)
_DSILU_IN_SSD = False


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# ----------------------------------------------------------------------------------------------------------------
# Causal depthwise conv1d + SiLU
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _conv_fwd(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    L, C,
    s_x_b, s_x_l, s_x_c, s_w_c, s_w_k,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
):
    # grid (b, cdiv(L, BL), cdiv(C, BC)). y[t, c] = act(bias[c] + sum_k w[c, k] x[t - K + 1 + k, c]); y contiguous.
    bi, pid_l, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_l * BL + tl.arange(0, BL)
    cc = pid_c * BC + tl.arange(0, BC)
    mc = cc < C
    acc = _conv_pre(x_ptr, w_ptr, bias_ptr, bi, t, cc, mc, L, s_x_b, s_x_l, s_x_c, s_w_c, s_w_k, HAS_BIAS, K, BL, BC)
    if SILU:
        acc = acc * sigmoid(acc)
    tl.store(y_ptr + (bi * L + t[:, None]) * C + cc[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(t[:, None] < L) & mc[None, :])


@triton.jit
def _conv_bwd_gate(
    x_ptr, w_ptr, bias_ptr, dy_ptr, g_ptr,
    L, C,
    s_x_b, s_x_l, s_x_c, s_w_c, s_w_k, s_d_b, s_d_l, s_d_c, s_g_b, s_g_l, s_g_c,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
):
    # grid (b, cdiv(L, BL), cdiv(C, BC)). g = dL/dpre = dy silu'(pre), pre = the conv before SiLU (recomputed here
    # from x: K loads), computed in float32, stored in g's dtype (strides s_g_*). g may be dy's own buffer (in
    # place): a program reads only its own tile of dy, before it stores g there.
    bi, pid_l, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_l * BL + tl.arange(0, BL)
    cc = pid_c * BC + tl.arange(0, BC)
    mc = cc < C
    mt = (t[:, None] < L) & mc[None, :]
    g = tl.load(dy_ptr + bi * s_d_b + t[:, None] * s_d_l + cc[None, :] * s_d_c, mask=mt, other=0.0).to(tl.float32)
    pre = _conv_pre(x_ptr, w_ptr, bias_ptr, bi, t, cc, mc, L, s_x_b, s_x_l, s_x_c, s_w_c, s_w_k, HAS_BIAS, K, BL, BC)
    g = g * _dsilu(pre)
    tl.store(g_ptr + bi * s_g_b + t[:, None] * s_g_l + cc[None, :] * s_g_c, g.to(g_ptr.dtype.element_ty), mask=mt)


@triton.jit
def _conv_bwd(
    x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dwp_ptr, dbp_ptr,
    L, C, nsplit, steps,
    s_x_b, s_x_l, s_x_c, s_w_c, s_w_k, s_g_b, s_g_l, s_g_c, s_o_b, s_o_l, s_o_c,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    STAGES: tl.constexpr,
):
    # grid (b, nsplit, cdiv(C, BC)): a program takes ``steps`` consecutive steps (a multiple of BL) of one row, BL at
    # a time. With g = dL/dpre (pre = the conv before its activation; _conv_bwd_gate's output, or dy itself):
    #   dx[t] = sum_j w[K-1-j] g[t+j],  dw[k] = sum_t g[t] x[t-K+1+k],  dbias = sum_t g[t]
    # dw, dbias as per-program partials (b, nsplit, K, C) and (b, nsplit, C), summed on the host. dx (strides
    # s_o_*) is stored in its buffer's dtype (e.g. bf16 straight into the xBC columns of the layer's dzxbcdt).
    # (The SiLU's derivative formed here instead, from pre recomputed for each of the K shifted tiles, without
    # _conv_bwd_gate's g: 4.6x the instructions a tile, one block an SM on 8 warps, 9.75 against 8.53 ms a layer's
    # training step on an H100, run 6: removed.) Inside the loop nothing is reduced: the K shifted tiles of g and
    # the (K, BL, BC) tile of x are loaded together and dw, dbias accumulate elementwise; one reduction over the
    # steps at the end. (Reducing dw per block of 16 steps, each of K x loads waiting behind the previous
    # reduction's barrier, took 2.0 ms per seed layer on an H200.)
    bi, pid_s, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cc = pid_c * BC + tl.arange(0, BC)
    mc = cc < C
    kk = tl.arange(0, KP)
    mkc = (kk[:, None] < K) & mc[None, :]
    acc_w = tl.zeros([KP, BL, BC], dtype=tl.float32)
    acc_b = tl.zeros([BL, BC], dtype=tl.float32)
    t_lo = pid_s * steps
    for t0 in tl.range(t_lo, tl.minimum(t_lo + steps, L), BL, num_stages=STAGES):
        t = t0 + tl.arange(0, BL)
        dx = tl.zeros([BL, BC], dtype=tl.float32)
        g0 = tl.zeros([BL, BC], dtype=tl.float32)
        for j in tl.static_range(K):
            tj = t + j  # the output step whose gradient reaches x[t] through w[K-1-j]
            g = tl.load(g_ptr + bi * s_g_b + tj[:, None] * s_g_l + cc[None, :] * s_g_c,
                        mask=(tj[:, None] < L) & mc[None, :], other=0.0).to(tl.float32)
            dx += g * tl.load(w_ptr + cc * s_w_c + (K - 1 - j) * s_w_k, mask=mc, other=0.0).to(tl.float32)[None, :]
            if j == 0:
                g0 = g
        src = t[None, :, None] - (K - 1) + kk[:, None, None]  # (KP, BL, 1): x[t - K + 1 + k]
        xk = tl.load(x_ptr + bi * s_x_b + src * s_x_l + cc[None, None, :] * s_x_c,
                     mask=(src >= 0) & (src < L) & (kk[:, None, None] < K) & mc[None, None, :], other=0.0)
        acc_w += g0[None, :, :] * xk.to(tl.float32)
        acc_b += g0
        tl.store(dx_ptr + bi * s_o_b + t[:, None] * s_o_l + cc[None, :] * s_o_c, dx.to(dx_ptr.dtype.element_ty),
                 mask=(t[:, None] < L) & mc[None, :])
    part = bi * nsplit + pid_s
    tl.store(dwp_ptr + (part * K + kk[:, None]) * C + cc[None, :], tl.sum(acc_w, axis=1), mask=mkc)
    if HAS_BIAS:
        tl.store(dbp_ptr + part * C + cc, tl.sum(acc_b, axis=0), mask=mc)


@triton.jit
def _tap(w_ptr, cc, mc, s_w_c, s_w_k, j: tl.constexpr, K: tl.constexpr):
    # weight j of 4 of the taps right-aligned (j = 4 - K + k for tap k; 0 for j < 4 - K): (BC,) float32
    if j < 4 - K:
        return tl.zeros(cc.shape, dtype=tl.float32)
    else:
        return tl.load(w_ptr + cc * s_w_c + (j - (4 - K)) * s_w_k, mask=mc, other=0.0).to(tl.float32)


@triton.jit
def _row(ptr, t, cc, C, lo, L, s_l, s_c):
    # step t of a row (channels cc < C) as float32, 0 outside [lo, L). The step's condition as a channel limit (C or
    # 0): Triton's interpreter rejects a tensor mask and-ed with a scalar one
    return tl.load(ptr + t * s_l + cc * s_c, mask=cc < C * (t >= lo) * (t < L), other=0.0).to(tl.float32)


@triton.jit
def _slide_step(g, x3, x2, x1, x0, g1, g2, g3, w0, w1, w2, w3, bias, SILU: tl.constexpr):
    # one step t of _conv_bwd_slide: g = dy_t (silu'(pre_t) with SILU, pre_t from x[t - 3 .. t] = x3 .. x0) and
    # dx[t] from g[t .. t + 3] = g, g1, g2, g3
    if SILU:
        g = g * _dsilu(bias + w0 * x3 + w1 * x2 + w2 * x1 + w3 * x0)
    return g, w3 * g + w2 * g1 + w1 * g2 + w0 * g3


@triton.jit
def _slide_g(x_ptr, dy_ptr, t, cc, C, L, s_x_l, s_x_c, s_d_l, s_d_c, w0, w1, w2, w3, bias,
             SILU: tl.constexpr):
    # g at step t (dL/dpre; 0 from L on) from the conv's input: _slide_step's g, its dx unused
    g = _row(dy_ptr, t, cc, C, 0, L, s_d_l, s_d_c)
    x3 = _row(x_ptr, t - 3, cc, C, 0, L, s_x_l, s_x_c)
    x2 = _row(x_ptr, t - 2, cc, C, 0, L, s_x_l, s_x_c)
    x1 = _row(x_ptr, t - 1, cc, C, 0, L, s_x_l, s_x_c)
    x0 = _row(x_ptr, t, cc, C, 0, L, s_x_l, s_x_c)
    g, _ = _slide_step(g, x3, x2, x1, x0, g, g, g, w0, w1, w2, w3, bias, SILU)
    return g


@triton.jit
def _conv_bwd_slide(
    x_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dwp_ptr, dbp_ptr,
    L, C, nsplit, steps,
    s_x_b, s_x_l, s_x_c, s_w_c, s_w_k, s_d_b, s_d_l, s_d_c, s_o_b, s_o_l, s_o_c,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, K: tl.constexpr, BC: tl.constexpr, STAGES: tl.constexpr,
):
    # grid (b, nsplit, cdiv(C, BC)): the conv's whole backward (the SiLU's derivative too, with SILU) for ``steps``
    # consecutive steps of row bi, walked last step first, one channel a thread, each input read once: the taps'
    # windows are carried from step to step in registers. At step t (taps right-aligned to 4, w_j = 0 for j < 4 - K):
    #   pre_t = bias + sum_j w_j x[t - 3 + j],   g_t = dy_t silu'(pre_t)  (or dy_t),
    #   dx[t] = sum_j w_{3 - j} g[t + j],   dw_j += g_t x[t - 3 + j],   dbias += g_t,
    # x[t - 3 .. t] and g[t + 1 .. t + 3] carried, x[t - 3] and dy_t loaded, dx[t] stored. The g of the 3 steps past
    # the run (the next run's, or 0 from L on) is formed first. dw, dbias as _conv_bwd's per-program partials.
    # Where _conv_bwd_gate and _conv_bwd read the conv's output gradient 2 times and write it once between them, and
    # read the input K + K times through L1 (their tiles' shifted rows), this reads each once.
    bi, pid_s, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cc = pid_c * BC + tl.arange(0, BC)
    mc = cc < C
    w0 = _tap(w_ptr, cc, mc, s_w_c, s_w_k, 0, K)
    w1 = _tap(w_ptr, cc, mc, s_w_c, s_w_k, 1, K)
    w2 = _tap(w_ptr, cc, mc, s_w_c, s_w_k, 2, K)
    w3 = _tap(w_ptr, cc, mc, s_w_c, s_w_k, 3, K)
    bias = tl.zeros([BC], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cc, mask=mc, other=0.0).to(tl.float32)
    xb = x_ptr + bi * s_x_b
    db = dy_ptr + bi * s_d_b
    t_lo = pid_s * steps
    t_hi = tl.minimum(t_lo + steps, L)
    g1 = _slide_g(xb, db, t_hi, cc, C, L, s_x_l, s_x_c, s_d_l, s_d_c, w0, w1, w2, w3, bias, SILU)
    g2 = _slide_g(xb, db, t_hi + 1, cc, C, L, s_x_l, s_x_c, s_d_l, s_d_c, w0, w1, w2, w3, bias, SILU)
    g3 = _slide_g(xb, db, t_hi + 2, cc, C, L, s_x_l, s_x_c, s_d_l, s_d_c, w0, w1, w2, w3, bias, SILU)
    xa = _row(xb, t_hi - 3, cc, C, 0, L, s_x_l, s_x_c)  # x[t - 2], x[t - 1], x[t] at the first step t = t_hi - 1
    xm = _row(xb, t_hi - 2, cc, C, 0, L, s_x_l, s_x_c)
    xc = _row(xb, t_hi - 1, cc, C, 0, L, s_x_l, s_x_c)
    dw0 = tl.zeros([BC], dtype=tl.float32)
    dw1 = tl.zeros([BC], dtype=tl.float32)
    dw2 = tl.zeros([BC], dtype=tl.float32)
    dw3 = tl.zeros([BC], dtype=tl.float32)
    dbs = tl.zeros([BC], dtype=tl.float32)
    ob = dx_ptr + bi * s_o_b
    # 4 steps an iteration, their 8 loads issued first (the stores between them could alias them, as far as the
    # compiler knows, so it would not hoist them): steps before t_lo (the last iteration's, if the run is not a
    # multiple of 4) read dy as 0 and store nothing, and so add nothing
    for i in tl.range(0, t_hi - t_lo, 4, num_stages=STAGES):
        t = t_hi - 1 - i
        x3a = _row(xb, t - 3, cc, C, 0, L, s_x_l, s_x_c)  # x[t - 3 - u] for the u-th of the 4 steps
        x3b = _row(xb, t - 4, cc, C, 0, L, s_x_l, s_x_c)
        x3c = _row(xb, t - 5, cc, C, 0, L, s_x_l, s_x_c)
        x3d = _row(xb, t - 6, cc, C, 0, L, s_x_l, s_x_c)
        ga = _row(db, t, cc, C, t_lo, L, s_d_l, s_d_c)  # dy[t - u]
        gb = _row(db, t - 1, cc, C, t_lo, L, s_d_l, s_d_c)
        gc = _row(db, t - 2, cc, C, t_lo, L, s_d_l, s_d_c)
        gd = _row(db, t - 3, cc, C, t_lo, L, s_d_l, s_d_c)
        ga, dxa = _slide_step(ga, x3a, xa, xm, xc, g1, g2, g3, w0, w1, w2, w3, bias, SILU)
        gb, dxb = _slide_step(gb, x3b, x3a, xa, xm, ga, g1, g2, w0, w1, w2, w3, bias, SILU)
        gc, dxc = _slide_step(gc, x3c, x3b, x3a, xa, gb, ga, g1, w0, w1, w2, w3, bias, SILU)
        gd, dxd = _slide_step(gd, x3d, x3c, x3b, x3a, gc, gb, ga, w0, w1, w2, w3, bias, SILU)
        tl.store(ob + t * s_o_l + cc * s_o_c, dxa.to(dx_ptr.dtype.element_ty), mask=cc < C * (t >= t_lo))
        tl.store(ob + (t - 1) * s_o_l + cc * s_o_c, dxb.to(dx_ptr.dtype.element_ty), mask=cc < C * (t - 1 >= t_lo))
        tl.store(ob + (t - 2) * s_o_l + cc * s_o_c, dxc.to(dx_ptr.dtype.element_ty), mask=cc < C * (t - 2 >= t_lo))
        tl.store(ob + (t - 3) * s_o_l + cc * s_o_c, dxd.to(dx_ptr.dtype.element_ty), mask=cc < C * (t - 3 >= t_lo))
        dw0 += ga * x3a + gb * x3b + gc * x3c + gd * x3d
        dw1 += ga * xa + gb * x3a + gc * x3b + gd * x3c
        dw2 += ga * xm + gb * xa + gc * x3a + gd * x3b
        dw3 += ga * xc + gb * xm + gc * xa + gd * x3a
        dbs += ga + gb + gc + gd
        g3, g2, g1 = gb, gc, gd  # g[t' + 3], g[t' + 2], g[t' + 1] at the next step t' = t - 4
        xc, xm, xa = x3b, x3c, x3d  # x[t'], x[t' - 1], x[t' - 2]
    part = bi * nsplit + pid_s
    # the partials (b, nsplit, K, C): tap k is window slot 4 - K + k
    if K == 4:
        tl.store(dwp_ptr + (part * K + 0) * C + cc, dw0, mask=mc)
    if K >= 3:
        tl.store(dwp_ptr + (part * K + K - 3) * C + cc, dw1, mask=mc)
    if K >= 2:
        tl.store(dwp_ptr + (part * K + K - 2) * C + cc, dw2, mask=mc)
    tl.store(dwp_ptr + (part * K + K - 1) * C + cc, dw3, mask=mc)
    if HAS_BIAS:
        tl.store(dbp_ptr + part * C + cc, dbs, mask=mc)


def _conv_launch(x: Tensor, C: int) -> tuple[tuple[int, int, int], int]:
    """The grid of _conv_fwd and _conv_bwd_gate over x (b, L, C), and their channel block."""
    BC = min(_pow2(C), _CONV_BC)
    return (x.shape[0], triton.cdiv(x.shape[1], _BLOCK_L), triton.cdiv(C, BC)), BC


def _conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    """act(conv(x)) as (b, L, C) contiguous in x's dtype (no autograd)."""
    b, L, C = x.shape
    w = weight.reshape(C, -1)
    grid, BC = _conv_launch(x, C)
    y = torch.empty(b, L, C, device=x.device, dtype=x.dtype)
    with on_device(x):
        _conv_fwd[grid](
            x, w, bias if bias is not None else w, y, L, C, *x.stride(), *w.stride(),
            HAS_BIAS=bias is not None, SILU=silu, K=w.shape[1], BL=_BLOCK_L, BC=BC,
            **launch_options(_BLOCK_L * BC, num_warps=_CONV_WARPS))
    return y


def _conv_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, dy: Tensor, silu: bool, dx: Tensor | None = None,
    dy_scratch: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(dx (b, L, C), dweight, dbias) of :func:`_conv_forward` for the output gradient dy (any strides). dx: the
    buffer for it (any strides, e.g. columns of a wider gradient), else a new one in x's dtype; stored in dx's
    dtype. Accumulated in float32 either way, rounded once where stored.

    One kernel, ``_conv_bwd``: dx, dweight and dbias, each program over a run of steps with no reduction inside
    its loop (1.13 ms per seed layer with 64 channels a program, 0.66 ms with 128, H200, runs 3 and 5 in
    benchmarks/results/h200-2026-11-26/; the version that reduced per 16 steps took 2.0 ms), after
    ``_conv_bwd_gate`` (the pre-activation recomputed once per element, into g; 0.47 ms per seed layer in run 5,
    g float32). dy_scratch: dy is the caller's to overwrite: g is written over it, in dy's dtype (the fused
    layer's dxBC: bf16 under bf16 activations with ``_GRADS_IN_ACT_DTYPE``, g then rounded once, as dy was; at the
    seed 0.57 GB a layer less written and 0.28 GB less read than a float32 g of its own); else g gets a float32
    buffer of its own."""
    b, L, C = x.shape
    w = weight.reshape(C, -1)
    K = w.shape[1]
    grid, BC = _conv_launch(x, C)
    f32 = dict(device=x.device, dtype=torch.float32)
    if dx is None:
        dx = torch.empty(b, L, C, device=x.device, dtype=x.dtype)
    # _conv_bwd: (BWD_BL steps, BWD_BC channels) tiles, each program over a run of steps of one row: whole rows
    # where that still gives _CONV_BWD_PROGRAMS programs (the seed: 1024 rows, L 120), else split (long rows, small
    # batches)
    BCb = min(_pow2(C), _CONV_BWD_BC)
    nblocks, nc = triton.cdiv(L, _CONV_BWD_BL), triton.cdiv(C, BCb)
    nsplit = max(1, min(nblocks, triton.cdiv(_CONV_BWD_PROGRAMS, b * nc)))
    steps = triton.cdiv(nblocks, nsplit) * _CONV_BWD_BL
    nsplit = triton.cdiv(L, steps)
    dwp = torch.empty(b, nsplit, K, C, **f32)
    dbp = torch.empty(b, nsplit, C, **f32) if bias is not None else None
    with on_device(x):
        if _CONV_BWD_SLIDE and K <= 4:  # one kernel, each input read once (the SiLU's derivative in it too)
            BCs = min(_pow2(C), _CONV_SLIDE_BC)
            _conv_bwd_slide[(b, nsplit, triton.cdiv(C, BCs))](
                x, w, bias if bias is not None else w, dy, dx, dwp, dbp if dbp is not None else dwp,
                L, C, nsplit, steps, *x.stride(), *w.stride(), *dy.stride(), *dx.stride(),
                HAS_BIAS=bias is not None, SILU=silu, K=K, BC=BCs, STAGES=_CONV_BWD_STAGES,
                **launch_options(num_warps=_CONV_SLIDE_WARPS))
        else:
            g = dy
            if silu:
                g = dy if dy_scratch else torch.empty(b, L, C, **f32)
                _conv_bwd_gate[grid](
                    x, w, bias if bias is not None else w, dy, g, L, C, *x.stride(), *w.stride(), *dy.stride(),
                    *g.stride(), HAS_BIAS=bias is not None, K=K, BL=_BLOCK_L, BC=BC,
                    **launch_options(_BLOCK_L * BC, num_warps=_CONV_WARPS))
            _conv_bwd[(b, nsplit, nc)](
                x, w, bias if bias is not None else w, g, dx, dwp, dbp if dbp is not None else dwp,
                L, C, nsplit, steps, *x.stride(), *w.stride(), *g.stride(), *dx.stride(),
                HAS_BIAS=bias is not None, K=K, KP=triton.next_power_of_2(K),
                BL=_CONV_BWD_BL, BC=BCb, STAGES=_CONV_BWD_STAGES, **launch_options(num_warps=_CONV_BWD_WARPS))
    dw = dwp.sum((0, 1)).t().reshape(weight.shape).to(weight.dtype)
    db = dbp.sum((0, 1)).to(bias.dtype) if bias is not None else None
    return dx, dw, db


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return _conv_forward(x, weight, bias, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = _conv_backward(x, weight, bias, dy, ctx.silu)  # dx in x's dtype, cast in the kernel
        return dx, dw, db, None


def causal_conv1d_silu_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True) -> Tensor:
    """Causal depthwise conv over time (+ SiLU), as :func:`condorbrain.ssm.conv.causal_conv1d` with no state.

    Args:
        x: (B, L, C), any strides (e.g. the xBC columns of an in_proj output). weight: (C, K) or (C, 1, K).
        bias: (C,) or None. silu: apply SiLU.

    Returns:
        (B, L, C) contiguous, x's dtype (computed in float32).
    """
    return _ConvSiLU.apply(x, weight, bias, silu)


# ----------------------------------------------------------------------------------------------------------------
# Gated RMSNorm
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _rmsnorm_fwd(
    y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, h_ptr, res_ptr, ss_ptr,
    rows, L, gs, ngroups, eps, ss_inv_group, ss_eps,
    s_y_b, s_y_l, s_z_b, s_z_l, s_h_b, s_h_l,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, HAS_ADD: tl.constexpr, SCALE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, NSS: tl.constexpr, KSS: tl.constexpr,
):
    # grid (cdiv(rows, ROWS), ngroups); a row is one (batch, step), a group gs contiguous channels of it. With
    # HAS_ADD (a residual add, no gate): y + h is rounded to res's dtype, stored in res (contiguous rows, as out),
    # and that is what is normalised. With SCALE, h is a deferred gated norm's (condorbrain.ssm.pending) and is
    # first multiplied by its rows' 1/rms, from the NSS partial sums of squares a row has in ss (rows, NSS; KSS the
    # power of two >= NSS).
    pid_r, gi = tl.program_id(0), tl.program_id(1)
    r = pid_r * ROWS + tl.arange(0, ROWS)
    col = gi * gs + tl.arange(0, BLOCK)
    m = (r[:, None] < rows) & (tl.arange(0, BLOCK)[None, :] < gs)
    bi, li = r // L, r % L
    v = tl.load(y_ptr + (bi * s_y_b + li * s_y_l)[:, None] + col[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_ADD:
        h = tl.load(h_ptr + (bi * s_h_b + li * s_h_l)[:, None] + col[None, :], mask=m, other=0.0).to(tl.float32)
        if SCALE:
            k = tl.arange(0, KSS)
            ss = tl.sum(tl.load(ss_ptr + r[:, None] * NSS + k[None, :], mask=(r[:, None] < rows) & (k[None, :] < NSS),
                                other=0.0), axis=1)  # (ROWS,)
            h = h * (1.0 / tl.sqrt(ss * ss_inv_group + ss_eps))[:, None]
        res = (v + h).to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + r[:, None] * (gs * ngroups) + col[None, :], res, mask=m)
        v = res.to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + (bi * s_z_b + li * s_z_l)[:, None] + col[None, :], mask=m, other=0.0).to(tl.float32)
        gate = z * sigmoid(z)
        if not NORM_BEFORE_GATE:
            v = v * gate
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / gs + eps)  # (ROWS,)
    w = tl.load(w_ptr + col, mask=col < gs * ngroups, other=0.0).to(tl.float32)
    out = v * rstd[:, None] * w[None, :]
    if HAS_Z and NORM_BEFORE_GATE:
        out = out * gate
    tl.store(out_ptr + r[:, None] * (gs * ngroups) + col[None, :], out.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(rstd_ptr + r * ngroups + gi, rstd, mask=r < rows)


@triton.jit
def _rmsnorm_bwd(
    y_ptr, z_ptr, w_ptr, rstd_ptr, dout_ptr, dy_ptr, dz_ptr, dwp_ptr, dres_ptr, out_ptr,
    rows, L, gs, ngroups, rpp,
    s_y_b, s_y_l, s_z_b, s_z_l, s_d_b, s_d_l, s_dz_b, s_dz_l, s_dy_b, s_dy_l, s_dr_b, s_dr_l,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, HAS_DRES: tl.constexpr, OUT: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
):
    # grid (cdiv(rows, rpp), ngroups): a program takes rpp rows (a multiple of ROWS), ROWS at a time, and
    # accumulates its partial dw in registers (one store per program: the partials stay few with small tiles).
    # Recomputes v (y or y*silu(z)) and vhat = v/rms from y, z, rstd. With dv_hat = dout * w (* silu(z)):
    #   dv = rstd (dv_hat - vhat mean(dv_hat vhat)),  dw = sum_rows dout vhat (* silu(z)), as per-program partials.
    # OUT: also stores the forward's output, vhat w (* silu(z)), at out_ptr (contiguous rows, as _rmsnorm_fwd
    # stores it): the next Linear's weight gradient needs it, and the forward kernel need not rerun for it.
    # dz may be dout's own buffer (in place): a program reads its tile of dout before it stores dz there, and no
    # other program reads that tile. dy, dz are stored in their buffers' dtypes.
    pid_r, gi = tl.program_id(0), tl.program_id(1)
    col = gi * gs + tl.arange(0, BLOCK)
    w = tl.load(w_ptr + col, mask=col < gs * ngroups, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for r0 in tl.range(pid_r * rpp, tl.minimum(pid_r * rpp + rpp, rows), ROWS, num_stages=STAGES):
        r = r0 + tl.arange(0, ROWS)
        m = (r[:, None] < rows) & (tl.arange(0, BLOCK)[None, :] < gs)
        bi, li = r // L, r % L
        y = tl.load(y_ptr + (bi * s_y_b + li * s_y_l)[:, None] + col[None, :], mask=m, other=0.0).to(tl.float32)
        doff = (bi * s_d_b + li * s_d_l)[:, None] + col[None, :]
        dout = tl.load(dout_ptr + doff, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + r * ngroups + gi, mask=r < rows, other=0.0)
        zoff = (bi * s_z_b + li * s_z_l)[:, None] + col[None, :]
        v = y
        if HAS_Z:
            z = tl.load(z_ptr + zoff, mask=m, other=0.0).to(tl.float32)
            gate = z * sigmoid(z)
            if not NORM_BEFORE_GATE:
                v = y * gate
        vhat = v * rstd[:, None]
        g = dout
        if HAS_Z and NORM_BEFORE_GATE:
            g = dout * gate
        dw += tl.sum(g * vhat, axis=0)
        dvhat = g * w[None, :]
        dv = rstd[:, None] * (dvhat - vhat * (tl.sum(dvhat * vhat, axis=1) / gs)[:, None])
        oof = r[:, None] * (gs * ngroups) + col[None, :]  # OUT: stored late, as vhat's last uses are (the gate's
        # below): stored right after vhat, with y, z and dout live, it spilled 8 B per thread (sm_90, the seed's
        # gated norm, 16 rows a tile)
        if OUT and not (HAS_Z and NORM_BEFORE_GATE):
            tl.store(out_ptr + oof, (vhat * w[None, :]).to(out_ptr.dtype.element_ty), mask=m)
        dy = dv
        if HAS_Z:
            # y, z, dout loaded again (L1/L2 hits) for the gate's terms rather than kept live across the row sum
            # above: with 16 rows a tile ((16, BLOCK) float32 tiles, 64 registers per thread) and them live, this
            # kernel spilled 408 B per thread at 255 registers (140 B before the gate; sm_90)
            z = tl.load(z_ptr + zoff, mask=m, other=0.0).to(tl.float32)
            sz = sigmoid(z)
            dgate = sz * (1.0 + z * (1.0 - sz))
            if NORM_BEFORE_GATE:  # out = w (y / rms) silu(z)
                dout = tl.load(dout_ptr + doff, mask=m, other=0.0).to(tl.float32)
                dz = dout * vhat * w[None, :] * dgate
                if OUT:
                    tl.store(out_ptr + oof, (vhat * w[None, :] * (z * sz)).to(out_ptr.dtype.element_ty), mask=m)
            else:  # out = w (y silu(z)) / rms
                y = tl.load(y_ptr + (bi * s_y_b + li * s_y_l)[:, None] + col[None, :], mask=m,
                            other=0.0).to(tl.float32)
                dz = dv * y * dgate
                dy = dv * z * sz
            tl.store(dz_ptr + (bi * s_dz_b + li * s_dz_l)[:, None] + col[None, :], dz.to(dz_ptr.dtype.element_ty),
                     mask=m)
        if HAS_DRES:  # y is also a residual stream whose own gradient arrives here: the two summed before rounding
            dy += tl.load(dres_ptr + (bi * s_dr_b + li * s_dr_l)[:, None] + col[None, :], mask=m,
                          other=0.0).to(tl.float32)
        tl.store(dy_ptr + (bi * s_dy_b + li * s_dy_l)[:, None] + col[None, :], dy.to(dy_ptr.dtype.element_ty),
                 mask=m)
    # masked to this group's own columns: with gs < BLOCK the padded lanes are the next group's columns, which
    # that group's program writes (storing zeros there too was a race, lost or not by launch order: seen on a GPU)
    tl.store(dwp_ptr + pid_r * (gs * ngroups) + col, dw, mask=tl.arange(0, BLOCK) < gs)


def _rmsnorm_forward(
    y: Tensor, z: Tensor | None, weight: Tensor, eps: float, gs: int, norm_before_gate: bool,
    h: Tensor | PendingScaled | None = None, res: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(out (b, L, d) contiguous in y's dtype, rstd (b * L, d // gs) float32) (no autograd). y, z: unit channel
    stride. With h (as many elements as y, any layout: taken as y's shape; no z) the norm is of y + h, which is
    written into res ((b, L, d) contiguous, its dtype the sum's rounding); h a :class:`PendingScaled`: y + raw * r."""
    b, L, d = y.shape
    ngroups = d // gs
    rows = b * L
    ss = None
    if isinstance(h, PendingScaled):
        ss, ss_group, ss_eps, h = h.ss, h.group, h.eps, h.raw
    if h is not None:  # the kernel reads rows of y's layout with unit channel stride
        h = h.reshape(y.shape)
        h = h if h.stride(-1) == 1 else h.contiguous()
    out = torch.empty(b, L, d, device=y.device, dtype=y.dtype)
    rstd = torch.empty(rows, ngroups, device=y.device, dtype=torch.float32)
    BLOCK = _pow2(gs)
    with on_device(y):
        _rmsnorm_fwd[(triton.cdiv(rows, _BLOCK_ROWS), ngroups)](
            y, z if z is not None else y, weight, out, rstd, h if h is not None else y, res if res is not None else out,
            ss if ss is not None else rstd, rows, L, gs, ngroups, eps,
            *((1.0 / ss_group, ss_eps) if ss is not None else (1.0, 0.0)),
            y.stride(0), y.stride(1), *(z.stride()[:2] if z is not None else (0, 0)),
            *(h.stride()[:2] if h is not None else (0, 0)),
            HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, HAS_ADD=h is not None, SCALE=ss is not None,
            ROWS=_BLOCK_ROWS, BLOCK=BLOCK, NSS=ss.shape[1] if ss is not None else 1,
            KSS=triton.next_power_of_2(ss.shape[1]) if ss is not None else 1,
            **launch_options(_BLOCK_ROWS * BLOCK))
    return out, rstd


def add_rmsnorm_triton(x: Tensor, h: Tensor | PendingScaled, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x + h, rmsnorm(x + h) * weight) in one launch, both new tensors of x's shape and dtype (no autograd): a
    streaming step's residual add joined to the next block's norm (``condorbrain.ssm.blocks.RMSNorm.add_forward``),
    one kernel where the eager pair is two. The sum is rounded to x's dtype first, as ``x + h`` in that dtype is.

    Args:
        x, h: (..., d), the same shape; x's dtype is the residual stream's. weight: (d,). h may be a
            :class:`condorbrain.ssm.pending.PendingScaled` (a deferred gated norm's output): its 1/rms is applied
            in the same launch.
    """
    if h.shape != x.shape:
        raise ValueError(f"x and h must have the same shape, got {tuple(x.shape)} and {tuple(h.shape)}")
    d = x.shape[-1]
    x3 = x.reshape(-1, 1, d)  # (rows, 1, d): the kernel's (batch, length, channels)
    x3 = x3 if x3.stride(-1) == 1 else x3.contiguous()
    res = torch.empty(x3.shape, device=x.device, dtype=x.dtype)
    out, _ = _rmsnorm_forward(x3, None, weight, eps, d, False, h=h, res=res)  # (h taken as x3's shape there)
    return res.view(x.shape), out.view(x.shape)


def _rmsnorm_backward(
    y: Tensor, z: Tensor | None, weight: Tensor, rstd: Tensor, dout: Tensor, gs: int, norm_before_gate: bool,
    dy_dtype: torch.dtype = torch.float32, dz: Tensor | None = None, dy: Tensor | None = None,
    dres: Tensor | None = None, out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(dy, dz, dweight) of :func:`_rmsnorm_forward`; dout (b, L, d) any dtype. dy: the buffer to write into ((b, L,
    d) with unit channel stride, any dtype: e.g. a column slice of a wider buffer); None: a new contiguous one in
    ``dy_dtype``. dz: likewise ((b, L, d) with unit channel stride, any dtype; may be dout itself, overwritten in
    place); None: a new float32 one. dres ((b, L, d), unit channel stride, any dtype): a gradient that reaches y
    by another way (y is a residual stream), added to dy. out ((b, L, d) contiguous, any dtype): where to store
    the forward's output too (what :func:`_rmsnorm_forward` returns, from the same arithmetic on the same values),
    which the next Linear's weight gradient needs. Computed in float32, rounded once where stored."""
    b, L, d = y.shape
    ngroups = d // gs
    rows = b * L
    if dout.stride(-1) != 1:  # the kernel reads rows of d channels with unit stride
        dout = dout.contiguous()
    if dres is not None and dres.stride(-1) != 1:
        dres = dres.contiguous()
    f32 = dict(device=y.device, dtype=torch.float32)
    # rows per program: a multiple of _NORM_BWD_ROWS, for about _NORM_BWD_PROGRAMS programs (a group each)
    rpp = triton.cdiv(triton.cdiv(rows, _NORM_BWD_PROGRAMS), _NORM_BWD_ROWS) * _NORM_BWD_ROWS
    nrb = triton.cdiv(rows, rpp)
    if dy is None:
        dy = torch.empty(b, L, d, device=y.device, dtype=dy_dtype)
    elif dy.shape != (b, L, d) or dy.stride(-1) != 1:
        raise ValueError(f"dy buffer: ({b}, {L}, {d}) with unit channel stride, got {tuple(dy.shape)} "
                         f"strides {dy.stride()}")
    if z is not None and dz is None:
        dz = torch.empty(b, L, d, **f32)
    if out is not None and (out.shape != (b, L, d) or not out.is_contiguous()):
        raise ValueError(f"out buffer: ({b}, {L}, {d}) contiguous, got {tuple(out.shape)} strides {out.stride()}")
    dwp = torch.empty(nrb, d, **f32)
    BLOCK = _pow2(gs)
    with on_device(y):
        _rmsnorm_bwd[(nrb, ngroups)](
            y, z if z is not None else y, weight, rstd, dout, dy, dz if dz is not None else dy, dwp,
            dres if dres is not None else dout, out if out is not None else dy,
            rows, L, gs, ngroups, rpp, y.stride(0), y.stride(1), *(z.stride()[:2] if z is not None else (0, 0)),
            dout.stride(0), dout.stride(1), *(dz.stride()[:2] if dz is not None else (0, 0)), dy.stride(0),
            dy.stride(1), *(dres.stride()[:2] if dres is not None else (0, 0)),
            HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, HAS_DRES=dres is not None,
            OUT=out is not None, ROWS=_NORM_BWD_ROWS, BLOCK=BLOCK, STAGES=_NORM_BWD_STAGES,
            **launch_options(num_warps=_NORM_BWD_WARPS))
    return dy, dz, dwp.sum(0).to(weight.dtype)


class _RMSNormGated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, eps, group_size, norm_before_gate):
        gs = group_size or y.shape[-1]
        out, rstd = _rmsnorm_forward(y, z, weight, eps, gs, norm_before_gate)
        ctx.save_for_backward(y, z, weight, rstd)
        ctx.cfg = (gs, norm_before_gate)
        return out

    @staticmethod
    def backward(ctx, dout):
        y, z, weight, rstd = ctx.saved_tensors
        # dy, dz stored in y's and z's dtypes by the kernel: no float32 copies to cast
        dz = torch.empty(z.shape, device=z.device, dtype=z.dtype) if z is not None else None
        dy, dz, dw = _rmsnorm_backward(y, z, weight, rstd, dout, *ctx.cfg, dy_dtype=y.dtype, dz=dz)
        return dy, dz, dw, None, None, None


def rmsnorm_gated_triton(
    y: Tensor, z: Tensor | None, weight: Tensor, eps: float = 1e-5, group_size: int | None = None,
    norm_before_gate: bool = False,
) -> Tensor:
    """:class:`condorbrain.ssm.mamba2.RMSNormGated`'s forward in one kernel: norm(y * silu(z)) * weight (or
    norm(y) * weight * silu(z) if ``norm_before_gate``), the RMS over groups of ``group_size`` channels.

    Args:
        y: (B, L, d) with unit channel stride. z: (B, L, d) with unit channel stride (e.g. a view of the in_proj
            output) or None. weight: (d,). group_size: must divide d (None = d).

    Returns:
        (B, L, d) contiguous, y's dtype (computed in float32).
    """
    if y.stride(-1) != 1:
        y = y.contiguous()
    if z is not None and z.stride(-1) != 1:
        z = z.contiguous()
    return _RMSNormGated.apply(y, z, weight, eps, group_size, norm_before_gate)


class _RMSNormLinear(torch.autograd.Function):
    """[x + h ->] rmsnorm * norm_weight -> Linear as one autograd node that keeps the normalised stream (x, or the sum)
    and 1/rms, not the norm's output.

    A pre-norm block's input is alive anyway (the norm's backward needs it), while the Linear's input, the normalised
    stream in the matmul dtype, is a second copy per token (1 KB at d_model 512 in bf16). The backward recomputes it
    with the same arithmetic: in the norm's backward kernel, which forms it on the way (``_NORM_OUT_IN_BWD``: the
    stream is read once), or (else) with the forward's kernel first, then takes the Linear's gradients from it.
    With h (the previous branch's output, pending), the residual add is the norm kernel's too (HAS_ADD) and the
    sum is an output, the next residual; its gradient is added to the norm's input gradient inside the norm's
    backward kernel (HAS_DRES), which is then the gradient of both x and h: no add kernel either way."""

    @staticmethod
    def forward(ctx, x, h, norm_weight, eps, weight, bias, mm_dtype):
        rows = x.reshape(-1, 1, x.shape[-1])  # (N, 1, D): the norm kernel's (batch, length, channels)
        with torch.autocast(x.device.type, enabled=False):
            res = torch.empty_like(rows) if h is not None else None
            u, rstd = _rmsnorm_forward(rows, None, norm_weight, eps, x.shape[-1], False, h=h, res=res)  # x's dtype
            out = F.linear(u.view(x.shape).to(mm_dtype), weight.to(mm_dtype),
                           bias.to(mm_dtype) if bias is not None else None)  # (..., n_out)
        stream = x if h is None else res.view(x.shape)
        ctx.save_for_backward(stream, norm_weight, rstd, weight, bias)
        ctx.cfg = (eps, mm_dtype, h is not None)
        return out if h is None else (stream, out)

    @staticmethod
    def backward(ctx, *grads):
        stream, norm_weight, rstd, weight, bias = ctx.saved_tensors
        eps, mm_dtype, added = ctx.cfg
        dres, dout = grads if added else (None, grads[0])
        D = stream.shape[-1]
        rows = stream.reshape(-1, 1, D)
        with torch.autocast(stream.device.type, enabled=False):
            g = dout.reshape(-1, dout.shape[-1]).to(mm_dtype)  # (N, n_out)
            db = g.to(torch.float32).sum(0).to(bias.dtype) if bias is not None else None
            # the norm's output, recomputed in x's dtype: filled by the norm's backward below, or by its forward now
            u = (torch.empty(rows.shape, device=stream.device, dtype=stream.dtype) if _NORM_OUT_IN_BWD else
                 _rmsnorm_forward(rows, None, norm_weight, eps, D, False)[0])
            du = (g @ weight.to(mm_dtype)).view(rows.shape)  # (N, 1, D) in the matmul dtype
            dx, _, dnw = _rmsnorm_backward(rows, None, norm_weight, rstd, du, D, False, dy_dtype=stream.dtype,
                                           dres=dres.reshape(rows.shape) if dres is not None else None,
                                           out=u if _NORM_OUT_IN_BWD else None)
            del du
            dW = (g.t() @ u.view(-1, D).to(mm_dtype)).to(weight.dtype)  # (n_out, D)
            del u, g
        dx = dx.view(stream.shape)
        return dx, (dx if added else None), dnw, None, dW, db, None


def _mm_dtype(x: Tensor) -> torch.dtype:
    """The Linear's compute dtype: autocast's under autocast (as ``nn.Linear``), else x's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def rmsnorm_linear_triton(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor,
                          bias: Tensor | None = None) -> Tensor:
    """``F.linear(rmsnorm(x) * norm_weight, weight, bias)`` (a pre-norm block's norm and its mixer's in_proj), with
    the norm's output recomputed in the backward instead of kept (:class:`_RMSNormLinear`).

    The norm is :class:`condorbrain.ssm.blocks.RMSNorm`'s Triton kernel (output in x's dtype); the Linear runs in the
    autocast dtype under autocast, as ``nn.Linear`` does, else in x's dtype.

    Args:
        x: (..., D). norm_weight: (D,). weight: (n_out, D). bias: (n_out,) or None.

    Returns:
        (..., n_out).
    """
    x = x.contiguous()
    mm = _mm_dtype(x)
    return _RMSNormLinear.apply(x, None, norm_weight, eps, casts.cast(weight, mm), casts.cast(bias, mm), mm)


def add_rmsnorm_linear_triton(x: Tensor, h: Tensor | PendingScaled, norm_weight: Tensor, eps: float, weight: Tensor,
                              bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(x + h, F.linear(rmsnorm(x + h) * norm_weight, weight, bias)): :func:`rmsnorm_linear_triton` with the
    residual add of the previous branch's output h joined to it (the sum rounded to x's dtype, as ``x + h`` in that
    dtype is), differentiable in x, h and the weights.

    Args:
        x, h: (..., D), the same shape and dtype. The rest as :func:`rmsnorm_linear_triton`'s. h may be a
            :class:`condorbrain.ssm.pending.PendingScaled` (a deferred gated norm's output, made with no gradient):
            its 1/rms is applied by the norm's kernel when no gradient is recorded, else multiplied out first.

    Returns:
        (..., D) the sum (the next residual) and (..., n_out).
    """
    if h.shape != x.shape or h.dtype != x.dtype:
        raise ValueError(f"x and h must match in shape and dtype, got {tuple(x.shape)} {x.dtype} and "
                         f"{tuple(h.shape)} {h.dtype}")
    if isinstance(h, PendingScaled) and torch.is_grad_enabled():
        h = h.materialize()
    x = x.contiguous()
    mm = _mm_dtype(x)
    return _RMSNormLinear.apply(x, h, norm_weight, eps, casts.cast(weight, mm), casts.cast(bias, mm), mm)


# ----------------------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _LayerCfg:
    """The layer's settings and the split of zxbcdt: [z0, x0 (d_mlp each), z (d_ssm), xBC (conv_dim), dt (nheads)]."""

    headdim: int
    d_state: int
    ngroups: int
    chunk_size: int
    norm_before_gate: bool
    eps: float
    dt_limit: tuple[float, float]
    d_mlp: int
    nheads: int
    out_dtype: torch.dtype  # out_proj's compute dtype: the autocast dtype under autocast, else zxbcdt's

    @property
    def d_ssm(self) -> int:
        return self.nheads * self.headdim

    def split(self, zxbcdt: Tensor) -> tuple[Tensor, ...]:
        """Views (no copies): z0, x0, z, xBC, dt."""
        conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        return torch.split(zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, conv_dim, self.nheads], dim=-1)


def _scan_inputs(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, dt_bias: Tensor, A_log: Tensor,
                 D: Tensor, use_z: bool, cfg: _LayerCfg, conv_out: Tensor | None = None) -> dict:
    """The conv output and everything the SSD kernels take, from zxbcdt (run by the forward and again by the
    backward, unless the forward kept the conv output: ``conv_out``, see _SAVE_CONV_OUT): x, B, C as views of the
    conv output, dt as a view of zxbcdt (or, with a dt_limit, the clamped softplus(dt + dt_bias) in float32, which
    has no kernel), and the SSD's size dict."""
    _, _, z, xBC, dt = cfg.split(zxbcdt)
    xBC = _conv_forward(xBC, conv_weight, conv_bias, silu=True) if conv_out is None else conv_out  # (B, L, conv_dim)
    x, B, C = torch.split(xBC, [cfg.d_ssm, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
    x = x.unflatten(-1, (cfg.nheads, cfg.headdim))  # (B, L, h, p)
    B = B.unflatten(-1, (cfg.ngroups, cfg.d_state))  # (B, L, g, n)
    C = C.unflatten(-1, (cfg.ngroups, cfg.d_state))  # (B, L, g, n)
    if cfg.dt_limit == (0.0, float("inf")):  # dt + dt_bias and softplus inside the scan's kernels
        dt_args = dict(dt=dt, dt_bias=dt_bias, softplus=True)
    else:
        dt_c = F.softplus(dt.float() + dt_bias.float()).clamp(min=cfg.dt_limit[0], max=cfg.dt_limit[1])
        dt_args = dict(dt=dt_c, dt_bias=None, softplus=False)
    return dict(
        xBC=xBC, x=x, B=B, C=C, A_log=A_log,  # (nheads,): A = -exp(A_log) is formed by the scan's first kernel
        D2=D[:, None].expand(cfg.nheads, cfg.headdim) if D.dim() == 1 else D,
        z=z.unflatten(-1, (cfg.nheads, cfg.headdim)) if use_z else None,
        d=ssd._dims(x, B, cfg.chunk_size), **dt_args)


class _Mamba2Fused(torch.autograd.Function):
    """conv+SiLU -> SSD -> gated RMSNorm (-> d_mlp branch) (-> out_proj) as one autograd node.

    Saves zxbcdt and the scan's output y before the norm (both in zxbcdt's dtype), the norm's 1/rms (one float per
    row and group) and the parameters: what the official ``mamba_split_conv1d_scan_combined`` keeps, nothing else.
    The backward recomputes from zxbcdt the conv output (one conv kernel) and the scan's dt and its cumulative decay
    (one small kernel); the norm's output, which out_proj's weight gradient needs, is stored by the norm's backward
    kernel (see the module docstring).
    """

    @staticmethod
    def forward(ctx, zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, out_weight, out_bias, cfg):
        dev = zxbcdt.device
        with torch.autocast(dev.type, enabled=False), on_device(zxbcdt):
            z0, x0, z, _, _ = cfg.split(zxbcdt)
            s = _scan_inputs(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight is None, cfg)
            conv_out = s["xBC"] if _SAVE_CONV_OUT else None
            y = ssd._forward(s["x"], s["dt"], s["A_log"], s["B"], s["C"], s["D2"], s["z"], s["dt_bias"], None,
                             s["d"], s["softplus"], want_final=False, a_is_log=True)[0].flatten(-2)  # (B, L, d_ssm)
            del s
            out, rstd = y, None
            if norm_weight is not None:
                out, rstd = _rmsnorm_forward(y, z, norm_weight, cfg.eps, cfg.d_ssm // cfg.ngroups,
                                             cfg.norm_before_gate)
            if cfg.d_mlp > 0:
                out = torch.cat([F.silu(z0) * x0, out], dim=-1)  # (B, L, d_inner)
            if out_weight is not None:
                dt_ = cfg.out_dtype
                out = F.linear(out.to(dt_), out_weight.to(dt_), out_bias.to(dt_) if out_bias is not None else None)
        ctx.save_for_backward(zxbcdt, y, rstd, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, out_weight,
                              out_bias, conv_out)
        ctx.cfg = cfg
        return out

    @staticmethod
    def backward(ctx, dout):
        (zxbcdt, y, rstd, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, out_weight,
         out_bias, conv_out) = ctx.saved_tensors
        cfg = ctx.cfg
        gs = cfg.d_ssm // cfg.ngroups
        f32 = torch.float32
        with torch.autocast(zxbcdt.device.type, enabled=False), on_device(zxbcdt):
            z0, x0, z, xBC_in, dt_in = cfg.split(zxbcdt)
            # the conv's output recomputed (or the forward's, kept)
            s = _scan_inputs(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight is None, cfg, conv_out)
            del conv_out
            # out_proj's input, the norm's output, recomputed for its weight gradient: by the norm's backward kernel
            # below, which forms it on the way (_NORM_OUT_IN_BWD), or by the forward's kernel here
            normed = None
            if norm_weight is not None and out_weight is not None:
                normed = (torch.empty_like(y) if _NORM_OUT_IN_BWD else
                          _rmsnorm_forward(y, z, norm_weight, cfg.eps, gs, cfg.norm_before_gate)[0])
            # the input gradient, allocated first: each piece is written straight into its columns in zxbcdt's
            # dtype (out_proj's input gradient and dz by the norm, dxBC by the conv), no float32 copies and no cat
            dzxbcdt = torch.empty_like(zxbcdt)  # (B, L, d_in_proj)
            _, _, dz_out, dxBC_out, _ = cfg.split(dzxbcdt)
            dW = db = g = None
            dt_ = cfg.out_dtype
            if out_weight is not None:  # the gradient reaching out_proj's input (its weight's: after the norm's)
                g = dout.to(dt_).flatten(0, -2)  # (B*L, d_model)
                db = g.to(f32).sum(0).to(out_bias.dtype) if out_bias is not None else None
                w_ = out_weight.to(dt_)
                if cfg.d_mlp == 0 and norm_weight is not None and dt_ == dzxbcdt.dtype:
                    # into dzxbcdt's z columns (row stride d_in_proj, which a GEMM takes as its leading dimension):
                    # the norm's backward then overwrites it there with dz, so it has no buffer of its own
                    dout = torch.mm(g, w_, out=dz_out.flatten(0, -2)).unflatten(0, dout.shape[:-1])  # (B, L, d_ssm)
                else:
                    dout = (g @ w_).unflatten(0, dout.shape[:-1])  # (B, L, d_inner)
                del w_
            dz0 = dx0 = None  # the d_mlp branch silu(z0) * x0
            if cfg.d_mlp > 0:
                d_mlp_out = dout[..., :cfg.d_mlp].to(f32)
                z0f = z0.to(f32)
                sg = torch.sigmoid(z0f)
                dz0, dx0 = d_mlp_out * x0.to(f32) * sg * (1.0 + z0f * (1.0 - sg)), d_mlp_out * z0f * sg
                del d_mlp_out, z0f, sg
                dout = dout[..., cfg.d_mlp:]  # a strided view: the norm's kernel takes its row strides
            # the conv's output gradient, one buffer whose columns the norm and the scan write in place: dy, then
            # dx over it, into the x columns; dB and dC into theirs (no cat of the three). In zxbcdt's dtype where
            # that is half precision (_GRADS_IN_ACT_DTYPE), else float32
            gdt = zxbcdt.dtype if _GRADS_IN_ACT_DTYPE and zxbcdt.element_size() == 2 else f32
            dxBC = torch.empty(*zxbcdt.shape[:-1], s["xBC"].shape[-1], device=zxbcdt.device, dtype=gdt)
            gn = cfg.ngroups * cfg.d_state
            dx_cols = dxBC[..., :cfg.d_ssm]  # (B, L, d_ssm)
            dB_cols, dC_cols = (dxBC[..., cfg.d_ssm + i * gn:cfg.d_ssm + (i + 1) * gn].unflatten(
                -1, (cfg.ngroups, cfg.d_state)) for i in (0, 1))  # (B, L, g, n) each
            # the gated RMSNorm: dy float32 (the scan's output gradient), dz rounded once into dzxbcdt
            dnw = None
            dz = None  # the scan's dz (when the norm is off)
            if norm_weight is not None:
                dy, _, dnw = _rmsnorm_backward(y, z, norm_weight, rstd, dout, gs, cfg.norm_before_gate, dz=dz_out,
                                               dy=dx_cols, out=normed if _NORM_OUT_IN_BWD else None)
            else:
                dy = dout
            del dout, rstd
            if out_weight is not None:  # out_proj's weight gradient
                out_in = normed if normed is not None else y
                if cfg.d_mlp > 0:
                    out_in = torch.cat([F.silu(z0) * x0, out_in], dim=-1)  # (B, L, d_inner)
                dW = (g.t() @ out_in.to(dt_).flatten(0, -2)).to(out_weight.dtype)  # (d_model, d_inner)
                del out_in, g
            del normed
            # the SSD scan
            A = -torch.exp(A_log.to(f32))  # (nheads,)
            dtp, a = ssd._dt_cumsum(s["dt"], A, s["dt_bias"], s["d"], s["softplus"])
            dy = dy.unflatten(-1, (cfg.nheads, cfg.headdim))  # (B, L, h, p)
            # dx written over dy when dy is the norm's (the same columns): it is read for the last time by the
            # kernel that stores dx, tile by tile (see ssd._backward), so they share them
            dx_out = dx_cols.unflatten(-1, (cfg.nheads, cfg.headdim))
            # with _DSILU_IN_SSD, dx, dB, dC w.r.t. the conv's output before its SiLU (the conv recomputed there)
            dsilu = _DSILU_IN_SSD
            conv = (xBC_in, conv_weight.reshape(conv_weight.shape[0], -1), conv_bias) if dsilu else None
            dx, ddt, dA, dB, dC, dD, dz_scan, dh0 = ssd._backward(
                dy, None, s["x"], s["dt"], A, s["B"], s["C"], s["D2"], s["z"], s["dt_bias"], None, dtp, a,
                s["d"], s["softplus"], dx=dx_out, dB=dB_cols, dC=dC_cols, dd_per_head=D.dim() == 1, conv=conv)
            del dtp, a, dy, dh0, dx, dB, dC  # views of dxBC; dh0: None (no initial state)
            if norm_weight is None:
                dz = dz_scan.flatten(-2)
            del dz_scan
            if not s["softplus"]:  # ddt is w.r.t. the clamped dt: back through the clamp and the softplus
                raw = dt_in.to(f32) + dt_bias.to(f32)
                sp = F.softplus(raw)
                ddt = ddt * torch.sigmoid(raw) * ((sp >= cfg.dt_limit[0]) & (sp <= cfg.dt_limit[1]))
                del raw, sp
            del s
            # the conv: its output gradient dxBC in (g = dL/dpre written over it; with _DSILU_IN_SSD, dxBC is g
            # already), its input gradient straight into dzxbcdt (rounded once, in the kernel)
            _, dconv_w, dconv_b = _conv_backward(xBC_in, conv_weight, conv_bias, dxBC, silu=not dsilu, dx=dxBC_out,
                                                  dy_scratch=True)  # dxBC is freed after: g over it
            del dxBC
            # the small pieces (dt, the d_mlp branch, the scan's dz when the norm is off) copied in
            for piece, part in zip(cfg.split(dzxbcdt), (dz0, dx0, dz, None, ddt), strict=True):
                if part is not None:
                    piece.copy_(part)
        dA_log = (dA * A).to(A_log.dtype)  # dA/dA_log = A
        return (dzxbcdt, dconv_w, dconv_b, ddt.sum((0, 1)).to(dt_bias.dtype), dA_log, dD.to(D.dtype),
                dnw, dW, db, None)


# The inference forward (no gradient) leaves the gated norm's 1/rms to the next norm (mamba2_deferred_forward:
# the scan stores y * silu(z) and its rows' sums of squares, out_proj runs on it with the norm's weight folded in, and
# the norm's own kernel, 6 KB a token at the seed, is gone). H100 run 8 (benchmarks/gpu_sweep.py, 24 layers): 1.745
# ms a layer's inference forward against 1.883 with the norm kept, once its scan was tuned (ssd._SCAN_SUMSQ_*); as
# first built, 2.33 against 2.00 (4 layers)
_DEFER_NORM = True


def mamba2_deferred_forward(
    zxbcdt: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    norm_weight: Tensor,
    out_proj_weight: Tensor,
    *,
    headdim: int,
    d_state: int,
    chunk_size: int = 256,
    eps: float = 1e-5,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> PendingScaled:
    """:func:`mamba2_fused_forward` with the gated norm left pending, for inference: no autograd, one B/C group,
    the gate after the norm's input (``norm_before_gate=False``), no d_mlp branch and no out_proj bias (so that the
    norm's 1/rms is one factor per row, which commutes with out_proj: :mod:`condorbrain.ssm.pending`).

    The scan kernel stores u = y * silu(z) and each row's sum of squares of it (in partial sums), out_proj runs on
    u with the norm's weight folded into its own, and the result's rows are still to be multiplied by 1/rms: by
    the next norm (``RMSNorm.add_forward``, ``norm_then_mix``) or ``PendingScaled.materialize``.

    Args:
        zxbcdt: (B, L, d_in_proj), in_proj's output, split as [z, xBC, dt] (d_ssm = nheads * headdim with
            nheads = dt_bias.shape[0], conv_dim = d_ssm + 2 * d_state).
        norm_weight: (d_ssm,). out_proj_weight: (d_model, d_ssm). The rest as :func:`mamba2_fused_forward`'s.

    Returns:
        a PendingScaled of (B, L, d_model) in out_proj's compute dtype (autocast's under autocast, else zxbcdt's).
    """
    nheads = dt_bias.shape[0]
    d_ssm = nheads * headdim
    if zxbcdt.shape[-1] != 2 * d_ssm + 2 * d_state + nheads:
        raise ValueError(f"zxbcdt has {zxbcdt.shape[-1]} channels; the deferred norm takes [z, xBC, dt] of one "
                         f"group and no d_mlp branch: 2 * d_ssm ({d_ssm}) + 2 * d_state ({d_state}) + nheads ({nheads})")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (zxbcdt, conv_weight, dt_bias, A_log, D, norm_weight,
                                                                  out_proj_weight)):
        raise RuntimeError("mamba2_deferred_forward has no backward: call it under torch.no_grad() or "
                           "torch.inference_mode(), or use mamba2_fused_forward")
    if zxbcdt.stride(-1) != 1:
        zxbcdt = zxbcdt.contiguous()
    cfg = _LayerCfg(headdim=headdim, d_state=d_state, ngroups=1, chunk_size=chunk_size, norm_before_gate=False,
                    eps=eps, dt_limit=(float(dt_limit[0]), float(dt_limit[1])), d_mlp=0, nheads=nheads,
                    out_dtype=_mm_dtype(zxbcdt))
    with torch.autocast(zxbcdt.device.type, enabled=False), on_device(zxbcdt):
        s = _scan_inputs(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, True, cfg)  # z gates inside the scan
        ss = torch.empty(zxbcdt.shape[:-1].numel(), ssd.scan_partials(s["d"]), device=zxbcdt.device,
                         dtype=torch.float32)  # (B * L, K)
        u = ssd._forward(s["x"], s["dt"], s["A_log"], s["B"], s["C"], s["D2"], s["z"], s["dt_bias"], None, s["d"],
                         s["softplus"], want_final=False, ss=ss, a_is_log=True)[0].flatten(-2)  # (B, L, d_ssm)
        del s
        # (d_model, d_ssm): out_proj's weight times the norm's, in float32 rounded once into out_proj's dtype; made
        # once and kept while both are unchanged (casts.folded)
        w = casts.folded(out_proj_weight, norm_weight, cfg.out_dtype)
        raw = F.linear(u.to(cfg.out_dtype), w)  # (B, L, d_model)
    return PendingScaled(raw, ss, d_ssm, eps)


def mamba2_fused_forward(
    zxbcdt: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    norm_weight: Tensor | None,
    *,
    headdim: int,
    d_state: int,
    ngroups: int = 1,
    chunk_size: int = 256,
    norm_before_gate: bool = False,
    eps: float = 1e-5,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    out_proj_weight: Tensor | None = None,
    out_proj_bias: Tensor | None = None,
) -> Tensor:
    """Mamba-2 after in_proj (no carried state), as :meth:`condorbrain.ssm.mamba2.Mamba2.forward`: one autograd
    node that keeps only zxbcdt and the scan's output before the norm (see :class:`_Mamba2Fused`).

    Args:
        zxbcdt: (B, L, d_in_proj), in_proj's output, split as [z0, x0, z, xBC, dt] (z0, x0 of width d_mlp, which
            is inferred from the other sizes; d_ssm = nheads * headdim with nheads = dt_bias.shape[0]).
        conv_weight: (conv_dim, 1, d_conv) or (conv_dim, d_conv); conv_bias: (conv_dim,) or None.
        dt_bias, A_log: (nheads,). D: (nheads,) or (nheads, headdim) (Mamba2's ``_D()``).
        norm_weight: (d_ssm,) weight of the gated RMSNorm (one group per B/C group), or None for Mamba2's
            ``rmsnorm=False`` (then y * silu(z) inside the scan).
        headdim, d_state, ngroups, chunk_size, norm_before_gate, eps, dt_limit: the layer's settings.
        out_proj_weight: (d_model, d_inner), out_proj_bias: (d_model,) or None: out_proj, applied inside (in the
            autocast dtype under autocast, as nn.Linear), so that its input is recomputed in the backward rather
            than kept. None: return out_proj's input.

    Returns:
        (B, L, d_model), the layer's output, if ``out_proj_weight`` is given (autocast dtype under autocast, else
        zxbcdt's); else (B, L, d_inner) in zxbcdt's dtype, the input of out_proj.
    """
    nheads = dt_bias.shape[0]
    d_ssm = nheads * headdim
    conv_dim = d_ssm + 2 * ngroups * d_state
    d_mlp = (zxbcdt.shape[-1] - d_ssm - conv_dim - nheads) // 2
    if d_mlp < 0 or 2 * d_mlp + d_ssm + conv_dim + nheads != zxbcdt.shape[-1]:
        raise ValueError(f"zxbcdt has {zxbcdt.shape[-1]} channels, which does not split as 2*d_mlp + d_ssm "
                         f"({d_ssm}) + conv_dim ({conv_dim}) + nheads ({nheads})")
    if out_proj_weight is None and out_proj_bias is not None:
        raise ValueError("out_proj_bias given without out_proj_weight")
    if zxbcdt.stride(-1) != 1:  # the norm kernel reads z with unit channel stride
        zxbcdt = zxbcdt.contiguous()
    cfg = _LayerCfg(headdim=headdim, d_state=d_state, ngroups=ngroups, chunk_size=chunk_size,
                    norm_before_gate=norm_before_gate, eps=eps, dt_limit=(float(dt_limit[0]), float(dt_limit[1])),
                    d_mlp=d_mlp, nheads=nheads, out_dtype=_mm_dtype(zxbcdt))
    return _Mamba2Fused.apply(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight,
                              casts.cast(out_proj_weight, cfg.out_dtype), casts.cast(out_proj_bias, cfg.out_dtype), cfg)
