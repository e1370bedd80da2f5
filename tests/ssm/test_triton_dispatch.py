"""Which path a scan takes, and that the Triton path behind ``selective_scan`` / ``ssd_scan`` / ``Mamba2`` gives what
the CPU path gives (outputs and gradients). Without a GPU the kernels run under Triton's interpreter, selected
with ``CONDORBRAIN_SCAN_BACKEND=triton``."""

from __future__ import annotations

import pytest
import torch

from condorbrain.ssm import Mamba2, scan_backend, selective_scan, ssd_scan
from condorbrain.ssm import triton as triton_path

pytestmark = pytest.mark.skipif(not triton_path.available("cpu") and not torch.cuda.is_available(),
                                reason=triton_path.status("cpu")[1])


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("CONDORBRAIN_SCAN_BACKEND", raising=False)
    assert scan_backend("cpu") in ("compiled", "torch")
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    assert scan_backend("cpu") == "triton"  # the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CONDORBRAIN_SCAN_BACKEND=triton but the Triton kernels cannot run: "
                                           ".*needs a CUDA device"):
        scan_backend("cpu")
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="auto, torch, compiled or triton"):
        scan_backend("cpu")


def _both(monkeypatch, fn, inputs):
    """fn's outputs and input gradients on the default CPU path, then on the Triton path."""
    results = []
    for backend in ("auto", "triton"):
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", backend)
        xs = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = fn(*xs)
        out.square().sum().backward()
        results.append((out.detach(), [x.grad for x in xs]))
    return results


def test_selective_scan_dispatches_to_triton(monkeypatch):
    g = torch.Generator().manual_seed(1)
    b, d, n, L = 2, 4, 4, 13
    u, delta, z = (torch.randn(b, d, L, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) - 0.5
    B, C = (torch.randn(b, n, L, generator=g) for _ in range(2))
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.1

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, chunk_size=8)

    (ref, ref_g), (got, got_g) = _both(monkeypatch, fn, [u, delta, A, B, C, D, z, bias])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    for a, e in zip(got_g, ref_g, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_ssd_scan_dispatches_to_triton(monkeypatch):
    g = torch.Generator().manual_seed(2)
    b, L, h, p, n = 1, 20, 2, 16, 16
    x, z = torch.randn(b, L, h, p, generator=g), torch.randn(b, L, h, p, generator=g)
    dt = torch.randn(b, L, h, generator=g) * 0.5
    A = -torch.rand(h, generator=g) - 0.5
    B, C = (torch.randn(b, L, 1, n, generator=g) for _ in range(2))
    D = torch.randn(h, generator=g)

    def fn(x, dt, A, B, C, D, z):
        return ssd_scan(x, dt, A, B, C, chunk_size=16, D=D, z=z, dt_softplus=True)

    (ref, ref_g), (got, got_g) = _both(monkeypatch, fn, [x, dt, A, B, C, D, z])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    for a, e in zip(got_g, ref_g, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_mamba2_layer_takes_the_fused_path(monkeypatch):
    from condorbrain.ssm.triton import fused

    torch.manual_seed(3)
    layer = Mamba2(d_model=16, d_state=16, headdim=16, expand=2, chunk_size=16)
    u = torch.randn(2, 12, 16)
    calls = []
    real = fused.mamba2_fused_forward
    monkeypatch.setattr(fused, "mamba2_fused_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = []
    for backend in ("auto", "triton"):
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", backend)
        layer.zero_grad(set_to_none=True)
        x = u.clone().requires_grad_(True)
        out = layer(x)
        out.square().sum().backward()
        runs.append((out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}))
    assert calls == [1]  # the Triton run went through the fused path, the default run did not
    (ref, ref_du, ref_p), (got, got_du, got_p) = runs
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_du, ref_du, rtol=1e-4, atol=1e-4)
    for name in ref_p:
        torch.testing.assert_close(got_p[name], ref_p[name], rtol=1e-4, atol=1e-4, msg=name)
