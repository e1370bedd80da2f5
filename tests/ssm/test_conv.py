"""The causal depthwise conv (compiled CPU path and F.conv1d path) against an explicit loop written here."""

from __future__ import annotations

import pytest
import torch

from condorbrain.ssm import cpu_kernel
from condorbrain.ssm.conv import causal_conv1d


@pytest.fixture(params=["compiled", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", request.param)
    if request.param == "compiled" and not cpu_kernel.available():
        pytest.fail(f"compiled CPU ops unavailable: {cpu_kernel.unavailable_reason()}")
    return request.param


def ref_conv(x, w, bias, silu, state):
    """y[b, t, c] = bias[c] + sum_k w[c, k] xin[b, t - K + 1 + k, c], xin before 0 from state[:, :, K + s]."""
    B, L, C = x.shape
    K = w.shape[1]
    y = torch.zeros(B, L, C, dtype=x.dtype)
    for t in range(L):
        acc = bias.expand(B, C).clone() if bias is not None else torch.zeros(B, C, dtype=x.dtype)
        for k in range(K):
            s = t - K + 1 + k
            if s >= 0:
                acc = acc + w[:, k] * x[:, s]
            elif state is not None:
                acc = acc + w[:, k] * state[:, :, K + s]
        y[:, t] = acc * torch.sigmoid(acc) if silu else acc
    return y


@pytest.mark.parametrize("L", [1, 3, 4, 37])
@pytest.mark.parametrize("silu, with_bias, with_state", [(True, True, True), (False, False, False), (True, False, True)])
def test_causal_conv_matches_loop_outputs_and_grads(L, silu, with_bias, with_state, backend):
    gen = torch.Generator().manual_seed(L)
    B, C, K, wide = 3, 5, 4, 11
    big = torch.randn(B, L, wide, dtype=torch.float64, generator=gen, requires_grad=True)
    x = big[..., 2:2 + C]  # a strided slice, as the layers pass the in_proj output
    w = torch.randn(C, K, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(C, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    state = torch.randn(B, C, K, dtype=torch.float64, generator=gen, requires_grad=True) if with_state else None
    y, final = causal_conv1d(x, w, bias, "silu" if silu else None, state, return_final_state=True)
    want = ref_conv(x, w, bias, silu, state)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    full = torch.cat([state if state is not None else torch.zeros(B, C, K, dtype=torch.float64), x.transpose(1, 2)], -1)
    torch.testing.assert_close(final, full[..., -K:], rtol=0, atol=0)
    leaves = [t for t in (big, w, bias, state) if t is not None]
    wts = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    got_g = torch.autograd.grad((wts * y).sum() + final.square().sum(), leaves)
    want_g = torch.autograd.grad((wts * want).sum() + full[..., -K:].square().sum(), leaves)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_causal_conv_is_causal_and_windows_compose(backend):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 6, generator=gen)
    w, b = torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    y = causal_conv1d(x, w, b, "silu")
    x2 = x.clone()
    x2[:, 20:] += 1.0
    assert torch.equal(causal_conv1d(x2, w, b, "silu")[:, :20], y[:, :20])
    y1, s = causal_conv1d(x[:, :13], w, b, "silu", return_final_state=True)
    y2 = causal_conv1d(x[:, 13:], w, b, "silu", initial_state=s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-6, atol=1e-6)


def test_causal_conv_bad_input():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.zeros(1, 4, 2), torch.zeros(2, 3), activation="relu")
    with pytest.raises(ValueError, match="initial_state must have shape"):
        causal_conv1d(torch.zeros(1, 4, 2), torch.zeros(2, 3), initial_state=torch.zeros(1, 2, 4))
