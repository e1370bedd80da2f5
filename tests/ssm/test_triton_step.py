"""The fused streaming step (condorbrain.ssm.triton.step) against the eager step it replaces, and against forward.

``Mamba2.step`` / ``Mamba.step`` take the Triton step where the scan backend is ``triton`` (forced here with
``CONDORBRAIN_SCAN_BACKEND=triton``; without a GPU the kernels run under Triton's interpreter, which conftest sets
up) and no gradient is recorded. Each case steps a tiny layer several times from random (non-zero) states and
compares the output and both states after every step with ``_step_reference``, the eager twin, run on copies of the
states; stepping through a sequence must also reproduce ``forward``. Then what a CUDA graph needs: the states are
updated in place, and a whole step under a simulated capture reads no device value back to the host and launches
exactly two kernels. Shapes stay tiny (the interpreter runs programs one by one).
"""

from __future__ import annotations

import contextlib
import copy
from unittest import mock

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")

import triton

from condorbrain.ssm import _checks
from condorbrain.ssm.blocks import STEP_GEMV_MAX_BATCH, RMSNorm, norm_then_step
from condorbrain.ssm.mamba import Mamba
from condorbrain.ssm.mamba2 import Mamba2
from condorbrain.ssm.triton import step as step_module

BF16 = torch.bfloat16
pytestmark = pytest.mark.usefixtures("triton_layers")


def assert_close(name, got, want, rtol):
    """Max abs error within rtol of the reference's largest magnitude."""
    err = (got.double().cpu() - want.double().cpu()).abs().max().item()
    scale = want.double().abs().max().item() + 1e-12
    assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol} * {scale:.3g}"


def random_states(m, batch, dtype, device, seed=1):
    """``allocate_inference_cache``'s tensors (the transposed conv_state layout kept) filled with random values."""
    gen = torch.Generator().manual_seed(seed)
    states = m.allocate_inference_cache(batch, dtype=dtype)
    for s in states:
        s.copy_(torch.randn(s.shape, generator=gen).to(device))
    return states


def compare_steps(m, batch, device, *, act_dtype=torch.float32, state_dtype=None, n_steps=3, rtol=1e-5,
                  reference_dtype=None):
    """n_steps of m.step (fused) against m._step_reference on copies of the same states: output and both states
    after every step. With ``reference_dtype`` the reference is the layer and states cast to it (for half
    precision: the fused step is compared with float64, not with the eager step's own rounding)."""
    m = m.to(device=device, dtype=act_dtype).eval()
    ref_m = m if reference_dtype is None else copy.deepcopy(m).to(reference_dtype)
    ref_dtype = reference_dtype or act_dtype
    conv_state, ssm_state = random_states(m, batch, state_dtype or act_dtype, device)
    ptrs = (conv_state.data_ptr(), ssm_state.data_ptr())
    ref_states = [s.clone() if reference_dtype is None else s.to(reference_dtype) for s in (conv_state, ssm_state)]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        assert m._fused_step_path(torch.zeros(1, 1, 1, device=device, dtype=act_dtype), conv_state, ssm_state)
        for t in range(n_steps):
            u = torch.randn(batch, 1, m.d_model, generator=gen).to(device)
            out, cs, ss = m.step(u.to(act_dtype), conv_state, ssm_state)
            ref_out, _, _ = ref_m._step_reference(u.to(ref_dtype), *ref_states)
            assert cs is conv_state and ss is ssm_state
            assert out.dtype == act_dtype and out.shape == (batch, 1, m.d_model)
            assert_close(f"out at step {t}", out, ref_out, rtol)
            assert_close(f"conv_state at step {t}", conv_state, ref_states[0], rtol)
            assert_close(f"ssm_state at step {t}", ssm_state, ref_states[1], rtol)
    assert (conv_state.data_ptr(), ssm_state.data_ptr()) == ptrs  # in place, same storage


# --- Mamba-2 ---------------------------------------------------------------------------------------------------

SMALL = {"d_model": 16, "d_state": 8, "headdim": 8, "chunk_size": 16}  # d_inner 32: 4 heads of 8 channels
CASES = {
    "default": {},
    "norm before gate": {"norm_before_gate": True},
    "no rmsnorm": {"rmsnorm": False},
    "2 groups, D per channel": {"ngroups": 2, "D_has_hdim": True},
    "dt_limit": {"dt_limit": (0.02, 0.05), "dt_min": 0.001, "dt_max": 0.2},
    "d_mlp, 2 groups, norm before gate": {"d_ssm": 16, "ngroups": 2, "norm_before_gate": True},
    "d_mlp, no rmsnorm, no conv bias": {"d_ssm": 24, "rmsnorm": False, "conv_bias": False},
    "no conv bias, headdim 16, d_state 16": {"headdim": 16, "d_state": 16, "conv_bias": False},
}


@pytest.mark.parametrize("name", list(CASES))
def test_mamba2_step_matches_eager(device, name):
    torch.manual_seed(0)
    compare_steps(Mamba2(**{**SMALL, **CASES[name]}), 1, device)


def test_mamba2_step_batch_3(device):
    torch.manual_seed(0)
    compare_steps(Mamba2(**SMALL, ngroups=2, d_ssm=16, D_has_hdim=True), 3, device)


@pytest.mark.parametrize("act_dtype,state_dtype", [(BF16, torch.float32), (BF16, BF16), (torch.float32, BF16)],
                         ids=["bf16 act, fp32 state", "bf16 act, bf16 state", "fp32 act, bf16 state"])
def test_mamba2_step_half_precision(device, act_dtype, state_dtype):
    torch.manual_seed(0)
    m = Mamba2(**SMALL, ngroups=2)
    compare_steps(m, 2, device, act_dtype=act_dtype, state_dtype=state_dtype, rtol=3e-2,
                  reference_dtype=torch.float64)


def test_mamba2_step_float16(device):
    torch.manual_seed(0)
    compare_steps(Mamba2(**SMALL, rmsnorm=False), 1, device, act_dtype=torch.float16, rtol=1e-2,
                  reference_dtype=torch.float64)


def assert_steps_reproduce_forward(m, u, device, monkeypatch):
    """Fused steps through u from zero states give forward(u) at every position (forward run by the PyTorch
    backend) and forward's final state."""
    m = m.to(device).eval()
    with torch.no_grad():
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "torch")
        y, state = m(u.to(device), return_state=True)
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
        conv_state, ssm_state = m.allocate_inference_cache(u.shape[0])
        outs = [m.step(u[:, t : t + 1].to(device), conv_state, ssm_state)[0] for t in range(u.shape[1])]
    assert_close("steps vs forward", torch.cat(outs, dim=1), y, 1e-5)
    assert_close("conv_state", conv_state, state.conv_state, 1e-6)
    assert_close("ssm_state", ssm_state, state.ssm_state, 1e-5)


@pytest.mark.parametrize("kw", [{}, {"ngroups": 2, "d_ssm": 16, "D_has_hdim": True, "dt_limit": (0.0, 0.05)}],
                         ids=["default", "groups, d_mlp, D per channel, dt_limit"])
def test_mamba2_steps_reproduce_forward(device, kw, monkeypatch):
    torch.manual_seed(0)
    assert_steps_reproduce_forward(Mamba2(**SMALL, **kw), torch.randn(2, 6, 16), device, monkeypatch)


# --- Mamba-1 ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,conv_bias", [(1, True), (3, False)])
def test_mamba_step_matches_eager(device, batch, conv_bias):
    torch.manual_seed(0)
    compare_steps(Mamba(d_model=16, d_state=8, conv_bias=conv_bias), batch, device)


def test_mamba_step_half_precision(device):
    torch.manual_seed(0)
    compare_steps(Mamba(d_model=16, d_state=8), 2, device, act_dtype=BF16, state_dtype=torch.float32, rtol=3e-2,
                  reference_dtype=torch.float64)


def test_mamba_steps_reproduce_forward(device, monkeypatch):
    torch.manual_seed(0)
    assert_steps_reproduce_forward(Mamba(d_model=16, d_state=8), torch.randn(2, 6, 16), device, monkeypatch)


# --- the block's step: add + norm + in_proj, and norm + out_proj, as GEMVs -------------------------------------

def compare_block_steps(m, batch, device, monkeypatch, *, act_dtype=torch.float32, state_dtype=None, n_steps=3,
                        rtol=1e-5, reference_dtype=None):
    """n_steps of norm_then_step (the three-launch path: asserted taken) against the eager add, RMSNorm reference
    and _step_reference on copies of the states: the residual, the output and both states after every step; the
    first step with nothing pending."""
    m = m.to(device=device, dtype=act_dtype).eval()
    norm = RMSNorm(m.d_model, eps=1e-6).to(device=device, dtype=act_dtype)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(m.d_model, generator=gen) + 0.5)
    ref_m, ref_norm = m, norm
    if reference_dtype is not None:
        ref_m, ref_norm = copy.deepcopy(m).to(reference_dtype), copy.deepcopy(norm).to(reference_dtype)
    ref_dtype = reference_dtype or act_dtype
    cache = random_states(m, batch, state_dtype or act_dtype, device)
    ref_cache = [s.clone().to(ref_dtype) for s in cache]
    calls = []
    real = Mamba2.step_prenormed
    monkeypatch.setattr(Mamba2, "step_prenormed", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(batch, 1, m.d_model, generator=gen).to(device, act_dtype)
    pending = None
    with torch.no_grad():
        for t in range(n_steps):
            res, out = norm_then_step(norm, m, x, pending, cache)
            ref_res = (x if pending is None else x + pending).to(ref_dtype)  # the add in the activation dtype
            ref_out = ref_m._step_reference(ref_norm._forward_reference(ref_res), *ref_cache)[0]
            assert res.dtype == out.dtype == act_dtype and res.shape == out.shape == (batch, 1, m.d_model)
            assert_close(f"residual at step {t}", res, ref_res, rtol)
            assert_close(f"out at step {t}", out, ref_out, rtol)
            assert_close(f"conv_state at step {t}", cache[0], ref_cache[0], rtol)
            assert_close(f"ssm_state at step {t}", cache[1], ref_cache[1], rtol)
            x, pending = res, torch.randn(batch, 1, m.d_model, generator=gen).to(device, act_dtype)
    assert calls == [1] * n_steps


@pytest.mark.parametrize("name", list(CASES))
def test_block_step_gemvs_match_eager(device, name, monkeypatch):
    torch.manual_seed(0)
    compare_block_steps(Mamba2(**{**SMALL, **CASES[name]}), 1, device, monkeypatch)


def test_block_step_gemvs_batch_3_with_biases(device, monkeypatch):
    torch.manual_seed(0)
    compare_block_steps(Mamba2(**SMALL, ngroups=2, d_ssm=16, bias=True), 3, device, monkeypatch)


@pytest.mark.parametrize("state_dtype", [torch.float32, BF16], ids=["fp32 state", "bf16 state"])
def test_block_step_gemvs_bfloat16(device, state_dtype, monkeypatch):
    torch.manual_seed(0)
    compare_block_steps(Mamba2(**SMALL, ngroups=2), 2, device, monkeypatch, act_dtype=BF16, state_dtype=state_dtype,
                        rtol=3e-2, reference_dtype=torch.float64)


def test_block_step_falls_back_where_gemvs_do_not_pay(device, monkeypatch):
    """More rows than STEP_GEMV_MAX_BATCH, another norm, float64, or a gradient wanted: the add + norm and the
    two-kernel step with its projections (the same numbers, by the eager twin's tests)."""
    m = Mamba2(**SMALL).to(device).eval()
    monkeypatch.setattr(Mamba2, "step_prenormed", lambda *a: pytest.fail("took the GEMV path"))
    norm = RMSNorm(16).to(device)
    many = STEP_GEMV_MAX_BATCH + 1
    with torch.no_grad():
        _, out = norm_then_step(norm, m, torch.randn(many, 1, 16, device=device), None,
                                  m.allocate_inference_cache(many))
        assert out.shape == (many, 1, 16)
        norm_then_step(torch.nn.LayerNorm(16).to(device), m, torch.randn(1, 1, 16, device=device), None,
                       m.allocate_inference_cache(1))
        m64 = copy.deepcopy(m).double()
        norm_then_step(copy.deepcopy(norm).double(), m64, torch.randn(1, 1, 16, device=device, dtype=torch.float64),
                       None, m64.allocate_inference_cache(1))
    _, out = norm_then_step(norm, m, torch.randn(1, 1, 16, device=device), None, m.allocate_inference_cache(1))
    assert out.requires_grad  # the eager step, differentiable


def test_pdl_only_where_asked_and_the_kernel_before_is_known(device, monkeypatch):
    """Programmatic dependent launch (a kernel reads its weights and states before waiting for the one before it):
    never on the CPU or unasked; in a block's step, asked for the state update and the gated norm + out_proj (their
    kernel before is this step's) and for add + norm + in_proj only with a pending add (the kernel before is then
    the previous block's out_proj: the first block's could be anything, e.g. a write of its weights)."""
    assert not step_module._pdl(torch.zeros(1), True)
    assert not step_module._pdl(torch.zeros(1), False)
    asked = []
    monkeypatch.setattr(step_module, "_pdl", lambda t, ask=True: asked.append(ask) or False)
    m = Mamba2(**SMALL).to(device).eval()
    cache = m.allocate_inference_cache(1)
    x = torch.randn(1, 1, 16, device=device)
    with torch.no_grad():
        m.step_prenormed(x, None, torch.ones(16, device=device), 1e-6, *cache)
        assert asked == [False, True]
        asked.clear()
        m.step_prenormed(x, torch.randn_like(x), torch.ones(16, device=device), 1e-6, *cache)
        assert asked == [True, True]
        asked.clear()
        m.step(x, *cache)  # the layer's own two-kernel step: never
    assert asked == []


def test_gemv_tiles():
    """On a GPU: a row's inputs in one pass up to 1024, <= 4096 weights and about 128 or more programs per row at
    the seed's projections; the fewest programs under the interpreter."""
    if step_module.interpreting():
        assert step_module._gemv_tiles(2192, 512) == (8, 512)
    else:
        assert step_module._gemv_tiles(2192, 512) == (8, 512)  # in_proj: 274 programs, one pass
        assert step_module._gemv_tiles(512, 1024) == (4, 1024)  # out_proj: 128 programs, one pass
        assert step_module._gemv_tiles(512, 2048) == (2, 1024)  # wider rows: two passes
        assert step_module._gemv_tiles(8, 16) == (2, 16)


def test_block_step_gemvs_in_several_passes(device, monkeypatch):
    """Rows wider than one GEMV pass (here 8 inputs a pass, on a GPU 1024): the loops over the row, the norm's sum
    of squares first, give what one pass gives."""
    monkeypatch.setattr(step_module, "_GEMV_MAX_BK", 8)
    torch.manual_seed(0)
    compare_block_steps(Mamba2(**SMALL, ngroups=2, d_ssm=16, bias=True), 2, device, monkeypatch)
    compare_block_steps(Mamba2(**SMALL), 1, device, monkeypatch)


# --- what a CUDA graph needs -----------------------------------------------------------------------------------

def _host_read(*args, **kwargs):
    raise AssertionError("a device value was read back to the host during the step")


@contextlib.contextmanager
def simulated_capture():
    """What ``torch.cuda.graph`` forbids, made an error: every way a tensor's value reaches Python raises, and the
    layers' checks see a capture in progress (``_checks.capturing``), as under ``GraphedStep``. Triton launches are
    recorded, not run (the interpreter itself reads the tensors' values). Yields the list of launched kernels."""
    launches = []

    def getitem(kernel, grid):
        return lambda *args, **kwargs: launches.append(kernel.fn.__name__)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(_checks, "capturing", lambda: True))
        stack.enter_context(mock.patch.object(triton.runtime.jit.KernelInterface, "__getitem__", getitem))
        for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, _host_read))
        yield launches


@pytest.mark.parametrize("layer", ["mamba2", "mamba2 groups d_mlp no norm", "mamba"])
def test_step_is_two_launches_and_reads_nothing_back(device, layer):
    torch.manual_seed(0)
    m = {"mamba2": lambda: Mamba2(**SMALL),
         "mamba2 groups d_mlp no norm": lambda: Mamba2(**SMALL, ngroups=2, d_ssm=16, rmsnorm=False),
         "mamba": lambda: Mamba(d_model=16, d_state=8)}[layer]().to(device).eval()
    conv_state, ssm_state = m.allocate_inference_cache(2)
    u = torch.randn(2, 1, 16, device=device)
    with torch.no_grad(), simulated_capture() as launches:
        out, _, _ = m.step(u, conv_state, ssm_state)
    assert out.shape == (2, 1, 16)
    expected = {"mamba": ["_mamba_step_conv", "_mamba_step_ssm"]}.get(
        layer, ["_mamba2_step_ssm", "_mamba2_step_finish"])
    assert launches == expected


@pytest.mark.parametrize("pending", [False, True], ids=["nothing pending", "pending add"])
def test_block_step_is_three_launches_and_reads_nothing_back(device, pending):
    torch.manual_seed(0)
    m = Mamba2(**SMALL, ngroups=2, d_ssm=16).to(device).eval()
    norm = RMSNorm(16).to(device)
    cache = m.allocate_inference_cache(2)
    x = torch.randn(2, 1, 16, device=device)
    h = torch.randn(2, 1, 16, device=device) if pending else None
    with torch.no_grad(), simulated_capture() as launches:
        res, out = norm_then_step(norm, m, x, h, cache)
    assert out.shape == res.shape == (2, 1, 16) and (res is not x) == pending
    assert launches == ["_rmsnorm_gemv", "_mamba2_step_ssm", "_mamba2_step_out"]


def test_eager_step_when_a_gradient_is_wanted(device, monkeypatch):
    """The kernels have no backward: with autograd recording, step takes the eager (differentiable) path."""
    m = Mamba2(**SMALL).to(device)
    calls = []
    real = step_module.mamba2_step_triton
    monkeypatch.setattr(step_module, "mamba2_step_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv_state, ssm_state = m.allocate_inference_cache(1)
    u = torch.randn(1, 1, 16, device=device)
    out = m.step(u, conv_state, ssm_state)[0]
    assert not calls and out.requires_grad
    with torch.no_grad():
        m.step(u, conv_state, ssm_state)
    assert calls == [1]
