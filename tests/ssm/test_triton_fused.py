"""The fused Mamba-2 training path (Triton conv+SiLU, SSD, gated RMSNorm) against the layer's own CPU forward.

Each kernel against its PyTorch twin (outputs and gradients), then ``mamba2_fused_forward`` inside a tiny Mamba2
layer, with out_proj outside it and inside it (``Mamba2.forward``'s fused path): the same out_proj input, output and
gradients of every parameter and of the layer input as ``Mamba2.forward`` computed in float64, also under bf16
autocast; and the activations it keeps per token, against what the official fused layer keeps. Under the
interpreter on the CPU (conftest sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")

from condorbrain.ssm.conv import causal_conv1d_ref
from condorbrain.ssm.mamba2 import Mamba2, RMSNormGated
from condorbrain.ssm.memory import saved_activation_bytes
from condorbrain.ssm.triton import fused as fused_module
from condorbrain.ssm.triton.fused import (
    causal_conv1d_silu_triton,
    mamba2_fused_forward,
    rmsnorm_gated_triton,
)

F64 = torch.float64


def assert_close(name, got, want, rtol=1e-4):
    """Max abs error within rtol of the reference's largest magnitude."""
    err = (got.detach().double().cpu() - want.detach().double().cpu()).abs().max().item()
    scale = want.detach().abs().max().item() + 1e-12
    assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol} * {scale:.3g}"


def grads_of(fn, tensors, seed=1):
    """fn(*tensors) and the gradients of <out, fixed random weights> w.r.t. tensors (leaf copies)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    (out * w.to(out)).sum().backward()
    return out, [t.grad if t is not None else None for t in leaves]


# --- the two kernels on their own ------------------------------------------------------------------------------

@pytest.mark.parametrize("programs", [8192, 4, 1], ids=["a block per program", "2 runs a row", "whole rows"])
@pytest.mark.parametrize("bias,silu", [(True, True), (False, True), (True, False)])
def test_conv(device, bias, silu, programs, monkeypatch):
    # programs: the backward's target program count, so that a program's run of steps is one block of 16, two
    # (the row split in 2: 32 + 5 steps) or the whole row (3 blocks)
    monkeypatch.setattr(fused_module, "_CONV_BWD_PROGRAMS", programs)
    check_conv(device, bias, silu, width=4)


@pytest.mark.parametrize("programs", [4, 1], ids=["2 runs a row", "whole rows"])
@pytest.mark.parametrize("stages", [1, 2])
def test_conv_backward_pipelined(device, stages, programs, monkeypatch):
    """_conv_bwd's loop over a run of steps software-pipelined or not (``fused._CONV_BWD_STAGES``; the pipeliner
    only acts on a GPU), with 8-step or 16-step tiles: the same output and gradients."""
    monkeypatch.setattr(fused_module, "_CONV_BWD_STAGES", stages)
    monkeypatch.setattr(fused_module, "_CONV_BWD_BL", 16 if stages == 1 else 8)
    monkeypatch.setattr(fused_module, "_CONV_BWD_PROGRAMS", programs)
    check_conv(device, True, True, width=4)


@pytest.mark.parametrize("bias,silu,programs,width", [
    *((bias, silu, programs, 4) for bias, silu in ((True, True), (False, True), (True, False))
      for programs in (8192, 4, 1)),
    (True, True, 8192, 3), (True, True, 8192, 2), (False, False, 8192, 2)])
def test_conv_backward_slide(device, bias, silu, programs, width, monkeypatch):
    """The conv's backward as one kernel carrying the taps' windows from step to step (``fused._CONV_BWD_SLIDE``):
    the same output and gradients as the float64 reference, with a row's 37 steps in runs of 8 (each run forming the
    next one's first 3 steps of g itself), in 2 runs, or whole, at 4, 3 and 2 taps."""
    monkeypatch.setattr(fused_module, "_CONV_BWD_SLIDE", True)
    monkeypatch.setattr(fused_module, "_CONV_BWD_PROGRAMS", programs)
    calls = []
    real = fused_module._conv_bwd_slide
    monkeypatch.setattr(fused_module, "_conv_bwd_slide", _Recorder(real, calls))
    check_conv(device, bias, silu, width)
    assert calls, "the sliding kernel did not run"


class _Recorder:
    """A Triton kernel wrapped so that its launches are counted (kernel[grid](...))."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]


def test_conv_backward_slide_bfloat16(device, monkeypatch):
    monkeypatch.setattr(fused_module, "_CONV_BWD_SLIDE", True)
    test_conv_bfloat16(device)


@pytest.mark.parametrize("width", [2, 3])
def test_conv_widths(device, width, monkeypatch):
    # d_conv 2 and 3 (3: the taps padded to 4 and masked), whole rows per backward program
    monkeypatch.setattr(fused_module, "_CONV_BWD_PROGRAMS", 1)
    check_conv(device, True, True, width)


def check_conv(device, bias, silu, width):
    """causal_conv1d_silu_triton's output and gradients against causal_conv1d_ref in float64."""
    gen = torch.Generator().manual_seed(0)
    # x as a strided slice of a wider tensor, as the conv reads the xBC columns of the in_proj output
    wide = torch.randn(2, 37, 50, generator=gen, dtype=F64)
    w = torch.randn(40, 1, width, generator=gen, dtype=F64) * 0.5
    b = torch.randn(40, generator=gen, dtype=F64) if bias else None
    act = "silu" if silu else None
    ref, g_ref = grads_of(lambda x, w, b: causal_conv1d_ref(x[..., 5:45], w.view(40, width), b, act), (wide, w, b))
    dev = [t.float().to(device) if t is not None else None for t in (wide, w, b)]
    out, g = grads_of(lambda x, w, b: causal_conv1d_silu_triton(x[..., 5:45], w, b, silu), dev)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert_close("y", out, ref)
    for name, a, e in zip(("dx", "dw", "db"), g, g_ref):
        assert (a is None) == (e is None)
        if e is not None:
            assert_close(name, a, e)


def test_conv_bfloat16(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 20, 24, generator=gen).bfloat16()
    w = (torch.randn(24, 4, generator=gen) * 0.5).bfloat16()
    b = torch.randn(24, generator=gen).bfloat16()
    ref, g_ref = grads_of(lambda x, w, b: causal_conv1d_ref(x, w, b, "silu"), [t.double() for t in (x, w, b)])
    out, g = grads_of(lambda x, w, b: causal_conv1d_silu_triton(x, w, b), [t.to(device) for t in (x, w, b)])
    assert out.dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in g)
    assert_close("y", out, ref, 1e-2)
    for name, a, e in zip(("dx", "dw", "db"), g, g_ref):
        assert_close(name, a, e, 2e-2)


@pytest.mark.parametrize("tile_rows,programs", [(4, 4096), (4, 3), (16, 10**9)],
                         ids=["a tile per program", "runs of 4 tiles, the last partial", "16-row tiles"])
@pytest.mark.parametrize("gate,norm_before_gate,groups", [(True, False, 1), (True, True, 2), (False, False, 2)])
def test_rmsnorm_gated(device, gate, norm_before_gate, groups, tile_rows, programs, monkeypatch):
    # the backward's tiles and programs: 38 rows as 10 programs of one tile, 3 programs of 16 rows (16, 16, 6), or
    # 3 programs of one 16-row tile
    monkeypatch.setattr(fused_module, "_NORM_BWD_ROWS", tile_rows)
    monkeypatch.setattr(fused_module, "_NORM_BWD_PROGRAMS", programs)
    gen = torch.Generator().manual_seed(0)
    d = 48
    y = torch.randn(2, 19, d, generator=gen, dtype=F64)
    z = torch.randn(2, 19, d + 7, generator=gen, dtype=F64) if gate else None  # z: a strided slice
    norm = RMSNormGated(d, group_size=d // groups, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3, generator=gen)
    weight = norm.weight.detach()

    def ref_fn(y, z, w):  # the module's forward with w as its weight, so w gets the gradient
        return torch.func.functional_call(norm, {"weight": w}, (y, z[..., 3:3 + d] if z is not None else None))

    ref, g_ref = grads_of(ref_fn, (y, z, weight))
    dev = [t.float().to(device) if t is not None else None for t in (y, z, weight)]
    out, g = grads_of(lambda y, z, w: rmsnorm_gated_triton(y, z[..., 3:3 + d] if z is not None else None, w, 1e-5,
                                                           d // groups, norm_before_gate), dev)
    assert_close("out", out, ref)
    for name, a, e in zip(("dy", "dz", "dw"), g, g_ref):
        assert (a is None) == (e is None)
        if e is not None:
            assert_close(name, a, e)
    # the backward kernel's copy of the forward's output (out_proj's input in the fused layer's backward): the same
    # arithmetic, so the same numbers (exactly, under the interpreter)
    yd, zd, wd = dev[0], dev[1][..., 3:3 + d] if gate else None, dev[2]
    _, rstd = fused_module._rmsnorm_forward(yd, zd, wd, 1e-5, d // groups, norm_before_gate)
    stored = torch.full_like(out, float("nan"))
    fused_module._rmsnorm_backward(yd, zd, wd, rstd, torch.randn_like(out), d // groups, norm_before_gate,
                                   out=stored)
    tol = 0.0 if device.type == "cpu" else 1e-6
    torch.testing.assert_close(stored, out.detach(), rtol=tol, atol=tol)


# --- the whole layer -----------------------------------------------------------------------------------------------

LAYERS = {
    "default": dict(),
    "groups+norm_before_gate+D_hdim+bias": dict(ngroups=2, norm_before_gate=True, D_has_hdim=True, bias=True),
    "no_rmsnorm+mlp+dt_limit+no_conv_bias": dict(rmsnorm=False, d_ssm=32, dt_limit=(0.01, 0.5), conv_bias=False),
    # 8 heads in one group: more than a program of the forward's and _chunk_bwd_dx takes (HEADS_PER_PROGRAM 4);
    # _chunk_bwd_bc takes them all (_BC_HEADS), its dB, dC straight into the conv's gradient buffer (the seed
    # config's case: 16 heads per group)
    "8_heads_split": dict(headdim=8),
    "d_conv_3": {"d_conv": 3},  # 3 taps (the conv kernels' taps padded to 4 and masked)
    # headdim 32: _chunk_bwd_dx takes each head's channels in two blocks of 16 (ssd._DX_CHANNEL_BLOCKS), its dx
    # written over dy (the norm's) in place, block by block
    "headdim_32": {"headdim": 32},
}


def fused_layer(m: Mamba2, u):
    """Mamba2 with the fused path between in_proj and out_proj (what Mamba2.forward dispatches to on CUDA)."""
    y = mamba2_fused_forward(
        m.in_proj(u), m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m._D(),
        m.norm.weight if m.rmsnorm else None, headdim=m.headdim, d_state=m.d_state, ngroups=m.ngroups,
        chunk_size=m.chunk_size, norm_before_gate=m.norm_before_gate, eps=1e-5, dt_limit=m.dt_limit)
    return m.out_proj(y), y


def layer_grads(m, u, forward):
    """forward(m, u), out_proj's input where out_proj runs as a module (else None), and the gradients of
    <out, fixed random weights> w.r.t. every parameter and u."""
    u = u.detach().clone().requires_grad_()
    captured = {}
    # the hook returns None: a forward hook's return value would replace the module's output
    hook = m.out_proj.register_forward_hook(lambda mod, args, out: captured.update(y=args[0]))
    try:
        out = forward(m, u)
    finally:
        hook.remove()
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=F64).to(out)
    m.zero_grad(set_to_none=True)
    (out * w).sum().backward()
    grads = {name: p.grad for name, p in m.named_parameters()}
    grads["u"] = u.grad
    return out, captured.get("y"), grads


@pytest.fixture
def triton_backend(monkeypatch):
    """Mamba2.forward takes the fused path (on the CPU too, under the interpreter)."""
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")


@pytest.mark.parametrize("name", list(LAYERS))
def test_inference_matches_mamba2(device, name):
    # no gradient wanted (nothing kept for a backward): out_proj's input against the float64 reference
    torch.manual_seed(0)
    m = Mamba2(d_model=32, **{"d_state": 16, "headdim": 16, "chunk_size": 16, **LAYERS[name]}).to(device)
    u = torch.randn(2, 37, 32, device=device)
    with torch.no_grad():
        y = fused_layer(m, u)[1]
    y_ref = layer_grads(copy.deepcopy(m).cpu().double(), u.cpu().double(), lambda m, u: m(u))[1]
    assert_close("out_proj input", y, y_ref)


@pytest.mark.parametrize("out_proj_inside", [False, True], ids=["out_proj_outside", "out_proj_inside"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_mamba2(device, name, out_proj_inside, monkeypatch):
    """The fused path against the unfused float64 forward: out_proj's input (when out_proj is outside, where it
    can be seen), the output, and the gradient of every parameter (out_proj's included) and of the input.
    out_proj inside = ``Mamba2.forward`` itself, which passes out_proj to the fused function."""
    torch.manual_seed(0)
    m = Mamba2(d_model=32, **{"d_state": 16, "headdim": 16, "chunk_size": 16, **LAYERS[name]})  # 4 heads (2 with
    # d_ssm=32, 8 with headdim 8)
    u = torch.randn(2, 37, 32)  # 3 chunks, the last partial
    ref_m = copy.deepcopy(m).double()
    out_ref, y_ref, g_ref = layer_grads(ref_m, u.double(), lambda m, u: m(u))
    dev_m = copy.deepcopy(m).to(device)
    if out_proj_inside:
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
        assert dev_m._fused_path(u.to(device))
        out, _, g = layer_grads(dev_m, u.to(device), lambda m, u: m(u))
    else:
        out, y, g = layer_grads(dev_m, u.to(device), lambda m, u: fused_layer(m, u)[0])
        assert_close("out_proj input", y, y_ref)
    assert_close("out", out, out_ref)
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert (g[k] is None) == (g_ref[k] is None), k
        if g_ref[k] is not None:
            assert_close(f"d{k}", g[k], g_ref[k])


@pytest.mark.parametrize("out_in_bwd", [True, False], ids=["norm output from its backward", "norm forward rerun"])
@pytest.mark.parametrize("name", ["default", "groups+norm_before_gate+D_hdim+bias", "mlp+rmsnorm"])
def test_layer_norm_output_both_ways(device, name, out_in_bwd, monkeypatch):
    """out_proj's input in the backward, the norm's output (with the d_mlp branch's beside it in "mlp+rmsnorm"),
    stored by the norm's backward kernel (``fused._NORM_OUT_IN_BWD``) or by its forward kernel rerun: the same
    output and gradients as the float64 layer each way."""
    monkeypatch.setitem(LAYERS, "mlp+rmsnorm", {"d_ssm": 32})
    monkeypatch.setattr(fused_module, "_NORM_OUT_IN_BWD", out_in_bwd)
    test_layer_matches_mamba2(device, name, True, monkeypatch)


@pytest.mark.parametrize("kept", [True, False], ids=["conv output kept", "conv output recomputed"])
@pytest.mark.parametrize("name", ["default", "groups+norm_before_gate+D_hdim+bias"])
def test_layer_conv_output_kept(device, name, kept, monkeypatch):
    """The conv's output kept by the forward for the backward (``fused._SAVE_CONV_OUT``) or recomputed there: the
    same output and gradients as the float64 layer either way, and the conv's forward run once or twice."""
    calls = []
    real = fused_module._conv_forward
    monkeypatch.setattr(fused_module, "_conv_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fused_module, "_SAVE_CONV_OUT", kept)
    test_layer_matches_mamba2(device, name, True, monkeypatch)
    assert len(calls) == (1 if kept else 2)  # the forward's, and the backward's unless kept


@pytest.mark.parametrize("kept", [True, False], ids=["conv output kept", "conv output recomputed"])
@pytest.mark.parametrize("name", ["default", "groups+norm_before_gate+D_hdim+bias",
                                  "no_rmsnorm+mlp+dt_limit+no_conv_bias", "headdim_32", "d_conv_3"])
def test_layer_dsilu_in_ssd(device, name, kept, monkeypatch):
    """The conv's SiLU derivative applied by the SSD's backward kernels where they store dx, dB, dC, the conv
    recomputed there (``fused._DSILU_IN_SSD``), the conv output kept or recomputed: the same output and gradients as
    the float64 layer, and the conv's backward run without a SiLU of its own (no ``_conv_bwd_gate``). Layers: 2
    groups and a conv bias (B, C of group 1 at their offsets), no conv bias, 3 taps, and dx in two channel blocks."""
    gates = []
    real = fused_module._conv_backward
    monkeypatch.setattr(fused_module, "_conv_backward", lambda *a, **k: gates.append(k["silu"]) or real(*a, **k))
    monkeypatch.setattr(fused_module, "_DSILU_IN_SSD", True)
    monkeypatch.setattr(fused_module, "_SAVE_CONV_OUT", kept)
    test_layer_matches_mamba2(device, name, True, monkeypatch)
    assert gates == [False]


@pytest.mark.parametrize("dsilu", [False, True], ids=["gate in the conv", "gate in the SSD"])
@pytest.mark.parametrize("name", ["default", "groups+norm_before_gate+D_hdim+bias",
                                  "no_rmsnorm+mlp+dt_limit+no_conv_bias", "d_conv_3"])
def test_layer_conv_backward_slide(device, name, dsilu, monkeypatch):
    """The layer with the conv's backward as one sliding kernel (``fused._CONV_BWD_SLIDE``), with the SiLU's
    derivative in it or in the SSD's stores (``fused._DSILU_IN_SSD``): the same output and gradients as the float64
    layer, and the gate kernel never launched."""
    monkeypatch.setattr(fused_module, "_CONV_BWD_SLIDE", True)
    monkeypatch.setattr(fused_module, "_DSILU_IN_SSD", dsilu)
    gates, slides = [], []
    monkeypatch.setattr(fused_module, "_conv_bwd_gate", _Recorder(fused_module._conv_bwd_gate, gates))
    monkeypatch.setattr(fused_module, "_conv_bwd_slide", _Recorder(fused_module._conv_bwd_slide, slides))
    test_layer_matches_mamba2(device, name, True, monkeypatch)
    assert not gates and len(slides) == 1


def test_dsilu_conv_of_the_wrong_shape_is_refused():
    """ssd._backward's conv (the SiLU's derivative in its stores): the conv's input, weight and bias must have the
    columns the scan's x, B, C split into (h p + 2 g n), or it says what it expected."""
    from condorbrain.ssm.triton import ssd

    d = {"b": 2, "L": 5, "nh": 2, "p": 16, "g": 1, "n": 16}
    x = torch.zeros(2, 5, 2, 16)
    ok = (torch.zeros(2, 5, 64), torch.zeros(64, 4), torch.zeros(64))
    args, opts = ssd._conv_args(ok, x, d)
    assert opts == {"DSILU": True, "HAS_CB": True, "K": 4} and args[1].shape == (4, 64) and args[6:] == (1, 64)
    for bad in ((torch.zeros(2, 5, 48), *ok[1:]), (ok[0], torch.zeros(48, 4), ok[2]), (*ok[:2], torch.zeros(4))):
        with pytest.raises(ValueError, match=r"conv: xin \(2, 5, 64\), weight \(64, K\)"):
            ssd._conv_args(bad, x, d)


@pytest.mark.parametrize("autocast", [True, False], ids=["bf16 autocast", "float32"])
def test_layer_dsilu_in_ssd_is_the_gate_kernels_result(device, autocast, monkeypatch):
    """With ``fused._DSILU_IN_SSD`` the SSD's kernels round dx, dB, dC to the stored dtype and multiply by silu'(pre)
    in the same operations, in the same order, as the conv's gate kernel did on the stored values: every gradient is
    the same, bit for bit (here, under the interpreter; a compiler may contract the float operations differently in
    two kernels), in bf16 activations under autocast and in float32."""
    torch.manual_seed(0)
    m = Mamba2(d_model=32, d_state=16, headdim=16, chunk_size=16, ngroups=2, bias=True)
    u = torch.randn(2, 37, 32)
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    grads = {}
    for way in (False, True):
        monkeypatch.setattr(fused_module, "_DSILU_IN_SSD", way)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            _, _, grads[way] = layer_grads(copy.deepcopy(m).to(device), u.to(device), lambda m, u: m(u))
    for k, g in grads[False].items():
        assert torch.equal(grads[True][k], g), k


def test_layer_bfloat16(device):
    torch.manual_seed(0)
    m = Mamba2(d_model=32, d_state=16, headdim=16, chunk_size=16)
    u = torch.randn(1, 24, 32)
    out_ref, _, g_ref = layer_grads(copy.deepcopy(m).double(), u.double(), lambda m, u: m(u))
    bf = copy.deepcopy(m).to(device=device, dtype=torch.bfloat16)
    out, y, g = layer_grads(bf, u.to(device, torch.bfloat16), lambda m, u: fused_layer(m, u)[0])
    assert out.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert_close("out", out, out_ref, 5e-2)
    for k in ("u", "in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"):
        assert_close(f"d{k}", g[k], g_ref[k], 5e-2)


@pytest.mark.parametrize("grads_in_bf16", [True, False], ids=["scan grads bf16", "scan grads float32"])
def test_layer_autocast_bfloat16(device, grads_in_bf16, monkeypatch):
    """Mamba2.forward's fused path under bf16 autocast (float32 parameters), as training runs: out_proj's matmul in
    bfloat16 like nn.Linear's, float32 parameter gradients, close to the float64 layer; the SSD's gradients stored
    in bf16 (``fused._GRADS_IN_ACT_DTYPE``, as the official layer does) or float32 (errors of the same size here:
    autocast's own rounding dominates)."""
    monkeypatch.setattr(fused_module, "_GRADS_IN_ACT_DTYPE", grads_in_bf16)
    torch.manual_seed(0)
    m = Mamba2(d_model=32, d_state=16, headdim=16, chunk_size=16, bias=True)
    u = torch.randn(2, 24, 32)
    out_ref, _, g_ref = layer_grads(copy.deepcopy(m).double(), u.double(), lambda m, u: m(u))
    # only now: the float64 reference runs on the CPU, which the triton backend refuses where a GPU is at hand
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out, _, g = layer_grads(copy.deepcopy(m).to(device), u.to(device), lambda m, u: m(u))
    assert out.dtype == torch.bfloat16
    assert_close("out", out, out_ref, 5e-2)
    for k in g_ref:
        assert g[k].dtype == torch.float32, k
        assert_close(f"d{k}", g[k], g_ref[k], 5e-2)


@pytest.mark.parametrize("kept", [False, True], ids=["conv output recomputed", "conv output kept"])
def test_fused_layer_saves_what_the_official_one_saves(device, triton_backend, kept, monkeypatch):
    """Activations kept per token by one layer's training forward (bf16 autocast), the slope between two lengths
    (what does not grow with L, e.g. bf16 copies of weights, cancels): at most what the official fused layer
    (mamba_split_conv1d_scan_combined) keeps: in_proj's input, zxbcdt and the scan's output before the norm, 2 bytes
    each per channel, + its 1/rms (4 bytes per group) and a few bytes of slack; and the conv's output (2 bytes a
    channel) besides where it is kept (``fused._SAVE_CONV_OUT``, the default), nothing else. The previous chain of
    three autograd functions also kept the norm's output, the scan's float32 dt and decay sums."""
    monkeypatch.setattr(fused_module, "_SAVE_CONV_OUT", kept)
    torch.manual_seed(0)
    m = Mamba2(d_model=32, d_state=16, headdim=16, chunk_size=16).to(device)
    batch, lengths = 2, (32, 64)
    per_len = []
    for L in lengths:
        u = torch.randn(batch, L, 32, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            per_len.append(saved_activation_bytes(lambda u=u: m(u))["all"])
    per_token = (per_len[1] - per_len[0]) / (batch * (lengths[1] - lengths[0]))
    d_in_proj = m.in_proj.out_features
    conv_dim = m.d_ssm + 2 * m.ngroups * m.d_state
    bound = (d_in_proj + m.d_ssm + m.d_model + (conv_dim if kept else 0)) * 2 + 64
    assert per_token <= bound, f"{per_token:.0f} bytes per token kept, official-like bound {bound}"
    assert per_token >= bound - 64  # and the conv output is kept where it should be
