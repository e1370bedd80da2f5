"""Causal depthwise 1-D convolution over time, channel-last, with a carried state (Mamba's short conv).

A CPU twin of ``causal_conv1d``'s role in mamba_ssm: the compiled path (``csrc/conv_cpu.cpp``) reads the in_proj
output where it lies and fuses the SiLU; ``causal_conv1d_ref`` is the plain ``F.conv1d`` version it is tested
against and the path for other devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from condorbrain.ssm import cpu_kernel
from condorbrain.ssm.scans import scan_backend


def _final_state(x: Tensor, state: Tensor | None, K: int) -> Tensor:
    """The last K inputs (B, C, K), as mamba_ssm's conv_state keeps them (zeros before the series starts)."""
    batch, L, C = x.shape
    if L >= K:
        return x[:, L - K:].transpose(1, 2).contiguous()  # (B, C, K)
    past = state if state is not None else x.new_zeros(batch, C, K)
    return torch.cat([past[..., L:], x.transpose(1, 2)], dim=-1)  # (B, C, K)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None,
                      initial_state: Tensor | None = None) -> Tensor:
    """Reference: x (B, L, C), weight (C, K), bias (C,), initial_state (B, C, K) -> (B, L, C)."""
    batch, L, C = x.shape
    K = weight.shape[-1]
    past = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros(batch, C, K)
    xp = torch.cat([past[..., 1:], x.transpose(1, 2)], dim=-1)  # (B, C, K - 1 + L)
    y = F.conv1d(xp, weight.view(C, 1, K), bias, groups=C)  # (B, C, L)
    if activation == "silu":
        y = F.silu(y)
    return y.transpose(1, 2)


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """y[b, t, c] = act(bias[c] + sum_k weight[c, k] * x[b, t - K + 1 + k, c]), the past before t = 0 taken from
    ``initial_state`` (zeros if None).

    Args:
        x: (B, L, C), any layout whose channel stride is 1 (e.g. a slice of a Linear's output).
        weight: (C, K) or nn.Conv1d's (C, 1, K). bias: (C,) or None. activation: None or "silu".
        initial_state: (B, C, K), the last K inputs before this window (mamba_ssm's ``conv_state``).
        return_final_state: also return the last K inputs (B, C, K), to carry into the next window.

    Returns:
        y (B, L, C) contiguous, and the final state if asked.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    batch, L, C = x.shape
    w = weight.reshape(C, -1)
    K = w.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (batch, C, K):
        raise ValueError(f"initial_state must have shape (B, C, K) = {(batch, C, K)}, got {tuple(initial_state.shape)}")
    dtype_ok = x.dtype == w.dtype and (bias is None or bias.dtype == x.dtype)
    if scan_backend(x.device, x.dtype) == "compiled" and dtype_ok:
        xin = x if x.stride(2) == 1 else x.contiguous()
        state = initial_state.to(x.dtype).transpose(1, 2).contiguous() if initial_state is not None else None
        y = cpu_kernel.compiled_causal_conv(xin, w.t().contiguous(), bias, state, activation == "silu")
    else:
        y = causal_conv1d_ref(x, w, bias, activation, initial_state)
    if not return_final_state:
        return y
    return y, _final_state(x, initial_state.to(x.dtype) if initial_state is not None else None, K)
