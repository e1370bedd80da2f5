"""Plain step-by-step references for the scans: slow, obviously correct, and what every fast path is tested against.

They follow state-spaces/mamba's ``selective_scan_ref`` and ``ssd_minimal_discrete`` in spirit: one Python loop over
time, no tricks. Use them in float64 to check a fast path; never in a training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_bc(X: Tensor, batch: int, dim: int, L: int) -> Tensor:
    """B or C in any accepted layout ((dim, N), (batch, N, L) or (batch, G, N, L)) as a (batch, dim, L, N) tensor
    (a view, or for groups a copy)."""
    if X.dim() == 2:  # (dim, N): time-invariant
        return X[None, :, None, :].expand(batch, dim, L, X.shape[-1])
    if X.dim() == 3:  # (batch, N, L): shared by every channel
        return X.transpose(1, 2)[:, None].expand(batch, dim, L, X.shape[1])
    b, G, N, _ = X.shape  # (batch, G, N, L): G groups splitting dim evenly
    return X.transpose(2, 3)[:, :, None].expand(b, G, dim // G, L, N).reshape(b, dim, L, N)


def selective_scan_ref(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan, one time step at a time.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z).

    u, delta: (batch, dim, L); A: (dim, N); B, C: (dim, N) | (batch, N, L) | (batch, G, N, L); D: (dim,);
    z: (batch, dim, L); delta_bias: (dim,); initial_state: (batch, dim, N). Returns out (batch, dim, L) and, if
    asked, the last state (batch, dim, N). Computed in the inputs' dtype.
    """
    batch, dim, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bf = expand_bc(B, batch, dim, L)  # (batch, dim, L, N)
    Cf = expand_bc(C, batch, dim, L)
    N = A.shape[1]
    h = u.new_zeros(batch, dim, N) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]  # (batch, dim, 1)
        h = torch.exp(dt * A) * h + dt * Bf[:, :, t] * u[:, :, t, None]  # (batch, dim, N)
        ys.append((h * Cf[:, :, t]).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=-1)  # (batch, dim, L)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


def ssd_scan_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-2's SSD recurrence with a scalar A per head, one time step at a time.

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,  y_t = h_t C_t + D x_t,  out = y * silu(z).

    x: (b, L, h, p); dt: (b, L, h); A: (h,); B, C: (b, L, g, n); D: (h,) or (h, p); z: (b, L, h, p);
    dt_bias: (h,); initial_states: (b, h, p, n). Returns y (b, L, h, p) and, if asked, final states (b, h, p, n).
    """
    b, L, nh, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    Bh = B.repeat_interleave(nh // g, dim=2)  # (b, L, h, n)
    Ch = C.repeat_interleave(nh // g, dim=2)
    state = x.new_zeros(b, nh, p, n) if initial_states is None else initial_states
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (b, h, 1, 1)
        upd = (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, h, p, n)
        state = decay * state + upd
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)  # (b, L, h, p)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z)
    return (y, state) if return_final_states else y
