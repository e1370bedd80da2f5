"""Mamba-2's SSD scan in Triton: ``ssd_scan_triton``, the CUDA fast path of :func:`condorbrain.ssm.ssd_scan`.

Same arguments, shapes and meaning as :func:`condorbrain.ssm.ssd_scan` (mamba_ssm's ``mamba_chunk_scan_combined``)::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T   (per head: state (p, n), scalar A),   y_t = h_t C_t + D x_t,
    out = y * silu(z),   dt = softplus(dt + dt_bias) when asked.

The chunked SSD algorithm (Mamba-2 paper, section 6). The sequence is cut into chunks of T steps; inside a chunk,
with a_l = sum_{r<=l} dt_r A (the cumulative log-decay, float32)::

    y_l = sum_{s<=l} (C_l . B_s) exp(a_l - a_s) dt_s x_s      (intra-chunk: a masked T x T matmul, "attention")
        + exp(a_l) S_c C_l                                     (the state S_c entering the chunk)
    S_{c+1} = exp(a_T) S_c + sum_s exp(a_T - a_s) dt_s x_s B_s^T

Forward kernels (one launch each):

1. ``_cumsum_fwd``:     dt <- softplus(dt + dt_bias), a = cumsum(dt A) per chunk, both float32 (b, h, c, T).
2. ``_state_fwd``:      the sequential part, a loop over chunks (not time steps) per head (or block of its state
   rows): each chunk's own end state (one tl.dot, kept in registers) folded into the carried state, the state
   entering each chunk stored, (b, c, h, p, n). The official code has two kernels here (``chunk_state``, then
   ``state_passing`` over the (b, c, h, p, n) float32 states it wrote): one round trip of p n floats per chunk
   and head less, and the last chunk's own end state is not formed at all unless the final state is wanted (the
   seed: L 120 is 2 chunks, so only chunk 0's).
3. ``_chunk_scan_fwd``: C.B^T, the decay mask, the intra-chunk matmul, + C.S_c, + D x, times silu(z) (the
   official code's separate ``bmm`` kernel is folded in here: C.B^T never goes to memory); on request (``ss``, one
   group) each step's sum of squares of its output too, a partial sum a program: the deferred gated norm of the
   fused layer's inference forward (``fused.mamba2_deferred_forward``). That forward, over two chunks with no
   initial state (the seed), skips kernel 2: kernel 3 forms chunk 1's term from chunk 0's inputs (``PREV``,
   ``_PREV_CHUNK_TERM``), so no state is stored or read.


Without an initial state, chunk 0's entering state is 0: it is neither stored nor read (the readers mask it out by
``first_state``). Forward saves only its inputs and the float32 dt and a (O(L) per head). Backward reruns kernel 2
for the entering states S_c (as the official code does: saving them would cost p n / T floats per step and head,
several times the activations; stored in bf16 where the matmuls that read them take bf16 operands) and
recomputes everything inside a chunk from them (no T x T tensor is stored), in
three more kernels:

1. ``_state_bwd``:      the reverse loop over chunks: dL/dS_c through the chunk's own outputs (sum_l exp(a_l) dy_l
   C_l^T, a tl.dot in registers) folded into the carried gradient; stores dL/d(chunk c's own end state), dL/da_T
   and dL/d(initial_states). The last chunk's end-state gradient is 0 without one for the final state: neither
   stored nor read (``last_g``).
2. ``_chunk_bwd_bc``:   dB, dC of one chunk (per block of 64 state columns), and what it has what it takes to form
   of dL/da: the carried state's part (exp(a_l) C_l . (dy S)_l, which needs dy S, formed here for dC anyway) and
   the intra-chunk decays' (row minus column sums of dL/d(C.B^T) * C.B^T, the first formed here for dB and dC).
3. ``_chunk_bwd_dx``:   the other per-step gradients of one chunk: dx, ddt, dz, partial dD and dA, and the reverse
   cumsum that turns dL/da into dL/d(dt A).

2. and 3. were one kernel, which held every tile of both halves at once: ptxas spilled 2-3 KB per thread at the seed
sizes (headdim 64, d_state 64, T 64) and, at d_state 128 (T 32), gave up on allocation (32 registers, ~15 KB of
stack: its -O1 still reaches 255 registers and 3 KB). Split, with 8 warps (_BIG_TILE_WARPS), neither spills at the
seed sizes. The price: both read x, dout (and z), dt, a, B, C and the end-state gradients G; the entering states
S are read by 3., and by 4. only with z (for y, which dz needs): the seed layer gates in its RMSNorm instead.

Heads of a group share B and C: the chunk kernels (forward 3., backward 2. and 3.) take up to
``HEADS_PER_PROGRAM`` heads of one group per program (the backward's: ``_BC_HEADS``, ``_DX_HEADS``), compute
C.B^T once for them (``_chunk_bwd_bc`` a partial one per state block) and, backward, sum their dB, dC in
registers; the partial sums left (one per program of a group and state block, none at the seed), and the
per-chunk partials of dA, dD and dt_bias, are reduced on the host.

Precision: inputs float32/bfloat16/float16 are loaded and computed in float32 (states, decays and sums always
float32, every tl.dot accumulates in float32). tl.dot's operands: bfloat16 for bfloat16 inputs (the products and
states that enter a matmul rounded to bf16, as the official kernels round them: the tensor cores' full rate, half
the registers per operand tile; ``CONDORBRAIN_SSD_DOT=tf32`` keeps them float32 at tf32, to compare), full float32
("ieee") for float32 inputs (tf32 if ``torch.backends.cuda.matmul.allow_tf32`` is set), tf32 for float16 inputs.
Output in x's dtype, final states float32.

Chunk length: the kernels hold whole T x T, T x n and p x n tiles and tl.dot needs every dimension >= 16, so T is
``chunk_size`` rounded up to a power of two and clamped to [16, 64] (32 for large states, see
:func:`kernel_chunk_size`). Like ``chunk_size`` everywhere, it changes memory and speed only, never the result.
p and n are padded (masked) to powers of two >= 16.

Checked: the tests run these kernels under the interpreter (and passed on an H200), and
``tests/ssm/test_triton_compile.py`` compiles every one for sm_90 at the seed config (ptxas register / spill /
shared-memory report printed there: no spills at the seed sizes; with z in the scan, ``_chunk_bwd_bc`` spills up to
64 B per thread at d_state 64, ``_chunk_bwd_dx`` 4 B). Timed on an H200 (2026-11-26, ``benchmarks/gpu_profile.py``,
the seed's training step, per layer; run 5 against run 3, which had four kernels where 2. and 1. above are):
``_chunk_bwd_dx`` 2.09 ms (2.30), ``_chunk_bwd_bc`` 1.06 (1.20), ``_chunk_scan_fwd`` 0.71 (0.77), the backward's
state pass 0.24 (0.97 + 0.34 for dL/dS_c), the forward's 0.11 a call (0.40 + 0.29): the SSD's share of the step
went from 167 to 104 ms. The official layer's ``_chunk_scan_chunk_state_bwd_dx_kernel`` alone takes 0.96 ms: since
run 5, dL/dM (a T x T matmul and two reductions per head) moved from ``_chunk_bwd_dx`` to ``_chunk_bwd_bc``, which
forms its first factor anyway (255 -> 223 registers, 16 B of spills -> none; 219 -> 232 registers), and
``_chunk_bwd_dx`` takes a head's channels in two blocks on 4 warps (_DX_CHANNEL_BLOCKS; one block on 8 warps timed
the same on an H100: ``benchmarks/results/h100-2026-11-26/NOTES.md``, run 6b).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra.cuda import libdevice

from condorbrain.ssm.triton import interpreting

__all__ = ["kernel_chunk_size", "launch_options", "on_device", "ssd_scan_triton"]

_MIN_BLOCK = 16  # tl.dot needs every dimension >= 16 (on GPUs and in the interpreter)
_MAX_CHUNK = 64  # a T x T float32 tile per program: 64 keeps it (and the T x n, T x p tiles) in registers
_STATE_PROGRAMS = 1024  # programs of _state_fwd / _state_bwd below which a head's state rows are split (_state_rows)
HEADS_PER_PROGRAM = 4  # heads of one group per program in the chunk-scan kernels (see _head_split)
_BWD_STATE_BLOCK = 64  # state columns per program of _chunk_bwd_bc (d_state 128: 2 programs, see that kernel)
# Heads per program of _chunk_bwd_bc: all of a group's (16 at the seed) where HEADS_PER_PROGRAM's 4 gave 4 programs
# a group: its intra-chunk dB, dC are two matmuls of the heads' summed dL/d(C.B^T) after its loop, so more heads a
# program means fewer of those and of the partial C.B^T, and with one program a group dB, dC are stored straight
# into their buffers (4 float32 partials a step summed on the host, ~0.5 GB a seed layer, otherwise). Its 8-warp
# block fills an SM's registers either way (one program an SM at a time). H100 run 6b: 4 heads 12.89 ms a seed
# layer's training step against 8.53 (benchmarks/gpu_sweep.py)
_BC_HEADS = 16
# Heads per program of _chunk_bwd_dx: all of a group's, so that C.B^T is formed once a group and channel block rather
# than once every 4 heads (the seed: 2 T x T x n matmuls a (sequence, chunk) where there were 8, of 72); its blocks
# are small enough (4 warps) for two an SM either way. H100 run 6b: 4 heads 8.48 ms a seed layer's training step
# against 8.53 / 8.44 (noise)
_DX_HEADS = 16
# Warps of the kernels that hold several (T, 64)-or-larger float32 tiles and T x T ones at once (_chunk_scan_fwd,
# _chunk_bwd_bc, _chunk_bwd_dx). ptxas' report at the seed sizes (sm_90, T 64, headdim 64, d_state 64): with 4
# warps each such tile is 32 registers per thread and they spill at 255 registers (_chunk_scan_fwd 24-72 B per
# thread, the two backward kernels 140-200 B); with 8 (16 per tile) none spills. 16 warps cap a thread at 128
# registers and spill again (0.3-3 KB). At T 32 (_MAX_CHUNK 32) on 4 warps none spills (_chunk_scan_fwd 220,
# _chunk_bwd_bc 252, _chunk_bwd_dx 164 registers at the seed): two blocks per SM where T 64 fits one; more chunks
# (4 at L 120), so more state passing. benchmarks/gpu_sweep.py tries it.
_BIG_TILE_WARPS = 8
# Software-pipelining stages of the loops over heads (Triton's default on sm_90 is 3; _chunk_bwd_bc runs with 2, which
# ptxas needs there to stay unspilled): fixed, tried side by side by benchmarks/gpu_sweep.py
_SCAN_FWD_STAGES = 3  # _chunk_scan_fwd
# The deferred gated norm's inference forward (the scan with ss) over two chunks with no initial state (the seed's
# lookback 120 at T 64) passes no state: _chunk_scan_fwd forms chunk 1's term from chunk 0's inputs (PREV) and
# _state_fwd is not run, nor its (b, c, h, p, n) entering states written and read back (134 MB each way a seed
# layer in bf16). H100 run 9d (benchmarks/gpu_sweep.py, 24 layers): 1.646 / 1.656 ms a layer's inference forward
# against 1.748 without; the seed's forward in a CUDA graph 39.06 ms against 41.50 in the same call (255 registers
# on 4 warps, 2 bytes spilled; on 8 warps 1.870). In training's forward (the plain scan, 8 warps pipelined: 183
# registers, one block an SM where two) it lost: 186.4 against 185.3 ms a step, so it is not used there.
_PREV_CHUNK_TERM = True
# _chunk_scan_fwd with z and the rows' sums of squares (the deferred gated norm's inference forward) has settings of
# its own, each timed on an H100 (benchmarks/results/h100-2026-11-26/, run 8; ms a layer of the seed's 24-layer
# inference forward, benchmarks/gpu_sweep.py):
# - not pipelined: on 2 stages this kernel took 21.9 ms a forward (128 registers, two 8-warp blocks an SM), on 1
#   13.7 (126), where the plain scan (no z, no sums; pipelined on 3) takes 8.5 and the gated norm it replaces 6.3.
#   Also slower: the z tile loaded with the head's x and state, before the matmuls (160 registers: 2.09 against
#   1.83), and the squares summed elementwise over the heads and reduced once (166: 2.13);
# - all of a group's heads a program (16 at the seed: C.B^T once a chunk, and ss one column, which the next norm reads),
#   on 4 warps (231 registers, no spill, two blocks an SM): 1.745 against 1.808 with 4 heads on 8 warps (4 heads on
#   4 warps 1.785, 16 on 8 1.770, 8 on 4 1.762, 2 on 8 1.883, 4 on 16 warps 2.266; 16 on 4 on 2 stages 1.772).
# The seed's forward in a CUDA graph: 41.23 ms (24,837 samples/s, run 8g), where 4 heads on 8 warps took 42.70 (8f)
# and run 7's tree, without the deferral, 44.07 (run 8's A/B)
_SCAN_SUMSQ_STAGES = 1
_SCAN_SUMSQ_HEADS = 16
_SCAN_SUMSQ_WARPS = 4
# _chunk_bwd_dx's stages. On 2 it faults (an illegal memory access, H100 runs 6b, 7, 8): compute-sanitizer (run 8b)
# names an out-of-bounds *shared*-memory read of 1,024 bytes inside the kernel, so the compiler's pipelined buffers,
# not an index of ours (tests/ssm/test_triton_bounds.py checks those at every setting); left at 3
_DX_STAGES = 3
_BC_STAGES = 2  # _chunk_bwd_bc
# dL/da_s's part through the intra-chunk decays has row sums and column sums of dL/dM (_chunk_bwd_bc). The column
# sums are dt_s x_s . (M^T dy)_s, which _chunk_bwd_dx forms for ddt anyway, in registers; in _chunk_bwd_bc (8 warps
# in two warpgroups) a column sum and its conversion cross the warps (sm_90, triton 3.6, a head in its loop: 556 ->
# 435 instructions, 12 -> 9 barriers with them moved). But dx's M^T dy takes M^T rounded to bf16, and that rounding
# (2^-9) does not cancel against the row sums bc forms in float32 (dA 4.5% off in the bf16 test): so with them moved,
# dx adds the residual M^T - bf16(M^T) as a second bf16 matmul (808 -> 897 instructions, 204 -> 247 registers, still
# two blocks an SM). Which is faster is a GPU's to say (benchmarks/gpu_sweep.py): off until timed
_COLSUM_IN_DX = False
# The backward's entering states and state gradients stored in bf16 when the matmuls take bf16 operands (see
# _backward; benchmarks/gpu_sweep.py tries float32)
_BWD_STATES_BF16 = True
# _chunk_bwd_dx: the head's p channels in _DX_CHANNEL_BLOCKS blocks (_dx_channel_blocks), on _DX_WARPS warps. ptxas at
# the seed sizes: 1 block on 8 warps 223 registers (one 8-warp block per SM: as run 5 timed it, with dL/dM still
# there, 255); 2 blocks of 32 on 8 warps 233 (no better: ptxas takes what the cap allows; capped at 128, 224 B of
# spills); 2 blocks on 4 warps 242 and no spills: two 4-warp blocks per SM, twice the programs, the T x T decay
# recomputed by both halves. H100 run 6b: 1 block on 8 warps 8.45 ms a seed layer's training step against 8.53 /
# 8.44 (noise), 2.04 its inference forward against 1.955
_DX_CHANNEL_BLOCKS = 2
_DX_WARPS = 4
# ptxas' register cap for _chunk_bwd_dx (None: its own choice). Capped at 168 it ran no faster in run 10a (7.76
# against 7.78 ms a layer, at 210 registers); this session's kernel takes 204 and fits 168 with no spill (sm_90,
# triton 3.6, the H100 image's: 813 instructions a head against 808; 3.9 spills 18 B), three 4-warp blocks an SM
# where two: for a GPU to decide
_DX_MAXNREG = None


def _pow2(n: int) -> int:
    return max(_MIN_BLOCK, triton.next_power_of_2(n))


def kernel_chunk_size(chunk_size: int, headdim: int = 64, d_state: int = 128) -> int:
    """The chunk length T the kernels use for a requested ``chunk_size``: a power of two in [16, 64], at most 32
    when a head's state (headdim x d_state, padded) exceeds 64 x 64 elements.

    Why 32 for large states: compiled for sm_90 with headdim 64 and d_state 128, the kernels hold (T, n) and
    (p, n) tiles of 2x the elements at T = 64: ``_chunk_scan_fwd`` then spills (~160 B per thread, none at 32), the
    backward a little; which T is faster is to be timed on a GPU."""
    cap = _MAX_CHUNK if _pow2(headdim) * _pow2(d_state) <= 4096 else _MAX_CHUNK // 2
    return min(cap, _pow2(chunk_size))


def on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``t``'s GPU (Triton launches on the current CUDA device); nothing for CPU tensors, so the
    interpreter never touches a driver. Also says how to fix a call that cannot run here."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    if not interpreting():
        raise RuntimeError(f"the Triton kernels need CUDA tensors (got {t.device.type}), or TRITON_INTERPRET=1 set "
                           "before triton is imported to run them on the CPU; condorbrain.ssm.ssd_scan and "
                           "Mamba2 pick the CPU path themselves")
    return contextlib.nullcontext()


def launch_options(*tile: int, num_warps: int | None = None, num_stages: int | None = None,
                   maxnreg: int | None = None) -> dict:
    """Launch options from the tile size: a fixed choice (no autotuner, so nothing needs a driver); one warp under
    the interpreter. ``num_warps`` / ``num_stages`` override the choice for a kernel tuned on ptxas' report (see
    _BIG_TILE_WARPS); ``maxnreg`` caps ptxas' registers a thread (compiled only). FP fusion (FMA) is named
    explicitly: Triton 3.9 warns when it is left to its default, and the tests turn warnings into errors."""
    size = 1
    for t in tile:
        size *= t
    if interpreting():
        num_warps = 1
    elif num_warps is None:
        num_warps = 8 if size >= 8192 else 4
    options = {"num_warps": num_warps, "enable_fp_fusion": True}
    if num_stages is not None and not interpreting():
        options["num_stages"] = num_stages
    if maxnreg is not None and not interpreting():
        options["maxnreg"] = maxnreg
    return options


@triton.jit
def _mm(a, b, BF16_DOT: tl.constexpr, PREC: tl.constexpr):
    # a @ b, float32 accumulation. BF16_DOT (see _dot_options): 1 = operands rounded to bfloat16, a bf16 matmul;
    # 2 = the same rounding, then a float32 matmul (under the interpreter, whose bf16 tl.dot multiplies the raw
    # bits: 1e10 off); 0 = float32 operands at PREC
    if BF16_DOT == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif BF16_DOT == 2:
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


# ----------------------------------------------------------------------------------------------------------------
# Forward kernels
# ----------------------------------------------------------------------------------------------------------------

# Compiled for a GPU, not run by Triton's interpreter (which has no libdevice): fixed when triton is imported
_COMPILED: tl.constexpr = tl.constexpr(not interpreting())
_LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def sigmoid(x):
    # 1 / (1 + exp(-x)): exp2 of x scaled by -log2(e), and compiled, the approximate division (div.approx: one SFU
    # reciprocal and a multiply, 2 ulp) where `/` is div.full's five instructions: on sm_90 5 instructions an
    # element where tl.sigmoid takes 11 (its tl.exp adds the scaling and a non-flushing ex2's range fix-up;
    # benchmarks/sass_counts.py). An exponential below 2^-126 is flushed to 0, where 1 + it rounds to 1 either way;
    # above 2^126 the division gives 0, as the sigmoid rounds to there
    e = 1.0 + tl.exp2(-x * _LOG2E)
    if _COMPILED:
        return libdevice.fast_dividef(1.0, e)
    else:
        return 1.0 / e


@triton.jit
def _log2(x):
    # log2(x) for x > 0: compiled, lg2.approx (one SFU instruction; libdevice's fast_log2f) where tl.log2 is a
    # precise software log2f, ~20 instructions an element on sm_90 (benchmarks/sass_counts.py)
    if _COMPILED:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def _decay(a, causal):
    # (T, T): exp(a_l - a_s) where causal[l, s] (l >= s), else 0 (-inf before the exponential: exp(a_l - a_s) for
    # s > l would overflow, as a decreases with l). As exp2 of the differences scaled by log2(e) once per step: on
    # sm_90 tl.exp2 is one SFU instruction an element, where tl.exp is four more (the scaling and the range fix-up of
    # a non-flushing ex2; benchmarks/sass_counts.py), in kernels whose loops over heads are latency-bound. Decays
    # below 2^-126 come out 0 (flushed) rather than denormal: they meet bf16 or float32 operands of ~1 in a sum
    a2 = a * _LOG2E
    return tl.exp2(tl.where(causal, a2[:, None] - a2[None, :], float("-inf")))


@triton.jit
def _exp2_below(rows, cols):
    # (T, T): exp2(rows_l - cols_s), as _decay's but with no mask: the exponent is capped at 64 instead, so that above
    # the diagonal (s > l, where a_l - a_s >= 0 grows with the distance) it stays finite. For a caller whose other
    # factor is 0 there (C.B^T masked once a program, outside its loop over heads), which then forms no mask per
    # head: the causal mask was 27 of the forward scan's ~440 instructions a head, recomputed each head (sm_90,
    # benchmarks/sass_counts.py). Below the diagonal the exponent is <= 0 for dt >= 0 (and, with dt < 0, which the
    # scan allows without softplus, below 64 for any output float32 holds: 2^64 is 1.8e19)
    return tl.exp2(tl.minimum(rows[:, None] - cols[None, :], 64.0))


@triton.jit
def _cumsum_fwd(
    dt_ptr, A_ptr, bias_ptr, dtp_ptr, a_ptr,
    L, nh, nchunks,
    s_dt_b, s_dt_l, s_dt_h,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr, T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # grid (b, c, cdiv(h, BLOCK_H)); tile (T, BLOCK_H). Out: dtp, a as (b, h, c, T) float32. A_IS_LOG: A_ptr holds
    # A_log and A = -exp(A_log) is formed here (the layer's forward: two elementwise launches a layer fewer)
    pid_b, pid_c, pid_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = tl.arange(0, T)
    hh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    pos = pid_c * T + t
    m = (pos[:, None] < L) & (hh[None, :] < nh)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + pos[:, None] * s_dt_l + hh[None, :] * s_dt_h, mask=m, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + hh, mask=hh < nh, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    dt = tl.where(m, dt, 0.0)  # steps past L: dt = 0, so no decay and no update (the last state is kept)
    A = tl.load(A_ptr + hh, mask=hh < nh, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    a = tl.cumsum(dt * A[None, :], axis=0)
    out = ((pid_b * nh + hh[None, :]) * nchunks + pid_c) * T + t[:, None]
    mo = hh[None, :] < nh
    tl.store(dtp_ptr + out, dt, mask=mo)
    tl.store(a_ptr + out, a, mask=mo)


@triton.jit
def _load_tile(ptr, cols, pos, mrow, mcol, s_l, s_c):
    # A (R, BC) tile of an SSD input (x, B or C) as float32: rows = steps pos (masked by mrow), columns cols (mcol),
    # at ptr + pos * s_l + cols * s_c. (Applying the layer's causal conv to what is loaded here instead, so that the
    # conv's output is never written, did its work twice in latency-bound kernels: 9.64 against 8.53 ms a seed
    # layer's training step and 3.15 against 1.96 its inference forward on an H100, run 6; removed.)
    return tl.load(ptr + pos[:, None] * s_l + cols[None, :] * s_c, mask=mrow[:, None] & mcol[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _conv_pre(
    x_ptr, w_ptr, bias_ptr, bi, t, cc, mc, L, s_x_b, s_x_l, s_x_c, s_w_c, s_w_k,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
):
    # The layer's causal depthwise conv before its activation on a (BL, BC) tile of row bi (steps t, channels cc
    # masked by mc), float32: bias[c] + sum_k w[c, k] x[t - K + 1 + k, c] (steps before 0 and from L on read as 0).
    # The fused layer's conv kernels' (condorbrain.ssm.triton.fused), and the backward kernels' below where they
    # apply the conv's SiLU derivative to what they store (DSILU)
    acc = tl.zeros([BL, BC], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cc, mask=mc, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        src = t - (K - 1) + k
        m = (src[:, None] >= 0) & (src[:, None] < L) & mc[None, :]
        xv = tl.load(x_ptr + bi * s_x_b + src[:, None] * s_x_l + cc[None, :] * s_x_c, mask=m, other=0.0)
        wk = tl.load(w_ptr + cc * s_w_c + k * s_w_k, mask=mc, other=0.0).to(tl.float32)
        acc += xv.to(tl.float32) * wk[None, :]
    return acc


@triton.jit
def _dsilu(pre):
    # silu'(pre) = s (1 + pre (1 - s)), s = sigmoid(pre): what a gradient w.r.t. silu(pre) is multiplied by
    s = sigmoid(pre)
    return s * (1.0 + pre * (1.0 - s))


@triton.jit
def _dsilu_store(g, out_ptr, x_ptr, w_ptr, bias_ptr, bi, t, cc, mc, L, s_x_b, s_x_l, s_x_c, s_w_c, s_w_k,
                 HAS_BIAS: tl.constexpr, K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    # g (BL, BC), a gradient w.r.t. silu(pre) of the conv's channels cc (pre: _conv_pre's, from the conv's input
    # x_ptr), rounded to out_ptr's dtype (where it would have been stored), times silu'(pre): the gradient w.r.t. pre,
    # float32, for the caller to store. The same operations, in the same order, as storing g and running the conv's
    # gate kernel on it (fused._conv_bwd_gate), so the result is the same. Rounded first, the product also stays in
    # the store's layout: multiplied in float32, the compiler converted silu'(pre) to the matmul's layout and the
    # product back (sm_90: 4 barriers more a head in _chunk_bwd_dx)
    pre = _conv_pre(x_ptr, w_ptr, bias_ptr, bi, t, cc, mc, L, s_x_b, s_x_l, s_x_c, s_w_c, s_w_k, HAS_BIAS, K, BL, BC)
    return g.to(out_ptr.dtype.element_ty).to(tl.float32) * _dsilu(pre)


@triton.jit
def _state_fwd(
    x_ptr, B_ptr, dtp_ptr, a_ptr, h0_ptr, enter_ptr, final_ptr,
    L, nh, nchunks, nrun, hpg, p, n,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    HAS_H0: tl.constexpr, HAS_FINAL: tl.constexpr, T: tl.constexpr, BPS: tl.constexpr, BN: tl.constexpr,
    PREC: tl.constexpr, BF16_DOT: tl.constexpr,
):
    # grid (b, h, cdiv(p, BPS)): the states entering the chunks, rows ip of a head's (p, n) state. A loop over
    # the first nrun chunks (all, or all but the last when its end state, the final one, is not wanted):
    #   S_{c+1} = exp(a_T) S_c + sum_s exp(a_T - a_s) dt_s x_s B_s^T,   S_0 = h0 (or 0),
    # each chunk's own end state a tl.dot here, never stored. enter[c] = S_c for c >= 1, and for c = 0 only with
    # an initial state: without one it is zero, which the readers know (first_state, see _forward), so not stored.
    bi, hd, pid = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = hd // hpg
    t = tl.arange(0, T)
    ip, jn = pid * BPS + tl.arange(0, BPS), tl.arange(0, BN)
    mpn = (ip[:, None] < p) & (jn[None, :] < n)
    soff = ip[:, None] * n + jn[None, :]  # within one (p, n) state
    if HAS_H0:
        s = tl.load(h0_ptr + (bi * nh + hd) * p * n + soff, mask=mpn, other=0.0).to(tl.float32)
        tl.store(enter_ptr + (bi * nchunks * nh + hd) * p * n + soff, s.to(enter_ptr.dtype.element_ty), mask=mpn)
    else:
        s = tl.zeros([BPS, BN], dtype=tl.float32)
    for ci in range(nrun):
        pos = ci * T + t
        mt = pos < L
        x = _load_tile(x_ptr + bi * s_x_b + hd * s_x_h, ip, pos, mt, ip < p, s_x_l, s_x_p)  # (T, BPS)
        Bm = _load_tile(B_ptr + bi * s_B_b + g * s_B_g, jn, pos, mt, jn < n, s_B_l, s_B_n)  # (T, BN)
        base = ((bi * nh + hd) * nchunks + ci) * T
        a = tl.load(a_ptr + base + t)
        a_end = tl.load(a_ptr + base + T - 1)
        w = tl.exp(a_end - a) * tl.load(dtp_ptr + base + t)  # (T,)
        s = tl.exp(a_end) * s + _mm(tl.trans(x * w[:, None]), Bm, BF16_DOT, PREC)  # (BPS, BN)
        # the carried sum stays float32. The chunk's condition as a row limit (p, or 0), here and in the kernels
        # below: Triton's interpreter rejects a tensor mask and-ed with a Python bool
        tl.store(enter_ptr + ((bi * nchunks + ci + 1) * nh + hd) * p * n + soff, s.to(enter_ptr.dtype.element_ty),
                 mask=(ip[:, None] < p * (ci + 1 < nchunks)) & (jn[None, :] < n))
    if HAS_FINAL:
        tl.store(final_ptr + (bi * nh + hd) * p * n + soff, s, mask=mpn)


@triton.jit
def _chunk_scan_fwd(
    x_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dtp_ptr, a_ptr, enter_ptr, dout_ptr, out_ptr, ss_ptr,
    L, nh, nchunks, hpg, hpp, nsplit, p, n, first_state,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_D_h, s_D_p,
    s_d_b, s_d_l, s_d_h, s_d_p,
    s_o_b, s_o_l, s_o_h, s_o_p,
    HAS_D: tl.constexpr, D_SCALAR: tl.constexpr, HAS_Z: tl.constexpr, DZ: tl.constexpr, DT_IN_DECAY: tl.constexpr,
    SUMSQ: tl.constexpr, PREV: tl.constexpr, T: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    PREC: tl.constexpr, BF16_DOT: tl.constexpr,
):
    # grid (b * c, g, cdiv(hpg, hpp)): the outputs (T, p) of one chunk for up to hpp heads of one group, which
    # share B and C, so C.B^T is computed once for all of them. With DZ (backward, z given): the gate's gradient
    # dz = dout y silu'(z) in place of the output y silu(z) (dout strides s_d_*; unused otherwise). The entering
    # state S_c is read from chunk first_state on (before it, it is 0 and was not stored: see _state_fwd). (The
    # layer's gated RMSNorm inside this kernel, a program over a group's heads and a second pass over its stored
    # outputs, was slower than _rmsnorm_fwd after it: 2.27 against 1.96 ms a seed layer's inference forward on an
    # H100, run 6; removed.) With SUMSQ (forward): also the sum over this program's heads and channels of the
    # squared outputs, per step, into ss (b * L, nsplit) float32 at column pid_s (one group: the deferred gated
    # norm's partial sums, see condorbrain.ssm.pending). With PREV (two chunks, no initial state: see _forward),
    # chunk 1's entering state is not read but its term formed here from chunk 0's inputs, with no state between:
    #   y_l += exp(a_l) sum_s (C_l . B0_s) w_s x0_s,   w_s = dt0_s exp(a0_T - a0_s)   (s over chunk 0),
    # C.B0^T once a program, then per head a (T, T) x (T, p) matmul where the state's term was a (T, n) x (n, p) one.
    pid_bc, g, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bi, ci = pid_bc // nchunks, pid_bc % nchunks
    t = tl.arange(0, T)
    ip, jn = tl.arange(0, BP), tl.arange(0, BN)
    pos = ci * T + t
    mt = pos < L
    mtp = mt[:, None] & (ip[None, :] < p)
    Bm = _load_tile(B_ptr + bi * s_B_b + g * s_B_g, jn, pos, mt, jn < n, s_B_l, s_B_n)  # (T, BN)
    Cm = _load_tile(C_ptr + bi * s_C_b + g * s_C_g, jn, pos, mt, jn < n, s_C_l, s_C_n)  # (T, BN)
    # (T, T), 0 above the diagonal (s > l): the decays below then need no mask (_exp2_below)
    CB = tl.where(t[:, None] >= t[None, :], _mm(Cm, tl.trans(Bm), BF16_DOT, PREC), 0.0)
    if PREV:  # chunk 0's steps (all masked in chunk 0 itself, whose programs never use them)
        pos0 = pos - T
        m0 = pos0 >= 0
        B0 = _load_tile(B_ptr + bi * s_B_b + g * s_B_g, jn, pos0, m0, jn < n, s_B_l, s_B_n)  # (T, BN)
        CB0 = _mm(Cm, tl.trans(B0), BF16_DOT, PREC)  # (T, T): every step of chunk 0 precedes every one of chunk 1
    h_lo = g * hpg + pid_s * hpp
    h_hi = tl.minimum(h_lo + hpp, (g + 1) * hpg)
    if SUMSQ:
        sq = tl.zeros([T], dtype=tl.float32)
    for hd in range(h_lo, h_hi):
        base = ((bi * nh + hd) * nchunks + ci) * T
        dt = tl.load(dtp_ptr + base + t)
        a = tl.load(a_ptr + base + t)
        # the head's other loads issued first, in their own dtypes, so that they are in flight while the
        # intra-chunk matmul runs (a program takes its heads one after another, one block of 8 warps per SM):
        # the carried state (0 in chunk 0 without an initial state: not stored, so masked out), or with PREV
        # chunk 0's x (masked out in chunk 0)
        if PREV:
            x0 = _load_tile(x_ptr + bi * s_x_b + hd * s_x_h, ip, pos0, m0, ip < p, s_x_l, s_x_p)  # (T, BP)
        else:
            S = tl.load(enter_ptr + (((bi * nchunks + ci) * nh + hd) * p + ip[:, None]) * n + jn[None, :],
                        mask=(ip[:, None] < p * (ci >= first_state)) & (jn[None, :] < n), other=0.0)  # (BP, BN)
        x = _load_tile(x_ptr + bi * s_x_b + hd * s_x_h, ip, pos, mt, ip < p, s_x_l, s_x_p)  # (T, BP)
        a2 = a * _LOG2E
        # with dt in the exponent and no mask per head, the seed's scan compiles to 120 registers a thread where it
        # took 182 (sm_90): two 8-warp blocks an SM where one, and 440 instructions a head where 495
        if DT_IN_DECAY:  # dt > 0 (softplus): dt_s exp(a_l - a_s) = exp2(a2_l - (a2_s - log2 dt_s)), x as it is
            # (dt floored at 1e-30: the padding past L holds 0, and a weight of 2^-100 meets its x = 0)
            y = _mm(CB * _exp2_below(a2, a2 - _log2(tl.maximum(dt, 1e-30))), x, BF16_DOT, PREC)  # (T, BP)
        else:
            y = _mm(CB * _exp2_below(a2, a2), x * dt[:, None], BF16_DOT, PREC)  # (T, BP)
        if PREV:
            if ci >= 1:  # chunk 0's term (its dt and decay sums: the same head's previous T of each buffer)
                a0 = tl.load(a_ptr + base - T + t)
                w0 = tl.exp(tl.load(a_ptr + base - 1) - a0) * tl.load(dtp_ptr + base - T + t)  # (T,)
                y += tl.exp(a)[:, None] * _mm(CB0 * w0[None, :], x0, BF16_DOT, PREC)
        elif ci >= first_state:  # the carried state's term (no matmul in chunk 0 without an initial state)
            y += tl.exp(a)[:, None] * _mm(Cm, tl.trans(S.to(tl.float32)), BF16_DOT, PREC)
        if HAS_D:
            if D_SCALAR:  # one D a head (stride 0 over the channels): one load, not p
                y += x * tl.load(D_ptr + hd * s_D_h).to(tl.float32)
            else:
                y += x * tl.load(D_ptr + hd * s_D_h + ip * s_D_p, mask=ip < p, other=0.0).to(tl.float32)[None, :]
        if HAS_Z:
            z = tl.load(z_ptr + bi * s_z_b + pos[:, None] * s_z_l + hd * s_z_h + ip[None, :] * s_z_p,
                        mask=mtp, other=0.0).to(tl.float32)
            if DZ:
                dout = tl.load(dout_ptr + bi * s_d_b + pos[:, None] * s_d_l + hd * s_d_h + ip[None, :] * s_d_p,
                               mask=mtp, other=0.0).to(tl.float32)
                sz = sigmoid(z)
                y = dout * y * sz * (1.0 + z * (1.0 - sz))
            else:
                y = y * z * sigmoid(z)
        tl.store(out_ptr + bi * s_o_b + pos[:, None] * s_o_l + hd * s_o_h + ip[None, :] * s_o_p,
                 y.to(out_ptr.dtype.element_ty), mask=mtp)
        if SUMSQ:  # of the float32 values (the padded steps and channels are 0: x, z and D masked to 0)
            sq += tl.sum(y * y, axis=1)
    if SUMSQ:
        tl.store(ss_ptr + (bi * L + pos) * nsplit + pid_s, sq, mask=mt)


# ----------------------------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _state_bwd(
    dout_ptr, C_ptr, z_ptr, a_ptr, enter_ptr, dfinal_ptr, dst_ptr, dalast_ptr, dh0_ptr,
    L, nh, nchunks, hpg, p, n, first_state, last_g, dS_lo,
    s_d_b, s_d_l, s_d_h, s_d_p,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_DH0: tl.constexpr, T: tl.constexpr, BPS: tl.constexpr,
    BN: tl.constexpr, PREC: tl.constexpr,
    BF16_DOT: tl.constexpr,
):
    # grid (b, h, nblocks = cdiv(p, BPS)): the reverse of _state_fwd, rows ip of a head's state. gS = dL/dS_{c+1}
    # (the state after chunk c) while at chunk c, from the final state's gradient (or 0):
    #   dst[c] = gS                                  (dL/d(chunk c's own end state); stored for c < last_g only:
    #                                                 the last chunk's is 0 without dfinal, and its readers know)
    #   dalast[c] = exp(a_T) sum(gS * S_c)           (dL/da_T, partial over the row blocks; S_c = enter[c])
    #   gS <- exp(a_T) gS + sum_l exp(a_l) dy_l C_l^T  (+ dL/dS_c through chunk c's outputs: a tl.dot here,
    #                                                 skipped at c = 0 unless dL/dh0 is wanted)
    bi, hd, pid = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = hd // hpg
    t = tl.arange(0, T)
    ip, jn = pid * BPS + tl.arange(0, BPS), tl.arange(0, BN)
    mpn = (ip[:, None] < p) & (jn[None, :] < n)
    soff = ip[:, None] * n + jn[None, :]
    if HAS_DFINAL:
        gS = tl.load(dfinal_ptr + (bi * nh + hd) * p * n + soff, mask=mpn, other=0.0).to(tl.float32)
    else:
        gS = tl.zeros([BPS, BN], dtype=tl.float32)
    for i in range(nchunks):
        ci = nchunks - 1 - i
        off = ((bi * nchunks + ci) * nh + hd) * p * n + soff
        tl.store(dst_ptr + off, gS.to(dst_ptr.dtype.element_ty),
                 mask=(ip[:, None] < p * (ci < last_g)) & (jn[None, :] < n))
        base = ((bi * nh + hd) * nchunks + ci) * T
        decay = tl.exp(tl.load(a_ptr + base + T - 1))
        # S_c is 0 before the first stored state, gS is 0 at the last chunk without dfinal: nothing to load
        S = tl.load(enter_ptr + off, mask=(ip[:, None] < p * ((ci >= first_state) & (ci < last_g))) & (jn[None, :] < n),
                    other=0.0).to(tl.float32)
        tl.store(dalast_ptr + ((bi * nh + hd) * nchunks + ci) * tl.num_programs(2) + pid, decay * tl.sum(gS * S))
        if ci >= dS_lo:
            pos = ci * T + t
            mt = pos < L
            mtp = mt[:, None] & (ip[None, :] < p)
            dy = tl.load(dout_ptr + bi * s_d_b + pos[:, None] * s_d_l + hd * s_d_h + ip[None, :] * s_d_p,
                         mask=mtp, other=0.0).to(tl.float32)  # (T, BPS)
            if HAS_Z:
                z = tl.load(z_ptr + bi * s_z_b + pos[:, None] * s_z_l + hd * s_z_h + ip[None, :] * s_z_p,
                            mask=mtp, other=0.0).to(tl.float32)
                dy = dy * z * sigmoid(z)
            Cm = _load_tile(C_ptr + bi * s_C_b + g * s_C_g, jn, pos, mt, jn < n, s_C_l, s_C_n)  # (T, BN)
            a = tl.load(a_ptr + base + t)
            gS = decay * gS + _mm(tl.trans(dy * tl.exp(a)[:, None]), Cm, BF16_DOT, PREC)  # (BPS, BN)
    if HAS_DH0:
        tl.store(dh0_ptr + (bi * nh + hd) * p * n + soff, gS, mask=mpn)


@triton.jit
def _chunk_bwd_bc(
    x_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, dtp_ptr, a_ptr, enter_ptr, dst_ptr,
    dB_ptr, dC_ptr, daS_ptr, ci_ptr, cw_ptr, cb_ptr,
    L, nh, ng, nchunks, hpg, hpp, p, n, first_state, last_g,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_d_b, s_d_l, s_d_h, s_d_p,
    s_o_b, s_o_l, s_o_g, s_o_s, s_o_n,
    s_ci_b, s_ci_l, s_ci_c, s_cw_c, s_cw_k,
    HAS_Z: tl.constexpr, T: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
    BF16_DOT: tl.constexpr, COLSUM_DX: tl.constexpr, DSILU: tl.constexpr, HAS_CB: tl.constexpr, K: tl.constexpr,
):
    # grid (b * c, g, nsplit * NB): dB, dC of one chunk for up to hpp heads of one group and one block of BN state
    # columns (NB = cdiv(n, BN) blocks), summed over those heads in registers: (b, L, g, nsplit, n) float32 partial
    # sums (strides s_o_*, the same for dB and dC: with nsplit 1, e.g. columns of the fused layer's dxBC). Also
    # daS (b, h, c, NB, T): the parts of dL/da_l this kernel has what it takes to form, partial over the state
    # blocks (_chunk_bwd_dx sums the blocks): through the carried state, exp(a_l) sum_n C_ln (dy S)_ln (which
    # needs dy S, formed here for dC anyway), and through the intra-chunk decays exp(a_l - a_s), the row sums
    # minus the column sums of dL/dM = dL/d(C.B^T) * C.B^T (M the masked decay times C.B^T), where this block's
    # columns give a partial C.B^T (one T x T matmul a program, shared by its heads; dL/d(C.B^T) =
    # (dy . (dt x)^T) * decay, formed here for dB and dC anyway). The heads share B and C, so the intra-chunk dC =
    # sum_h dCB_h B and dB = sum_h dCB_h^T C are two matmuls of the heads' sum after the loop (16 heads a program at
    # the seed: 32 matmuls become 2; the sum is rounded to the operands' dtype once, not each term). S and G are
    # read only where _state_fwd and _state_bwd stored them (chunks >= first_state, < last_g): elsewhere they are 0.
    pid_bc, g, pid_sn = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bi, ci = pid_bc // nchunks, pid_bc % nchunks
    nblk = tl.cdiv(n, BN)
    pid_s, pid_n = pid_sn // nblk, pid_sn % nblk
    t = tl.arange(0, T)
    ip, jn = tl.arange(0, BP), pid_n * BN + tl.arange(0, BN)
    pos = ci * T + t
    mt = pos < L
    mtp = mt[:, None] & (ip[None, :] < p)
    mtn = mt[:, None] & (jn[None, :] < n)
    Bm = _load_tile(B_ptr + bi * s_B_b + g * s_B_g, jn, pos, mt, jn < n, s_B_l, s_B_n)  # (T, BN)
    Cm = _load_tile(C_ptr + bi * s_C_b + g * s_C_g, jn, pos, mt, jn < n, s_C_l, s_C_n)  # (T, BN)
    causal = t[:, None] >= t[None, :]
    CBp = _mm(Cm, tl.trans(Bm), BF16_DOT, PREC)  # (T, T): this block's columns' part of C.B^T
    dB = tl.zeros([T, BN], dtype=tl.float32)
    dC = tl.zeros([T, BN], dtype=tl.float32)
    dCBs = tl.zeros([T, T], dtype=tl.float32)  # dL/d(C.B^T) summed over the heads
    h_lo = g * hpg + pid_s * hpp
    for hd in range(h_lo, tl.minimum(h_lo + hpp, (g + 1) * hpg)):
        # x in its own dtype (it enters matmuls only): with bf16 operands the compiler then feeds them from the
        # software pipeline's shared-memory buffer, also transposed, where a float32 copy went to registers and back
        x = tl.load(x_ptr + bi * s_x_b + pos[:, None] * s_x_l + hd * s_x_h + ip[None, :] * s_x_p, mask=mtp,
                    other=0.0)  # (T, BP)
        if not BF16_DOT:
            x = x.to(tl.float32)
        dy = tl.load(dout_ptr + bi * s_d_b + pos[:, None] * s_d_l + hd * s_d_h + ip[None, :] * s_d_p,
                     mask=mtp, other=0.0).to(tl.float32)  # (T, BP)
        if HAS_Z:
            z = tl.load(z_ptr + bi * s_z_b + pos[:, None] * s_z_l + hd * s_z_h + ip[None, :] * s_z_p,
                        mask=mtp, other=0.0).to(tl.float32)
            dy = dy * z * sigmoid(z)  # dL/dy before the gate
        base = ((bi * nh + hd) * nchunks + ci) * T
        dt = tl.load(dtp_ptr + base + t)
        a = tl.load(a_ptr + base + t)
        a_end = tl.load(a_ptr + base + T - 1)
        ea = tl.exp(a)  # (T,)
        soff = (((bi * nchunks + ci) * nh + hd) * p + ip[:, None]) * n + jn[None, :]
        # the entering state and the end state's gradient loaded now, in their own dtypes, to be in flight during
        # the intra-chunk part (masked out where not stored: S before first_state, G from last_g on)
        S = tl.load(enter_ptr + soff, mask=(ip[:, None] < p * (ci >= first_state)) & (jn[None, :] < n), other=0.0)
        G = tl.load(dst_ptr + soff, mask=(ip[:, None] < p * (ci < last_g)) & (jn[None, :] < n), other=0.0)
        # intra-chunk: y_l = sum_s (C_l . B_s) exp(a_l - a_s) dt_s x_s
        decay = _decay(a, causal)  # (T, T)
        # dt scales dCB's columns after the matmul, not x's rows before it: x enters the matmul as loaded (627 -> 577
        # instructions a head in the loop, triton 3.6 for sm_90; x, S and G in their own dtypes and the row sums in
        # one reduction: 577 -> 556, 17 -> 12 barriers)
        dCB = _mm(dy, tl.trans(x), BF16_DOT, PREC) * (decay * dt[None, :])  # (T, T)
        dCBs += dCB  # the heads share B and C: their intra-chunk dC, dB are two matmuls of the sum, after the loop
        dMM = dCB * CBp  # (T, T): dL/dM[l, s], this block's part
        daS = tl.zeros_like(ea)
        if not COLSUM_DX:  # through exp(a_l - a_s): minus its column sums (else _chunk_bwd_dx's: _COLSUM_IN_DX)
            daS -= tl.sum(dMM, axis=0)
        # carried state: y_l += exp(a_l) S C_l (S is 0 in chunk 0 without an initial state: not stored)
        if ci >= first_state:
            dyS = ea[:, None] * _mm(dy, S, BF16_DOT, PREC)  # (T, BN); S (BP, BN) entering state
            dC += dyS
            if BN == T:  # its row sums with dL/dM's, in one reduction
                dMM += Cm * dyS
            else:
                daS += tl.sum(Cm * dyS, axis=1)
        daS += tl.sum(dMM, axis=1)  # plus dL/dM's row sums
        tl.store(daS_ptr + (((bi * nh + hd) * nchunks + ci) * nblk + pid_n) * T + t, daS)
        # this chunk's end state: sum_s exp(a_T - a_s) dt_s x_s B_s^T, upstream gradient G (none in the last chunk
        # without one for the final state: not stored)
        if ci < last_g:  # G (BP, BN)
            w = tl.exp(a_end - a) * dt
            dB += w[:, None] * _mm(x, G, BF16_DOT, PREC)
    dC += _mm(dCBs, Bm, BF16_DOT, PREC)  # sum_h dCB_h B = (sum_h dCB_h) B: one matmul, not one a head
    dB += _mm(tl.trans(dCBs), Cm, BF16_DOT, PREC)
    if DSILU:  # B, C are silu(pre) of the conv's channels [nh p + g n + jn], [nh p + ng n + g n + jn]: times
        # silu'(pre), after the rounding to the stored dtype, as the conv's gate kernel would take them (_dsilu_store)
        cB = nh * p + g * n + jn
        dB = _dsilu_store(dB, dB_ptr, ci_ptr, cw_ptr, cb_ptr, bi, pos, cB, jn < n, L, s_ci_b, s_ci_l, s_ci_c,
                          s_cw_c, s_cw_k, HAS_CB, K, T, BN)
        dC = _dsilu_store(dC, dC_ptr, ci_ptr, cw_ptr, cb_ptr, bi, pos, cB + ng * n, jn < n, L, s_ci_b, s_ci_l,
                          s_ci_c, s_cw_c, s_cw_k, HAS_CB, K, T, BN)
    out = bi * s_o_b + pos[:, None] * s_o_l + g * s_o_g + pid_s * s_o_s + jn[None, :] * s_o_n
    tl.store(dB_ptr + out, dB.to(dB_ptr.dtype.element_ty), mask=mtn)
    tl.store(dC_ptr + out, dC.to(dC_ptr.dtype.element_ty), mask=mtn)


@triton.jit
def _revcumsum(U, v):
    # (T,) reverse cumsum of v, sum_{l >= r} v_l, as U @ V (U (T, T) of 0/1: [r, l] = 1 for l >= r; _chunk_bwd_dx
    # says why a matmul) on the tensor cores at float32's precision, whatever the inputs' dtype: v split into three
    # bfloat16 columns, v = h1 + h2 + h3 to ~2^-27 of v (each the rounding of what the ones before leave), U exact,
    # every product exact, summed in float32. (An "ieee" float32 matmul, for float32 inputs, ran on the FMA units:
    # 4x the loop's instructions and spills, sm_90.) tl.dot's smallest width is 16 columns; the ones past three are
    # 0. Interpreted: the same bf16 values in a float32 matmul (the interpreter's bf16 tl.dot multiplies raw bits)
    j = tl.arange(0, 16)[None, :]
    h1 = v.to(tl.bfloat16).to(tl.float32)
    h2 = (v - h1).to(tl.bfloat16).to(tl.float32)
    h3 = v - h1 - h2
    V = tl.where(j == 0, h1[:, None], tl.where(j == 1, h2[:, None], tl.where(j == 2, h3[:, None], 0.0)))
    if _COMPILED:
        S = tl.dot(U.to(tl.bfloat16), V.to(tl.bfloat16))
    else:
        S = tl.dot(U, V.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    return tl.sum(S, axis=1)


@triton.jit
def _add2(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def _add4(a0, a1, a2, a3, b0, b1, b2, b3):
    # the combine of tl.reduce over several operands at once: their exchanges across warps share one round of
    # shared memory and barriers, where a tl.sum each took its own
    return a0 + b0, a1 + b1, a2 + b2, a3 + b3


@triton.jit
def _chunk_bwd_dx(
    x_ptr, dtraw_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dout_ptr,
    dtp_ptr, a_ptr, dst_ptr, dalast_ptr, daS_ptr,
    dx_ptr, ddt_ptr, dDp_ptr, dAp_ptr, ci_ptr, cw_ptr, cb_ptr,
    L, nh, nchunks, hpg, hpp, p, n, nblocks, nbn, last_g, nps,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_D_h, s_D_p,
    s_d_b, s_d_l, s_d_h, s_d_p,
    s_o_b, s_o_l, s_o_h, s_o_p,
    s_ci_b, s_ci_l, s_ci_c, s_cw_c, s_cw_k,
    HAS_D: tl.constexpr, D_SCALAR: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, T: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
    BF16_DOT: tl.constexpr, NBN: tl.constexpr, NBLK: tl.constexpr, DD_HEAD: tl.constexpr,
    COLSUM_DX: tl.constexpr, DSILU: tl.constexpr, HAS_CB: tl.constexpr, K: tl.constexpr,
):
    # grid (b * c, g, nsplit * nps): the per-step gradients of one chunk for up to hpp heads of one group (C.B^T
    # once) and one of nps blocks of BP head channels: dx (b, L, h, p) float32 (strides s_o_*: e.g. columns of the
    # fused layer's dxBC), ddt (b, L, h, nps) float32 w.r.t. the raw dt, partial over the channel blocks (every
    # per-step gradient here is a sum over the head's channels plus terms from other kernels, which the block-0
    # program adds), and partial dD (b, c, h, p), or with DD_HEAD (one D a head, whose caller sums dD over the
    # channels) (b, c, h, nps), and dA (b, c, h, nps).
    # Never reads the entering states S: dL/da through the carried state and through the intra-chunk decays comes
    # from _chunk_bwd_bc (daS, nbn partial sums: it forms dL/d(C.B^T) for dB, dC anyway), and dz (which needs y)
    # from _chunk_scan_fwd. A program holds B C^T, M^T (T, T), x, dy, M^T dy, B G^T, dx (T, p), and G (p, n) as
    # dot operands (registers: see _DX_CHANNEL_BLOCKS); B (T, n), the same for every head of the group, is loaded
    # once (the compiler keeps it in shared memory, as the operand of B G^T; reloaded a head, it took 21 more
    # registers).
    # Where the time went (run 10d: ~20% of the SM's issue rate, latency-bound at 8 warps an SM): the loop's
    # shared-memory round trips, a barrier each, between the layouts of the wgmma accumulators and of the (T,)
    # per-step vectors, and loads outside the software pipeline. So M^T is formed directly in the accumulator's
    # layout of a matmul and enters M^T dy from registers (M formed and transposed went through shared memory);
    # the reverse cumsum is a matmul (_revcumsum), whose output lands where ddt is; the sums over a chunk's steps
    # (dL/da_T through the end state, dA, and dD with DD_HEAD) are one reduction of several operands, where each
    # was its own across the warps; B is loaded once and G enters its matmul as loaded. sm_90 with triton 3.6
    # (the H100 runs' compiler; benchmarks/sass_counts.py), a head in the loop, run 10d's kernel -> this one:
    # barriers 27 -> 9, instructions 871 -> 808, global loads outside the pipeline 21 -> 8, registers 251 -> 204
    # (two blocks an SM either way). Not yet timed on a GPU (benchmarks/results/h100-2026-11-26/NOTES.md).
    pid_bc, g, pid_sq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bi, ci = pid_bc // nchunks, pid_bc % nchunks
    pid_s, pid_q = pid_sq // nps, pid_sq % nps
    own = (pid_q == 0).to(tl.float32)  # 1 on the channel block that adds the other kernels' terms of dL/da
    t = tl.arange(0, T)
    ip, jn = pid_q * BP + tl.arange(0, BP), tl.arange(0, BN)
    pos = ci * T + t
    mt = pos < L
    mtp = mt[:, None] & (ip[None, :] < p)
    Bm = _load_tile(B_ptr + bi * s_B_b + g * s_B_g, jn, pos, mt, jn < n, s_B_l, s_B_n)  # (T, BN)
    BC = _mm(Bm, tl.trans(_load_tile(C_ptr + bi * s_C_b + g * s_C_g, jn, pos, mt, jn < n, s_C_l, s_C_n)),
             BF16_DOT, PREC)  # (T, T): [s, l] = B_s . C_l = (C.B^T)[l, s]
    BC = tl.where(t[:, None] <= t[None, :], BC, 0.0)  # 0 below the diagonal (s > l): the decays need no mask
    U = tl.where(t[:, None] <= t[None, :], 1.0, 0.0)  # (T, T): [r, l] = 1 for l >= r
    h_lo = g * hpg + pid_s * hpp
    for hd in range(h_lo, tl.minimum(h_lo + hpp, (g + 1) * hpg)):
        x = _load_tile(x_ptr + bi * s_x_b + hd * s_x_h, ip, pos, mt, ip < p, s_x_l, s_x_p)  # (T, BP)
        dout = tl.load(dout_ptr + bi * s_d_b + pos[:, None] * s_d_l + hd * s_d_h + ip[None, :] * s_d_p,
                       mask=mtp, other=0.0).to(tl.float32)  # (T, BP)
        base = ((bi * nh + hd) * nchunks + ci) * T
        dt = tl.load(dtp_ptr + base + t)
        a = tl.load(a_ptr + base + t)
        a_end = tl.load(a_ptr + base + T - 1)
        soff = (((bi * nchunks + ci) * nh + hd) * p + ip[:, None]) * n + jn[None, :]
        # dL/d(this chunk's own end state), loaded now in its own dtype to be in flight during the intra-chunk
        # part (masked out from last_g on: the last chunk's end state has no gradient without one for the final)
        G = tl.load(dst_ptr + soff, mask=(ip[:, None] < p * (ci < last_g)) & (jn[None, :] < n), other=0.0)
        wend = tl.exp(a_end - a)  # (T,) decay from step s to the chunk's end

        if HAS_D:
            if D_SCALAR:  # one D a head: one load, not p
                Dv = tl.load(D_ptr + hd * s_D_h).to(tl.float32)
            else:
                Dv = tl.load(D_ptr + hd * s_D_h + ip * s_D_p, mask=ip < p, other=0.0).to(tl.float32)[None, :]
        dy = dout
        if HAS_Z:  # out = y silu(z): dL/dy = dout silu(z) (dz is _chunk_scan_fwd's, with DZ)
            z = tl.load(z_ptr + bi * s_z_b + pos[:, None] * s_z_l + hd * s_z_h + ip[None, :] * s_z_p,
                        mask=mtp, other=0.0).to(tl.float32)
            dy = dout * z * sigmoid(z)
        # recompute the forward quantities of the chunk
        a2 = a * _LOG2E
        # (T, T) masked decay, transposed: [s, l] = M[l, s] = (C.B^T)[l, s] exp(a_l - a_s), in the accumulator's
        # layout of B C^T, which the next matmul takes from registers (M^T formed from M went through shared memory)
        Mt = BC * tl.exp2(tl.minimum(a2[None, :] - a2[:, None], 64.0))  # capped where BC is 0, as _exp2_below
        if HAS_D and not DD_HEAD:
            tl.store(dDp_ptr + ((bi * nchunks + ci) * nh + hd) * p + ip, tl.sum(dy * x, axis=0), mask=ip < p)

        # intra-chunk term y_l = sum_s M[l, s] dt_s x_s
        MtDy = _mm(Mt, dy, BF16_DOT, PREC)  # (T, BP)
        if COLSUM_DX and BF16_DOT:  # M^T's bf16 rounding, as a second matmul of the residual (_COLSUM_IN_DX)
            MtDy += _mm(Mt - Mt.to(tl.bfloat16).to(tl.float32), dy, BF16_DOT, PREC)
        # ddt's intra-chunk term x_s . (M^T dy)_s. dt_s times it is also the column sum of dL/dM, which dL/da_s
        # loses through the decays exp(a_l - a_s): subtracted below with COLSUM_DX, else by _chunk_bwd_bc
        if DD_HEAD:  # dD's per-step sums over the channels in the same pass (and layout) as ddt's
            ddt0, dDs = tl.reduce((MtDy * x, dy * x), 1, _add2)
        else:
            ddt0 = tl.sum(MtDy * x, axis=1)
        ddt = ddt0
        dx = MtDy * dt[:, None]
        # dL/da through the intra-chunk decays and the carried state: _chunk_bwd_bc's, per block of state columns
        # (the partials as one masked (NBN, T) load, and dalast's below as one (NBLK,) load, rather than loops of
        # runtime trip counts inside the pipelined loop over heads: at the seed both are 1, the first loop then ran
        # no iteration, and on an H100 this kernel alone, with other stages or partial sums, made illegal accesses
        # (benchmarks/results/h100-2026-11-26/NOTES.md), which no interpreter run shows)
        if NBN == 1:
            da = own * tl.load(daS_ptr + ((bi * nh + hd) * nchunks + ci) * T + t)
        else:
            jb = tl.arange(0, NBN)
            da = own * tl.sum(tl.load(daS_ptr + (((bi * nh + hd) * nchunks + ci) * nbn + jb[:, None]) * T
                                      + t[None, :], mask=jb[:, None] < nbn, other=0.0), axis=0)
        # this chunk's end state: sum_s exp(a_T - a_s) dt_s x_s B_s^T, with upstream gradient G: dL/da_s gets
        # -q_s, dL/da_T (dend) their sum
        q = tl.zeros_like(dt)
        if ci < last_g:  # G (BP, BN)
            # G as loaded (bf16 with BF16_DOT, as _backward stores it then), no cast: the compiler then takes it
            # straight from the pipeline's shared-memory buffer as the matmul's operand (a transposed view), where
            # a cast went through registers and shared memory again, a barrier more
            BG = _mm(Bm, tl.trans(G), BF16_DOT, PREC)  # (T, BP): B_s . G[p, :]
            w = wend * dt
            dx += w[:, None] * BG
            xBG = tl.sum(x * BG, axis=1)  # (T,)
            ddt += wend * xBG
            q = w * xBG
        jk = tl.arange(0, NBLK)  # through the passing to the next chunk (partial sums over state blocks)
        dlast = own * tl.sum(tl.load(dalast_ptr + ((bi * nh + hd) * nchunks + ci) * nblocks + jk, mask=jk < nblocks,
                                     other=0.0))
        if HAS_D:
            dx += dy * Dv
        # a = cumsum(dt A): dL/d(dt_r A) = sum_{l >= r} dL/da_l, dL/da_l = da_l - q_l, plus dend at l = T - 1,
        # which every r reaches: dAdt_r = (the sum without dend)_r + dend, and dend = sum(q) + dlast comes from
        # the one reduction below, with dA's sums (sum_r dt_r dAdt_r = that without dend + dend sum_r dt_r).
        # The reverse cumsum as a matmul, U (T, T) times the (T,) vector: tl.cumsum runs in a blocked layout only,
        # so the vector went there and back through shared memory, a barrier each way and two in the scan; the
        # matmul's operand goes there once, and its output comes in the accumulator's layout, where ddt is.
        if COLSUM_DX:
            da -= dt * ddt0
        dAdt = _revcumsum(U, da - q)
        A = tl.load(A_ptr + hd).to(tl.float32)
        ddt += A * dAdt
        dAr = tl.where(mt, dAdt * dt, 0.0)
        dtr = tl.where(mt, dt, 0.0)
        if DD_HEAD:
            qs, dAs, dts, dDh = tl.reduce((q, dAr, dtr, dDs), 0, _add4)
            tl.store(dDp_ptr + ((bi * nchunks + ci) * nh + hd) * nps + pid_q, dDh)
        else:
            qs, dAs, dts = tl.reduce((q, dAr, dtr), 0, _add3)
        dend = qs + dlast
        ddt += A * dend
        tl.store(dAp_ptr + ((bi * nchunks + ci) * nh + hd) * nps + pid_q, dAs + dend * dts)
        if SOFTPLUS:
            raw = tl.load(dtraw_ptr + bi * s_dt_b + pos * s_dt_l + hd * s_dt_h, mask=mt, other=0.0)
            raw = raw.to(tl.float32)
            if HAS_BIAS:
                raw += tl.load(bias_ptr + hd).to(tl.float32)
            ddt = ddt * sigmoid(raw)
        tl.store(ddt_ptr + ((bi * L + pos) * nh + hd) * nps + pid_q, ddt, mask=mt)
        if DSILU:  # x is silu(pre) of the conv's channels hd p + ip
            dx = _dsilu_store(dx, dx_ptr, ci_ptr, cw_ptr, cb_ptr, bi, pos, hd * p + ip, ip < p, L, s_ci_b, s_ci_l,
                              s_ci_c, s_cw_c, s_cw_k, HAS_CB, K, T, BP)
        tl.store(dx_ptr + bi * s_o_b + pos[:, None] * s_o_l + hd * s_o_h + ip[None, :] * s_o_p,
                 dx.to(dx_ptr.dtype.element_ty), mask=mtp)


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------

def _strides(t: Tensor | None, ndim: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


def _dot_options(*ts: Tensor) -> dict:
    """tl.dot's operands: for bfloat16 inputs, bfloat16 (``BF16_DOT``: products and states rounded to bf16 where
    they enter a matmul, float32 accumulation, as the official kernels do; the tensor cores' full rate and half the
    registers per operand tile), unless ``CONDORBRAIN_SSD_DOT=tf32`` asks for float32 operands at tf32 (the
    previous behaviour, kept to compare). Float32 operands otherwise, in full float32 ("ieee") for float32 inputs
    unless PyTorch's own matmuls may use tf32 (``torch.backends.cuda.matmul.allow_tf32``, off by default), and tf32
    for float16 inputs (their own rounding dominates)."""
    bf16 = all(t.dtype == torch.bfloat16 for t in ts) and os.environ.get("CONDORBRAIN_SSD_DOT", "bf16") != "tf32"
    if all(t.dtype == torch.float32 for t in ts) and not torch.backends.cuda.matmul.allow_tf32:
        return {"PREC": "ieee", "BF16_DOT": 0}
    return {"PREC": "tf32", "BF16_DOT": (2 if interpreting() else 1) if bf16 else 0}


def _d_scalar(D2: Tensor | None) -> bool:
    """D2 (h, p) holds one D a head (a stride-0 view over the channels, as the layers pass a per-head D)."""
    return D2 is not None and D2.stride(1) == 0


def _dx_channel_blocks(BP: int) -> int:
    """Blocks of a head's channels that _chunk_bwd_dx splits them into: _DX_CHANNEL_BLOCKS (each >= 16 wide, for
    tl.dot), so that a program holds half the (T, p) tiles and more of them share an SM."""
    return max(1, min(_DX_CHANNEL_BLOCKS, BP // _MIN_BLOCK))


def _head_split(hpg: int, most: int | None = None) -> tuple[int, int]:
    """(heads per program, programs per group) for the kernels that share C.B^T between the heads of a group, at
    most ``most`` (default HEADS_PER_PROGRAM) heads a program: more heads per program reuse more (and keep fewer
    partial dB, dC), fewer keep more programs in flight."""
    hpp = min(hpg, most or HEADS_PER_PROGRAM)
    return hpp, triton.cdiv(hpg, hpp)


def _dims(x: Tensor, B: Tensor, chunk_size: int) -> dict:
    b, L, nh, p = x.shape
    g, n = B.shape[2], B.shape[3]
    T = kernel_chunk_size(chunk_size, p, n)
    return dict(b=b, L=L, nh=nh, p=p, g=g, n=n, T=T, c=triton.cdiv(L, T), BP=_pow2(p), BN=_pow2(n))


def _forward(x, dt, A, B, C, D2, z, dt_bias, h0, d, softplus, want_final=True, ss=None, a_is_log=False):
    """The scan's forward kernels. a_is_log: A is A_log, and A = -exp(A_log) (float32) is formed in kernel 1."""
    dot = _dot_options(x, B, C)
    dtp, a = _dt_cumsum(dt, A, dt_bias, d, softplus, a_is_log)
    # the entering states in C's dtype when that is half precision, as the official forward keeps them (its
    # _state_passing_fwd(out_dtype=C.dtype)): kernel 3 reads half the bytes, the largest read of the forward (p n
    # per head and chunk); the sum carried from chunk to chunk stays float32 (the backward recomputes them: see
    # _backward for the dtype it stores them in)
    half = C.dtype in (torch.bfloat16, torch.float16)
    prev = _PREV_CHUNK_TERM and ss is not None and d["c"] == 2 and h0 is None and not want_final
    if prev:  # no state passed: kernel 3 forms chunk 1's term from chunk 0's inputs
        enter, final = None, None
    else:
        enter, final = _entering_states(x, B, dtp, a, h0, d, dot, enter_dtype=C.dtype if half else torch.float32,
                                        want_final=want_final)
    out = torch.empty(d["b"], d["L"], d["nh"], d["p"], device=x.device, dtype=x.dtype)
    _chunk_scan(x, B, C, z, D2, dtp, a, enter, None, out, d, dot, h0 is not None, dt_positive=softplus, ss=ss,
                prev=prev)
    return out, final, dtp, a


def scan_partials(d: dict) -> int:
    """Columns of the ``ss`` buffer of :func:`_forward` (one group): the programs a chunk's heads are split over."""
    return _head_split(d["nh"] // d["g"], _SCAN_SUMSQ_HEADS)[1]


def _chunk_scan(x, B, C, z, D2, dtp, a, enter, dout, out, d, dot, has_h0, dt_positive=False, ss=None, prev=False):
    """Kernel 3: the outputs y silu(z) (or y) into ``out``; given ``dout`` (backward, with z), dz instead.
    ``enter`` from :func:`_entering_states` with an initial state or not (``has_h0``); with ``prev`` (two chunks, no
    initial state, a forward) None: chunk 1's term from chunk 0 is formed by the kernel itself.
    dt_positive: every dtp > 0 (it went through softplus), so that its factor can join the decay's exponent as
    log2 dt. ss: (b * L, scan_partials(d)) float32 (forward, one group): each step's output's sum of squares, in
    as many partial sums, is stored there too."""
    hpg = d["nh"] // d["g"]
    hpp, nsplit = _head_split(hpg, _SCAN_SUMSQ_HEADS if ss is not None else None)
    if ss is not None and (dout is not None or d["g"] != 1 or ss.shape != (d["b"] * d["L"], nsplit)
                           or ss.dtype != torch.float32 or not ss.is_contiguous()):
        raise ValueError(f"ss: a forward of one group only, into a contiguous float32 ({d['b'] * d['L']}, {nsplit}) "
                         f"buffer; got {d['g']} groups, {None if ss is None else (tuple(ss.shape), ss.dtype)}")
    _chunk_scan_fwd[(d["b"] * d["c"], d["g"], nsplit)](
        x, B, C, z if z is not None else x, D2 if D2 is not None else x, dtp, a, enter if enter is not None else x,
        dout if dout is not None else x, out, ss if ss is not None else a,
        d["L"], d["nh"], d["c"], hpg, hpp, nsplit, d["p"], d["n"], 0 if has_h0 else 1,
        *x.stride(), *B.stride(), *C.stride(), *_strides(z, 4), *_strides(D2, 2), *_strides(dout, 4), *out.stride(),
        HAS_D=D2 is not None, D_SCALAR=_d_scalar(D2), HAS_Z=z is not None, DZ=dout is not None,
        DT_IN_DECAY=dt_positive, SUMSQ=ss is not None, PREV=prev, T=d["T"], BP=d["BP"], BN=d["BN"],
        **dot, **launch_options(num_warps=_SCAN_SUMSQ_WARPS if ss is not None else _BIG_TILE_WARPS,
                                num_stages=_SCAN_SUMSQ_STAGES if ss is not None else _SCAN_FWD_STAGES))


def _dt_cumsum(dt, A, dt_bias, d, softplus, a_is_log=False):
    """Kernel 1: the processed dt and a = cumsum(dt A) per chunk, both (b, h, c, T) float32. The forward's first
    step; also run alone by a caller that recomputes them for the backward rather than keeping them. a_is_log: A
    holds A_log (A = -exp(A_log) in the kernel)."""
    b, L, nh, T, c = (d[k] for k in ("b", "L", "nh", "T", "c"))
    f32 = dict(device=dt.device, dtype=torch.float32)
    dtp = torch.empty(b, nh, c, T, **f32)
    a = torch.empty(b, nh, c, T, **f32)
    BH = min(_pow2(nh), 64)
    _cumsum_fwd[(b, c, triton.cdiv(nh, BH))](
        dt, A, dt_bias if dt_bias is not None else dt, dtp, a, L, nh, c, *dt.stride(),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus, A_IS_LOG=a_is_log, T=T, BLOCK_H=BH, **launch_options(T, BH))
    return dtp, a


def _state_rows(d: dict) -> int:
    """Rows of a head's state per program of _state_fwd / _state_bwd: the whole head (p padded) where batch x heads
    gives _STATE_PROGRAMS programs (the seed: 16k), else halved down to 16 (long sequences of a few rows: L 32k at
    batch 8 is 128 heads in all, each a loop over 512 chunks) so that more of them run side by side."""
    rows = d["BP"]
    while rows > _MIN_BLOCK and d["b"] * d["nh"] * (d["BP"] // rows) < _STATE_PROGRAMS:
        rows //= 2
    return rows


def _entering_states(x, B, dtp, a, h0, d, dot, enter_dtype=torch.float32, want_final=True):
    """Kernel 2: the state entering each chunk (b, c, h, p, n) in ``enter_dtype`` (chunk 0's only with an initial
    state ``h0``: else it is 0 and left unwritten) and, if wanted, the final state (b, h, p, n) in float32. Run by
    the forward and again by the backward (float32), so that only dt and a (O(L), not O(L p n / T)) are saved."""
    b, L, nh, p, n, T, c, BN = (d[k] for k in ("b", "L", "nh", "p", "n", "T", "c", "BN"))
    enter = torch.empty(b, c, nh, p, n, device=x.device, dtype=enter_dtype)
    final = torch.empty(b, nh, p, n, device=x.device, dtype=torch.float32) if want_final else None
    if c == 1 and h0 is None and not want_final:  # nothing to pass on: no launch
        return enter, final
    rows = _state_rows(d)
    # the last chunk's own end state only makes the final state: without it, c - 1 chunks (none when c is 1)
    _state_fwd[(b, nh, triton.cdiv(p, rows))](
        x, B, dtp, a, h0 if h0 is not None else x, enter, final if want_final else enter,
        L, nh, c, c if want_final else c - 1, nh // d["g"], p, n, *x.stride(), *B.stride(),
        HAS_H0=h0 is not None, HAS_FINAL=want_final, T=T, BPS=rows, BN=BN, **dot,
        **launch_options(rows, BN))
    return enter, final


def _check_out(name: str, buf: Tensor, shape: tuple[int, ...]) -> None:
    if buf.shape != shape or not buf.is_floating_point():
        raise ValueError(f"{name} buffer: {shape} floating point (any strides), got {tuple(buf.shape)} {buf.dtype}")


def _conv_args(conv: tuple[Tensor, Tensor, Tensor | None] | None, x: Tensor, d: dict) -> tuple[tuple, dict]:
    """The backward chunk kernels' conv arguments (ci, cw, cb pointers, then ci's 3 and cw's 2 strides) and
    constexprs, from _backward's ``conv``; placeholders (x, never read) without one."""
    if conv is None:
        return (x, x, x, 0, 0, 0, 0, 0), {"DSILU": False, "HAS_CB": False, "K": 1}
    xin, w, bias = conv
    cdim = d["nh"] * d["p"] + 2 * d["g"] * d["n"]
    if xin.shape != (d["b"], d["L"], cdim) or w.dim() != 2 or w.shape[0] != cdim or (
            bias is not None and bias.shape != (cdim,)):
        raise ValueError(f"conv: xin ({d['b']}, {d['L']}, {cdim}), weight ({cdim}, K), bias ({cdim},) or None; got "
                         f"{tuple(xin.shape)}, {tuple(w.shape)}, {None if bias is None else tuple(bias.shape)}")
    # the weights as (K, C) with the channels contiguous: a tile's taps are then vector loads, where (C, K) rows
    # were a scalar load a channel and tap (32 a head in _chunk_bwd_dx); a (K, C) copy a call
    wt = w.t().contiguous()
    return ((xin, wt, bias if bias is not None else w, *xin.stride(), wt.stride(1), wt.stride(0)),
            {"DSILU": True, "HAS_CB": bias is not None, "K": w.shape[1]})


def _backward(dout, dfinal, x, dt, A, B, C, D2, z, dt_bias, h0, dtp, a, d, softplus, dx=None, dB=None, dC=None,
              dd_per_head=False, conv=None):
    # dd_per_head: D2 is the caller's one D a head, viewed over the channels (D[:, None].expand): the dD returned
    # is then per head (h,), as D is, else (h, p) as D2
    # dx, dB, dC: buffers for them ((b, L, h, p) and (b, L, g, n), float32 or half, any strides: e.g. column slices
    # of one buffer, which the fused layer's conv backward then reads whole; stored rounded once, from float32) or
    # None (new float32 ones). dx may be dout itself
    # (then overwritten in place) when z is None: _chunk_bwd_dx reads each (chunk, head) tile of dout before it
    # stores dx there and no other program reads that tile; the kernels before it are done with dout, and
    # _chunk_scan (for z, after it) would read dout again.
    # conv: None, or (xin, weight, bias) of the layer's conv whose SiLU made x, B, C (x, B, C = silu(conv(xin))
    # split as [x (h p), B (g n), C (g n)]; xin (b, L, h p + 2 g n) any strides, weight (h p + 2 g n, K), bias or
    # None): dx, dB, dC are then stored as the gradients w.r.t. the conv's output before its SiLU, each multiplied by
    # silu'(conv(xin)) where it is stored, the conv recomputed there (the fused layer's _DSILU_IN_SSD)
    b, L, nh, p, g, n, T, c, BP, BN = (d[k] for k in ("b", "L", "nh", "p", "g", "n", "T", "c", "BP", "BN"))
    hpg = nh // g
    f32 = dict(device=x.device, dtype=torch.float32)
    dot = _dot_options(x, B, C)
    # the entering states and their gradients (b, c, h, p, n), carried in float32, stored in bf16 where the kernels
    # that read them round them to bf16 anyway as tl.dot operands (BF16_DOT; _BWD_STATES_BF16): those matmuls are
    # the same, bit for bit, and the buffers half the size. The one other reader is _state_bwd's dL/da_T, an
    # elementwise sum of S times its float32 gradient, which then sees S rounded (the official backward stores both
    # in the activations' dtype)
    sdt = torch.bfloat16 if dot["BF16_DOT"] and _BWD_STATES_BF16 else torch.float32
    enter = _entering_states(x, B, dtp, a, h0, d, dot, enter_dtype=sdt, want_final=False)[0]
    # chunks whose entering state was stored (0 before: no initial state), and those whose own end state has a
    # gradient (the last one's is 0 without one for the final state): the kernels below read them only there
    first_state, last_g = (0 if h0 is not None else 1), (c if dfinal is not None else c - 1)
    rows = _state_rows(d)
    nblocks = triton.cdiv(p, rows)
    dst = torch.empty(b, c, nh, p, n, device=x.device, dtype=sdt)  # dL/d(chunk c's own end state)
    conv_args, conv_opts = _conv_args(conv, x, d)
    dalast = torch.empty(b, nh, c, nblocks, **f32)
    dh0 = torch.empty(b, nh, p, n, **f32) if h0 is not None else None  # no initial state: no gradient for it
    _state_bwd[(b, nh, nblocks)](
        dout, C, z if z is not None else x, a, enter, dfinal if dfinal is not None else dst, dst, dalast,
        dh0 if dh0 is not None else dalast, L, nh, c, hpg, p, n, first_state, last_g,
        0 if h0 is not None else 1, *dout.stride(), *C.stride(), *_strides(z, 4),
        HAS_Z=z is not None, HAS_DFINAL=dfinal is not None, HAS_DH0=h0 is not None,
        T=T, BPS=rows, BN=BN, **dot, **launch_options(rows, BN))
    hpp, nsplit = _head_split(hpg, _BC_HEADS)
    BNb = min(BN, _BWD_STATE_BLOCK)
    nbn = triton.cdiv(n, BNb)
    for name, buf in (("dB", dB), ("dC", dC)):
        if buf is not None:
            _check_out(name, buf, (b, L, g, n))
    direct = nsplit == 1 and dB is not None and dC is not None and dB.stride() == dC.stride()
    if direct:  # straight into the buffers: (b, L, g, n) seen as (b, L, g, 1, n)
        dBp, dCp = dB.unsqueeze(3), dC.unsqueeze(3)
    else:  # per-split partial sums, summed below
        dBp, dCp = torch.empty(b, L, g, nsplit, n, **f32), torch.empty(b, L, g, nsplit, n, **f32)
    daS = torch.empty(b, nh, c, nbn, T, **f32)
    _chunk_bwd_bc[(b * c, g, nsplit * nbn)](
        x, B, C, z if z is not None else x, dout, dtp, a, enter, dst, dBp, dCp, daS, *conv_args[:3],
        L, nh, g, c, hpg, hpp, p, n, first_state, last_g,
        *x.stride(), *B.stride(), *C.stride(), *_strides(z, 4), *dout.stride(), *dBp.stride(), *conv_args[3:],
        HAS_Z=z is not None, T=T, BP=BP, BN=BNb, **dot, COLSUM_DX=_COLSUM_IN_DX, **conv_opts,
        **launch_options(num_warps=_BIG_TILE_WARPS, num_stages=_BC_STAGES))
    # the head splits summed now, one at a time, so that the (b, L, g, nsplit, n) partials are not alive beside dx
    if not direct:  # (b, L, g, n): a view of the one split, or the splits' sum (into the buffer if given)
        dB = dBp[:, :, :, 0] if nsplit == 1 and dB is None else torch.sum(dBp, 3, out=dB)
        dC = dCp[:, :, :, 0] if nsplit == 1 and dC is None else torch.sum(dCp, 3, out=dC)
    del dBp, dCp
    if z is None:  # the entering states are read again only for dz: (b, c, h, p, n), as large as dx
        del enter
    if dx is None:
        dx = torch.empty(b, L, nh, p, **f32)
    else:
        _check_out("dx", dx, (b, L, nh, p))
        if dx.untyped_storage().data_ptr() == dout.untyped_storage().data_ptr() and (
                z is not None or dx.data_ptr() != dout.data_ptr() or dx.stride() != dout.stride()):
            raise ValueError("dx: apart from dout, or dout itself (the same view, and no z)")
    hpp, nsplit = _head_split(hpg, _DX_HEADS)
    nps = _dx_channel_blocks(BP)
    ddt = torch.empty(b, L, nh, nps, **f32)  # partial over the channel blocks: summed below
    dz = torch.empty(b, L, nh, p, **f32) if z is not None else None
    dd_head = dd_per_head and _d_scalar(D2)
    dDp = torch.empty(b, c, nh, nps if dd_head else p, **f32) if D2 is not None else None
    dAp = torch.empty(b, c, nh, nps, **f32)
    _chunk_bwd_dx[(b * c, g, nsplit * nps)](
        x, dt, A, dt_bias if dt_bias is not None else A, B, C, z if z is not None else x,
        D2 if D2 is not None else x, dout, dtp, a, dst, dalast, daS,
        dx, ddt, dDp if dDp is not None else dAp, dAp, *conv_args[:3],
        L, nh, c, hpg, hpp, p, n, nblocks, nbn, last_g, nps,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *_strides(z, 4), *_strides(D2, 2), *dout.stride(),
        *dx.stride(), *conv_args[3:], HAS_D=D2 is not None, D_SCALAR=_d_scalar(D2), HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=softplus, T=T, BP=BP // nps, BN=BN, **dot,
        NBN=triton.next_power_of_2(nbn), NBLK=triton.next_power_of_2(nblocks), DD_HEAD=dd_head,
        COLSUM_DX=_COLSUM_IN_DX, **conv_opts,
        **launch_options(num_warps=_DX_WARPS, num_stages=_DX_STAGES, maxnreg=_DX_MAXNREG))
    ddt = ddt[..., 0] if nps == 1 else ddt.sum(-1)  # (b, L, h)
    del dst, dalast, daS  # (b, c, h, p, n), as large as dx: not alive beside dz below
    if z is not None:  # dz = dout y silu'(z): the forward's kernel 3 again, for y (in _chunk_bwd_dx, y's tiles
        # and S spilled 660-790 B per thread at T 64)
        _chunk_scan(x, B, C, z, D2, dtp, a, enter, dout, dz, d, dot, h0 is not None, dt_positive=softplus)
        del enter
    dD = None
    if dDp is not None:  # in D's shape: (h,) per head (summed over the channels in the kernel with DD_HEAD), or (h, p)
        dD = dDp.sum((0, 1, 3)) if dd_head else dDp.sum((0, 1)).sum(-1) if dd_per_head else dDp.sum((0, 1))
    return dx, ddt, dAp.sum((0, 1, 3)), dB, dC, dD, dz, dh0


class _SSDScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus):
        d = _dims(x, B, chunk_size)
        D2 = None if D is None else (D[:, None].expand(d["nh"], d["p"]) if D.dim() == 1 else D)
        with on_device(x):
            out, final, dtp, a = _forward(x, dt, A, B, C, D2, z, dt_bias, initial_states, d, dt_softplus)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, dtp, a)
        ctx.d, ctx.softplus = d, dt_softplus
        ctx.set_materialize_grads(False)  # an unused final state gets no zero gradient tensor (HAS_DFINAL=False)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, dt, A, B, C, D, z, dt_bias, h0, dtp, a = ctx.saved_tensors
        d = ctx.d
        if dout is None:  # only the final state is used
            dout = torch.zeros_like(x)
        D2 = None if D is None else (D[:, None].expand(d["nh"], d["p"]) if D.dim() == 1 else D)
        with on_device(x):
            dx, ddt, dA, dB, dC, dD, dz, dh0 = _backward(
                dout, dfinal, x, dt, A, B, C, D2, z, dt_bias, h0, dtp, a, d, ctx.softplus,
                dd_per_head=D is not None and D.dim() == 1)
        dbias = None if dt_bias is None else ddt.sum((0, 1))
        grads = [dx, ddt, dA, dB, dC, dD, dz, dbias, dh0]  # dh0 None without an initial state
        inputs = [x, dt, A, B, C, D, z, dt_bias, h0]
        return (*(None if gr is None else gr.to(t.dtype) for gr, t in zip(grads, inputs)), None, None)


def ssd_scan_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-2's SSD scan in Triton, forward and backward; the arguments of :func:`condorbrain.ssm.ssd_scan`.

    Args:
        x: (b, L, h, p). dt: (b, L, h), becomes softplus(dt + dt_bias) when asked (inside the kernels). A: (h,).
        B, C: (b, L, g, n) with g dividing h. chunk_size: a hint; the kernels use :func:`kernel_chunk_size`.
        D: (h,) or (h, p). z: (b, L, h, p). dt_bias: (h,). initial_states: (b, h, p, n).
        Any strides (e.g. views into one in_proj output): nothing is copied.

    Returns:
        y (b, L, h, p) in x's dtype and, if asked, the final states (b, h, p, n) in float32.

    Arguments are not validated here (``ssd_scan`` does that before dispatching); all tensors must be on one CUDA
    device, or on the CPU under ``TRITON_INTERPRET=1``.
    """
    out, final = _SSDScan.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus)
    return (out, final) if return_final_states else out
