"""Checks shared by the Mamba and Mamba2 layer tests (each test file supplies its own layer and plain forward)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from condorbrain.ssm import SSMState


def assert_forward_and_grads_match(m: nn.Module, plain_forward: Callable, u: torch.Tensor, w: torch.Tensor) -> None:
    """m(u) equals plain_forward(m, u) (float64), and so do the gradients of (y * w).sum() for u and every parameter."""
    params = [p for _, p in m.named_parameters()]
    y = m(u)
    y_ref = plain_forward(m, u)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad((y * w).sum(), [u, *params])
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [u, *params])
    names = ["u"] + [n for n, _ in m.named_parameters()]
    for name, g, gr in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-11, msg=lambda s, n=name: f"grad of {n}: {s}")


def assert_steps_reproduce_forward(m: nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stepping through u (states updated in place) gives forward's outputs and forward's final state.

    Returns the (conv_state, ssm_state) cache it stepped, for the caller's shape checks."""
    batch, L, _ = u.shape
    with torch.no_grad():
        y = m(u)
        conv_state, ssm_state = m.allocate_inference_cache(batch, max_seqlen=L)
        outs = []
        for t in range(L):
            out, cs, ss = m.step(u[:, t : t + 1], conv_state, ssm_state)
            assert cs is conv_state and ss is ssm_state  # updated in place
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), y, rtol=1e-5, atol=1e-6)
    # the state after stepping is the state forward reports
    _, state = m(u, return_state=True)
    torch.testing.assert_close(conv_state, state.conv_state)
    torch.testing.assert_close(ssm_state, state.ssm_state, rtol=1e-5, atol=1e-6)
    return conv_state, ssm_state


def assert_windows_equal_one_pass(m: nn.Module, u: torch.Tensor, splits: Sequence[int]) -> None:
    """Windows of the given lengths, each continuing from the last one's state, give the one-pass output; the state
    handed in is never modified."""
    y = m(u)
    state, outs, t0 = None, [], 0
    for n in splits:
        passed = state
        before = None if passed is None else [s.clone() for s in passed]
        out, state = m(u[:, t0 : t0 + n], state=passed, return_state=True)
        if passed is not None:  # the incoming state is not modified
            assert all(torch.equal(a, b) for a, b in zip(passed, before, strict=True))
        assert isinstance(state, SSMState)
        outs.append(out)
        t0 += n
    torch.testing.assert_close(torch.cat(outs, dim=1), y, rtol=1e-5, atol=1e-6)


def assert_steps_then_window(m: nn.Module, u: torch.Tensor, n_steps: int) -> None:
    """n_steps single steps, then one window from the stepped cache, give the one-pass output."""
    y = m(u)
    with torch.no_grad():
        cache = m.allocate_inference_cache(u.shape[0])
        first = [m.step(u[:, t : t + 1], *cache)[0] for t in range(n_steps)]
        rest, _ = m(u[:, n_steps:], state=cache, return_state=True)
    torch.testing.assert_close(torch.cat(first + [rest], dim=1), y, rtol=1e-5, atol=1e-6)
