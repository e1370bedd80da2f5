"""One streaming step of a Mamba-2 (and Mamba-1) layer in Triton: everything between in_proj and out_proj in two
kernel launches (and, for a pre-norm block at a few rows, the norm and both projections too: three launches in
all), for the per-bar update replayed in a CUDA graph (:class:`condorbrain.ssm.graph.GraphedStep`).

Why hand-written: the eager step (:meth:`condorbrain.ssm.mamba2.Mamba2._step_reference`) is ~25-30 small PyTorch ops
per layer (roll, copy, index-set, sum, bias, SiLU, split, softplus, exp, einsums, repeat_interleave, the norm in
several ops, cat): ~700 kernels for a 24-layer stack, each costing a microsecond or more even inside a CUDA graph,
where the work itself (reading and writing the states once) is well under a microsecond per layer. Nothing in
eager torch fuses this (one kernel per op; no op does the recurrent update, let alone in place with the conv window
and the grouped norm), and ``torch.compile`` is not used in this package: hand-written kernels keep the launch count
and the in-place state updates explicit, and run under the CPU interpreter the tests use.

:func:`mamba2_step_triton`, given zxbcdt = in_proj(u_t) (B, d_in_proj), split [z0, x0, z, xBC, dt]:

1. ``_mamba2_step_ssm``, grid (B, nheads, cdiv(headdim, BP)): one program per (batch, head, block of BP channels of
   the head). It computes the conv of its x channels and of its group's B and C channels from the old conv window
   and the new column (bias, SiLU, float32, rounded to the activation dtype as the eager step does), dt =
   softplus(dt + dt_bias) (clamped to dt_limit), dA = exp(dt A), the state tile (BP, d_state) <- state dA + dt x B^T
   in float32 (stored in the state's dtype, in place), y = state C + D x, times silu(z) when there is no norm, and
   writes y into the output. It also shifts the conv window of its own x channels in place (each x channel belongs
   to exactly one program). B and C are shared by every program of a group, so their window is only read here:
   shifting it in place would race with the other programs still reading the old one.
2. ``_mamba2_step_finish``, grid (B, ngroups), after kernel 1 (stream order is the only grid-wide sync there is):
   shifts the group's B and C conv windows in place, applies the gated RMSNorm over the group (y read back from the
   output, normalised in place: one group is heads_per_group * headdim channels, more than one program of kernel 1
   sees, which is why the norm is a second kernel) and the gated-MLP branch silu(z0) * x0 (d_mlp > 0) into the
   first d_mlp output columns, so there is no ``cat``.

So a layer's step is in_proj, these two kernels and out_proj (the eager step: ~28 kernels between the two
projections). A pre-norm block stepping a few rows (``condorbrain.ssm.blocks.norm_then_step``, up to
``STEP_GEMV_MAX_BATCH``) goes further, three launches in all: ``_rmsnorm_gemv`` (:func:`rmsnorm_gemv_triton`) does
the pending residual add, the block's RMSNorm and in_proj, and ``_mamba2_step_out`` takes kernel 2's place and does
its work and out_proj. Both are GEMVs whose every program recomputes the row's norm (K values) before its slice of
the weights, so no program waits for another; at batch 1 a projection is memory-bound on its weights and cuBLAS
has no norm to fuse. Their float32 sums run in another order than cuBLAS's: the same values up to that rounding.

Inside a program, a value read from memory that the same program later overwrites (the conv window,
y under the norm) is loaded in full, then ``tl.debug_barrier()``, then stored: threads holding replicated elements of
a small tile must not see a neighbour's store.

:func:`mamba_step_triton` does the same for Mamba-1, whose x_proj and dt_proj matmuls sit between the conv and the
scan: ``_mamba_step_conv`` (conv window shift + conv + SiLU, grid (B, cdiv(d_inner, BD))), the two matmuls in
torch, then ``_mamba_step_ssm`` (softplus(dt + bias), the (BD, d_state) state update, y = state C + D x, times
silu(z)). Two launches plus the two matmuls, instead of ~20 ops.

Capture-safe: the host functions read only shapes, strides and dtypes (no ``.item()``, no data-dependent branch),
allocate only the output, whose shape depends on the shapes alone, and launch with one fixed config (no autotuner,
no device queries), so the same code runs under ``TRITON_INTERPRET=1`` on the CPU, where the tests compare it with
the eager step. Precision: everything is computed in float32 from inputs, weights and states of any float dtype;
the output is in ``out_dtype`` (the layer's activation dtype). Where the eager step rounds in between (the conv
output to the activation dtype, the new conv column to the window's dtype, y to the output dtype before the norm)
the kernels round at the same points; elsewhere they keep float32 (y = state C uses the updated state before it is
rounded to a bf16 state's dtype; Mamba-1's softplus is float32, not the activation dtype). (Triton's interpreter
truncates float32 -> bfloat16 casts where a GPU rounds to nearest, so under it a bf16 state drifts from a float64
step about twice as fast as the eager step's; the tests' half-precision tolerance allows for it.)

Checked: the tests run the kernels under the interpreter against the eager step (and on a GPU where one is at
hand: they passed on an H200), and ``tests/ssm/test_triton_compile.py`` compiles them for sm_90 at the seed sizes
(32-72 registers, no spills, <= 8 KB shared memory), with and without PDL. Timed on an H200 (2026-11-26,
``benchmarks/gpu.py`` case c): a 24-layer pre-norm Mamba-2 step at batch 1 in a CUDA graph, three launches a layer,
0.158 ms with programmatic dependent launch (see :func:`_pdl`), 0.266 ms without it and the loads in their previous
order (the session's starting commit, same call); the official layer 1.12 ms. Side by side on 4 layers
(``benchmarks/gpu_sweep.py``): 10.3 us a layer with PDL, 12.4 without.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from condorbrain.ssm.triton import interpreting
from condorbrain.ssm.triton.ssd import launch_options, on_device

try:  # Triton >= 3.4 (the GPU image's 3.6 has them)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: no programmatic dependent launch
    gdc_launch_dependents = gdc_wait = None

__all__ = ["mamba2_step_triton", "mamba_step_triton", "rmsnorm_gemv_triton", "step_block_p"]

_STATE_TILE = 2048  # state elements per program (BP x BN): small tiles, many programs, for batch 1
# Inputs per pass of a GEMV program (_rmsnorm_gemv, _mamba2_step_out): the seed's in_proj (512) and out_proj (1024)
# rows in one pass; wider rows loop.
_GEMV_MAX_BK = 1024
# Programmatic dependent launch (Hopper and later) for the three kernels of a streaming layer step; see _pdl
_PDL = True


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _pdl(t: Tensor, asked: bool = True) -> bool:
    """Whether the streaming kernels launch with programmatic dependent launch (PDL) on ``t``'s device: the caller
    asked (``pdl=True``), compute capability 9.0 or later, a Triton that has it, not interpreting, ``_PDL`` set.

    Why: a batch-1 step is a chain of small kernels, each a few microseconds, most of it latency (the launch, then
    a round trip to memory for weights that do not depend on the previous kernel at all). With PDL a kernel may
    start while the previous one still runs: it loads what does not depend on it (weights, this layer's own states,
    written one step back), then ``gdc_wait`` (until the previous kernel has finished and its writes are visible),
    and only then reads the previous kernel's outputs and stores anything; right after the wait it lets the next
    kernel start (``gdc_launch_dependents``), so at most one kernel's prologue overlaps the one before it. Every
    store comes after the wait: buffers the allocator hands out again (in stream order) are never written early.
    Inside a CUDA graph the dependency is captured as a programmatic edge. What is read before the wait must not be
    written by the kernel launched just before, which is why callers ask for it (``pdl=True``) only where they know
    that kernel: ``Mamba2.step_prenormed``, whose kernels follow each other and the previous block's."""
    if not (asked and _PDL) or gdc_wait is None or interpreting() or not t.is_cuda:
        return False
    return _capability(t.device.index if t.device.index is not None else torch.cuda.current_device())[0] >= 9


def _pdl_options(pdl: bool) -> dict:
    """The kernel's PDL constexpr and, when set, Triton's launch option."""
    return {"PDL": True, "launch_pdl": True} if pdl else {"PDL": False}


@triton.jit
def _pdl_wait(PDL: tl.constexpr):
    # With PDL: wait for the previous kernel (its writes visible after this), then let the next one launch
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def step_block_p(headdim: int, d_state: int) -> int:
    """Channels of one head per program of the Mamba-2 step (a power of two, >= 16 unless ``headdim`` is smaller,
    padded): BP x pow2(d_state) ~ 2048 state elements, so that a batch-1 step of a 16-head layer still runs on
    32-64 programs (headdim 64: d_state 64 -> BP 32, d_state 128 -> BP 16)."""
    if interpreting():
        return _pow2(headdim)  # one fixed config, the fewest programs: the interpreter runs them one by one
    return min(_pow2(headdim), max(16, _STATE_TILE // _pow2(d_state)))


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _conv_window(
    win_ptr, w_ptr, bias_ptr, ch, mask, s_win_c, s_win_k, s_w_c, s_w_k,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
):
    # For channels ch (masked), what a conv step needs that is not the new column (so it may be loaded before a
    # PDL wait, see _pdl): the old window's last K - 1 taps moved to taps 0 .. K - 2 (tap K - 1 zero, in the window's
    # dtype), the weights (BLOCK, KP) and the bias (BLOCK,) in float32
    kk = tl.arange(0, KP)
    old = tl.load(win_ptr + ch[:, None] * s_win_c + (kk[None, :] + 1) * s_win_k,
                  mask=mask[:, None] & (kk[None, :] < K - 1), other=0.0)
    w = tl.load(w_ptr + ch[:, None] * s_w_c + kk[None, :] * s_w_k, mask=mask[:, None] & (kk[None, :] < K),
                other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    else:
        bias = ch.to(tl.float32) * 0.0
    return old, w, bias


@triton.jit
def _conv_finish(
    new_ptr, win_ptr, old, w, bias, ch, mask, s_new_c, s_win_c, s_win_k,
    SHIFT: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
):
    # The window after the step, old[1:] + [new] (new rounded to the window's dtype, as the eager
    # ``conv_state[:, :, -1] = xBC`` does), and silu(bias + sum_k w[k] window[k]) in float32. With SHIFT, the window
    # is also stored back in place (loaded in full first, then a barrier, then stored).
    kk = tl.arange(0, KP)
    new = tl.load(new_ptr + ch * s_new_c, mask=mask, other=0.0).to(win_ptr.dtype.element_ty)
    win = tl.where(kk[None, :] == K - 1, new[:, None], old)  # (BLOCK, KP) in the window's dtype
    acc = tl.sum(win.to(tl.float32) * w, axis=1) + bias
    if SHIFT:
        tl.debug_barrier()
        tl.store(win_ptr + ch[:, None] * s_win_c + kk[None, :] * s_win_k, win,
                 mask=mask[:, None] & (kk[None, :] < K))
    return acc * tl.sigmoid(acc)


@triton.jit
def _conv_step(
    new_ptr, win_ptr, w_ptr, bias_ptr, ch, mask, s_new_c, s_win_c, s_win_k, s_w_c, s_w_k,
    HAS_BIAS: tl.constexpr, SHIFT: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
):
    # One conv step of channels ch: _conv_window then _conv_finish
    old, w, bias = _conv_window(win_ptr, w_ptr, bias_ptr, ch, mask, s_win_c, s_win_k, s_w_c, s_w_k, HAS_BIAS, K, KP)
    return _conv_finish(new_ptr, win_ptr, old, w, bias, ch, mask, s_new_c, s_win_c, s_win_k, SHIFT, K, KP)


@triton.jit
def _softplus(x):
    # torch's softplus (threshold 20), in float32
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


# ----------------------------------------------------------------------------------------------------------------
# Mamba-2
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _mamba2_step_ssm(
    zx_ptr, cs_ptr, st_ptr, cw_ptr, cb_ptr, dtb_ptr, alog_ptr, D_ptr, out_ptr,
    p, n, hpg, ngroups, d_mlp, dt_min, dt_max,
    s_zx_b, s_zx_c, s_cs_b, s_cs_c, s_cs_k, s_st_b, s_st_h, s_st_p, s_st_n, s_cw_c, s_cw_k, s_out_b,
    HAS_BIAS: tl.constexpr, D_HAS_HDIM: tl.constexpr, DT_LIMIT: tl.constexpr, GATE: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PDL: tl.constexpr,
):
    # grid (B, nheads, cdiv(p, BP)). zxbcdt columns: z0 [0, d_mlp), x0 [d_mlp, 2 d_mlp), z [2 d_mlp, +d_ssm),
    # xBC [2 d_mlp + d_ssm, +conv_dim) = x (d_ssm), B (ngroups n), C (ngroups n), dt [.., +nheads).
    bi, h, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nheads = hpg * ngroups
    d_ssm = nheads * p
    g = h // hpg
    pp = pid_p * BP + tl.arange(0, BP)
    mp = pp < p
    nn = tl.arange(0, BN)
    mn = nn < n
    zx = zx_ptr + bi * s_zx_b
    xbc = zx + (2 * d_mlp + d_ssm) * s_zx_c  # the conv's new column, channel c at xbc + c * s_zx_c
    cs = cs_ptr + bi * s_cs_b
    # everything that does not depend on in_proj's output (the previous kernel) first: the conv windows, weights
    # and biases of this program's x channels and of the group's B and C channels, the head's dt bias, A and D, the
    # state tile; then (with PDL) the wait, and the new column
    cx = h * p + pp
    cB = d_ssm + g * n + nn
    cC = cB + ngroups * n
    ox, wx, bx = _conv_window(cs, cw_ptr, cb_ptr, cx, mp, s_cs_c, s_cs_k, s_cw_c, s_cw_k, HAS_BIAS, K, KP)
    oB, wB, bB = _conv_window(cs, cw_ptr, cb_ptr, cB, mn, s_cs_c, s_cs_k, s_cw_c, s_cw_k, HAS_BIAS, K, KP)
    oC, wC, bC = _conv_window(cs, cw_ptr, cb_ptr, cC, mn, s_cs_c, s_cs_k, s_cw_c, s_cw_k, HAS_BIAS, K, KP)
    dtb = tl.load(dtb_ptr + h).to(tl.float32)
    A = -tl.exp(tl.load(alog_ptr + h).to(tl.float32))
    if D_HAS_HDIM:
        Dv = tl.load(D_ptr + cx, mask=mp, other=0.0).to(tl.float32)
    else:
        Dv = tl.load(D_ptr + h).to(tl.float32)
    st_ptrs = st_ptr + bi * s_st_b + h * s_st_h + pp[:, None] * s_st_p + nn[None, :] * s_st_n
    ms = mp[:, None] & mn[None, :]
    state = tl.load(st_ptrs, mask=ms, other=0.0).to(tl.float32)  # (BP, BN)
    _pdl_wait(PDL)
    # conv + SiLU: this program's x channels (window shifted in place: they are this program's alone), the group's
    # B and C channels (window only read: the finishing kernel shifts it); rounded to the activation dtype
    x = _conv_finish(xbc, cs, ox, wx, bx, cx, mp, s_zx_c, s_cs_c, s_cs_k, True, K, KP)
    x = x.to(out_ptr.dtype.element_ty).to(tl.float32)  # (BP,)
    Bv = _conv_finish(xbc, cs, oB, wB, bB, cB, mn, s_zx_c, s_cs_c, s_cs_k, False, K, KP)
    Bv = Bv.to(out_ptr.dtype.element_ty).to(tl.float32)  # (BN,)
    Cv = _conv_finish(xbc, cs, oC, wC, bC, cC, mn, s_zx_c, s_cs_c, s_cs_k, False, K, KP)
    Cv = Cv.to(out_ptr.dtype.element_ty).to(tl.float32)  # (BN,)
    # dt and the decay of this head
    dt = _softplus(tl.load(xbc + (d_ssm + 2 * ngroups * n + h) * s_zx_c).to(tl.float32) + dtb)
    if DT_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dA = tl.exp(A * dt)
    # the state tile, in place
    state = state * dA + (dt * x)[:, None] * Bv[None, :]
    tl.store(st_ptrs, state.to(st_ptr.dtype.element_ty), mask=ms)
    y = tl.sum(state * Cv[None, :], axis=1) + Dv * x  # (BP,)
    if GATE:  # rmsnorm=False: y * silu(z)
        z = tl.load(zx + (2 * d_mlp + cx) * s_zx_c, mask=mp, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(out_ptr + bi * s_out_b + d_mlp + cx, y.to(out_ptr.dtype.element_ty), mask=mp)


@triton.jit
def _shift_bc_window(
    zx, cs, g, d_ssm, d_mlp, ngroups, n, s_zx_c, s_cs_c, s_cs_k,
    K: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr,
):
    # Group g's B and C conv windows (row pointers zx into zxbcdt, cs into conv_state) shifted in place by the new
    # column: after _mamba2_step_ssm, whose programs only read them (each loaded in full, a barrier, then stored).
    xbc = zx + (2 * d_mlp + d_ssm) * s_zx_c
    kk = tl.arange(0, KP)
    nn = tl.arange(0, BN)
    mn = nn < n
    for which in tl.static_range(2):  # B, then C
        ch = d_ssm + (which * ngroups + g) * n + nn
        old = tl.load(cs + ch[:, None] * s_cs_c + (kk[None, :] + 1) * s_cs_k,
                      mask=mn[:, None] & (kk[None, :] < K - 1), other=0.0)
        new = tl.load(xbc + ch * s_zx_c, mask=mn, other=0.0).to(cs.dtype.element_ty)
        win = tl.where(kk[None, :] == K - 1, new[:, None], old)
        tl.debug_barrier()
        tl.store(cs + ch[:, None] * s_cs_c + kk[None, :] * s_cs_k, win, mask=mn[:, None] & (kk[None, :] < K))


@triton.jit
def _mamba2_step_finish(
    zx_ptr, cs_ptr, nw_ptr, out_ptr,
    n, gs, ngroups, d_mlp, mlp_per_group, eps,
    s_zx_b, s_zx_c, s_cs_b, s_cs_c, s_cs_k, s_out_b,
    NORM: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    BN: tl.constexpr, BG: tl.constexpr, BM: tl.constexpr,
):
    # grid (B, ngroups), after _mamba2_step_ssm. Group g: its B and C conv windows shifted in place, the gated
    # RMSNorm of its gs = d_ssm / ngroups output channels (in place), and one slice of the d_mlp branch.
    bi, g = tl.program_id(0), tl.program_id(1)
    d_ssm = gs * ngroups
    zx = zx_ptr + bi * s_zx_b
    _shift_bc_window(zx, cs_ptr + bi * s_cs_b, g, d_ssm, d_mlp, ngroups, n, s_zx_c, s_cs_c, s_cs_k, K, KP, BN)
    out = out_ptr + bi * s_out_b
    if NORM:
        cols = g * gs + tl.arange(0, BG)
        mg = tl.arange(0, BG) < gs
        v = tl.load(out + d_mlp + cols, mask=mg, other=0.0).to(tl.float32)
        z = tl.load(zx + (2 * d_mlp + cols) * s_zx_c, mask=mg, other=0.0).to(tl.float32)
        gate = z * tl.sigmoid(z)
        if not NORM_BEFORE_GATE:
            v = v * gate
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / gs + eps)
        v = v * rstd * tl.load(nw_ptr + cols, mask=mg, other=0.0).to(tl.float32)
        if NORM_BEFORE_GATE:
            v = v * gate
        tl.debug_barrier()  # every thread has read y before any overwrites it
        tl.store(out + d_mlp + cols, v.to(out_ptr.dtype.element_ty), mask=mg)
    if BM > 0:  # silu(z0) * x0 for this group's slice of the d_mlp channels
        mc = g * mlp_per_group + tl.arange(0, BM)
        mm = (tl.arange(0, BM) < mlp_per_group) & (mc < d_mlp)
        z0 = tl.load(zx + mc * s_zx_c, mask=mm, other=0.0).to(tl.float32)
        x0 = tl.load(zx + (d_mlp + mc) * s_zx_c, mask=mm, other=0.0).to(tl.float32)
        tl.store(out + mc, (z0 * tl.sigmoid(z0) * x0).to(out_ptr.dtype.element_ty), mask=mm)


@triton.jit
def _residual_slice(x_ptrs, h_ptrs, mask, HAS_ADD: tl.constexpr):
    # x (+ h, added in float32 and rounded to x's dtype, as the eager add is) at x_ptrs / h_ptrs
    v = tl.load(x_ptrs, mask=mask, other=0.0)
    if HAS_ADD:
        v = (v.to(tl.float32) + tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)).to(x_ptrs.dtype.element_ty)
    return v


@triton.jit
def _rmsnorm_gemv(
    x_ptr, h_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, out_ptr,
    K, N, eps,
    s_x_b, s_h_b, s_res_b, s_w_n, s_w_k, s_out_b,
    HAS_ADD: tl.constexpr, HAS_BIAS: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, ONE_PASS: tl.constexpr,
    PDL: tl.constexpr,
):
    # grid (B, cdiv(N, BJ)): out[b, j] = bias[j] + sum_k W[j, k] u[b, k] for the BJ outputs j of this program, with
    # u = rmsnorm(v) * nw rounded to x's dtype and v = x (+ h, rounded to x's dtype, stored into res by the row's
    # program 0: the others read x and h only). Every program of a row recomputes the row's 1/rms: K values, cheap
    # beside its (BJ, K) slice of W, and no program waits for another.
    # ONE_PASS (BK >= K): the W slice is loaded first, beside the row, so that the kernel is one round trip to
    # memory (at batch 1 it is latency, not bandwidth: on an H200 the seed's in_proj, 2.2 MB, took 4.9 us in two
    # passes of two tiles on 69 programs, 2.6 us in one on 274). Else two loops over K: the sum of squares, then the
    # products. With PDL (see _pdl), the one-pass form loads W, the norm weight and the bias before the wait.
    bi, pj = tl.program_id(0), tl.program_id(1)
    kk = tl.arange(0, BK)
    jj = pj * BJ + tl.arange(0, BJ)
    mj = jj < N
    if HAS_BIAS:
        bias = tl.load(b_ptr + jj, mask=mj, other=0.0).to(tl.float32)
    if ONE_PASS:
        mk = kk < K
        w = tl.load(w_ptr + jj[:, None] * s_w_n + kk[None, :] * s_w_k, mask=mj[:, None] & mk[None, :], other=0.0)
        nw = tl.load(nw_ptr + kk, mask=mk, other=0.0).to(tl.float32)
        _pdl_wait(PDL)
        v = _residual_slice(x_ptr + bi * s_x_b + kk, h_ptr + bi * s_h_b + kk, mk, HAS_ADD)
        if HAS_ADD:  # noqa: SIM102  (a constexpr test, then a runtime one: not joined by 'and' in a kernel)
            if pj == 0:
                tl.store(res_ptr + bi * s_res_b + kk, v, mask=mk)
        v = v.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / K + eps)
        u = (v * rstd * nw).to(x_ptr.dtype.element_ty).to(tl.float32)  # the norm's output, in the activation dtype
        acc = tl.sum(w.to(tl.float32) * u[None, :], axis=1)
    else:
        _pdl_wait(PDL)
        ss = tl.zeros([BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            mk = k0 + kk < K
            v = _residual_slice(x_ptr + bi * s_x_b + k0 + kk, h_ptr + bi * s_h_b + k0 + kk, mk, HAS_ADD)
            if HAS_ADD:  # noqa: SIM102
                if pj == 0:
                    tl.store(res_ptr + bi * s_res_b + k0 + kk, v, mask=mk)
            v = v.to(tl.float32)
            ss += v * v
        rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
        acc = tl.zeros([BJ], dtype=tl.float32)
        for k0 in range(0, K, BK):
            mk = k0 + kk < K
            v = _residual_slice(x_ptr + bi * s_x_b + k0 + kk, h_ptr + bi * s_h_b + k0 + kk, mk, HAS_ADD)
            u = v.to(tl.float32) * rstd * tl.load(nw_ptr + k0 + kk, mask=mk, other=0.0).to(tl.float32)
            u = u.to(x_ptr.dtype.element_ty).to(tl.float32)
            w = tl.load(w_ptr + jj[:, None] * s_w_n + (k0 + kk)[None, :] * s_w_k, mask=mj[:, None] & mk[None, :],
                        other=0.0).to(tl.float32)  # (BJ, BK)
            acc += tl.sum(w * u[None, :], axis=1)
    if HAS_BIAS:
        acc += bias
    tl.store(out_ptr + bi * s_out_b + jj, acc.to(out_ptr.dtype.element_ty), mask=mj)


@triton.jit
def _mamba2_step_out(
    y_ptr, zx_ptr, cs_ptr, nw_ptr, w_ptr, b_ptr, out_ptr,
    n, gs, ngroups, d_mlp, N, eps,
    s_y_b, s_zx_b, s_zx_c, s_cs_b, s_cs_c, s_cs_k, s_w_n, s_w_k, s_out_b,
    NORM: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, K: tl.constexpr,
    KP: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, ONE_PASS: tl.constexpr,
    W_FIRST: tl.constexpr, PDL: tl.constexpr,
):
    # grid (B, cdiv(N, BJ) + 1), after _mamba2_step_ssm: what _mamba2_step_finish does, then out_proj, for BJ of the N
    # outputs per program: out[b, j] = bias[j] + sum_k W[j, k] v[b, k] over out_proj's input v = [silu(z0) * x0,
    # gated-norm(y, z)] (each rounded to the activation dtype as the two-kernel step stores it), recomputed by every
    # program of the row from y and zxbcdt (the group's 1/rms first, group by group), so no program waits for
    # another. The row's last program shifts every group's B and C conv windows in place (kernel 1 only read them).
    # W_FIRST (one pass, one group, no d_mlp: the seed): the W slice, the norm weight and the bias are loaded before
    # the PDL wait (see _pdl), everything else after it.
    bi, pj = tl.program_id(0), tl.program_id(1)
    d_ssm = gs * ngroups
    zx = zx_ptr + bi * s_zx_b
    jj = pj * BJ + tl.arange(0, BJ)
    mj = jj < N  # none on the row's last program
    kk = tl.arange(0, BK)
    if HAS_BIAS:
        bias = tl.load(b_ptr + jj, mask=mj, other=0.0).to(tl.float32)
    if W_FIRST:
        w_first = tl.load(w_ptr + jj[:, None] * s_w_n + kk[None, :] * s_w_k, mask=mj[:, None] & (kk[None, :] < gs),
                          other=0.0)
        if NORM:
            nw_first = tl.load(nw_ptr + kk, mask=kk < gs, other=0.0).to(tl.float32)
    _pdl_wait(PDL)
    if pj == tl.num_programs(1) - 1:  # the row's last program only shifts the B and C windows (a load, a barrier
        # and a store: on a GEMV program it would be a second round trip to memory). With ONE_PASS, on an H200 at
        # the seed: 2.5 us a layer, against 7.7 us for loops of 256 inputs on 64 programs, program 0 shifting
        for g in range(ngroups):
            _shift_bc_window(zx, cs_ptr + bi * s_cs_b, g, d_ssm, d_mlp, ngroups, n, s_zx_c, s_cs_c, s_cs_k, K, KP,
                             BN)
    else:
        acc = tl.zeros([BJ], dtype=tl.float32)
        for k0 in range(0, d_mlp, BK):  # the gated-MLP branch: out_proj's input columns [0, d_mlp)
            mk = k0 + kk < d_mlp
            z0 = tl.load(zx + (k0 + kk) * s_zx_c, mask=mk, other=0.0).to(tl.float32)
            x0 = tl.load(zx + (d_mlp + k0 + kk) * s_zx_c, mask=mk, other=0.0).to(tl.float32)
            v = (z0 * tl.sigmoid(z0) * x0).to(out_ptr.dtype.element_ty).to(tl.float32)
            w = tl.load(w_ptr + jj[:, None] * s_w_n + (k0 + kk)[None, :] * s_w_k, mask=mj[:, None] & mk[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(w * v[None, :], axis=1)
        y_row = y_ptr + bi * s_y_b + d_mlp
        for g in range(ngroups):  # the SSM part, columns [d_mlp + g gs, d_mlp + (g + 1) gs) per group
            c0 = g * gs
            if ONE_PASS:  # BK >= gs: the W slice loaded first, beside y and z (one round trip, as in _rmsnorm_gemv)
                mk = kk < gs
                if W_FIRST:
                    w = w_first
                else:
                    w = tl.load(w_ptr + jj[:, None] * s_w_n + (d_mlp + c0 + kk)[None, :] * s_w_k,
                                mask=mj[:, None] & mk[None, :], other=0.0)
                v = tl.load(y_row + c0 + kk, mask=mk, other=0.0).to(tl.float32)
                if NORM:
                    z = tl.load(zx + (2 * d_mlp + c0 + kk) * s_zx_c, mask=mk, other=0.0).to(tl.float32)
                    gate = z * tl.sigmoid(z)
                    if not NORM_BEFORE_GATE:
                        v = v * gate
                    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / gs + eps)
                    if W_FIRST:
                        nwv = nw_first
                    else:
                        nwv = tl.load(nw_ptr + c0 + kk, mask=mk, other=0.0).to(tl.float32)
                    v = v * rstd * nwv
                    if NORM_BEFORE_GATE:
                        v = v * gate
                    v = v.to(out_ptr.dtype.element_ty).to(tl.float32)
                acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)
            else:  # two passes over the group: its sum of squares, then the products
                rstd = 1.0
                if NORM:
                    ss = tl.zeros([BK], dtype=tl.float32)
                    for k0 in range(0, gs, BK):
                        mk = k0 + kk < gs
                        v = tl.load(y_row + c0 + k0 + kk, mask=mk, other=0.0).to(tl.float32)
                        if not NORM_BEFORE_GATE:
                            z = tl.load(zx + (2 * d_mlp + c0 + k0 + kk) * s_zx_c, mask=mk, other=0.0).to(tl.float32)
                            v = v * z * tl.sigmoid(z)
                        ss += v * v
                    rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / gs + eps)
                for k0 in range(0, gs, BK):
                    mk = k0 + kk < gs
                    v = tl.load(y_row + c0 + k0 + kk, mask=mk, other=0.0).to(tl.float32)
                    if NORM:
                        z = tl.load(zx + (2 * d_mlp + c0 + k0 + kk) * s_zx_c, mask=mk, other=0.0).to(tl.float32)
                        gate = z * tl.sigmoid(z)
                        if not NORM_BEFORE_GATE:
                            v = v * gate
                        v = v * rstd * tl.load(nw_ptr + c0 + k0 + kk, mask=mk, other=0.0).to(tl.float32)
                        if NORM_BEFORE_GATE:
                            v = v * gate
                        v = v.to(out_ptr.dtype.element_ty).to(tl.float32)
                    w = tl.load(w_ptr + jj[:, None] * s_w_n + (d_mlp + c0 + k0 + kk)[None, :] * s_w_k,
                                mask=mj[:, None] & mk[None, :], other=0.0).to(tl.float32)
                    acc += tl.sum(w * v[None, :], axis=1)
        if HAS_BIAS:
            acc += bias
        tl.store(out_ptr + bi * s_out_b + jj, acc.to(out_ptr.dtype.element_ty), mask=mj)


def _gemv_tiles(n_out: int, n_in: int) -> tuple[int, int]:
    """(BJ outputs, BK inputs) per program of the GEMV kernels. On a GPU: a row's inputs in one pass where they fit
    ``_GEMV_MAX_BK``, at most 4096 weights per program, and about 128 programs per row or more (a batch-1 step has
    nothing else to spread over the SMs; each program's weights are one round trip to memory). Under the
    interpreter, which runs programs one by one: the fewest programs."""
    bk = min(_GEMV_MAX_BK, _pow2(n_in))
    if interpreting():
        return min(_pow2(n_out), max(1, 4096 // bk)), bk
    bj = 1 << max(0, (max(1, n_out // 128)).bit_length() - 1)  # the largest power of two <= n_out / 128
    return max(2, min(4096 // bk, bj)), bk


def rmsnorm_gemv_triton(x: Tensor, h: Tensor | None, norm_weight: Tensor, eps: float, weight: Tensor,
                        bias: Tensor | None = None, pdl: bool = False) -> tuple[Tensor, Tensor]:
    """(x + h, F.linear(rmsnorm(x + h) * norm_weight, weight, bias)) for a few rows in one launch: a streaming step's
    residual add, the next block's norm and its in_proj (``Mamba2.step_prenormed``). h None: nothing to add (x
    itself is returned). The sum and the norm's output are rounded to x's dtype, as the eager ops round them; the
    product is accumulated in float32 and rounded to x's dtype. No autograd; nothing read back to the host.

    Args:
        x, h: (B, K) with unit channel stride, h in x's dtype. norm_weight: (K,). weight: (N, K). bias: (N,) or None.
        pdl: launch with programmatic dependent launch on Hopper or later (see :func:`_pdl`): the weights are then
            read while the kernel before still runs, so only where that kernel does not write them.

    Returns:
        (B, K) the residual sum (a new tensor, or x when h is None) and (B, N) the projection, both in x's dtype.
    """
    if x.dim() != 2 or x.stride(-1) != 1 or (h is not None and (h.shape != x.shape or h.stride(-1) != 1)):
        raise ValueError(f"x, h: (B, K) with unit channel stride, got {tuple(x.shape)} and "
                         f"{None if h is None else tuple(h.shape)}")
    batch, k_in = x.shape
    n_out = weight.shape[0]
    if weight.shape != (n_out, k_in) or norm_weight.shape != (k_in,):
        raise ValueError(f"weight must be (N, {k_in}) and norm_weight ({k_in},), got {tuple(weight.shape)} and "
                         f"{tuple(norm_weight.shape)}")
    res = torch.empty_like(x) if h is not None else x
    out = torch.empty(batch, n_out, device=x.device, dtype=x.dtype)
    BJ, BK = _gemv_tiles(n_out, k_in)
    with on_device(x):
        _rmsnorm_gemv[(batch, triton.cdiv(n_out, BJ))](
            x, h if h is not None else x, res, norm_weight, weight, bias if bias is not None else weight, out,
            k_in, n_out, eps, x.stride(0), h.stride(0) if h is not None else 0, res.stride(0), *weight.stride(),
            out.stride(0), HAS_ADD=h is not None, HAS_BIAS=bias is not None, BJ=BJ, BK=BK, ONE_PASS=BK >= k_in,
            **_pdl_options(_pdl(x, pdl)), **launch_options(BJ * BK))
    return res, out


def mamba2_step_triton(
    zxbcdt: Tensor,
    conv_state: Tensor,
    ssm_state: Tensor,
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
    norm_before_gate: bool = False,
    eps: float = 1e-5,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    out_dtype: torch.dtype | None = None,
    out_proj_weight: Tensor | None = None,
    out_proj_bias: Tensor | None = None,
    pdl: bool = False,
) -> Tensor:
    """One step of :class:`condorbrain.ssm.mamba2.Mamba2` after in_proj, as its eager step, in two launches (see
    the module docstring). The states advance in place; nothing is read back to the host (CUDA-graph safe). With
    ``out_proj_weight``, the second launch is ``_mamba2_step_out``: the finishing work and out_proj in one (a GEMV
    per row: meant for a few rows, as a streaming step has).

    Args:
        zxbcdt: (B, d_in_proj), in_proj's output at the new step, split [z0, x0, z, xBC, dt] (z0, x0 of width d_mlp,
            inferred from the sizes; d_ssm = nheads * headdim, nheads = dt_bias.shape[0]); any strides.
        conv_state: (B, conv_dim, d_conv), any strides (``allocate_inference_cache`` gives a transposed one),
            updated in place. ssm_state: (B, nheads, headdim, d_state), any strides, updated in place.
        conv_weight: (conv_dim, 1, d_conv) or (conv_dim, d_conv); conv_bias: (conv_dim,) or None.
        dt_bias, A_log: (nheads,). D: (nheads,) or (nheads, headdim) (Mamba2's ``_D()``), contiguous.
        norm_weight: (d_ssm,) weight of the gated RMSNorm (one group per B/C group), or None for ``rmsnorm=False``
            (y * silu(z)).
        headdim, d_state, ngroups, norm_before_gate, eps, dt_limit: the layer's settings.
        out_dtype: dtype of the result (the layer's activation dtype); None = zxbcdt's.
        out_proj_weight: (d_model, d_inner), out_proj_bias: (d_model,) or None: out_proj, applied inside.
        pdl: with out_proj inside, both launches with programmatic dependent launch on Hopper or later (see
            :func:`_pdl`): the states and weights are then read while the kernel before still runs, so only where
            that kernel does not write them.

    Returns:
        (B, d_inner) contiguous: out_proj's input, cat(silu(z0) * x0, norm(y, z)); with ``out_proj_weight``,
        (B, d_model): out_proj's output.
    """
    nheads = dt_bias.shape[0]
    d_ssm = nheads * headdim
    conv_dim = d_ssm + 2 * ngroups * d_state
    batch = zxbcdt.shape[0]
    d_mlp = (zxbcdt.shape[-1] - d_ssm - conv_dim - nheads) // 2
    if zxbcdt.dim() != 2 or d_mlp < 0 or 2 * d_mlp + d_ssm + conv_dim + nheads != zxbcdt.shape[-1]:
        raise ValueError(f"zxbcdt {tuple(zxbcdt.shape)} is not (batch, 2*d_mlp + d_ssm ({d_ssm}) + conv_dim "
                         f"({conv_dim}) + nheads ({nheads}))")
    if nheads % ngroups:
        raise ValueError(f"ngroups={ngroups} must divide nheads={nheads}")
    w = conv_weight.reshape(conv_dim, -1)  # (conv_dim, d_conv), a view of the (conv_dim, 1, d_conv) parameter
    K = w.shape[1]
    if conv_state.shape != (batch, conv_dim, K):
        raise ValueError(f"conv_state must be (batch, conv_dim, d_conv) = {(batch, conv_dim, K)}, "
                         f"got {tuple(conv_state.shape)}")
    if ssm_state.shape != (batch, nheads, headdim, d_state):
        raise ValueError(f"ssm_state must be (batch, nheads, headdim, d_state) = {(batch, nheads, headdim, d_state)},"
                         f" got {tuple(ssm_state.shape)}")
    if D.numel() not in (nheads, d_ssm) or not D.is_contiguous():
        raise ValueError(f"D must be contiguous (nheads,) or (nheads, headdim), got {tuple(D.shape)}")
    unlimited = (float(dt_limit[0]), float(dt_limit[1])) == (0.0, float("inf"))
    out = torch.empty(batch, d_ssm + d_mlp, device=zxbcdt.device, dtype=out_dtype or zxbcdt.dtype)
    BP, BN, KP = step_block_p(headdim, d_state), _pow2(d_state), triton.next_power_of_2(K)
    hpg = nheads // ngroups
    # PDL only with out_proj inside (the streaming block's kernels): _mamba2_step_finish waits as usual
    pdl = out_proj_weight is not None and _pdl(zxbcdt, pdl)
    with on_device(zxbcdt):
        _mamba2_step_ssm[(batch, nheads, triton.cdiv(headdim, BP))](
            zxbcdt, conv_state, ssm_state, w, conv_bias if conv_bias is not None else w, dt_bias, A_log, D, out,
            headdim, d_state, hpg, ngroups, d_mlp, float(dt_limit[0]), float(dt_limit[1]),
            *zxbcdt.stride(), *conv_state.stride(), *ssm_state.stride(), *w.stride(), out.stride(0),
            HAS_BIAS=conv_bias is not None, D_HAS_HDIM=D.numel() != nheads, DT_LIMIT=not unlimited,
            GATE=norm_weight is None, K=K, KP=KP, BP=BP, BN=BN, **_pdl_options(pdl), **launch_options(BP * BN))
        gs = d_ssm // ngroups
        if out_proj_weight is not None:
            n_out = out_proj_weight.shape[0]
            if out_proj_weight.shape != (n_out, d_ssm + d_mlp):
                raise ValueError(f"out_proj_weight must be (d_model, d_inner={d_ssm + d_mlp}), got "
                                 f"{tuple(out_proj_weight.shape)}")
            proj = torch.empty(batch, n_out, device=zxbcdt.device, dtype=out.dtype)
            BJ, BK = _gemv_tiles(n_out, gs)
            _mamba2_step_out[(batch, triton.cdiv(n_out, BJ) + 1)](  # + 1: the program that shifts B, C windows
                out, zxbcdt, conv_state, norm_weight if norm_weight is not None else w, out_proj_weight,
                out_proj_bias if out_proj_bias is not None else out_proj_weight, proj,
                d_state, gs, ngroups, d_mlp, n_out, eps,
                out.stride(0), *zxbcdt.stride(), *conv_state.stride(), *out_proj_weight.stride(), proj.stride(0),
                NORM=norm_weight is not None, NORM_BEFORE_GATE=norm_before_gate, HAS_BIAS=out_proj_bias is not None,
                K=K, KP=KP, BN=BN, BJ=BJ, BK=BK, ONE_PASS=BK >= gs, W_FIRST=BK >= gs and ngroups == 1 and d_mlp == 0,
                **_pdl_options(pdl), **launch_options(BJ * BK))
            return proj
        mlp_per_group = triton.cdiv(d_mlp, ngroups)
        BG = _pow2(gs) if norm_weight is not None else 0
        BM = _pow2(mlp_per_group) if d_mlp > 0 else 0
        _mamba2_step_finish[(batch, ngroups)](
            zxbcdt, conv_state, norm_weight if norm_weight is not None else w, out,
            d_state, gs, ngroups, d_mlp, mlp_per_group, eps,
            *zxbcdt.stride(), *conv_state.stride(), out.stride(0),
            NORM=norm_weight is not None, NORM_BEFORE_GATE=norm_before_gate, K=K, KP=KP, BN=BN, BG=BG, BM=BM,
            **launch_options(max(BG, BM, BN * KP)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Mamba-1
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _mamba_step_conv(
    xz_ptr, cs_ptr, cw_ptr, cb_ptr, out_ptr,
    d_inner,
    s_xz_b, s_xz_c, s_cs_b, s_cs_c, s_cs_k, s_cw_c, s_cw_k, s_out_b,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr,
):
    # grid (B, cdiv(d_inner, BD)): x = xz[:, :d_inner]; its conv window shifted in place, silu(conv) written out.
    bi, pid = tl.program_id(0), tl.program_id(1)
    ch = pid * BD + tl.arange(0, BD)
    mc = ch < d_inner
    x = _conv_step(xz_ptr + bi * s_xz_b, cs_ptr + bi * s_cs_b, cw_ptr, cb_ptr, ch, mc, s_xz_c, s_cs_c, s_cs_k,
                   s_cw_c, s_cw_k, HAS_BIAS, True, K, KP)
    tl.store(out_ptr + bi * s_out_b + ch, x.to(out_ptr.dtype.element_ty), mask=mc)


@triton.jit
def _mamba_step_ssm(
    x_ptr, z_ptr, dt_ptr, B_ptr, C_ptr, st_ptr, dtb_ptr, alog_ptr, D_ptr, out_ptr,
    d_inner, n,
    s_x_b, s_z_b, s_z_c, s_dt_b, s_dt_c, s_B_b, s_B_n, s_C_b, s_C_n, s_st_b, s_st_d, s_st_n, s_a_d, s_a_n,
    s_out_b,
    HAS_D: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):
    # grid (B, cdiv(d_inner, BD)): dt = softplus(dt + bias), the (BD, BN) state tile in place, y = state C + D x,
    # times silu(z). x (the conv output) has unit channel stride.
    bi, pid = tl.program_id(0), tl.program_id(1)
    dd = pid * BD + tl.arange(0, BD)
    md = dd < d_inner
    nn = tl.arange(0, BN)
    mn = nn < n
    ms = md[:, None] & mn[None, :]
    x = tl.load(x_ptr + bi * s_x_b + dd, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bi * s_dt_b + dd * s_dt_c, mask=md, other=0.0).to(tl.float32)
    dt = _softplus(dt + tl.load(dtb_ptr + dd, mask=md, other=0.0).to(tl.float32))
    A = -tl.exp(tl.load(alog_ptr + dd[:, None] * s_a_d + nn[None, :] * s_a_n, mask=ms, other=0.0).to(tl.float32))
    Bv = tl.load(B_ptr + bi * s_B_b + nn * s_B_n, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + bi * s_C_b + nn * s_C_n, mask=mn, other=0.0).to(tl.float32)
    st_ptrs = st_ptr + bi * s_st_b + dd[:, None] * s_st_d + nn[None, :] * s_st_n
    state = tl.load(st_ptrs, mask=ms, other=0.0).to(tl.float32)
    state = state * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(st_ptrs, state.to(st_ptr.dtype.element_ty), mask=ms)
    y = tl.sum(state * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + dd, mask=md, other=0.0).to(tl.float32) * x
    z = tl.load(z_ptr + bi * s_z_b + dd * s_z_c, mask=md, other=0.0).to(tl.float32)
    tl.store(out_ptr + bi * s_out_b + dd, (y * z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty), mask=md)


def _block_d(d_inner: int, d_state: int) -> int:
    if interpreting():
        return _pow2(d_inner)
    return min(_pow2(d_inner), max(16, _STATE_TILE // _pow2(d_state)))


def mamba_step_triton(
    xz: Tensor,
    conv_state: Tensor,
    ssm_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    dt_proj_bias: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    *,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """One step of :class:`condorbrain.ssm.mamba.Mamba` after in_proj, as its eager step: two launches around the
    x_proj and dt_proj matmuls (see the module docstring). The states advance in place; nothing is read back to
    the host (CUDA-graph safe).

    Args:
        xz: (B, 2 * d_inner), in_proj's output at the new step ([x, z]); any strides.
        conv_state: (B, d_inner, d_conv), any strides, updated in place. ssm_state: (B, d_inner, d_state), any
            strides, updated in place.
        conv_weight: (d_inner, 1, d_conv) or (d_inner, d_conv); conv_bias: (d_inner,) or None.
        x_proj_weight: (dt_rank + 2 * d_state, d_inner); dt_proj_weight: (d_inner, dt_rank); dt_proj_bias:
            (d_inner,). A_log: (d_inner, d_state). D: (d_inner,) contiguous, or None.
        out_dtype: dtype of the result and of the conv output fed to x_proj (the layer's activation dtype); None =
            xz's.

    Returns:
        (B, d_inner) contiguous: out_proj's input, (state C + D x) * silu(z).
    """
    batch = xz.shape[0]
    d_inner, d_state = A_log.shape
    dt_rank = dt_proj_weight.shape[1]
    if xz.dim() != 2 or xz.shape[1] != 2 * d_inner:
        raise ValueError(f"xz must be (batch, 2 * d_inner) = {(batch, 2 * d_inner)}, got {tuple(xz.shape)}")
    w = conv_weight.reshape(d_inner, -1)
    K = w.shape[1]
    if conv_state.shape != (batch, d_inner, K) or ssm_state.shape != (batch, d_inner, d_state):
        raise ValueError(f"conv_state must be {(batch, d_inner, K)} and ssm_state {(batch, d_inner, d_state)}, got "
                         f"{tuple(conv_state.shape)} and {tuple(ssm_state.shape)}")
    if D is not None and not D.is_contiguous():
        raise ValueError("D must be contiguous")
    dtype = out_dtype or xz.dtype
    x = torch.empty(batch, d_inner, device=xz.device, dtype=dtype)
    BD, BN, KP = _block_d(d_inner, d_state), _pow2(d_state), triton.next_power_of_2(K)
    grid = (batch, triton.cdiv(d_inner, BD))
    with on_device(xz):
        _mamba_step_conv[grid](
            xz, conv_state, w, conv_bias if conv_bias is not None else w, x, d_inner,
            *xz.stride(), *conv_state.stride(), *w.stride(), x.stride(0),
            HAS_BIAS=conv_bias is not None, K=K, KP=KP, BD=BD, **launch_options(BD * KP))
    x_db = F.linear(x, x_proj_weight)  # (B, dt_rank + 2 * d_state)
    dt = F.linear(x_db[:, :dt_rank], dt_proj_weight)  # (B, d_inner), bias added in the kernel
    B, C = x_db[:, dt_rank:dt_rank + d_state], x_db[:, dt_rank + d_state:]
    z = xz[:, d_inner:]
    out = torch.empty(batch, d_inner, device=xz.device, dtype=dtype)
    with on_device(xz):
        _mamba_step_ssm[grid](
            x, z, dt, B, C, ssm_state, dt_proj_bias, A_log, D if D is not None else dt_proj_bias, out,
            d_inner, d_state, x.stride(0), *z.stride(), *dt.stride(), *B.stride(), *C.stride(), *ssm_state.stride(),
            *A_log.stride(), out.stride(0),
            HAS_D=D is not None, BD=BD, BN=BN, **launch_options(BD * BN))
    return out
