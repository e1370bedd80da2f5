"""Mamba's selective scan in Triton: forward and backward, drop-in for :func:`condorbrain.ssm.selective_scan`.

h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t . h_t + D u_t,   out = y * silu(z)

Kernel design (both passes): one program per (block of ``BLOCK_D`` channels, batch row), holding the whole state
(``BLOCK_D``, ``BLOCK_N``) of its channels in registers. It walks the sequence in tiles of ``BLOCK_T`` steps: each tile
is loaded at once as (BLOCK_D, BLOCK_N, BLOCK_T) blocks and scanned over time with ``tl.associative_scan`` (log-depth
inside the tile), the tile's last state carried to the next. Inputs are read in their dtype (float32/bfloat16/float16)
and everything is computed in float32 (float64 when an input is float64), decays exp(delta A) included.

Backward: the forward stores the state entering every tile, (batch, dim, N, n_tiles) in the compute dtype, i.e.
N/BLOCK_T floats per input element. The backward walks the tiles in reverse: from the stored state it recomputes the
tile's states h_t by the same scan, then gets dL/dh_t = g_t by a reverse scan of g_t = C_t dy_t + exp(delta_{t+1} A)
g_{t+1}, seeded with the gradient flowing in from the tile after it (and from the returned last state). Every input
gradient is then elementwise in (h_t, g_t); exp(delta_t A) h_{t-1} is h_t - delta_t B_t u_t, so h_{t-1} is never
needed (as in mamba_ssm's CUDA kernel). Recomputing one tile at a time keeps memory at the stored states instead of
all L states, at the cost of one more scan.

Reductions over channels are deterministic: each program writes its partial sums (dA, dD, delta_bias and, for a
time-invariant B/C, dB/dC per channel; for a time-varying B/C, its block's sum over channels per step) and torch sums
the partials. A channel block never straddles two groups of a grouped B/C (``BLOCK_D`` divides the channels per
group), so the per-block partial of dB belongs to one group. The price is a (batch, dim/BLOCK_D, N, L) float32 buffer
for a time-varying B (and C) in the backward; atomics would avoid it at the cost of determinism.

Under Triton's interpreter (CPU, ``TRITON_INTERPRET=1``) the same kernels run numpy-emulated: the associative scans
fall back to an element-by-element Python loop, so only small shapes are practical there (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from condorbrain.ssm._checks import check_selective_scan_args
from condorbrain.ssm.triton import status
from condorbrain.ssm.triton.ssd import launch_options

__all__ = ["selective_scan_triton"]

_MAX_TILE = 4096  # elements of one (BLOCK_D, BLOCK_N, BLOCK_T) register tile; a few are live at once
_MAX_BLOCK_D = 16
_MAX_BLOCK_T = 64


# ----------------------------------------------------------------------------------------------------------------
# Kernel helpers
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _affine_combine(a1, x1, a2, x2):
    """Compose h -> a1 h + x1 then h -> a2 h + x2 (associative: the scan operator of h_t = a_t h_{t-1} + x_t)."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) as torch computes it (linear above 20), with an accurate log1p for very negative x."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / tl.where(w == 1.0, 1.0, w - 1.0))  # log1p(e), Kahan's trick
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow for very negative x."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _load_delta(delta_ptr, bias_ptr, row, d_offs, t_offs, mask_d, mask_dt, L,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
    """(delta + bias, softplus(delta + bias) or the same) as (BLOCK_D, BLOCK_T); 0 where masked (no step)."""
    raw = tl.load(delta_ptr + row + d_offs[:, None] * L + t_offs[None, :], mask=mask_dt, other=0.0).to(ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(ACC)[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return raw, tl.where(mask_dt, dt, 0.0)


@triton.jit
def _load_bc(ptr, b, d0, d_offs, n_offs, t_offs, mask_d, mask_n, mask_t, sb, sg, sn, sl, cpg,
             VARIABLE: tl.constexpr, ACC: tl.constexpr):
    """B or C for one tile: (1, BLOCK_N, BLOCK_T) of the block's group when time-varying, else the channels'
    (BLOCK_D, BLOCK_N, 1) rows of a (dim, N) matrix."""
    if VARIABLE:  # (batch, G, N, L) strides; the whole channel block lies in group d0 // cpg
        p = ptr + b * sb + (d0 // cpg) * sg + n_offs[None, :, None] * sn + t_offs[None, None, :] * sl
        m = mask_n[None, :, None] & mask_t[None, None, :]
    else:  # (dim, N) strides in (sg, sn)
        p = ptr + d_offs[:, None, None] * sg + n_offs[None, :, None] * sn
        m = mask_d[:, None, None] & mask_n[None, :, None]
    return tl.load(p, mask=m, other=0.0).to(ACC)


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _selective_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,  # inputs
    out_ptr, last_ptr, states_ptr,  # outputs: (b, d, L), (b, d, N), (b, d, N, n_tiles)
    dim, L, N, n_tiles,
    b_sb, b_sg, b_sn, b_sl, b_cpg, c_sb, c_sg, c_sn, c_sl, c_cpg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, STORE_STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
):
    pid_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64 offsets: b * dim * L may pass 2^31
    d0 = pid_d * BLOCK_D
    d_offs = d0 + tl.arange(0, BLOCK_D)  # (D,)
    n_offs = tl.arange(0, BLOCK_N)  # (N,)
    mask_d, mask_n = d_offs < dim, n_offs < N
    mask_dn = mask_d[:, None] & mask_n[None, :]  # (D, N)
    row = b * dim * L  # start of batch row b in the (b, d, L) tensors
    state_off = (b * dim + d_offs[:, None]) * N + n_offs[None, :]  # (D, N) into (b, d, N)

    A = tl.load(A_ptr + d_offs[:, None] * N + n_offs[None, :], mask=mask_dn, other=0.0).to(ACC)  # (D, N)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(ACC)  # (D,)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=mask_dn, other=0.0).to(ACC)  # (D, N)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    is_last = (tl.arange(0, BLOCK_T) == BLOCK_T - 1)[None, None, :]  # (1, 1, T)

    for k in range(n_tiles):
        if STORE_STATES:  # the state entering tile k, for the backward's recomputation
            tl.store(states_ptr + state_off * n_tiles + k, h, mask=mask_dn)
        t_offs = k * BLOCK_T + tl.arange(0, BLOCK_T)  # (T,)
        mask_t = t_offs < L
        mask_dt = mask_d[:, None] & mask_t[None, :]  # (D, T)
        io = row + d_offs[:, None] * L + t_offs[None, :]  # (D, T) offsets into the (b, d, L) tensors
        u = tl.load(u_ptr + io, mask=mask_dt, other=0.0).to(ACC)  # (D, T)
        _, dt = _load_delta(delta_ptr, bias_ptr, row, d_offs, t_offs, mask_d, mask_dt, L, HAS_BIAS, SOFTPLUS, ACC)
        Bt = _load_bc(B_ptr, b, d0, d_offs, n_offs, t_offs, mask_d, mask_n, mask_t,
                      b_sb, b_sg, b_sn, b_sl, b_cpg, B_VARIABLE, ACC)  # (1, N, T) or (D, N, 1)
        Ct = _load_bc(C_ptr, b, d0, d_offs, n_offs, t_offs, mask_d, mask_n, mask_t,
                      c_sb, c_sg, c_sn, c_sl, c_cpg, C_VARIABLE, ACC)

        dA = tl.exp(dt[:, None, :] * A[:, :, None])  # (D, N, T); 1 on masked steps, which keep the state
        x = (dt * u)[:, None, :] * Bt  # (D, N, T)
        decay, hs = tl.associative_scan((dA, x), 2, _affine_combine)  # within the tile, from h = 0
        hs += decay * h[:, :, None]  # (D, N, T): add the carried state
        h = tl.sum(tl.where(is_last, hs, 0.0), axis=2)  # (D, N): state after the tile

        y = tl.sum(hs * Ct, axis=1)  # (D, T)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + io, mask=mask_dt, other=0.0).to(ACC)
            y *= z * _sigmoid(z)
        tl.store(out_ptr + io, y.to(out_ptr.dtype.element_ty), mask=mask_dt)

    tl.store(last_ptr + state_off, h, mask=mask_dn)


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _selective_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr,  # forward inputs and states
    dout_ptr, dlast_ptr,  # incoming gradients: (b, d, L), (b, d, N)
    du_ptr, ddelta_ptr, dz_ptr, dh0_ptr,  # per element: (b, d, L) x3, (b, d, N)
    dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,  # partials: (b, d, N), (b, d), (b, d), dB/dC (see _dbc_store)
    dim, L, N, n_tiles,
    b_sb, b_sg, b_sn, b_sl, b_cpg, c_sb, c_sg, c_sn, c_sl, c_cpg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
):
    pid_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64 offsets: b * dim * L may pass 2^31
    n_blocks = tl.num_programs(0)
    d0 = pid_d * BLOCK_D
    d_offs = d0 + tl.arange(0, BLOCK_D)  # (D,)
    n_offs = tl.arange(0, BLOCK_N)  # (N,)
    mask_d, mask_n = d_offs < dim, n_offs < N
    mask_dn = mask_d[:, None] & mask_n[None, :]  # (D, N)
    row = b * dim * L
    state_off = (b * dim + d_offs[:, None]) * N + n_offs[None, :]  # (D, N) into (b, d, N)
    # a time-varying dB/dC partial is (b, n_blocks, N, L); a time-invariant one (b, d, N)
    part_off = ((b * n_blocks + pid_d) * N + n_offs[:, None]) * L  # (N, 1)

    A = tl.load(A_ptr + d_offs[:, None] * N + n_offs[None, :], mask=mask_dn, other=0.0).to(ACC)  # (D, N)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(ACC)
    is_first = (tl.arange(0, BLOCK_T) == 0)[None, None, :]  # (1, 1, T)
    not_tile_end = tl.arange(0, BLOCK_T) < BLOCK_T - 1  # (T,)

    # dL/dh at the end of the current tile coming from later steps: starts as the last state's gradient
    g_carry = tl.load(dlast_ptr + state_off, mask=mask_dn, other=0.0).to(ACC)  # (D, N)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # used when B is time-invariant
    dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    dD_acc = tl.zeros((BLOCK_D,), dtype=ACC)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=ACC)

    for i in range(n_tiles):
        k = n_tiles - 1 - i  # tiles in reverse
        t_offs = k * BLOCK_T + tl.arange(0, BLOCK_T)  # (T,)
        mask_t = t_offs < L
        mask_dt = mask_d[:, None] & mask_t[None, :]  # (D, T)
        io = row + d_offs[:, None] * L + t_offs[None, :]  # (D, T)
        u = tl.load(u_ptr + io, mask=mask_dt, other=0.0).to(ACC)  # (D, T)
        raw, dt = _load_delta(delta_ptr, bias_ptr, row, d_offs, t_offs, mask_d, mask_dt, L, HAS_BIAS, SOFTPLUS, ACC)
        Bt = _load_bc(B_ptr, b, d0, d_offs, n_offs, t_offs, mask_d, mask_n, mask_t,
                      b_sb, b_sg, b_sn, b_sl, b_cpg, B_VARIABLE, ACC)  # (1, N, T) or (D, N, 1)
        Ct = _load_bc(C_ptr, b, d0, d_offs, n_offs, t_offs, mask_d, mask_n, mask_t,
                      c_sb, c_sg, c_sn, c_sl, c_cpg, C_VARIABLE, ACC)

        # 1. recompute the tile's states from the stored state entering it (as in the forward)
        h_in = tl.load(states_ptr + state_off * n_tiles + k, mask=mask_dn, other=0.0).to(ACC)  # (D, N)
        dA = tl.exp(dt[:, None, :] * A[:, :, None])  # (D, N, T)
        x = (dt * u)[:, None, :] * Bt  # (D, N, T)
        decay, hs = tl.associative_scan((dA, x), 2, _affine_combine)
        hs += decay * h_in[:, :, None]  # (D, N, T): h_t

        # 2. through the skip and the gate: dy = dL/dy_t before the gate
        dy = tl.load(dout_ptr + io, mask=mask_dt, other=0.0).to(ACC)  # (D, T)
        if HAS_Z:
            y = tl.sum(hs * Ct, axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            z = tl.load(z_ptr + io, mask=mask_dt, other=0.0).to(ACC)
            sig = _sigmoid(z)
            tl.store(dz_ptr + io, dy * y * sig * (1.0 + z * (1.0 - sig)), mask=mask_dt)  # d silu = s (1 + z (1-s))
            dy *= z * sig
        du = tl.zeros((BLOCK_D, BLOCK_T), dtype=ACC)
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)

        # 3. g_t = dL/dh_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}: a reverse scan whose coefficient at t is the
        # decay of step t+1 (loaded shifted; 1 at the tile's end and past L), then the carry from the next tile
        shifted = t_offs + 1
        mask_next = mask_d[:, None] & ((shifted < L) & not_tile_end)[None, :]
        _, dt_next = _load_delta(delta_ptr, bias_ptr, row, d_offs, shifted, mask_d, mask_next, L,
                                 HAS_BIAS, SOFTPLUS, ACC)
        dA_next = tl.exp(dt_next[:, None, :] * A[:, :, None])  # (D, N, T)
        coef, g = tl.associative_scan((dA_next, Ct * dy[:, None, :]), 2, _affine_combine, reverse=True)
        g += coef * g_carry[:, :, None]  # (D, N, T)
        g_carry = tl.sum(tl.where(is_first, dA * g, 0.0), axis=2)  # dL/dh entering the tile

        # 4. the inputs' gradients, elementwise in (h_t, g_t); dA_t h_{t-1} = h_t - x_t
        decayed = hs - x  # (D, N, T)
        gB = tl.sum(g * Bt, axis=1)  # (D, T)
        du += gB * dt
        ddt = gB * u + tl.sum(g * A[:, :, None] * decayed, axis=1)  # (D, T), w.r.t. delta after softplus
        if SOFTPLUS:
            ddt *= _sigmoid(raw)
        ddt = tl.where(mask_dt, ddt, 0.0)  # past L, g carries the last state's gradient: no step there
        dbias_acc += tl.sum(ddt, axis=1)
        dA_acc += tl.sum(g * dt[:, None, :] * decayed, axis=2)
        tl.store(du_ptr + io, du, mask=mask_dt)
        tl.store(ddelta_ptr + io, ddt, mask=mask_dt)

        dB_t = g * (dt * u)[:, None, :]  # (D, N, T)
        dC_t = hs * dy[:, None, :]  # (D, N, T)
        mask_nt = mask_n[:, None] & mask_t[None, :]  # (N, T)
        if B_VARIABLE:
            tl.store(dB_ptr + part_off + t_offs[None, :], tl.sum(dB_t, axis=0), mask=mask_nt)
        else:
            dB_acc += tl.sum(dB_t, axis=2)
        if C_VARIABLE:
            tl.store(dC_ptr + part_off + t_offs[None, :], tl.sum(dC_t, axis=0), mask=mask_nt)
        else:
            dC_acc += tl.sum(dC_t, axis=2)

    tl.store(dh0_ptr + state_off, g_carry, mask=mask_dn)
    tl.store(dA_ptr + state_off, dA_acc, mask=mask_dn)
    if not B_VARIABLE:
        tl.store(dB_ptr + state_off, dB_acc, mask=mask_dn)
    if not C_VARIABLE:
        tl.store(dC_ptr + state_off, dC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + b * dim + d_offs, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * dim + d_offs, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------

def _bc_layout(X: Tensor, dim: int) -> tuple[bool, int, tuple[int, int, int, int]]:
    """(time-varying, channels per group, strides (batch, group, N, L)) of B or C in any accepted layout."""
    if X.dim() == 2:  # (dim, N): row d is channel d's
        return False, 1, (0, X.stride(0), X.stride(1), 0)
    if X.dim() == 3:  # (batch, N, L): one group of all channels
        return True, dim, (X.stride(0), 0, X.stride(1), X.stride(2))
    return True, dim // X.shape[1], tuple(X.stride())  # (batch, G, N, L)


def _launch_config(dim: int, N: int, L: int, chunk_size: int, cpgs: list[int]) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_T): powers of two; BLOCK_T the largest one <= chunk_size (at most 64 and not past
    L); BLOCK_D as many channels as fit a register tile, dividing every grouped B/C's channels per group."""
    block_n = triton.next_power_of_2(N)
    block_t = min(1 << (min(chunk_size, _MAX_BLOCK_T).bit_length() - 1), triton.next_power_of_2(L))
    block_d = min(_MAX_BLOCK_D, triton.next_power_of_2(dim), max(1, _MAX_TILE // (block_n * block_t)))
    for cpg in cpgs:
        if cpg < dim:  # G > 1 groups: a block must not straddle two
            while cpg % block_d:
                block_d //= 2
    return block_d, block_n, block_t


def _acc_dtype(*ts: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size):
        batch, dim, L = u.shape
        N = A.shape[1]
        acc = _acc_dtype(u, delta, A, B, C, initial_state)
        u, delta, z = u.contiguous(), delta.contiguous(), z.contiguous() if z is not None else None
        A = A.contiguous()
        D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
        b_var, b_cpg, b_str = _bc_layout(B, dim)
        c_var, c_cpg, c_str = _bc_layout(C, dim)
        block_d, block_n, block_t = _launch_config(dim, N, L, chunk_size, [b_cpg, c_cpg])
        n_tiles = triton.cdiv(L, block_t)
        grid = (triton.cdiv(dim, block_d), batch)

        out = torch.empty_like(u)  # (b, d, L) in u's dtype
        last = torch.empty(batch, dim, N, device=u.device, dtype=acc)
        store = any(ctx.needs_input_grad)
        states = torch.empty(batch, dim, N, n_tiles if store else 0, device=u.device, dtype=acc)
        h0 = initial_state.contiguous() if initial_state is not None else None
        _selective_fwd_kernel[grid](
            u, delta, A, B, C, D, z, delta_bias, h0, out, last, states,
            dim, L, N, n_tiles, *b_str, b_cpg, *c_str, c_cpg,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            HAS_H0=h0 is not None, B_VARIABLE=b_var, C_VARIABLE=c_var, STORE_STATES=store,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, ACC=_TL_DTYPE[acc],
            **launch_options(block_d, block_n, block_t),
        )
        if store:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states)
            ctx.config = (delta_softplus, block_d, block_n, block_t, acc)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, initial_state, states = ctx.saved_tensors
        delta_softplus, block_d, block_n, block_t, acc = ctx.config
        batch, dim, L = u.shape
        N = A.shape[1]
        n_tiles = states.shape[-1]
        b_var, b_cpg, b_str = _bc_layout(B, dim)
        c_var, c_cpg, c_str = _bc_layout(C, dim)
        n_blocks = triton.cdiv(dim, block_d)
        kw = {"device": u.device, "dtype": acc}

        du, ddelta = torch.empty(batch, dim, L, **kw), torch.empty(batch, dim, L, **kw)
        dz = torch.empty(batch, dim, L, **kw) if z is not None else None
        dh0, dA = torch.empty(batch, dim, N, **kw), torch.empty(batch, dim, N, **kw)
        dD = torch.empty(batch, dim, **kw) if D is not None else None
        dbias = torch.empty(batch, dim, **kw) if delta_bias is not None else None
        dB = torch.empty(*((batch, n_blocks, N, L) if b_var else (batch, dim, N)), **kw)
        dC = torch.empty(*((batch, n_blocks, N, L) if c_var else (batch, dim, N)), **kw)
        _selective_bwd_kernel[(n_blocks, batch)](
            u, delta, A, B, C, D, z, delta_bias, states,
            dout.contiguous(), dlast.contiguous(),
            du, ddelta, dz, dh0, dA, dD, dbias, dB, dC,
            dim, L, N, n_tiles, *b_str, b_cpg, *c_str, c_cpg,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            B_VARIABLE=b_var, C_VARIABLE=c_var,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, ACC=_TL_DTYPE[acc],
            **launch_options(block_d, block_n, block_t, num_warps=8 if block_d * block_n * block_t >= _MAX_TILE
                             else None),
        )

        def reduce_bc(part: Tensor, X: Tensor) -> Tensor:  # partials -> X's shape and dtype
            if X.dim() == 2:
                return part.sum(0).to(X.dtype)  # (b, d, N) -> (d, N)
            G = 1 if X.dim() == 3 else X.shape[1]
            return part.view(batch, G, n_blocks // G, N, L).sum(2).view(X.shape).to(X.dtype)

        return (
            du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), reduce_bc(dB, B), reduce_bc(dC, C),
            dD.sum(0).to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            dh0.to(initial_state.dtype) if initial_state is not None else None,
            None, None,
        )


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan in Triton, with :func:`condorbrain.ssm.selective_scan`'s arguments and results.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t h_t + D u_t,   out = y * silu(z)

    Args:
        u, delta: (batch, dim, L). ``delta`` becomes softplus(delta + delta_bias) when asked.
        A: (dim, N), real.
        B, C: each (dim, N) time-invariant, (batch, N, L), or (batch, G, N, L) with G groups splitting dim evenly.
        D: (dim,) skip connection. z: (batch, dim, L) gate. delta_bias: (dim,).
        return_last_state: also return h_{L-1}, (batch, dim, N).
        initial_state: (batch, dim, N), the state before step 0.
        chunk_size: steps per tile, rounded down to a power of two and capped at 64: one stored state per tile for
            the backward (memory) against the tile's registers; the result does not depend on it.

    Returns:
        out (batch, dim, L) in u's dtype, and the last state (batch, dim, N) in the compute dtype (float32, or
        float64 for float64 inputs) if asked. Differentiable in every tensor argument.

    Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (slow; for tests).
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size)
    usable, why = status(u.device)
    if not usable:
        raise RuntimeError(f"the Triton selective scan cannot run on {u.device}: {why}; use "
                           f"condorbrain.ssm.selective_scan instead")
    out, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                       chunk_size)
    return (out, last) if return_last_state else out

