"""The scans against plain float64 step-by-step recurrences written here (outputs and every input gradient).

Both paths are checked: the compiled CPU scan and the pure-PyTorch chunked one (``backend`` fixture).
"""

from __future__ import annotations

import math

import pytest
import torch

from condorbrain.ssm import cpu_kernel, scan_backend, selective_scan, ssd_scan

F64 = torch.float64


@pytest.fixture(params=["compiled", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", request.param)
    if request.param == "compiled" and not cpu_kernel.available():
        pytest.fail(f"compiled CPU scan unavailable: {cpu_kernel.unavailable_reason()}")
    assert scan_backend("cpu", torch.float64) == request.param
    return request.param


# --- references, written independently of the package: one explicit loop over time and state ---------------------

def ref_selective(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, h0=None):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = C_t . h_t + D u_t; y *= silu(z)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if softplus:
        delta = torch.log1p(torch.exp(delta))

    def at(X, t):  # B or C at step t as (batch, dim, N)
        if X.dim() == 2:
            return X[None].expand(batch, dim, N)
        if X.dim() == 3:
            return X[:, None, :, t].expand(batch, dim, N)
        G = X.shape[1]
        return torch.stack([X[:, d * G // dim, :, t] for d in range(dim)], dim=1)

    h = torch.zeros(batch, dim, N, dtype=u.dtype) if h0 is None else h0
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * at(B, t) * u[:, :, t, None]
        ys.append((h * at(C, t)).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, h


def ref_ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, softplus=False, h0=None):
    """Per head: H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T (p x n); y_t = H_t C_t + D x_t; y *= silu(z)."""
    b, L, nh, p = x.shape
    g, n = B.shape[2:]
    if dt_bias is not None:
        dt = dt + dt_bias
    if softplus:
        dt = torch.log1p(torch.exp(dt))
    H = torch.zeros(b, nh, p, n, dtype=x.dtype) if h0 is None else h0
    ys = []
    for t in range(L):
        outs, Hs = [], []
        for hh in range(nh):
            gi = hh // (nh // g)
            Hh = torch.exp(dt[:, t, hh] * A[hh])[:, None, None] * H[:, hh] + \
                (dt[:, t, hh, None] * x[:, t, hh])[:, :, None] * B[:, t, gi, None, :]
            Hs.append(Hh)
            outs.append((Hh * C[:, t, gi, None, :]).sum(-1))
        H = torch.stack(Hs, 1)
        ys.append(torch.stack(outs, 1))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, H


def _grads(out, inputs):
    y, h = out
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)  # a loss that weighs every output
    loss = (w * y).sum() + (h * h).sum()
    live = [t for t in inputs if t is not None]
    return dict(zip([id(t) for t in live], torch.autograd.grad(loss, live)))


def _assert_close(a, b, rtol, name):
    scale = b.abs().max().item() + 1e-30
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} vs scale {scale:.3e}"


def _leaf(*shape, lo=None, hi=None, gen):
    t = torch.randn(*shape, dtype=F64, generator=gen)
    if lo is not None:
        t = lo + (hi - lo) * torch.rand(*shape, dtype=F64, generator=gen)
    return t.requires_grad_()


# --- selective_scan ------------------------------------------------------------------------------------------------

SEL_CASES = [
    # (batch, dim, L, N, B form, C form, G, D, z, bias, softplus, h0, chunk)
    (2, 4, 1, 3, "bnl", "bnl", 1, True, True, True, True, False, 64),
    (1, 3, 7, 5, "dn", "dn", 1, False, False, False, False, False, 64),
    (2, 6, 65, 4, "bgnl", "bgnl", 3, True, False, True, True, True, 16),
    (3, 4, 33, 2, "dn", "bgnl", 2, True, True, False, False, True, 8),
    (2, 6, 130, 8, "bgnl", "bnl", 6, False, True, True, True, True, 64),
    (1, 2, 5, 1, "bnl", "dn", 1, True, False, False, True, True, 2),
]


def _bc(form, batch, dim, L, N, G, gen):
    shape = {"dn": (dim, N), "bnl": (batch, N, L), "bgnl": (batch, G, N, L)}[form]
    return _leaf(*shape, gen=gen)


@pytest.mark.parametrize("case", SEL_CASES, ids=lambda c: f"b{c[0]}d{c[1]}L{c[2]}N{c[3]}-{c[4]}-{c[5]}")
def test_selective_scan_matches_reference(case, backend):
    batch, dim, L, N, bf, cf, G, hasD, hasz, hasbias, sp, hash0, chunk = case
    gen = torch.Generator().manual_seed(1)
    u = _leaf(batch, dim, L, gen=gen)
    delta = _leaf(batch, dim, L, lo=-1.0, hi=1.0, gen=gen) if sp else _leaf(batch, dim, L, lo=0.01, hi=1.0, gen=gen)
    A = _leaf(dim, N, lo=-4.0, hi=-0.1, gen=gen)
    B, C = _bc(bf, batch, dim, L, N, G, gen), _bc(cf, batch, dim, L, N, G, gen)
    D = _leaf(dim, gen=gen) if hasD else None
    z = _leaf(batch, dim, L, gen=gen) if hasz else None
    bias = _leaf(dim, lo=-0.5, hi=0.5, gen=gen) if hasbias else None
    h0 = _leaf(batch, dim, N, gen=gen) if hash0 else None
    inputs = [u, delta, A, B, C, D, z, bias, h0]

    got = selective_scan(u, delta, A, B, C, D, z, bias, sp, return_last_state=True, initial_state=h0, chunk_size=chunk)
    want = ref_selective(u, delta, A, B, C, D, z, bias, sp, h0)
    _assert_close(got[0], want[0], 1e-10, "y")
    _assert_close(got[1], want[1], 1e-10, "last state")
    g_got, g_want = _grads(got, inputs), _grads(want, inputs)
    for name, t in zip("u delta A B C D z delta_bias h0".split(), inputs):
        if t is not None:
            _assert_close(g_got[id(t)], g_want[id(t)], 1e-10, f"d{name}")


def test_selective_scan_float32_agrees_with_float64(backend):
    gen = torch.Generator().manual_seed(2)
    b, d, L, N = 2, 8, 200, 16
    args64 = (torch.randn(b, d, L, generator=gen, dtype=F64), torch.randn(b, d, L, generator=gen, dtype=F64),
              -torch.rand(d, N, generator=gen, dtype=F64) * 5, torch.randn(b, N, L, generator=gen, dtype=F64),
              torch.randn(b, N, L, generator=gen, dtype=F64))
    y64 = selective_scan(*args64, delta_softplus=True)
    y32 = selective_scan(*(a.float() for a in args64), delta_softplus=True)
    assert y32.dtype == torch.float32
    _assert_close(y32.double(), y64, 1e-5, "float32 vs float64")


def test_selective_scan_gradcheck_tiny(backend):
    gen = torch.Generator().manual_seed(3)
    args = (_leaf(1, 2, 5, gen=gen), _leaf(1, 2, 5, lo=0.1, hi=0.9, gen=gen), _leaf(2, 3, lo=-2.0, hi=-0.5, gen=gen),
            _leaf(1, 3, 5, gen=gen), _leaf(1, 1, 3, 5, gen=gen))
    h0 = _leaf(1, 2, 3, gen=gen)

    def fn(u, delta, A, B, C, h0):
        y, h = selective_scan(u, delta, A, B, C, return_last_state=True, initial_state=h0, chunk_size=2)
        return y, h

    assert torch.autograd.gradcheck(fn, (*args, h0), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("chunk", [1, 3, 64, 1000])
def test_selective_scan_independent_of_chunk_size(chunk, backend):
    gen = torch.Generator().manual_seed(4)
    args = (torch.randn(2, 3, 50, generator=gen, dtype=F64), torch.rand(2, 3, 50, generator=gen, dtype=F64),
            -torch.rand(3, 4, generator=gen, dtype=F64), torch.randn(2, 4, 50, generator=gen, dtype=F64),
            torch.randn(2, 4, 50, generator=gen, dtype=F64))
    _assert_close(selective_scan(*args, chunk_size=chunk), selective_scan(*args, chunk_size=50), 1e-12, "chunk")


def test_selective_scan_windows_equal_one_pass(backend):
    gen = torch.Generator().manual_seed(5)
    b, d, L, N = 2, 4, 90, 6
    u, delta = torch.randn(b, d, L, generator=gen, dtype=F64), torch.rand(b, d, L, generator=gen, dtype=F64)
    A, B, C = -torch.rand(d, N, generator=gen, dtype=F64), torch.randn(b, N, L, generator=gen, dtype=F64), \
        torch.randn(b, N, L, generator=gen, dtype=F64)
    y_all, h_all = selective_scan(u, delta, A, B, C, return_last_state=True)
    h, ys = None, []
    for t0, t1 in [(0, 17), (17, 18), (18, 64), (64, 90)]:
        y, h = selective_scan(u[..., t0:t1], delta[..., t0:t1], A, B[..., t0:t1], C[..., t0:t1],
                              return_last_state=True, initial_state=h)
        ys.append(y)
    _assert_close(torch.cat(ys, -1), y_all, 1e-12, "windowed y")
    _assert_close(h, h_all, 1e-12, "windowed state")


def test_selective_scan_is_causal(backend):
    gen = torch.Generator().manual_seed(6)
    b, d, L, N, t = 1, 3, 40, 4, 23
    u, delta = torch.randn(b, d, L, generator=gen), torch.rand(b, d, L, generator=gen)
    A, B, C, z = -torch.rand(d, N, generator=gen), torch.randn(b, N, L, generator=gen), \
        torch.randn(b, N, L, generator=gen), torch.randn(b, d, L, generator=gen)
    y = selective_scan(u, delta, A, B, C, z=z)
    u2, delta2, B2, C2, z2 = (x.clone() for x in (u, delta, B, C, z))
    for x in (u2, delta2, B2, C2, z2):
        x[..., t + 1:] = torch.randn(x[..., t + 1:].shape, generator=gen) * 10
    y2 = selective_scan(u2, delta2, A, B2, C2, z=z2)
    assert torch.equal(y[..., : t + 1], y2[..., : t + 1])
    assert not torch.allclose(y[..., t + 1:], y2[..., t + 1:])


def test_selective_scan_long_float32_large_dt_is_finite(backend):
    gen = torch.Generator().manual_seed(7)
    b, d, L, N = 1, 4, 16_384, 8
    u = torch.randn(b, d, L, generator=gen)
    delta = torch.full((b, d, L), 20.0)  # exp(delta A) underflows to exactly 0 at large |A|
    A = -torch.linspace(0.01, 16.0, N).repeat(d, 1)
    B, C = torch.randn(b, N, L, generator=gen), torch.randn(b, N, L, generator=gen)
    leaves = [x.requires_grad_() for x in (u, delta, A, B, C)]
    y, h = selective_scan(*leaves, return_last_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    (y.square().mean() + h.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    y64 = selective_scan(*(x.detach().double() for x in leaves))
    _assert_close(y.detach().double(), y64, 1e-5, "float32 long")


def test_selective_scan_saved_memory_does_not_grow_with_b_L_d_N(backend):
    """What autograd keeps for backward is O(b*d*L + b*N*L + b*d*N*L/chunk), far below b*L*d*N."""
    b, d, L, N, chunk = 2, 16, 512, 16, 64
    gen = torch.Generator().manual_seed(8)
    leaves = [torch.randn(b, d, L, generator=gen).requires_grad_(), torch.rand(b, d, L, generator=gen).requires_grad_(),
              (-torch.rand(d, N, generator=gen)).requires_grad_(), torch.randn(b, N, L, generator=gen).requires_grad_(),
              torch.randn(b, N, L, generator=gen).requires_grad_()]
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = selective_scan(*leaves, chunk_size=chunk)
    full = b * L * d * N * 4
    assert sum(saved.values()) < full / 2, f"saved {sum(saved.values())} bytes, full state history is {full}"
    y.sum().backward()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(u=torch.zeros(2, 4)), "u must"),
        (dict(delta=torch.zeros(2, 4, 9)), "delta must have shape"),
        (dict(A=torch.zeros(5, 3)), "A must have shape"),
        (dict(B=torch.zeros(2, 3, 3, 10)), "groups, which must divide dim"),
        (dict(B=torch.zeros(2, 2, 10)), "B must have shape"),
        (dict(C=torch.zeros(4, 3, 1)), "C must have shape \\(batch, N, L\\)"),
        (dict(C=torch.zeros(4, 3, 1, 1, 1)), "C must be \\(dim, N\\)"),
        (dict(D=torch.zeros(3)), "D must have shape"),
        (dict(z=torch.zeros(2, 4)), "z must have shape"),
        (dict(delta_bias=torch.zeros(4, 1)), "delta_bias must have shape"),
        (dict(initial_state=torch.zeros(2, 4, 2)), "initial_state must have shape"),
        (dict(u=torch.full((2, 4, 10), math.nan)), "u contains NaN"),
        (dict(B=torch.full((2, 3, 10), math.inf)), "B contains NaN or inf"),
    ],
)
def test_selective_scan_bad_input(kwargs, match):
    args = dict(u=torch.zeros(2, 4, 10), delta=torch.zeros(2, 4, 10), A=-torch.ones(4, 3), B=torch.zeros(2, 3, 10),
                C=torch.zeros(2, 3, 10))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


# --- ssd_scan ------------------------------------------------------------------------------------------------------

SSD_CASES = [
    # (b, L, h, p, g, n, chunk, D form, z, bias, softplus, h0)
    (2, 1, 2, 3, 1, 4, 64, "h", True, True, True, False),
    (1, 5, 4, 2, 2, 3, 64, None, False, False, False, False),
    (2, 64, 4, 3, 4, 2, 16, "hp", True, True, True, True),
    (2, 100, 6, 2, 3, 5, 32, "h", False, True, True, True),
    (1, 130, 2, 4, 1, 8, 64, "hp", True, False, False, True),
    (1, 9, 3, 1, 1, 2, 1, None, True, True, True, True),
]


@pytest.mark.parametrize("case", SSD_CASES, ids=lambda c: f"b{c[0]}L{c[1]}h{c[2]}p{c[3]}g{c[4]}n{c[5]}c{c[6]}")
def test_ssd_scan_matches_reference(case, backend):
    b, L, nh, p, g, n, chunk, dform, hasz, hasbias, sp, hash0 = case
    gen = torch.Generator().manual_seed(11)
    x = _leaf(b, L, nh, p, gen=gen)
    dt = _leaf(b, L, nh, lo=-1.0, hi=1.0, gen=gen) if sp else _leaf(b, L, nh, lo=0.01, hi=0.9, gen=gen)
    A = _leaf(nh, lo=-4.0, hi=-0.1, gen=gen)
    B, C = _leaf(b, L, g, n, gen=gen), _leaf(b, L, g, n, gen=gen)
    D = {"h": lambda: _leaf(nh, gen=gen), "hp": lambda: _leaf(nh, p, gen=gen), None: lambda: None}[dform]()
    z = _leaf(b, L, nh, p, gen=gen) if hasz else None
    bias = _leaf(nh, lo=-0.5, hi=0.5, gen=gen) if hasbias else None
    h0 = _leaf(b, nh, p, n, gen=gen) if hash0 else None
    inputs = [x, dt, A, B, C, D, z, bias, h0]
    got = ssd_scan(x, dt, A, B, C, chunk, D, z, bias, sp, h0, return_final_states=True)
    want = ref_ssd(x, dt, A, B, C, D, z, bias, sp, h0)
    _assert_close(got[0], want[0], 1e-10, "y")
    _assert_close(got[1], want[1], 1e-10, "final states")
    g_got, g_want = _grads(got, inputs), _grads(want, inputs)
    for name, t in zip("x dt A B C D z dt_bias initial_states".split(), inputs):
        if t is not None:
            _assert_close(g_got[id(t)], g_want[id(t)], 1e-10, f"d{name}")


def test_ssd_scan_gradcheck_tiny(backend):
    gen = torch.Generator().manual_seed(12)
    args = (_leaf(1, 6, 2, 2, gen=gen), _leaf(1, 6, 2, lo=0.1, hi=0.9, gen=gen), _leaf(2, lo=-2.0, hi=-0.5, gen=gen),
            _leaf(1, 6, 1, 3, gen=gen), _leaf(1, 6, 1, 3, gen=gen), _leaf(1, 2, 2, 3, gen=gen))

    def fn(x, dt, A, B, C, h0):
        return ssd_scan(x, dt, A, B, C, chunk_size=4, initial_states=h0, return_final_states=True)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8)


def test_ssd_scan_windows_equal_one_pass_and_chunk_invariance(backend):
    gen = torch.Generator().manual_seed(13)
    b, L, nh, p, g, n = 2, 77, 4, 3, 2, 5
    x, dt = torch.randn(b, L, nh, p, generator=gen, dtype=F64), torch.rand(b, L, nh, generator=gen, dtype=F64)
    A = -torch.rand(nh, generator=gen, dtype=F64) * 3
    B, C = torch.randn(b, L, g, n, generator=gen, dtype=F64), torch.randn(b, L, g, n, generator=gen, dtype=F64)
    y_all, s_all = ssd_scan(x, dt, A, B, C, 16, return_final_states=True)
    _assert_close(ssd_scan(x, dt, A, B, C, 5), y_all, 1e-12, "chunk 5 vs 16")
    s, ys = None, []
    for t0, t1 in [(0, 1), (1, 40), (40, 77)]:
        y, s = ssd_scan(x[:, t0:t1], dt[:, t0:t1], A, B[:, t0:t1], C[:, t0:t1], 16, initial_states=s,
                        return_final_states=True)
        ys.append(y)
    _assert_close(torch.cat(ys, 1), y_all, 1e-12, "windowed y")
    _assert_close(s, s_all, 1e-12, "windowed state")


def test_ssd_scan_is_causal(backend):
    gen = torch.Generator().manual_seed(14)
    b, L, nh, p, g, n, t = 1, 50, 2, 2, 1, 4, 31
    x, dt = torch.randn(b, L, nh, p, generator=gen), torch.rand(b, L, nh, generator=gen)
    A, B, C = -torch.rand(nh, generator=gen), torch.randn(b, L, g, n, generator=gen), torch.randn(b, L, g, n, generator=gen)
    y = ssd_scan(x, dt, A, B, C, 16)
    x2, dt2, B2, C2 = (v.clone() for v in (x, dt, B, C))
    for v in (x2, dt2, B2, C2):
        v[:, t + 1:] = torch.rand(v[:, t + 1:].shape, generator=gen) * 5
    y2 = ssd_scan(x2, dt2, A, B2, C2, 16)
    torch.testing.assert_close(y[:, : t + 1], y2[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(y[:, t + 1:], y2[:, t + 1:])


def test_ssd_scan_long_float32_large_dt_is_finite(backend):
    gen = torch.Generator().manual_seed(15)
    b, L, nh, p, g, n = 1, 16_384, 2, 2, 1, 4
    x = torch.randn(b, L, nh, p, generator=gen).requires_grad_()
    dt = torch.full((b, L, nh), 5.0).requires_grad_()  # softplus(5) ~ 5: exp(dt A) down to exp(-80) each step
    A = torch.tensor([-1.0, -16.0]).requires_grad_()
    B, C = torch.randn(b, L, g, n, generator=gen).requires_grad_(), torch.randn(b, L, g, n, generator=gen).requires_grad_()
    y, s = ssd_scan(x, dt, A, B, C, 64, dt_softplus=True, return_final_states=True)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    (y.square().mean() + s.sum()).backward()
    assert all(torch.isfinite(v.grad).all() for v in (x, dt, A, B, C))
    y64 = ssd_scan(*(v.detach().double() for v in (x, dt, A, B, C)), 64, dt_softplus=True)
    _assert_close(y.detach().double(), y64, 1e-5, "float32 long")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.zeros(2, 10, 4)), "x must"),
        (dict(dt=torch.zeros(2, 10, 3)), "dt must have shape"),
        (dict(A=torch.zeros(4, 1)), "A must have shape"),
        (dict(B=torch.zeros(2, 10, 3, 5), C=torch.zeros(2, 10, 3, 5)), "g=3 groups, which must divide"),
        (dict(C=torch.zeros(2, 10, 2, 4)), "C must have shape"),
        (dict(D=torch.zeros(4, 2)), "D must have shape"),
        (dict(z=torch.zeros(2, 10, 4, 2)), "z must have shape"),
        (dict(initial_states=torch.zeros(2, 4, 3, 4)), "initial_states must have shape"),
        (dict(dt=torch.full((2, 10, 4), math.nan)), "dt contains NaN"),
        (dict(chunk_size=0), "chunk_size must be >= 1"),
    ],
)
def test_ssd_scan_bad_input(kwargs, match):
    args = dict(x=torch.zeros(2, 10, 4, 3), dt=torch.zeros(2, 10, 4), A=-torch.ones(4), B=torch.zeros(2, 10, 2, 5),
                C=torch.zeros(2, 10, 2, 5))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ssd_scan(**args)


def test_half_precision_inputs_scan_in_float32():
    gen = torch.Generator().manual_seed(16)
    x, dt = torch.randn(1, 20, 2, 4, generator=gen), torch.rand(1, 20, 2, generator=gen)
    A, B, C = -torch.rand(2, generator=gen), torch.randn(1, 20, 1, 8, generator=gen), torch.randn(1, 20, 1, 8, generator=gen)
    y = ssd_scan(x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), C.bfloat16(), 8)
    assert y.dtype == torch.bfloat16
    want = ssd_scan(x.bfloat16().float(), dt.bfloat16().float(), A, B.bfloat16().float(), C.bfloat16().float(), 8)
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2)


def test_ssd_scan_saved_memory_does_not_grow_with_b_L_d_N(backend):
    b, L, nh, p, g, n = 2, 512, 4, 16, 1, 64  # headdim and d_state a tenth of the seed config's
    gen = torch.Generator().manual_seed(17)
    leaves = [torch.randn(b, L, nh, p, generator=gen).requires_grad_(), torch.rand(b, L, nh, generator=gen).requires_grad_(),
              (-torch.rand(nh, generator=gen)).requires_grad_(), torch.randn(b, L, g, n, generator=gen).requires_grad_(),
              torch.randn(b, L, g, n, generator=gen).requires_grad_()]
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ssd_scan(*leaves, chunk_size=64)
    full = b * L * nh * p * n * 4
    assert sum(saved.values()) < full / 2, f"saved {sum(saved.values())} bytes, full state history is {full}"
    y.sum().backward()
