"""Checks shared by the Mamba and Mamba2 layer tests (each test file supplies its own layer and plain forward)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from condorbrain.ssm import SSMState

# The parameters are float32, and their init goes through float32 transcendentals (A_log = log(A), dt's
# exp/log), which differ in the last bit between PyTorch's CPU vector paths (its AVX2 and AVX-512 vector math): on an
# AVX-512 machine A_log's sum came out 4e-9 and an output element 3e-8 (relative) from the values pinned elsewhere,
# so they are held to float32's precision, not to 1e-9. A change of the init scheme (a distribution, a range, the
# order of the draws) moves them by far more
F32_SUM_REL = 1e-6


def assert_init_and_output_match_pinned(m: nn.Module, init: dict, u: torch.Tensor, out_sum: float,
                                        out_last: Sequence[float]) -> None:
    """m's parameters (the sum and the sum of magnitudes of each) and, in float64, the sum of m(u) and the first 4
    channels of its last step of row 1, against values pinned from mamba_ssm."""
    for k, v in m.state_dict().items():
        got = (v.double().sum().item(), v.double().abs().sum().item())
        assert got == pytest.approx(init[k], rel=F32_SUM_REL, abs=1e-9), k
    y = m.double()(u)
    assert y.sum().item() == pytest.approx(out_sum, rel=F32_SUM_REL)
    assert y[1, -1, :4].tolist() == pytest.approx(out_last, rel=F32_SUM_REL, abs=1e-10)


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
