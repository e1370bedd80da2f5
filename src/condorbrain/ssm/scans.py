"""The two scans, with mamba_ssm's argument names, shapes and meaning.

``selective_scan`` is Mamba's (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``) and ``ssd_scan`` is
Mamba-2's (``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``), so code written against those runs
here unchanged on the CPU.

Paths, chosen per call (``scan_backend()`` says which one a call takes):

* ``compiled``: the OpenMP C++ scans of ``csrc/`` (CPU float32/float64). Forward keeps one state per chunk of
  ``chunk_size`` steps; backward recomputes a chunk at a time, so memory is O(b*dim*L + b*dim*N*L/chunk).
* ``torch``: pure PyTorch, chunked, for any device or when no compiler is at hand. Mamba: log-depth
  (Hillis-Steele) scans over tiles of 8 steps inside each chunk, each chunk under activation checkpointing;
  Mamba-2: the chunked SSD algorithm (intra-chunk quadratic form + inter-chunk state passing).

* ``triton``: the GPU kernels of :mod:`condorbrain.ssm.triton` (``selective.py``, ``ssd.py``), the default for CUDA
  tensors where triton imports; states and decay sums in float32 whatever the input dtype.

All are tested against the step-by-step references in :mod:`condorbrain.ssm.reference` (outputs and gradients).
Half-precision inputs are scanned in float32 and the result cast back, as mamba_ssm does.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from condorbrain.ssm import cpu_kernel
from condorbrain.ssm import triton as triton_path
from condorbrain.ssm._checks import check_same_device, check_selective_scan_args, check_tensor
from condorbrain.ssm.reference import expand_bc

__all__ = ["selective_scan", "ssd_scan", "scan_backend"]


def scan_backend(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The path a scan on ``device`` computing in ``dtype`` takes: ``"triton"``, ``"compiled"`` or ``"torch"``.

    ``CONDORBRAIN_SCAN_BACKEND`` = ``auto`` (default: Triton for CUDA tensors where triton imports, the compiled C++
    on the CPU, PyTorch otherwise) | ``torch`` | ``compiled`` | ``triton`` (an error where it cannot run; on the CPU
    it runs under Triton's interpreter, ``TRITON_INTERPRET=1``: for tests).
    """
    choice = os.environ.get("CONDORBRAIN_SCAN_BACKEND", "auto")
    if choice not in ("auto", "torch", "compiled", "triton"):
        raise ValueError(f"CONDORBRAIN_SCAN_BACKEND must be auto, torch, compiled or triton, got {choice!r}")
    dev = torch.device(device)
    if choice == "triton":
        ok, why = triton_path.status(dev)
        if not ok:
            raise RuntimeError(f"CONDORBRAIN_SCAN_BACKEND=triton but the Triton kernels cannot run: {why}")
        return "triton"
    if choice == "auto" and dev.type == "cuda" and triton_path.available(dev):
        return "triton"
    if choice == "torch" or dev.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return "torch"
    if cpu_kernel.available():
        return "compiled"
    if choice == "compiled":
        raise RuntimeError(f"CONDORBRAIN_SCAN_BACKEND=compiled but the CPU scan cannot be built: "
                           f"{cpu_kernel.unavailable_reason()}")
    return "torch"


def _compute_dtype(*ts: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Mamba: selective_scan
# ----------------------------------------------------------------------------------------------------------------

def _log_depth_scan(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + x_t along dim 2 in log2(T) steps (Hillis-Steele).

    Returns (cumulative decay prod_{s<=t} a_s, h_t with h_{-1} = 0). Every factor is a product of decays <= 1
    (for A < 0), so nothing overflows however long the chunk or large delta.
    """
    T = a.shape[2]
    k = 1
    while k < T:
        x = torch.cat([x[:, :, :k], x[:, :, k:] + a[:, :, k:] * x[:, :, :-k]], dim=2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], dim=2)
        k *= 2
    return a, x


_TILE = 8  # steps per log-depth scan inside a chunk: fewer doubling levels (3) move less memory than one 64-deep scan


def _selective_chunk(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    # u, delta: (b, d, T); A: (d, N); B, C: one chunk of B and C in their own layout; h: (b, d, N)
    batch, dim, T = u.shape
    Bc, Cc = expand_bc(B, batch, dim, T), expand_bc(C, batch, dim, T)  # (b, d, T, N), inside the checkpoint
    ys = []
    for s0 in range(0, T, _TILE):  # tiles of the chunk, each a log-depth scan
        s1 = min(T, s0 + _TILE)
        dA = torch.exp(delta[:, :, s0:s1, None] * A[:, None, :])  # (b, d, t, N)
        x = (delta[:, :, s0:s1] * u[:, :, s0:s1])[..., None] * Bc[:, :, s0:s1]  # (b, d, t, N)
        decay, hs = _log_depth_scan(dA, x)
        hs = hs + decay * h[:, :, None, :]  # (b, d, t, N)
        ys.append((hs * Cc[:, :, s0:s1]).sum(-1))  # (b, d, t)
        h = hs[:, :, -1]
    # clone: a view of the last step would keep the whole (b, d, t, N) tile alive as the next chunk's input
    return torch.cat(ys, dim=-1), h.clone()  # (b, d, T), (b, d, N)


def _selective_scan_torch(u, delta, A, B, C, h0, chunk):
    batch, dim, L = u.shape
    h = u.new_zeros(batch, dim, A.shape[1]) if h0 is None else h0
    ys = []
    for t0 in range(0, L, chunk):  # a loop over chunks, not over time steps
        t1 = min(L, t0 + chunk)
        args = (u[..., t0:t1], delta[..., t0:t1], A, B if B.dim() == 2 else B[..., t0:t1],
                C if C.dim() == 2 else C[..., t0:t1], h)
        if torch.is_grad_enabled():  # keep only the chunk boundary states for backward
            y, h = checkpoint(_selective_chunk, *args, use_reentrant=False)
        else:
            y, h = _selective_chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=-1), h


def selective_scan(
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
    """Mamba's selective scan (drop-in for ``mamba_ssm``'s ``selective_scan_fn``).

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t h_t + D u_t,   out = y * silu(z)

    Args:
        u, delta: (batch, dim, L). ``delta`` becomes softplus(delta + delta_bias) when asked.
        A: (dim, N), real (negative for a stable, decaying state).
        B, C: each (dim, N) time-invariant, (batch, N, L), or (batch, G, N, L) with G groups splitting dim evenly.
        D: (dim,) skip connection. z: (batch, dim, L) gate. delta_bias: (dim,).
        return_last_state: also return h_{L-1}, (batch, dim, N).
        initial_state: (batch, dim, N), the state before step 0 (an extension of mamba_ssm's API, used to run a
            long series in windows).
        chunk_size: steps per chunk (memory / recomputation trade-off; the result does not depend on it).

    Returns:
        out (batch, dim, L) in u's dtype, and the last state (batch, dim, N) in the compute dtype if asked.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size)
    batch, dim, _ = u.shape
    cdt = _compute_dtype(u, delta, A, B, C, initial_state)
    if scan_backend(u.device, cdt) == "triton":
        from condorbrain.ssm.triton.selective import selective_scan_triton  # imports triton: only on this path

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                     initial_state, chunk_size)
    uc, dc, Ac, Bc, Cc = (t.to(cdt) for t in (u, delta, A, B, C))
    h0 = initial_state.to(cdt) if initial_state is not None else None
    if delta_bias is not None:
        dc = dc + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dc = F.softplus(dc)

    if scan_backend(u.device, cdt) == "compiled":
        Bk, lb = cpu_kernel.canonical_bc(Bc, batch, dim)
        Ck, lc = cpu_kernel.canonical_bc(Cc, batch, dim)
        y, h_last = cpu_kernel.compiled_scan(
            uc.contiguous(), dc.contiguous(), Ac.contiguous(), Bk, Ck,
            h0.contiguous() if h0 is not None else None, lb, lc, chunk_size)
    else:
        y, h_last = _selective_scan_torch(uc, dc, Ac, Bc, Cc, h0, chunk_size)

    if D is not None:
        y = y + D.to(cdt)[:, None] * uc
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(u.dtype)
    return (y, h_last) if return_last_state else y


# ----------------------------------------------------------------------------------------------------------------
# Mamba-2: ssd_scan
# ----------------------------------------------------------------------------------------------------------------

def _segsum(x: Tensor) -> Tensor:
    """(..., T) -> (..., T, T): out[i, j] = sum_{k=j+1..i} x_k for i >= j, -inf above the diagonal.

    Masked cumsum rather than a difference of cumsums, so no cancellation between two large partial sums.
    """
    T = x.shape[-1]
    xx = x[..., None].expand(*x.shape, T)  # (..., T, T): xx[i, j] = x_i
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), -1)
    s = torch.cumsum(xx.masked_fill(~below, 0), dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device)), -torch.inf)


def _ssd_torch(x, dt, A, B, C, chunk, h0):
    """Chunked SSD (Mamba-2 paper, "minimal discrete" form) with groups, initial and final states."""
    b, L, nh, p = x.shape
    g, n = B.shape[2], B.shape[3]
    k = nh // g  # heads per group
    pad = (-L) % chunk
    if pad:  # dt = 0 on padded steps: decay 1, no update, so the final state is untouched
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c, T = (L + pad) // chunk, chunk
    Xs = (x * dt[..., None]).view(b, c, T, g, k, p)  # dt-scaled input
    Ad = (dt * A).view(b, c, T, nh).permute(0, 3, 1, 2)  # (b, h, c, T) log-decays
    Bv, Cv = B.view(b, c, T, g, n), C.view(b, c, T, g, n)
    seg = _segsum(Ad)  # (b, h, c, T, T)
    Acs = torch.cumsum(Ad, dim=-1)  # (b, h, c, T)
    # 1. within each chunk: y_l = sum_{s<=l} C_l.B_s exp(sum_{s<r<=l} Ad_r) xdt_s
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cv, Bv)  # (b, g, c, T, T)
    M = torch.exp(seg).view(b, g, k, c, T, T) * CB[:, :, None]  # (b, g, k, c, T, T)
    y = torch.einsum("bgkcls,bcsgkp->bclgkp", M, Xs)  # (b, c, T, g, k, p)
    # 2. each chunk's own final state, from its inputs alone
    decay_to_end = torch.exp(seg[..., -1, :]).view(b, g, k, c, T)  # exp(sum_{s<r<T} Ad_r)
    states = torch.einsum("bcsgn,bgkcs,bcsgkp->bcgkpn", Bv, decay_to_end, Xs)  # (b, c, g, k, p, n)
    # 3. pass states between chunks (a loop over chunks, not time steps)
    chunk_decay = torch.exp(Acs[..., -1]).view(b, g, k, c)  # (b, g, k, c)
    s = x.new_zeros(b, g, k, p, n) if h0 is None else h0.view(b, g, k, p, n)
    entering = []
    for i in range(c):
        entering.append(s)
        s = chunk_decay[..., i, None, None] * s + states[:, i]
    S = torch.stack(entering, dim=1)  # (b, c, g, k, p, n): state before each chunk
    # 4. contribution of the carried state: y_l += C_l . (exp(Acs_l) S)
    y = y + torch.einsum("bclgn,bcgkpn,bgkcl->bclgkp", Cv, S, torch.exp(Acs).view(b, g, k, c, T))
    return y.reshape(b, c * T, nh, p)[:, :L], s.reshape(b, nh, p, n)


def ssd_scan(
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
    """Mamba-2's SSD scan (drop-in for ``mamba_ssm``'s ``mamba_chunk_scan_combined``).

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T  (per head: state (p, n), scalar A),  y_t = h_t C_t + D x_t,
    out = y * silu(z).

    Args:
        x: (b, L, h, p). dt: (b, L, h), becomes softplus(dt + dt_bias) when asked. A: (h,).
        B, C: (b, L, g, n) with g dividing h. chunk_size: steps per chunk (any L works, not only multiples).
        D: (h,) or (h, p). z: (b, L, h, p). dt_bias: (h,). initial_states: (b, h, p, n).

    Returns:
        y (b, L, h, p) in x's dtype and, if asked, the final states (b, h, p, n) in the compute dtype.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a tensor of shape (b, L, h, p), got {getattr(x, 'shape', type(x))}")
    b, L, nh, p = x.shape
    check_tensor("x", x, (b, L, nh, p), "(b, L, h, p)")
    check_tensor("dt", dt, (b, L, nh), "(b, L, h)")
    check_tensor("A", A, (nh,), "(h,)")
    if not isinstance(B, Tensor) or B.dim() != 4:
        raise ValueError(f"B must have shape (b, L, g, n), got {getattr(B, 'shape', type(B))}")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or nh % g:
        raise ValueError(f"B and C have g={g} groups, which must divide the number of heads h={nh}")
    check_tensor("B", B, (b, L, g, n), "(b, L, g, n)")
    check_tensor("C", C, (b, L, g, n), "(b, L, g, n)")
    if D is not None:
        check_tensor("D", D, (nh,) if D.dim() == 1 else (nh, p), "(h,) or (h, p)")
    if z is not None:
        check_tensor("z", z, (b, L, nh, p), "(b, L, h, p)")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, (nh,), "(h,)")
    if initial_states is not None:
        check_tensor("initial_states", initial_states, (b, nh, p, n), "(b, h, p, n)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)

    cdt = _compute_dtype(x, dt, A, B, C, initial_states)
    if cdt == torch.float32 and scan_backend(x.device, cdt) == "triton":  # float64 stays on the PyTorch path
        from condorbrain.ssm.triton.ssd import ssd_scan_triton  # imports triton: only on this path

        return ssd_scan_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states,
                               return_final_states)
    xc, dtc, Ac, Bc, Cc = (t.to(cdt) for t in (x, dt, A, B, C))
    h0 = initial_states.to(cdt) if initial_states is not None else None
    if dt_bias is not None:
        dtc = dtc + dt_bias.to(cdt)
    if dt_softplus:
        dtc = F.softplus(dtc)

    scan = cpu_kernel.compiled_ssd if scan_backend(x.device, cdt) == "compiled" else _ssd_torch
    y, final = scan(xc, dtc, Ac, Bc, Cc, chunk_size, h0)

    if D is not None:
        Dc = D.to(cdt)
        y = y + xc * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y
