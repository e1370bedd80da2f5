"""The Triton selective scan against the float64 step-by-step reference: outputs, last state and every input gradient.

Without a GPU the kernels run under Triton's interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1), which
is slow: shapes stay tiny (L <= 32, dim <= 8, N <= 8) but awkward (N and dim not powers of two, L not a multiple of
the tile, several tiles, grouped B/C whose groups cut the channel blocks small). With CUDA they also run on the GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from condorbrain.ssm import selective_scan, selective_scan_ref
from condorbrain.ssm import triton as ssm_triton

DEVICES = [d for d in ("cpu", "cuda") if (d == "cuda" and torch.cuda.is_available()) or
           (d == "cpu" and ssm_triton.available("cpu"))]
if not DEVICES:
    pytest.skip(f"Triton kernels cannot run here: {ssm_triton.status()[1]}", allow_module_level=True)

import condorbrain.ssm.triton.selective as triton_selective  # after the skip: imports triton
from condorbrain.ssm.triton.selective import selective_scan_triton

F64 = torch.float64


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def _make(batch, dim, L, N, bf, cf, G, hasD, hasz, hasbias, softplus, hash0, gen):
    """float64 CPU leaves for one case: (positional args u..C, keyword args)."""
    def leaf(*shape, lo=None, hi=None):
        t = torch.randn(*shape, dtype=F64, generator=gen)
        return t if lo is None else lo + (hi - lo) * torch.rand(*shape, dtype=F64, generator=gen)

    def bc(form):
        return leaf(*{"dn": (dim, N), "bnl": (batch, N, L), "bgnl": (batch, G, N, L)}[form])

    u = leaf(batch, dim, L)
    delta = leaf(batch, dim, L, lo=-1.0, hi=1.0) if softplus else leaf(batch, dim, L, lo=0.01, hi=1.0)
    A = leaf(dim, N, lo=-4.0, hi=-0.1)
    args = [u, delta, A, bc(bf), bc(cf)]
    kwargs = {
        "D": leaf(dim) if hasD else None,
        "z": leaf(batch, dim, L) if hasz else None,
        "delta_bias": leaf(dim, lo=-0.5, hi=0.5) if hasbias else None,
        "initial_state": leaf(batch, dim, N) if hash0 else None,
        "delta_softplus": softplus,
    }
    return args, kwargs


def _tensors(args, kwargs):
    return [t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)]


def _run(fn, args, kwargs, dtype, device, **extra):
    """Outputs and gradients of a loss weighing every output and the last state, for copies of the leaves."""
    leaves = {id(t): t.detach().to(device, dtype).requires_grad_() for t in _tensors(args, kwargs)}
    a = [leaves[id(t)] for t in args]
    kw = {k: leaves[id(v)] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y, h = fn(*a, **kw, return_last_state=True, **extra)
    w = torch.linspace(-1, 1, y.numel(), dtype=F64).reshape(y.shape).to(device)
    loss = (w * y.double()).sum() + (h.double() ** 2).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, h, [g.cpu() for g in grads]


def _assert_close(a, b, rtol, name):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    scale = b.abs().max().item() + 1e-30
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} vs scale {scale:.3e}"


NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

CASES = [
    # (batch, dim, L, N, B form, C form, G, D, z, bias, softplus, h0, chunk)
    (1, 3, 13, 5, "bnl", "bnl", 1, False, False, False, False, False, 4),  # plain; 4 tiles, the last one short
    (2, 4, 19, 4, "bnl", "bnl", 1, True, True, True, True, True, 8),  # every option
    (2, 6, 11, 3, "bgnl", "dn", 2, True, False, True, True, False, 4),  # 3 channels per group: blocks of one channel
    (1, 8, 32, 8, "dn", "bgnl", 4, False, True, False, False, True, 64),  # one tile of the whole sequence
    (2, 5, 9, 2, "dn", "dn", 1, True, True, False, True, True, 2),  # time-invariant B and C, dim 5 in blocks of 4
    (1, 4, 7, 1, "bgnl", "bnl", 4, True, False, True, False, True, 1),  # N = 1, one step per tile
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}d{c[1]}L{c[2]}N{c[3]}-{c[4]}-{c[5]}-c{c[12]}")
def test_matches_reference_float32(case, device):
    *shape, chunk = case
    gen = torch.Generator().manual_seed(1)
    args, kwargs = _make(*shape, gen=gen)
    y, h, grads = _run(selective_scan_triton, args, kwargs, torch.float32, device, chunk_size=chunk)
    y_ref, h_ref, grads_ref = _run(selective_scan_ref, args, kwargs, F64, "cpu")
    assert y.dtype == torch.float32 and h.dtype == torch.float32 and y.device.type == device.type
    _assert_close(y, y_ref, 1e-5, "out")
    _assert_close(h, h_ref, 1e-5, "last state")
    present = [n for n, v in zip(NAMES, [*args, *kwargs.values()]) if isinstance(v, torch.Tensor)]
    for name, g, g_ref in zip(present, grads, grads_ref):
        _assert_close(g, g_ref, 1e-4, f"d{name}")


def test_float64_is_computed_in_float64(device):
    gen = torch.Generator().manual_seed(2)
    args, kwargs = _make(2, 4, 10, 3, "bnl", "bgnl", 2, True, True, True, True, True, gen=gen)
    y, h, grads = _run(selective_scan_triton, args, kwargs, F64, device, chunk_size=4)
    y_ref, h_ref, grads_ref = _run(selective_scan_ref, args, kwargs, F64, "cpu")
    assert y.dtype == F64 and h.dtype == F64
    _assert_close(y, y_ref, 1e-12, "out")
    _assert_close(h, h_ref, 1e-12, "last state")
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        _assert_close(g, g_ref, 1e-11, f"d{name}")


def test_bfloat16_inputs(device):
    """bf16 in, bf16 out (the state in float32), against the float64 reference on the same bf16-rounded inputs."""
    gen = torch.Generator().manual_seed(3)
    args, kwargs = _make(2, 4, 12, 4, "bnl", "bnl", 1, True, True, True, True, True, gen=gen)
    rounded = {id(t): t.to(torch.bfloat16).double() for t in _tensors(args, kwargs)}
    args = [rounded[id(t)] for t in args]
    kwargs = {k: rounded[id(v)] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y, h, grads = _run(selective_scan_triton, args, kwargs, torch.bfloat16, device, chunk_size=4)
    y_ref, h_ref, grads_ref = _run(selective_scan_ref, args, kwargs, F64, "cpu")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    _assert_close(y, y_ref, 1e-2, "out")  # bf16 output rounding: 2^-8 relative
    _assert_close(h, h_ref, 1e-5, "last state")  # float32 throughout
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert g.dtype == torch.bfloat16, name
        _assert_close(g, g_ref, 2e-2, f"d{name}")


def test_agrees_with_cpu_path_and_ignores_chunk_size(device):
    gen = torch.Generator().manual_seed(4)
    args, kwargs = _make(1, 3, 21, 4, "bnl", "dn", 1, True, True, True, True, True, gen=gen)
    args32 = [t.float() for t in args]
    kw32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y_cpu = selective_scan(*args32, **kw32)
    for chunk in (1, 3, 16, 64):
        y = selective_scan_triton(*[t.to(device) for t in args32],
                                  **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw32.items()},
                                  chunk_size=chunk)
        _assert_close(y, y_cpu, 1e-5, f"out, chunk_size={chunk}")


def test_causal_and_no_grad_forward(device):
    """Changing inputs after step t leaves outputs up to t unchanged (also the forward without stored states)."""
    gen = torch.Generator().manual_seed(5)
    args, kwargs = _make(1, 4, 16, 3, "bnl", "bnl", 1, True, True, False, True, False, gen=gen)
    args = [t.float().to(device) for t in args]
    kwargs = {k: v.float().to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with torch.no_grad():
        y = selective_scan_triton(*args, **kwargs, chunk_size=4)
        u, delta, A, B, C = (t.clone() for t in args)
        t = 9
        u[..., t + 1:] += 5.0
        delta[..., t + 1:] -= 0.5
        B[..., t + 1:] *= -2.0
        C[..., t + 1:] = 0.0
        y2 = selective_scan_triton(u, delta, A, B, C, **kwargs, chunk_size=4)
    assert torch.equal(y[..., : t + 1], y2[..., : t + 1])
    assert not torch.equal(y[..., t + 1:], y2[..., t + 1:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"u": torch.zeros(2, 4)}, "u must"),
        ({"delta": torch.zeros(2, 4, 9)}, "delta must have shape"),
        ({"A": torch.zeros(5, 3)}, "A must have shape"),
        ({"B": torch.zeros(2, 3, 3, 10)}, "groups, which must divide dim"),
        ({"B": torch.zeros(2, 2, 10)}, "B must have shape"),
        ({"C": torch.zeros(4, 3, 1)}, "C must have shape \\(batch, N, L\\)"),
        ({"C": torch.zeros(4, 3, 1, 1, 1)}, "C must be \\(dim, N\\)"),
        ({"D": torch.zeros(3)}, "D must have shape"),
        ({"z": torch.zeros(2, 4)}, "z must have shape"),
        ({"delta_bias": torch.zeros(4, 1)}, "delta_bias must have shape"),
        ({"initial_state": torch.zeros(2, 4, 2)}, "initial_state must have shape"),
        ({"u": torch.full((2, 4, 10), math.nan)}, "u contains NaN"),
        ({"B": torch.full((2, 3, 10), math.inf)}, "B contains NaN or inf"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ],
)
def test_bad_input(kwargs, match, device):
    args = {"u": torch.zeros(2, 4, 10), "delta": torch.zeros(2, 4, 10), "A": -torch.ones(4, 3),
            "B": torch.zeros(2, 3, 10), "C": torch.zeros(2, 3, 10)}
    args.update(kwargs)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    if "NaN" in match and device.type == "cuda":
        pytest.skip("on a GPU the scan does not read its arguments back (a host sync per call): the layers check "
                    "their inputs once (tests/ssm/test_mamba.py)")
    with pytest.raises(ValueError, match=match):
        selective_scan_triton(**args)


def test_cpu_tensors_without_interpreter_say_why(monkeypatch):
    monkeypatch.setattr(triton_selective, "status", lambda device: (False, "needs a CUDA device"))
    x = torch.zeros(1, 2, 3)
    with pytest.raises(RuntimeError, match="needs a CUDA device.*selective_scan"):
        selective_scan_triton(x, x, -torch.ones(2, 2), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))
