"""The blocks' RMSNorm on the Triton path (one kernel each way) against its PyTorch twin, alone and inside a Backbone;
the streaming step's fused residual add + norm (``RMSNorm.add_forward``, ``Backbone.step``) against the eager step.

Without a GPU the kernel runs under Triton's interpreter (conftest sets TRITON_INTERPRET=1), selected with
``CONDORBRAIN_SCAN_BACKEND=triton``; on a GPU it is the default for CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

from condorbrain.ssm import Mamba2
from condorbrain.ssm import triton as triton_path
from condorbrain.ssm.blocks import Backbone, BackboneConfig, Block, RMSNorm, norm_then_mix
from condorbrain.ssm.memory import saved_activation_bytes

pytestmark = [pytest.mark.skipif(not triton_path.available("cpu") and not torch.cuda.is_available(),
                                 reason=triton_path.status("cpu")[1]),
              pytest.mark.usefixtures("triton_layers")]


def _norm_and_grads(norm: RMSNorm, x: torch.Tensor, weights: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    norm.zero_grad()
    out = norm(x)
    (out.float() * weights).sum().backward()
    return out.detach(), x.grad, norm.weight.grad.clone()


@pytest.mark.parametrize("shape", [(2, 5, 48), (7, 48), (2, 1, 3, 48)])
def test_rmsnorm_triton_matches_reference(device, shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3 + 0.5).to(device)
    weights = torch.randn(shape, generator=g).to(device)
    norm = RMSNorm(48, eps=1e-5).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=g) + 0.5)
    got = _norm_and_grads(norm, x, weights)
    assert got[0].shape == x.shape and got[0].dtype == x.dtype
    want_out = norm._forward_reference(x.double()).float()
    x64 = x.double().requires_grad_(True)
    norm64 = RMSNorm(48, eps=1e-5).double().to(device)
    with torch.no_grad():
        norm64.weight.copy_(norm.weight)
    (norm64(x64) * weights.double()).sum().backward()
    torch.testing.assert_close(got[0], want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], x64.grad.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[2], norm64.weight.grad.float(), rtol=1e-4, atol=1e-4)


def test_rmsnorm_triton_bfloat16_autocast_and_saves(device):
    """Under bf16 autocast: the reference's numbers (both compute in float32 and return x's dtype), and the Triton
    path keeps less for the backward: x (bf16) and one float32 1/rms per row, where the reference keeps float32."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, 64, generator=g).bfloat16().to(device)
    weights = torch.randn(3, 16, 64, generator=g).to(device)
    norm = RMSNorm(64).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = _norm_and_grads(norm, x, weights)
        want = (norm._forward_reference(x.detach()),)
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=1e-2, atol=1e-2)

    leaf = x.detach().clone().requires_grad_(True)
    triton_bytes = saved_activation_bytes(lambda: norm(leaf * 1))["all"]  # a non-leaf input, as a block's is
    ref_bytes = saved_activation_bytes(lambda: norm._forward_reference(leaf * 1))["all"]
    rows, d = 3 * 16, 64
    assert triton_bytes == rows * d * 2 + rows * 4  # x in bf16 + 1/rms in float32
    assert ref_bytes > 2 * triton_bytes


@pytest.mark.parametrize("d_intermediate", [0, 48])
def test_backbone_forward_on_triton_path(device, monkeypatch, d_intermediate):
    """A whole Mamba-2 backbone (blocks' norms joined with the residual adds to the fused layers, the gated MLP's
    norm and add when there is one, the final norm) on the Triton path equals the PyTorch path, forward and
    gradients."""
    torch.manual_seed(0)
    config = BackboneConfig(d_model=32, n_layer=3, mixer="mamba2", d_state=16, headdim=16, chunk_size=8,
                            d_intermediate=d_intermediate)
    model = Backbone(config).to(device)
    x = torch.randn(2, 11, 32, device=device)

    def run(backend):
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", backend)
        model.zero_grad()
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        out.square().sum().backward()
        return out.detach(), xx.grad, [p.grad.clone() for p in model.parameters()]

    ref_backend = "torch" if device.type == "cuda" else "auto"
    want, got = run(ref_backend), run("triton")
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=1e-3, atol=1e-4)
    for a, e in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-4)


def _linear_after_norm(x, norm, linear, fused):
    """(out, dx, dnorm_weight, dW, db) of Linear(norm(x)): the block's two modules, or rmsnorm_linear_triton."""
    from condorbrain.ssm.triton.fused import rmsnorm_linear_triton

    x = x.detach().clone().requires_grad_(True)
    norm.zero_grad()
    linear.zero_grad()
    out = (rmsnorm_linear_triton(x, norm.weight, norm.eps, linear.weight, linear.bias) if fused
           else linear(norm(x)))
    g = torch.Generator().manual_seed(9)
    (out.float() * torch.randn(out.shape, generator=g).to(out.device)).sum().backward()
    return (out.detach(), x.grad, norm.weight.grad.clone(), linear.weight.grad.clone(),
            None if linear.bias is None else linear.bias.grad.clone())


@pytest.mark.parametrize("out_in_bwd", [True, False], ids=["norm output from its backward", "norm forward rerun"])
@pytest.mark.parametrize(("x_dtype", "autocast", "bias"), [
    (torch.float32, False, True), (torch.float32, True, False), (torch.bfloat16, True, True)])
def test_rmsnorm_linear_matches_norm_then_linear(device, x_dtype, autocast, bias, out_in_bwd, monkeypatch):
    """norm + Linear as one node (the norm's output recomputed in the backward: by the norm's backward kernel, or by
    its forward kernel rerun) gives the two modules' output and gradients: in float32, and under bf16 autocast with
    a float32 or a bf16 residual stream (the matmul in bf16 both ways, the norm kernel the same). It keeps x and
    1/rms, not the Linear's input."""
    from condorbrain.ssm.triton import fused

    monkeypatch.setattr(fused, "_NORM_OUT_IN_BWD", out_in_bwd)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 7, 48, generator=g) * 2 + 0.3).to(device, x_dtype)
    norm = RMSNorm(48, eps=1e-6).to(device)
    linear = torch.nn.Linear(48, 80, bias=bias).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=g) + 0.5)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        want = _linear_after_norm(x, norm, linear, fused=False)
        got = _linear_after_norm(x, norm, linear, fused=True)
    assert got[0].dtype == want[0].dtype == (torch.bfloat16 if autocast else torch.float32)
    assert got[1].dtype == x_dtype
    tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-5}
    for a, e in zip(got, want, strict=True):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a.float(), e.float(), **tol)

    leaf = x.detach().clone().requires_grad_(True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        from condorbrain.ssm.triton.fused import rmsnorm_linear_triton

        # leaf * 1: a non-leaf input, which the count includes (as a block's input is)
        kept = saved_activation_bytes(
            lambda: rmsnorm_linear_triton(leaf * 1, norm.weight, norm.eps, linear.weight, linear.bias))["all"]
        kept_apart = saved_activation_bytes(lambda: linear(norm(leaf * 1)))["all"]
    rows, item = 3 * 7, x.element_size()
    assert kept == rows * 48 * item + rows * 4  # x + one float32 1/rms per row
    # apart: + the Linear's input, and under autocast its bf16 weight copy (the node casts it again instead)
    assert kept_apart == kept + rows * 48 * (2 if autocast else 4) + (80 * 48 * 2 if autocast else 0)


@pytest.mark.parametrize(("dtype", "autocast", "bias"), [
    (torch.float32, False, True), (torch.float32, True, False), (torch.bfloat16, True, True)])
def test_add_rmsnorm_linear_matches_add_norm_linear(device, dtype, autocast, bias):
    """The previous branch's residual add joined to the norm + Linear node: the sum and the projection, and the
    gradients of x, h, the norm weight and the Linear when both outputs are used (the sum as the next residual),
    as the add, the norm and the Linear apart give them. It keeps the sum and 1/rms, nothing for the add."""
    from condorbrain.ssm.triton.fused import add_rmsnorm_linear_triton

    g = torch.Generator().manual_seed(5)
    x, h = ((torch.randn(2, 9, 48, generator=g) * 1.5).to(device, dtype) for _ in range(2))
    w_res, w_out = torch.randn(2, 9, 48, generator=g).to(device), torch.randn(2, 9, 80, generator=g).to(device)
    norm = RMSNorm(48, eps=1e-6).to(device)
    linear = torch.nn.Linear(48, 80, bias=bias).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=g) + 0.5)

    def run(joined):
        xx, hh = x.clone().requires_grad_(True), h.clone().requires_grad_(True)
        norm.zero_grad()
        linear.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if joined:
                res, out = add_rmsnorm_linear_triton(xx, hh, norm.weight, norm.eps, linear.weight, linear.bias)
            else:
                res = xx + hh
                out = linear(norm(res))
        ((res.float() * w_res).sum() + (out.float() * w_out).sum()).backward()
        return [res.detach(), out.detach(), xx.grad, hh.grad, norm.weight.grad.clone(), linear.weight.grad.clone(),
                None if linear.bias is None else linear.bias.grad.clone()]

    got, want = run(True), run(False)
    assert got[0].dtype == dtype and got[1].dtype == (torch.bfloat16 if autocast else torch.float32)
    # bf16 matmuls round their outputs, and under the interpreter the joined add truncates where torch's rounds
    # (one ulp of the sum): within 2% of each tensor's largest magnitude there, 1e-5 in float32
    scale_tol = 2e-2 if autocast else 1e-5
    for name, a, e in zip(("res", "out", "dx", "dh", "dnorm", "dW", "db"), got, want, strict=True):
        if e is None:
            assert a is None
        else:
            err, scale = (a.float() - e.float()).abs().max().item(), e.float().abs().max().item()
            assert err <= scale_tol * scale, f"{name}: max error {err:.3g} > {scale_tol} * {scale:.3g}"
    # the sum rounded to x's dtype as x + h is: exact in float32
    if dtype == torch.float32:
        torch.testing.assert_close(got[0], x + h, rtol=0, atol=0)
    leaf_x, leaf_h = x.clone().requires_grad_(True), h.clone().requires_grad_(True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        kept = saved_activation_bytes(lambda: add_rmsnorm_linear_triton(
            leaf_x * 1, leaf_h * 1, norm.weight, norm.eps, linear.weight, linear.bias))["all"]
    rows = 2 * 9
    assert kept == rows * 48 * x.element_size() + rows * 4  # the sum + one float32 1/rms per row


def test_add_rmsnorm_linear_refuses_mismatched_inputs(device):
    from condorbrain.ssm.triton.fused import add_rmsnorm_linear_triton

    x = torch.randn(2, 3, 16, device=device)
    w = torch.ones(16, device=device)
    with pytest.raises(ValueError, match="x and h must match in shape and dtype"):
        add_rmsnorm_linear_triton(x, x.double(), w, 1e-6, torch.ones(4, 16, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_forward_matches_add_then_norm(device, dtype):
    g = torch.Generator().manual_seed(2)
    x, h = (torch.randn(3, 1, 40, generator=g).to(device, dtype) for _ in range(2))
    norm = RMSNorm(40).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(40, generator=g) + 0.5)
        res, out = norm.add_forward(x, h)
        want_res = x + h
        want_out = norm._forward_reference(want_res)
    assert res.dtype == out.dtype == dtype and res.shape == out.shape == x.shape
    # the add rounded to dtype as torch's is; but Triton's interpreter truncates float32 -> bfloat16 where a GPU
    # rounds to nearest: one bf16 ulp (2^-7 relative) apart at most there
    interpreted = device.type == "cpu" and dtype == torch.bfloat16
    torch.testing.assert_close(res, want_res, rtol=2**-7 if interpreted else 0, atol=0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, want_out, rtol=tol, atol=tol)
    x_same, out_none = norm.add_forward(x, None)
    assert x_same is x
    torch.testing.assert_close(out_none, norm._forward_reference(x), rtol=tol, atol=tol)


def test_add_forward_keeps_the_gradient_path(device):
    """With a gradient wanted, the add and the norm stay separate autograd ops (the fused kernel has no backward)."""
    x = torch.randn(2, 1, 16, device=device, requires_grad=True)
    h = torch.randn(2, 1, 16, device=device)
    res, out = RMSNorm(16).to(device).add_forward(x, h)
    out.sum().backward()
    assert res.grad_fn is not None and x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("d_intermediate", [0, 48])
def test_backbone_step_fused_equals_eager(device, monkeypatch, d_intermediate):
    """Streaming a backbone on the Triton path (fused add + norm, fused mixer step) gives the eager step's outputs
    and states, bar after bar (with and without the gated MLP, whose norm2 fuses its add too)."""
    torch.manual_seed(0)
    config = BackboneConfig(d_model=32, n_layer=3, mixer="mamba2", d_state=16, headdim=16, chunk_size=8,
                            d_intermediate=d_intermediate)
    model = Backbone(config).to(device).eval()
    xs = torch.randn(4, 2, 1, 32, device=device)

    def stream(backend):
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", backend)
        cache = model.allocate_inference_cache(2)
        with torch.no_grad():
            outs = [model.step(x, cache) for x in xs]
        return outs, cache

    ref_backend = "torch" if device.type == "cuda" else "auto"
    (want, want_cache), (got, got_cache) = stream(ref_backend), stream("triton")
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    for a, e in zip((t for c in got_cache for t in c), (t for c in want_cache for t in c), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_block_joins_its_norm_to_the_mamba2_in_proj(device, monkeypatch):
    """A Mamba-2 block's forward on the fused path runs the pre-norm inside in_proj's node (norm_then_mix): the values
    of norm then mixer, forward and every gradient, with the normalised input no longer kept; with state, or off the
    fused path, the modules run apart."""
    torch.manual_seed(0)
    block = Block(32, Mamba2(32, d_state=16, headdim=16, chunk_size=8)).to(device)
    x = torch.randn(2, 11, 32, device=device) * 1.5

    def run(forward):
        block.zero_grad()
        xx = x.clone().requires_grad_(True)
        out = forward(xx)
        out.square().sum().backward()
        return out.detach(), xx.grad, [p.grad.clone() for p in block.parameters()]

    calls = []
    joined = Mamba2.forward_prenormed
    monkeypatch.setattr(Mamba2, "forward_prenormed", lambda *a, **k: calls.append(1) or joined(*a, **k))
    got = run(block)
    want = run(lambda h: h + block.mixer(block.norm(h)))  # the two modules apart
    assert calls == [1]
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    for a, e in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)

    leaf = x.clone().requires_grad_(True)
    def apart(h):
        return h + block.mixer(block.norm(h))

    kept_joined = saved_activation_bytes(lambda: block(leaf * 1))["all"]
    kept_apart = saved_activation_bytes(lambda: apart(leaf * 1))["all"]
    assert kept_apart - kept_joined == 2 * 11 * 32 * 4  # the normalised input (float32 here), no longer kept

    # carried state: the modules apart (the fused node has no state)
    monkeypatch.setattr(Mamba2, "forward_prenormed", lambda *a: pytest.fail("joined with a state"))
    with torch.no_grad():
        out, _ = block(x, return_state=True)
    torch.testing.assert_close(out, got[0], rtol=1e-5, atol=1e-5)
    # not the fused path (float64): the modules apart
    x64 = x.double()
    res, h = norm_then_mix(block.norm.double(), block.mixer.double(), x64)
    assert res is x64 and h.dtype == torch.float64
