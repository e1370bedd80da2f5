"""Mamba-2 (SSD) layer: a drop-in for ``mamba_ssm.modules.mamba2.Mamba2`` that runs on the CPU.

Constructor arguments, defaults, parameter names, shapes and initialisation follow state-spaces/mamba, so a
``state_dict`` saved from ``mamba_ssm`` loads here with ``strict=True``. The layer computes::

    z0, x0, z, xBC, dt = in_proj(u).split(d_mlp, d_mlp, d_ssm, d_ssm + 2*ngroups*d_state, nheads)
    x, B, C = silu(causal_depthwise_conv1d(xBC)).split(d_ssm, ngroups*d_state, ngroups*d_state)
    dt = clamp(softplus(dt + dt_bias), *dt_limit)
    y  = ssd_scan(x, dt, A=-exp(A_log), B, C, D)                 # per head: scalar decay, state (headdim, d_state)
    y  = norm(y, z)  if rmsnorm  else  y * silu(z)                # gated RMSNorm, one group per B/C group
    y  = cat(silu(z0) * x0, y)                                    # only when d_ssm < d_inner
    out = out_proj(y)

``forward(u)``, ``forward(u, state, return_state=True)`` (windows of a long series) and ``step`` (one time step,
states in place) give the same numbers; see :mod:`condorbrain.ssm.mamba` for the state conventions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from condorbrain.ssm.conv import causal_conv1d
from condorbrain.ssm.mamba import (
    SSMState,
    check_hidden_states,
    check_state,
    inverse_softplus,
    records_grad,
    takes_triton_step,
    upcast,
)
from condorbrain.ssm.pending import PendingScaled
from condorbrain.ssm.scans import scan_backend, ssd_scan

__all__ = ["Mamba2", "RMSNormGated"]


class RMSNormGated(nn.Module):
    """Gated, grouped RMSNorm: ``mamba_ssm.ops.triton.layernorm_gated.RMSNorm`` (parameter ``weight``, no bias).

    With a gate z: ``norm(x * silu(z))`` if not ``norm_before_gate``, else ``norm(x) * silu(z)``. The RMS is taken
    over groups of ``group_size`` channels (None = one group over the whole last dimension). Computed in float32 (or
    float64 for float64 inputs) and cast back, as ``mamba_ssm``'s reference does.

    Parameters
    ----------
    hidden_size : int
        Size of the last dimension.
    eps : float
        Added to the mean square.
    group_size : int or None
        Channels per normalisation group; must divide ``hidden_size``.
    norm_before_gate : bool
        Where the gate is applied (see above).
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if group_size is not None and (group_size < 1 or hidden_size % group_size):
            raise ValueError(f"group_size={group_size} must divide hidden_size={hidden_size}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """x, z: (..., hidden_size) -> (..., hidden_size)."""
        dtype = x.dtype
        cdt = torch.float64 if dtype == torch.float64 else torch.float32
        x = x.to(cdt)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.to(cdt))
        group = self.group_size or x.shape[-1]
        xg = x.unflatten(-1, (x.shape[-1] // group, group))  # (..., n_groups, group_size)
        out = (xg * torch.rsqrt(xg.square().mean(dim=-1, keepdim=True) + self.eps)).flatten(-2)
        out = out * self.weight.to(cdt)
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.to(cdt))
        return out.to(dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")


class Mamba2(nn.Module):
    """Mamba-2 mixer, ``mamba_ssm.modules.mamba2.Mamba2``'s parameters and maths (no tensor parallelism).

    Parameters
    ----------
    d_model : int
        Width of the input and output, D.
    d_state : int
        SSM state size N per head.
    d_conv : int
        Kernel size of the causal depthwise convolution over (x, B, C).
    conv_init : float or None
        If set, conv1d.weight is initialised uniform in +-conv_init (else PyTorch's default).
    expand : int
        d_inner = expand * d_model.
    headdim : int
        Channels per head, P; nheads = d_ssm / headdim.
    d_ssm : int or None
        Channels that go through the SSM (None = d_inner); the other d_inner - d_ssm form a gated MLP branch.
    ngroups : int
        Groups sharing B and C (like grouped-query attention); must divide nheads.
    A_init_range : (float, float)
        A per head initialised as -uniform(A_init_range), stored as A_log.
    D_has_hdim : bool
        D per channel (d_ssm,) instead of per head (nheads,).
    rmsnorm : bool
        Gated RMSNorm ``norm(y, z)`` (else ``y * silu(z)`` inside the scan).
    norm_before_gate : bool
        See :class:`RMSNormGated`.
    dt_min, dt_max, dt_init_floor : float
        softplus(dt_bias) initialised log-uniformly in [dt_min, dt_max], floored at dt_init_floor.
    dt_limit : (float, float)
        dt = softplus(dt + dt_bias) is clamped to this range (gradient zero where clamped), as ``mamba_ssm``.
    bias, conv_bias : bool
        Biases of in_proj/out_proj and of the convolution.
    chunk_size : int
        Chunk length of the SSD scan (memory / speed only; results do not depend on it).
    use_mem_eff_path : bool
        Accepted for compatibility; ignored.
    layer_idx : int or None
        Position in a stack (kept for compatibility).
    device, dtype
        Factory arguments. D stays float32, as in ``mamba_ssm``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: float | None = None,
        expand: int = 2,
        headdim: int = 64,
        d_ssm: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        use_mem_eff_path: bool = True,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                            ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.d_inner = self.expand * self.d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if not 0 < self.d_ssm <= self.d_inner or self.d_ssm % headdim:
            raise ValueError(f"d_ssm={self.d_ssm} must be in (0, d_inner={self.d_inner}] and a multiple of "
                             f"headdim={headdim}")
        self.ngroups = ngroups
        self.nheads = self.d_ssm // self.headdim
        if self.nheads % ngroups:
            raise ValueError(f"ngroups={ngroups} must divide nheads = d_ssm / headdim = {self.nheads}")
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not 0.0 <= dt_limit[0] < dt_limit[1]:
            raise ValueError(f"dt_limit must satisfy 0 <= low < high, got {dt_limit}")
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx

        # in_proj output order: [z0, x0, z, x, B, C, dt] (z0, x0 only when d_ssm < d_inner).
        d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
        self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=bias, **factory_kwargs)

        conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        self.conv1d = nn.Conv1d(
            in_channels=conv_dim,
            out_channels=conv_dim,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=conv_dim,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        if self.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -self.conv_init, self.conv_init)
        self.act = nn.SiLU()

        # dt bias such that softplus(dt_bias) is log-uniform in [dt_min, dt_max], floored at dt_init_floor.
        dt = torch.exp(
            torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.dt_bias._no_weight_decay = True

        # A per head, uniform in A_init_range (stored as log).
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        # D "skip" parameter, float32.
        self.D = nn.Parameter(torch.ones(self.d_ssm if self.D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True

        if self.rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=self.norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: x, B and C."""
        return self.d_ssm + 2 * self.ngroups * self.d_state

    @property
    def d_mlp(self) -> int:
        """Channels of the gated-MLP branch, d_inner - d_ssm (0 by default)."""
        return self.d_inner - self.d_ssm

    def _dt(self, dt: Tensor) -> Tensor:
        """softplus(dt + dt_bias) in float32 (float64 for float64 inputs), clamped to dt_limit."""
        cdt = torch.float64 if dt.dtype == torch.float64 else torch.float32
        dt = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(min=self.dt_limit[0], max=self.dt_limit[1])
        return dt

    def _D(self) -> Tensor:
        """D as the scan wants it: (nheads,) or (nheads, headdim)."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    # ------------------------------------------------------------------------------------------------------------
    def forward(
        self, u: Tensor, state: tuple[Tensor, Tensor] | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, SSMState]:
        """Run the layer over a sequence (or one window of a longer one).

        Parameters
        ----------
        u : Tensor
            (B, L, d_model).
        state : (conv_state, ssm_state) or None
            State left by the previous window: conv_state (B, conv_dim, d_conv), ssm_state (B, nheads, headdim,
            d_state). None = start of the series. Not modified.
        return_state : bool
            Also return the state after the last step, to pass to the next window.

        Returns
        -------
        Tensor (B, L, d_model), and ``SSMState`` if ``return_state``.
        """
        check_hidden_states("u", u, self.d_model)
        batch, seqlen, _ = u.shape
        conv_state = ssm_state = None
        if state is not None:
            conv_state, ssm_state = self._checked_state(state, batch)

        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        if state is None and not return_state and self._fused_path(u):
            return self._fused_forward(zxbcdt)
        z0, x0, z, xBC, dt = torch.split(
            zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)
        xBC, new_conv_state = causal_conv1d(xBC, self.conv1d.weight, self.conv1d.bias, "silu", conv_state,
                                            return_final_state=True)  # (B, L, conv_dim), (B, conv_dim, d_conv)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(upcast(self.A_log))  # (nheads,)
        y, final = ssd_scan(
            x.unflatten(-1, (self.nheads, self.headdim)),  # (B, L, h, p)
            self._dt(dt),  # (B, L, h)
            A,
            B.unflatten(-1, (self.ngroups, self.d_state)),  # (B, L, g, n)
            C.unflatten(-1, (self.ngroups, self.d_state)),  # (B, L, g, n)
            chunk_size=self.chunk_size,
            D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            initial_states=upcast(ssm_state) if ssm_state is not None else None,
            return_final_states=True,
        )  # y: (B, L, h, p), final: (B, h, p, n)
        y = y.flatten(-2)  # (B, L, d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)  # (B, L, d_inner)
        out = self.out_proj(y)  # (B, L, d_model)
        if not return_state:
            return out
        ssm_dtype = ssm_state.dtype if ssm_state is not None else self.in_proj.weight.dtype
        return out, SSMState(new_conv_state, final.to(ssm_dtype))

    def _fused_forward(self, zxbcdt: Tensor) -> Tensor:
        """(B, L, d_in_proj) -> (B, L, d_model): conv + SiLU, SSD, the gated RMSNorm and out_proj as one autograd
        node of Triton kernels reading zxbcdt in place, which keeps only zxbcdt and the scan's output for the backward
        (triton/fused.py)."""
        from condorbrain.ssm.triton.fused import mamba2_fused_forward

        return mamba2_fused_forward(
            zxbcdt, self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log, self._D(),
            self.norm.weight if self.rmsnorm else None, headdim=self.headdim, d_state=self.d_state,
            ngroups=self.ngroups, chunk_size=self.chunk_size, norm_before_gate=self.norm_before_gate,
            eps=self.norm.eps if self.rmsnorm else 1e-5, dt_limit=self.dt_limit,
            out_proj_weight=self.out_proj.weight, out_proj_bias=self.out_proj.bias)

    def forward_prenormed(self, x: Tensor, norm_weight: Tensor, eps: float,
                          pending: Tensor | PendingScaled | None = None,
                          defer_norm: bool = False) -> tuple[Tensor, Tensor | PendingScaled]:
        """(x + pending, forward(rmsnorm(x + pending) * norm_weight)) over a whole sequence on the fused path
        (``_fused_path(x)``): a pre-norm block's residual add and norm joined to in_proj
        (``rmsnorm_linear_triton`` / ``add_rmsnorm_linear_triton``), so that the block keeps its residual stream for
        the backward and not also the normalised copy in_proj would keep (1 KB per token at d_model 512, bf16), and
        the add is no kernel of its own. x, pending: (B, L, d_model), the same dtype; pending None: nothing to add
        (x itself is returned); pending may be a :class:`~condorbrain.ssm.pending.PendingScaled`. Use
        :func:`condorbrain.ssm.blocks.norm_then_mix`, which falls back to the modules elsewhere.

        defer_norm: the caller takes a :class:`~condorbrain.ssm.pending.PendingScaled` as the output, and it is
        returned where no gradient is recorded and the layer's gated norm allows (``defers_norm``): the inference
        forward without the norm's own kernel (``mamba2_deferred_forward``). Else, and by default, a tensor."""
        check_hidden_states("x", x, self.d_model)
        if not self._fused_path(x):
            raise RuntimeError("Mamba2.forward_prenormed runs on the fused Triton path only; use "
                               "condorbrain.ssm.blocks.norm_then_mix, which falls back to forward(norm(x))")
        from condorbrain.ssm.triton import fused

        if pending is None:
            res, zxbcdt = x, fused.rmsnorm_linear_triton(x, norm_weight, eps, self.in_proj.weight, self.in_proj.bias)
        else:
            res, zxbcdt = fused.add_rmsnorm_linear_triton(x, pending, norm_weight, eps, self.in_proj.weight,
                                                          self.in_proj.bias)
        if defer_norm and self.defers_norm(x):
            return res, fused.mamba2_deferred_forward(
                zxbcdt, self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log, self._D(), self.norm.weight,
                self.out_proj.weight, headdim=self.headdim, d_state=self.d_state, chunk_size=self.chunk_size,
                eps=self.norm.eps, dt_limit=self.dt_limit)
        return res, self._fused_forward(zxbcdt)  # (B, L, d_model) each

    def defers_norm(self, x: Tensor) -> bool:
        """Whether ``forward_prenormed(x, ..., defer_norm=True)`` leaves the gated norm pending: on the fused path,
        no gradient recorded, the switch ``condorbrain.ssm.triton.fused._DEFER_NORM`` on, and a norm whose 1/rms
        is one factor per row that out_proj can pass (one group, ``norm_before_gate=False``, no d_mlp branch, no
        out_proj bias)."""
        if not (self.rmsnorm and self.ngroups == 1 and not self.norm_before_gate and self.d_mlp == 0
                and self.out_proj.bias is None and self._fused_path(x) and not records_grad(self, x)):
            return False
        from condorbrain.ssm.triton import fused

        return fused._DEFER_NORM

    def _fused_path(self, u: Tensor) -> bool:
        """Whether a whole-sequence forward of ``u`` takes the fused Triton path: not float64, and the scan backend
        is ``triton`` (``scan_backend``: the default for CUDA tensors where triton imports; on the CPU only when
        asked for, under Triton's interpreter)."""
        return u.dtype != torch.float64 and scan_backend(u.device) == "triton"

    # ------------------------------------------------------------------------------------------------------------
    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance one time step, O(1) in the sequence length, as ``mamba_ssm``'s ``Mamba2.step``.

        Unlike ``mamba_ssm``'s step, groups (ngroups > 1), D_has_hdim and dt_limit are all honoured here, so that
        stepping always reproduces ``forward``. Where ``forward`` takes the fused Triton path (``_fused_path``: CUDA
        by default, not float64) and no gradient is recorded, everything between in_proj and out_proj is two Triton
        launches that read no value back to the host (``condorbrain.ssm.triton.step``, for CUDA graphs); otherwise
        the eager ``_step_reference``.

        Parameters
        ----------
        hidden_states : Tensor
            (B, 1, d_model).
        conv_state : Tensor
            (B, conv_dim, d_conv), updated in place.
        ssm_state : Tensor
            (B, nheads, headdim, d_state), updated in place.

        Returns
        -------
        (out (B, 1, d_model), conv_state, ssm_state)
        """
        check_hidden_states("hidden_states", hidden_states, self.d_model, seqlen=1)
        self._checked_state((conv_state, ssm_state), hidden_states.shape[0])
        if not self._fused_step_path(hidden_states, conv_state, ssm_state):
            return self._step_reference(hidden_states, conv_state, ssm_state)
        # conv, dt, the state update, y, the norm and the d_mlp branch in two Triton launches (triton/step.py)
        from condorbrain.ssm.triton.step import mamba2_step_triton

        zxbcdt = self.in_proj(hidden_states.squeeze(1))  # (B, d_in_proj)
        y = mamba2_step_triton(
            zxbcdt, conv_state, ssm_state, self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log,
            self._D(), self.norm.weight if self.rmsnorm else None, headdim=self.headdim, d_state=self.d_state,
            ngroups=self.ngroups, norm_before_gate=self.norm_before_gate,
            eps=self.norm.eps if self.rmsnorm else 1e-5, dt_limit=self.dt_limit,
            out_dtype=hidden_states.dtype)  # (B, d_inner)
        out = self.out_proj(y)  # (B, d_model)
        return out.unsqueeze(1), conv_state, ssm_state

    def step_prenormed(self, x: Tensor, pending: Tensor | None, norm_weight: Tensor, eps: float, conv_state: Tensor,
                       ssm_state: Tensor) -> tuple[Tensor, Tensor]:
        """A pre-norm block's mixer step with its residual add and norm: (x + pending, step(rmsnorm(x + pending) *
        norm_weight)) in three Triton launches (``rmsnorm_gemv_triton``: add + norm + in_proj; the state update;
        ``_mamba2_step_out``: the gated norm + out_proj) where the two-kernel step with separate norm and
        projections takes five. For a few rows on the Triton step path (its GEMVs re-read the weights per row): use
        :func:`condorbrain.ssm.blocks.norm_then_step`, which decides. x, pending: (B, 1, d_model); the states advance
        in place. Returns ((B, 1, d_model) residual, (B, 1, d_model) the mixer's output)."""
        check_hidden_states("x", x, self.d_model, seqlen=1)
        self._checked_state((conv_state, ssm_state), x.shape[0])
        from condorbrain.ssm.triton.step import mamba2_step_triton, rmsnorm_gemv_triton

        # programmatic dependent launch (Hopper): each kernel loads its weights (and the states) while the one
        # before finishes; that kernel is this step's, or with a pending add the previous block's out_proj
        res, zxbcdt = rmsnorm_gemv_triton(x[:, 0], None if pending is None else pending[:, 0], norm_weight, eps,
                                          self.in_proj.weight, self.in_proj.bias,
                                          pdl=pending is not None)  # (B, d_model), (B, d_in_proj)
        out = mamba2_step_triton(
            zxbcdt, conv_state, ssm_state, self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log,
            self._D(), self.norm.weight if self.rmsnorm else None, headdim=self.headdim, d_state=self.d_state,
            ngroups=self.ngroups, norm_before_gate=self.norm_before_gate,
            eps=self.norm.eps if self.rmsnorm else 1e-5, dt_limit=self.dt_limit, out_dtype=x.dtype,
            out_proj_weight=self.out_proj.weight, out_proj_bias=self.out_proj.bias, pdl=True)  # (B, d_model)
        return (x if pending is None else res.unsqueeze(1)), out.unsqueeze(1)

    def _fused_step_path(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> bool:
        """Whether ``step`` takes the Triton step (:func:`condorbrain.ssm.mamba.takes_triton_step`, the rule of
        :meth:`_fused_path` with the states too and no gradient wanted)."""
        return takes_triton_step(self, hidden_states, conv_state, ssm_state)

    def _step_reference(
        self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``step`` op by op in PyTorch (any device and dtype, differentiable): the reference the Triton step is
        tested against. Arguments as ``step``'s, already checked."""
        dtype = hidden_states.dtype
        zxbcdt = self.in_proj(hidden_states.squeeze(1))  # (B, d_in_proj)
        z0, x0, z, xBC, dt = torch.split(
            zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))  # (B, conv_dim, d_conv)
        conv_state[:, :, -1] = xBC
        xBC = torch.sum(conv_state * self.conv1d.weight.squeeze(1), dim=-1)  # (B, conv_dim)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        xBC = self.act(xBC).to(dtype=dtype)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)

        A = -torch.exp(upcast(self.A_log))  # (nheads,)
        dt = self._dt(dt)  # (B, nheads)
        dA = torch.exp(dt * A)  # (B, nheads)
        heads_per_group = self.nheads // self.ngroups
        B = B.unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(heads_per_group, dim=1)  # (B, h, n)
        C = C.unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(heads_per_group, dim=1)  # (B, h, n)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (B, h, p)
        dBx = torch.einsum("bh,bhn,bhp->bhpn", dt, B.to(dt.dtype), x.to(dt.dtype))  # (B, h, p, n)
        ssm_state.copy_(ssm_state * dA[:, :, None, None] + dBx)
        y = torch.einsum("bhpn,bhn->bhp", ssm_state.to(dtype), C)  # (B, h, p)
        D = self._D().to(dtype)
        y = y + (D[:, None] if D.dim() == 1 else D) * x
        y = y.flatten(-2)  # (B, d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        else:
            y = y * self.act(z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)  # (B, d_inner)
        out = self.out_proj(y)  # (B, d_model)
        return out.unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int | None = None, dtype: torch.dtype | None = None, **kwargs: object
    ) -> SSMState:
        """Zero states for ``step``: conv_state (B, conv_dim, d_conv), ssm_state (B, nheads, headdim, d_state).

        conv_state has ``mamba_ssm``'s memory layout (channels contiguous). ``max_seqlen`` is accepted for
        compatibility; the state does not grow with the sequence.
        """
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype)
        return SSMState(conv_state.transpose(1, 2), ssm_state)

    def _checked_state(self, state: tuple[Tensor, Tensor], batch: int) -> tuple[Tensor, Tensor]:
        if not isinstance(state, tuple) or len(state) != 2:
            raise ValueError(f"state must be a (conv_state, ssm_state) pair, got {type(state).__name__}")
        conv_state, ssm_state = state
        check_state("conv_state", conv_state, (batch, self.conv_dim, self.d_conv), "(batch, conv_dim, d_conv)")
        check_state("ssm_state", ssm_state, (batch, self.nheads, self.headdim, self.d_state),
                    "(batch, nheads, headdim, d_state)")
        return conv_state, ssm_state
