"""Mamba (S6) layer: a drop-in for ``mamba_ssm.modules.mamba_simple.Mamba`` that runs on the CPU.

Constructor arguments, defaults, parameter names, shapes and initialisation follow state-spaces/mamba, so a
``state_dict`` saved from ``mamba_ssm`` loads here with ``strict=True``. The layer computes::

    x, z  = in_proj(u).chunk(2)                       # (B, L, d_inner) each
    x     = silu(causal_depthwise_conv1d(x))          # kernel d_conv
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)
    delta = softplus(dt_proj(dt))                     # dt_proj.bias initialised so softplus(bias) in [dt_min, dt_max]
    y     = selective_scan(x, delta, A=-exp(A_log), B, C, D) * silu(z)
    out   = out_proj(y)

Three ways to run it, all giving the same numbers:

* ``forward(u)``: the whole sequence at once (chunked scan).
* ``forward(u, state, return_state=True)``: one window of a long series; ``state`` carries the last ``d_conv``
  conv inputs and the SSM state from the previous window (the input state is not modified).
* ``step(u_t, conv_state, ssm_state)``: one time step at O(1) cost, updating the states in place, with states from
  ``allocate_inference_cache`` (the same layout as ``mamba_ssm``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from condorbrain.ssm._checks import all_finite
from condorbrain.ssm.conv import causal_conv1d
from condorbrain.ssm.scans import scan_backend, selective_scan

__all__ = ["Mamba", "SSMState"]


class SSMState(NamedTuple):
    """The recurrent state of one Mamba / Mamba-2 layer between windows or steps.

    ``conv_state``: (B, conv_channels, d_conv), the last ``d_conv`` inputs of the depthwise convolution (oldest
    first; zeros before the series starts). ``ssm_state``: (B, d_inner, d_state) for Mamba, (B, nheads, headdim,
    d_state) for Mamba-2. It unpacks like ``mamba_ssm``'s ``(conv_state, ssm_state)`` tuple.
    """

    conv_state: Tensor
    ssm_state: Tensor


def upcast(t: Tensor) -> Tensor:
    """t in float32, or kept in float64 (mamba_ssm's ``.float()`` for A, D and the dt bias, without losing float64)."""
    return t if t.dtype == torch.float64 else t.float()


def records_grad(module: nn.Module, *tensors: Tensor) -> bool:
    """Whether autograd would record an op on ``tensors`` with ``module``'s parameters: the forward-only Triton
    kernels (the streaming step's) are taken only where it would not."""
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in tensors) or any(p.requires_grad for p in module.parameters())


def takes_triton_step(module: nn.Module, hidden_states: Tensor, *states: Tensor) -> bool:
    """Whether a layer's ``step`` takes its Triton kernels: the scan backend is ``triton`` (``scan_backend``: the
    default for CUDA tensors where triton imports; on the CPU only when asked for, under Triton's interpreter),
    neither the input nor a state is float64, and no gradient is wanted (the kernels have no backward: with autograd
    recording, the eager step runs). The rule of ``Mamba`` and ``Mamba2`` both."""
    if torch.float64 in (hidden_states.dtype, *(s.dtype for s in states)):
        return False
    if scan_backend(hidden_states.device) != "triton":
        return False
    return not records_grad(module, hidden_states)


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0 (mamba_ssm's form: y + log(-expm1(-y)))."""
    return y + torch.log(-torch.expm1(-y))


def check_hidden_states(name: str, u: Tensor, d_model: int, seqlen: int | None = None) -> None:
    """ValueError unless ``u`` is a finite (B, L, d_model) tensor (with L = ``seqlen`` when given)."""
    expected = f"(batch, {seqlen if seqlen is not None else 'L'}, d_model={d_model})"
    if not isinstance(u, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(u).__name__}")
    if u.dim() != 3:
        raise ValueError(f"{name} must have 3 dimensions {expected}, got shape {tuple(u.shape)}")
    if u.shape[-1] != d_model:
        raise ValueError(f"{name} must have last dimension d_model={d_model} {expected}, got shape {tuple(u.shape)}")
    if seqlen is not None and u.shape[1] != seqlen:
        raise ValueError(f"{name} must have length {seqlen} {expected}, got shape {tuple(u.shape)}")
    if u.shape[1] < 1:
        raise ValueError(f"{name} must have at least one time step {expected}, got shape {tuple(u.shape)}")
    if not all_finite(u):
        raise ValueError(f"{name} contains NaN or inf")


def check_state(name: str, t: Tensor, shape: tuple[int, ...], expected: str) -> None:
    """ValueError unless the state tensor ``t`` has ``shape`` (documented as ``expected``)."""
    if not isinstance(t, Tensor) or tuple(t.shape) != tuple(shape):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {expected} = {tuple(shape)}, got {got}")


class Mamba(nn.Module):
    """Mamba selective state-space mixer, ``mamba_ssm.modules.mamba_simple.Mamba``'s parameters and maths.

    Parameters
    ----------
    d_model : int
        Width of the input and output, D.
    d_state : int
        SSM state size per channel, N.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    expand : int
        d_inner = expand * d_model.
    dt_rank : int or "auto"
        Rank of the delta projection; "auto" = ceil(d_model / 16).
    dt_min, dt_max : float
        softplus(dt_proj.bias) is initialised log-uniformly in [dt_min, dt_max] ...
    dt_init : "random" or "constant"
        ... and dt_proj.weight uniform in +-dt_rank**-0.5 * dt_scale, or constant at that value.
    dt_scale : float
        Scale of the dt_proj.weight initialisation.
    dt_init_floor : float
        Lower clamp of the initial dt.
    conv_bias : bool
        Bias in the convolution.
    bias : bool
        Bias in in_proj and out_proj.
    use_fast_path : bool
        Accepted for compatibility with ``mamba_ssm``; the CPU path is always used.
    layer_idx : int or None
        Position in a stack (kept for compatibility; not needed by this implementation).
    device, dtype
        Factory arguments for the parameters. A_log and D stay float32, as in ``mamba_ssm``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection initialised to preserve variance at initialisation.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # dt bias such that softplus(dt_bias) is log-uniform in [dt_min, dt_max], floored at dt_init_floor.
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(dt))
        self.dt_proj.bias._no_reinit = True  # a backbone's init must not zero it

        # S4D-real initialisation: A[d, n] = -(n + 1), stored as A_log = log(n + 1), kept in float32.
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A).contiguous())
        self.A_log._no_weight_decay = True
        # D "skip" parameter, float32.
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    # ------------------------------------------------------------------------------------------------------------
    def forward(
        self, hidden_states: Tensor, state: tuple[Tensor, Tensor] | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, SSMState]:
        """Run the layer over a sequence (or one window of a longer one).

        Parameters
        ----------
        hidden_states : Tensor
            (B, L, d_model).
        state : (conv_state, ssm_state) or None
            State left by the previous window (``SSMState``, or the tuple from ``allocate_inference_cache`` /
            ``step``): conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state). None = start of the series.
            Not modified.
        return_state : bool
            Also return the state after the last step, to pass to the next window.

        Returns
        -------
        Tensor (B, L, d_model), and ``SSMState`` if ``return_state``.
        """
        check_hidden_states("hidden_states", hidden_states, self.d_model)
        batch, seqlen, _ = hidden_states.shape
        conv_state = ssm_state = None
        if state is not None:
            conv_state, ssm_state = self._checked_state(state, batch)

        xz = self.in_proj(hidden_states)  # (B, L, 2*d_inner)
        x, z = xz.chunk(2, dim=-1)  # (B, L, d_inner) each, views
        x, new_conv_state = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, "silu", conv_state,
                                          return_final_state=True)  # (B, L, d_inner), (B, d_inner, d_conv)

        x_dbl = self.x_proj(x)  # (B, L, dt_rank + 2*d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L); bias added inside the scan
        B = B.transpose(1, 2)  # (B, d_state, L), a view: the scan lays it out as it needs
        C = C.transpose(1, 2)  # (B, d_state, L)
        A = -torch.exp(upcast(self.A_log))  # (d_inner, d_state)
        y, last_state = selective_scan(
            x.transpose(1, 2),  # (B, d_inner, L)
            dt,
            A,
            B,
            C,
            upcast(self.D),
            z=z.transpose(1, 2),
            delta_bias=upcast(self.dt_proj.bias),
            delta_softplus=True,
            return_last_state=True,
            initial_state=upcast(ssm_state) if ssm_state is not None else None,
        )  # y: (B, d_inner, L), last_state: (B, d_inner, d_state)
        out = self.out_proj(y.transpose(1, 2))  # (B, L, d_model)
        if not return_state:
            return out
        ssm_dtype = ssm_state.dtype if ssm_state is not None else self.dt_proj.weight.dtype
        return out, SSMState(new_conv_state, last_state.to(ssm_dtype))

    # ------------------------------------------------------------------------------------------------------------
    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance one time step, O(1) in the sequence length, as ``mamba_ssm``'s ``Mamba.step``.

        Parameters
        ----------
        hidden_states : Tensor
            (B, 1, d_model), the input at the new time step.
        conv_state : Tensor
            (B, d_inner, d_conv), updated in place.
        ssm_state : Tensor
            (B, d_inner, d_state), updated in place.

        Returns
        -------
        (out (B, 1, d_model), conv_state, ssm_state)

        Where the scan backend is ``triton`` (CUDA by default), nothing is float64 and no gradient is recorded, the
        conv and the state update are two Triton launches that read no value back to the host
        (``condorbrain.ssm.triton.step``, for CUDA graphs); otherwise the eager ``_step_reference``.
        """
        check_hidden_states("hidden_states", hidden_states, self.d_model, seqlen=1)
        self._checked_state((conv_state, ssm_state), hidden_states.shape[0])
        if not self._fused_step_path(hidden_states, conv_state, ssm_state):
            return self._step_reference(hidden_states, conv_state, ssm_state)
        # the conv and the state update in two Triton launches around x_proj and dt_proj (triton/step.py)
        from condorbrain.ssm.triton.step import mamba_step_triton

        xz = self.in_proj(hidden_states.squeeze(1))  # (B, 2*d_inner)
        y = mamba_step_triton(xz, conv_state, ssm_state, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                              self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D,
                              out_dtype=hidden_states.dtype)  # (B, d_inner)
        out = self.out_proj(y)  # (B, d_model)
        return out.unsqueeze(1), conv_state, ssm_state

    def _fused_step_path(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> bool:
        """Whether ``step`` takes the Triton step (:func:`takes_triton_step`)."""
        return takes_triton_step(self, hidden_states, conv_state, ssm_state)

    def _step_reference(
        self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``step`` op by op in PyTorch (any device and dtype, differentiable): the reference the Triton step is
        tested against. Arguments as ``step``'s, already checked."""
        dtype = hidden_states.dtype
        xz = self.in_proj(hidden_states.squeeze(1))  # (B, 2*d_inner)
        x, z = xz.chunk(2, dim=-1)  # (B, d_inner) each

        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))  # (B, d_inner, d_conv)
        conv_state[:, :, -1] = x
        x = torch.sum(conv_state * self.conv1d.weight.squeeze(1), dim=-1)  # (B, d_inner)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = self.act(x).to(dtype=dtype)

        x_db = self.x_proj(x)  # (B, dt_rank + 2*d_state)
        dt, B, C = torch.split(x_db, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, d_inner)
        A = -torch.exp(upcast(self.A_log))  # (d_inner, d_state)
        dt = F.softplus(dt + self.dt_proj.bias.to(dtype=dt.dtype))
        dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))  # (B, d_inner, d_state)
        dB = torch.einsum("bd,bn->bdn", dt, B)  # (B, d_inner, d_state)
        ssm_state.copy_(ssm_state * dA + x[:, :, None] * dB)
        y = torch.einsum("bdn,bn->bd", ssm_state.to(dtype), C)  # (B, d_inner)
        y = y + self.D.to(dtype) * x
        y = y * self.act(z)
        out = self.out_proj(y)  # (B, d_model)
        return out.unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int | None = None, dtype: torch.dtype | None = None, **kwargs: object
    ) -> SSMState:
        """Zero states for ``step``: conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state).

        ``max_seqlen`` is accepted for ``mamba_ssm`` compatibility; the state does not grow with the sequence.
        """
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return SSMState(conv_state, ssm_state)

    def _checked_state(self, state: tuple[Tensor, Tensor], batch: int) -> tuple[Tensor, Tensor]:
        if not isinstance(state, tuple) or len(state) != 2:
            raise ValueError(f"state must be a (conv_state, ssm_state) pair, got {type(state).__name__}")
        conv_state, ssm_state = state
        check_state("conv_state", conv_state, (batch, self.d_inner, self.d_conv), "(batch, d_inner, d_conv)")
        check_state("ssm_state", ssm_state, (batch, self.d_inner, self.d_state), "(batch, d_inner, d_state)")
        return conv_state, ssm_state
