"""The Triton SSD scan against the float64 step-by-step reference: outputs, final states and every input gradient.

Without a GPU the kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET=1), so shapes stay small:
L <= 64, 2 heads, headdim and d_state 16 (tl.dot's minimum). Awkward cases: L not a multiple of the chunk,
several chunks with state passing, groups g < h, D per head and per channel, z, dt_bias with and without softplus,
initial and final states, strided (non-contiguous) inputs, bfloat16.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")

from condorbrain.ssm.reference import ssd_scan_ref
from condorbrain.ssm.triton import ssd as ssd_module
from condorbrain.ssm.triton.ssd import kernel_chunk_size, ssd_scan_triton

F64 = torch.float64


def make_inputs(b, L, h, p, g, n, *, D="head", z=True, bias=True, h0=True, seed=0):
    """Inputs as (name -> float64 tensor); dt around softplus's knee, A in [-1.5, -0.5]."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=F64) * scale

    inputs = dict(
        x=r(b, L, h, p), dt=r(b, L, h, scale=0.5), A=-0.5 - torch.rand(h, generator=gen, dtype=F64),
        B=r(b, L, g, n), C=r(b, L, g, n),
        D=None if D is None else (r(h) if D == "head" else r(h, p)),
        z=r(b, L, h, p) if z else None, dt_bias=r(h, scale=0.3) if bias else None,
        initial_states=r(b, h, p, n) if h0 else None,
    )
    return inputs


def run(fn, inputs, dtype, device, *, chunk_size, softplus, grads_out):
    """Forward + backward of fn on copies of inputs cast to dtype; returns (y, final, {name: grad})."""
    leaves = {k: (v.detach().to(device=device, dtype=dtype if k != "D" else max(dtype, torch.float32, key=_rank))
                  .requires_grad_() if v is not None else None) for k, v in inputs.items()}
    kw = dict(D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=softplus,
              initial_states=leaves["initial_states"], return_final_states=True)
    if fn is ssd_scan_triton:
        kw["chunk_size"] = chunk_size
    y, final = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], **kw)
    gy, gf = (g.to(device=device, dtype=t.dtype) for g, t in zip(grads_out, (y, final)))
    torch.autograd.backward([y, final], [gy, gf])
    return y, final, {k: v.grad for k, v in leaves.items() if v is not None}


def _rank(dt):
    return {torch.bfloat16: 0, torch.float16: 0, torch.float32: 1, torch.float64: 2}[dt]


def assert_close(name, got, want, rtol):
    """Max abs error within rtol of the reference's largest magnitude (the scale every element shares)."""
    err = (got.double().cpu() - want).abs().max().item()
    scale = want.abs().max().item() + 1e-12
    assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol} * {scale:.3g}"


def check(inputs, device, *, chunk_size=16, softplus=True, dtype=torch.float32, rtol=1e-4):
    b, L, h, p = inputs["x"].shape
    n = inputs["B"].shape[-1]
    gen = torch.Generator().manual_seed(1)
    grads_out = (torch.randn(b, L, h, p, generator=gen, dtype=F64), torch.randn(b, h, p, n, generator=gen, dtype=F64))
    # the reference sees exactly the (possibly bf16-rounded) inputs the kernel sees
    rounded = {k: (v.to(dtype).to(F64) if v is not None and k != "D" else v) for k, v in inputs.items()}
    y_ref, f_ref, g_ref = run(ssd_scan_ref, rounded, F64, "cpu", chunk_size=chunk_size, softplus=softplus,
                              grads_out=grads_out)
    y, final, g = run(ssd_scan_triton, inputs, dtype, device, chunk_size=chunk_size, softplus=softplus,
                      grads_out=grads_out)
    assert y.dtype == dtype and y.device.type == device.type
    assert final.dtype == torch.float32
    assert_close("y", y, y_ref, rtol)
    assert_close("final", final, f_ref, rtol)
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert g[k].dtype == (dtype if k != "D" else torch.float32), k
        assert_close(f"d{k}", g[k], g_ref[k], rtol)


def test_all_options(device):
    # 3 chunks of 16, the last one partial; every optional input at once
    check(make_inputs(2, 41, 2, 16, 1, 16), device)


@pytest.mark.parametrize("L", [1, 16, 64])
def test_lengths(device, L):
    check(make_inputs(1, L, 2, 16, 2, 16), device)


def test_minimal_no_options(device):
    # no D, z, dt_bias, initial state; raw dt (positive, as softplus would give)
    inputs = make_inputs(2, 23, 2, 16, 1, 16, D=None, z=False, bias=False, h0=False)
    inputs["dt"] = inputs["dt"].abs()
    check(inputs, device, softplus=False)


def test_bias_without_softplus_and_D_per_channel(device):
    inputs = make_inputs(1, 30, 2, 16, 1, 16, D="channel", z=False)
    inputs["dt"] = inputs["dt"].abs() + 0.5
    check(inputs, device, softplus=False)


def test_negative_dt_without_softplus(device):
    # dt < 0 (allowed without softplus): a = cumsum(dt A) grows along the chunk, so the decays exp(a_l - a_s) below
    # the diagonal exceed 1 (the kernels cap their exponents above it only where the other factor is 0)
    inputs = make_inputs(1, 40, 2, 16, 1, 16, bias=False)
    inputs["dt"] = -(inputs["dt"].abs() * 0.2 + 0.05)
    check(inputs, device, softplus=False)


def test_padded_head_and_state_dims(device):
    # p = 8 and n = 12 are padded (masked) to the 16 that tl.dot needs
    check(make_inputs(1, 20, 2, 8, 1, 12), device)


@pytest.mark.parametrize("chunk_size", [1, 32, 256])
def test_chunk_size_only_changes_speed(device, chunk_size):
    check(make_inputs(1, 40, 2, 16, 1, 16), device, chunk_size=chunk_size)
    assert 16 <= kernel_chunk_size(chunk_size, 16, 16) <= 64
    assert kernel_chunk_size(chunk_size, 64, 128) <= 32  # large states: smaller chunks (shared memory)


@pytest.mark.parametrize("dtype,dot", [(torch.bfloat16, "bf16"), (torch.bfloat16, "tf32"), (torch.float16, "bf16")])
def test_half(device, dtype, dot, monkeypatch):
    # half inputs (loaded and scanned in float32): output and input gradients in that dtype, looser tolerance; for
    # bfloat16, with the matmuls' operands rounded to bf16 (the default) and kept float32 (CONDORBRAIN_SSD_DOT=tf32)
    monkeypatch.setenv("CONDORBRAIN_SSD_DOT", dot)
    x = torch.zeros(1, dtype=dtype)
    bf16 = dtype == torch.bfloat16 and dot == "bf16"  # bf16 operands: a bf16 tl.dot (emulated when interpreting)
    assert ssd_module._dot_options(x, x, x) == {"PREC": "tf32", "BF16_DOT": (1 + ssd_module.interpreting()) if bf16 else 0}
    check(make_inputs(1, 33, 2, 16, 1, 16), device, dtype=dtype, rtol=2e-2)


def test_backward_states_in_bf16_change_only_the_decay_gradients(device, monkeypatch):
    # bf16 inputs, bf16 matmul operands: the backward stores the entering states and their gradients in bf16
    # (ssd._BWD_STATES_BF16), which its matmuls round them to anyway. Against float32 storage: the gradients of x,
    # B, C, D, z and the initial state the same; dt, A and dt_bias (through dL/da_T, S times its gradient
    # summed elementwise) within bf16's rounding
    inputs = make_inputs(1, 40, 2, 16, 1, 16)
    gen = torch.Generator().manual_seed(1)
    grads_out = (torch.randn(1, 40, 2, 16, generator=gen, dtype=F64), torch.randn(1, 2, 16, 16, generator=gen,
                                                                                   dtype=F64))
    got = {}
    for stored_bf16 in (True, False):
        monkeypatch.setattr(ssd_module, "_BWD_STATES_BF16", stored_bf16)
        got[stored_bf16] = run(ssd_scan_triton, inputs, torch.bfloat16, device, chunk_size=16, softplus=True,
                               grads_out=grads_out)[2]
    for k, g in got[True].items():
        if k in ("dt", "A", "dt_bias"):
            torch.testing.assert_close(g.float(), got[False][k].float(), rtol=2e-2, atol=2e-2 * g.abs().max().item())
        elif device.type == "cpu":  # the interpreter: the same arithmetic, exactly
            assert torch.equal(g, got[False][k]), k
        else:  # compiled apart, the two may order their float32 sums apart: within a bf16 rounding
            torch.testing.assert_close(g.float(), got[False][k].float(), rtol=8e-3, atol=8e-3 * g.abs().max().item())


@pytest.mark.parametrize("h,g", [(6, 1), (6, 2)])
@pytest.mark.parametrize("bwd_heads", [16, 4])
def test_many_heads_per_group(device, h, g, bwd_heads, monkeypatch):
    # 6 heads sharing one B, C: the forward's chunk kernel takes HEADS_PER_PROGRAM=4 heads at a time (programs of 4
    # and 2); with 2 groups, 3 heads per program. The backward's two chunk kernels take all of a group's heads
    # (_BC_HEADS, _DX_HEADS 16) or 4 at a time (then dB, dC are summed both inside a program and, on the host,
    # across programs)
    monkeypatch.setattr(ssd_module, "_BC_HEADS", bwd_heads)
    monkeypatch.setattr(ssd_module, "_DX_HEADS", bwd_heads)
    check(make_inputs(1, 20, h, 16, g, 16), device)


@pytest.mark.parametrize("D,z,p", [("head", True, 16), (None, False, 16), ("channel", False, 40)])
def test_backward_split_over_state_columns(device, monkeypatch, D, z, p):
    # _chunk_bwd_bc takes the state's n columns _BWD_STATE_BLOCK at a time (64 in production, so d_state 128 runs
    # as 2 blocks); 16 here: n = 40 gives 3 blocks, the last one half masked; 6 heads, 1 group: 2 programs of heads
    # per block; its terms of da (carried state, intra-chunk decays) are summed over the blocks in _chunk_bwd_dx.
    # p = 40: _chunk_bwd_dx also takes each head's channels in two blocks (of 32, the second mostly masked), the
    # first of which adds those terms
    monkeypatch.setattr(ssd_module, "_BWD_STATE_BLOCK", 16)
    check(make_inputs(1, 37, 6, p, 1, 40, D=D, z=z), device)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_column_sums_in_dx(device, monkeypatch, dtype, rtol):
    # ssd._COLSUM_IN_DX: dL/da's column sums of dL/dM formed by _chunk_bwd_dx (dt_s times ddt's intra-chunk term)
    # rather than by _chunk_bwd_bc, which keeps the row sums. In bf16 the two halves come from differently rounded
    # matmuls unless dx adds M^T's residual to its bf16 M^T dy: without it, dA was 4.5% off here (0.6% with it, as
    # the default path). Then over 3 state blocks and 2 channel blocks (dx's per-block pieces of dL/da summed on the
    # host)
    monkeypatch.setattr(ssd_module, "_COLSUM_IN_DX", True)
    check(make_inputs(1, 33, 2, 16, 1, 16), device, dtype=dtype, rtol=rtol)
    monkeypatch.setattr(ssd_module, "_BWD_STATE_BLOCK", 16)
    check(make_inputs(1, 37, 3, 40, 1, 40, D="channel", z=False), device, dtype=dtype, rtol=rtol)


@pytest.mark.parametrize("h0", [True, False])
def test_state_rows_split(device, monkeypatch, h0):
    # few sequences (here 2 x 3 heads): _state_fwd / _state_bwd take a head's state 16 rows at a time
    # (_state_rows; in production below 1024 programs, e.g. L 32k at batch 8), so dL/da_T is summed over row blocks
    monkeypatch.setattr(ssd_module, "_STATE_PROGRAMS", 1 << 20)
    assert ssd_module._state_rows(ssd_module._dims(torch.zeros(2, 50, 3, 40), torch.zeros(2, 50, 1, 16), 16)) == 16
    check(make_inputs(2, 50, 3, 40, 1, 16, h0=h0), device)


@pytest.mark.parametrize("h0", [True, False])
@pytest.mark.parametrize("L", [40, 10])
def test_output_only(device, h0, L):
    # without return_final_states: no gradient flows into the final state (the HAS_DFINAL=False path: the last
    # chunk's end state is neither formed nor given a gradient); without an initial state too, as the layers call
    # it (the first chunk's entering state is never stored, its readers take it as 0); L 10 is one chunk, where
    # without either no state is formed at all
    inputs = make_inputs(1, L, 2, 16, 1, 16, h0=h0)
    f32 = {k: v.float().to(device).requires_grad_() if v is not None else None for k, v in inputs.items()}
    f64 = {k: v.clone().requires_grad_() if v is not None else None for k, v in inputs.items()}
    names = ("x", "dt", "A", "B", "C")
    y = ssd_scan_triton(*(f32[k] for k in names), chunk_size=16, D=f32["D"], z=f32["z"], dt_bias=f32["dt_bias"],
                        dt_softplus=True, initial_states=f32["initial_states"])
    y_ref = ssd_scan_ref(*(f64[k] for k in names), D=f64["D"], z=f64["z"], dt_bias=f64["dt_bias"],
                         dt_softplus=True, initial_states=f64["initial_states"])
    assert_close("y", y, y_ref, 1e-4)
    w = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    (y * w.to(y)).sum().backward()
    (y_ref * w).sum().backward()
    for k in f64:
        if f64[k] is not None:
            assert_close(f"d{k}", f32[k].grad, f64[k].grad, 1e-4)


def test_D_as_a_stride0_view_gets_per_channel_gradients(device):
    # a 2-D (h, p) D that is a stride-0 view over the channels (one value a head) is loaded once a head (D_SCALAR)
    # and still gets its gradient per element; a 1-D D gets the sum over the channels, which the kernel forms
    # itself (DD_HEAD: its per-step sums reduced with dA's, one partial a head and channel block)
    inputs = make_inputs(1, 37, 2, 16, 1, 16)
    h, p = inputs["x"].shape[-2:]
    names = ("x", "dt", "A", "B", "C")
    f32 = {k: inputs[k].float().to(device) for k in (*names, "z", "dt_bias")}
    w = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    kw = {"chunk_size": 16, "z": f32["z"], "dt_bias": f32["dt_bias"], "dt_softplus": True}
    D1 = inputs["D"].float().to(device).requires_grad_()
    D2 = D1[:, None].expand(h, p)
    D2.retain_grad()
    assert ssd_module._d_scalar(D2)
    (ssd_scan_triton(*(f32[k] for k in names), D=D2, **kw) * w.to(device).float()).sum().backward()
    D_ref = inputs["D"][:, None].expand(h, p).clone().requires_grad_()  # the same values, a plain (h, p) tensor
    f64 = {k: inputs[k] for k in (*names, "z", "dt_bias")}
    (ssd_scan_ref(*(f64[k] for k in names), D=D_ref, z=f64["z"], dt_bias=f64["dt_bias"], dt_softplus=True)
     * w).sum().backward()
    assert D2.grad.shape == (h, p)
    assert_close("dD (h, p)", D2.grad, D_ref.grad, 1e-4)
    assert D2.grad.std(-1).min() > 0  # the channels' gradients differ: not a head's sum spread over them
    D1b = inputs["D"].float().to(device).requires_grad_()
    (ssd_scan_triton(*(f32[k] for k in names), D=D1b, **kw) * w.to(device).float()).sum().backward()
    assert_close("dD (h,)", D1b.grad, D_ref.grad.sum(-1), 1e-4)


def test_strided_inputs(device):
    # x, B, C as views into one wide tensor (how Mamba-2 calls it on the conv output): no copy, same result
    b, L, h, p, g, n = 1, 24, 2, 16, 1, 16
    inputs = make_inputs(b, L, h, p, g, n)
    wide = torch.cat([inputs["x"].flatten(-2), inputs["B"].flatten(-2), inputs["C"].flatten(-2)], -1)
    wide = wide.float().to(device)
    x, B, C = torch.split(wide, [h * p, g * n, g * n], dim=-1)
    x, B, C = x.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))
    assert not x.is_contiguous()
    args = dict(D=inputs["D"].float().to(device), z=inputs["z"].float().to(device),
                dt_bias=inputs["dt_bias"].float().to(device), dt_softplus=True)
    dt, A = inputs["dt"].float().to(device), inputs["A"].float().to(device)
    y = ssd_scan_triton(x, dt, A, B, C, chunk_size=16, **args)
    want = ssd_scan_triton(x.contiguous(), dt, A, B.contiguous(), C.contiguous(), chunk_size=16, **args)
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_causal(device):
    # changing inputs from step t on leaves the outputs before t unchanged (no look-ahead)
    inputs = make_inputs(1, 40, 2, 16, 1, 16, h0=False)
    f32 = {k: v.float().to(device) if v is not None else None for k, v in inputs.items()}
    kw = dict(D=f32["D"], z=f32["z"], dt_bias=f32["dt_bias"], dt_softplus=True, chunk_size=16)
    y = ssd_scan_triton(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], **kw)
    t = 21
    x2, dt2, B2, C2 = (v.clone() for v in (f32["x"], f32["dt"], f32["B"], f32["C"]))
    for v in (x2, dt2, B2, C2):
        v[:, t:] = torch.randn_like(v[:, t:]) * 3
    y2 = ssd_scan_triton(x2, dt2, f32["A"], B2, C2, **kw)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=0)
    assert not torch.allclose(y2[:, t:], y[:, t:])


def test_cpu_without_interpreter_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(1, 4, 1, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ssd_scan_triton(x, torch.zeros(1, 4, 1), -torch.ones(1), torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 1, 16))
