"""Mamba2 layer: parity with mamba_ssm's layout and init, a float64 plain forward, streaming, windows, causality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _layer_checks import (
    assert_forward_and_grads_match,
    assert_init_and_output_match_pinned,
    assert_steps_reproduce_forward,
    assert_steps_then_window,
    assert_windows_equal_one_pass,
)

from condorbrain.ssm import Mamba2, RMSNormGated, ssd_scan_ref

# ---------------------------------------------------------------------------------------------------------------
# Parity with mamba_ssm. Read off state-spaces/mamba at commit e9594ce1c732d97440f0332fdc43170a2294dbfa,
# mamba_ssm/modules/mamba2.py (Mamba2.__init__) and mamba_ssm/ops/triton/layernorm_gated.py (RMSNorm: `weight`,
# bias registered as None): own parameters (dt_bias, A_log, D) first, then in_proj, conv1d, norm (if rmsnorm),
# out_proj. d_inner = expand * d_model, nheads = d_ssm / headdim,
# in_proj: 2 * d_inner + 2 * ngroups * d_state + nheads outputs; conv over d_ssm + 2 * ngroups * d_state channels.
# ---------------------------------------------------------------------------------------------------------------
MAMBA_SSM_LAYOUTS = [
    (
        dict(d_model=64),  # defaults: d_state 128, headdim 64 -> d_inner 128, nheads 2, conv_dim 384, d_in_proj 514
        [
            ("dt_bias", (2,)),
            ("A_log", (2,)),
            ("D", (2,)),
            ("in_proj.weight", (514, 64)),
            ("conv1d.weight", (384, 1, 4)),
            ("conv1d.bias", (384,)),
            ("norm.weight", (128,)),
            ("out_proj.weight", (64, 128)),
        ],
    ),
    (
        dict(d_model=32, d_state=8, headdim=8, ngroups=2, D_has_hdim=True, rmsnorm=False, bias=True, d_conv=3),
        # d_inner 64, nheads 8, conv_dim 64 + 32 = 96, d_in_proj 128 + 32 + 8 = 168, D per channel
        [
            ("dt_bias", (8,)),
            ("A_log", (8,)),
            ("D", (64,)),
            ("in_proj.weight", (168, 32)),
            ("in_proj.bias", (168,)),
            ("conv1d.weight", (96, 1, 3)),
            ("conv1d.bias", (96,)),
            ("out_proj.weight", (32, 64)),
            ("out_proj.bias", (32,)),
        ],
    ),
    (
        dict(d_model=32, d_state=16, headdim=16, d_ssm=32, conv_bias=False),
        # d_inner 64 of which d_ssm 32 (a 32-wide gated-MLP branch), nheads 2, conv_dim 64, d_in_proj 128 + 32 + 2
        [
            ("dt_bias", (2,)),
            ("A_log", (2,)),
            ("D", (2,)),
            ("in_proj.weight", (162, 32)),
            ("conv1d.weight", (64, 1, 4)),
            ("norm.weight", (32,)),
            ("out_proj.weight", (32, 64)),
        ],
    ),
]

# Produced by running mamba_ssm's own Mamba2 class (mamba2.py at the commit above, use_mem_eff_path=False) on the
# CPU, with its non-CUDA fallbacks (nn.Conv1d; the scan as the step-by-step ssd reference; layernorm_gated's
# rms_norm_ref, kept in float64 for float64 inputs), torch 2.13.0:
#   torch.manual_seed(0); m = Mamba2(**kw)                  -> (sum, sum of |.|) of each parameter, in float64
#   m.double(); x = torch.randn(2, 11, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
#   y = m(x)                                                 -> y.sum(), y[1, -1, :4]
# Equal numbers here mean the same initialisation scheme *and* the same order of random draws as mamba_ssm.
MAMBA_SSM_PINNED = [
    (
        dict(d_model=32, d_state=16, headdim=16, chunk_size=8),
        {
            "dt_bias": (-17.181682109832764, 17.181682109832764),
            "A_log": (7.908876180648804, 7.908876180648804),
            "D": (4.0, 4.0),
            "in_proj.weight": (-8.807209865932236, 459.7302447254915),
            "conv1d.weight": (1.7506516575813293, 96.2983313202858),
            "conv1d.bias": (-1.3422932028770447, 24.046997368335724),
            "norm.weight": (64.0, 64.0),
            "out_proj.weight": (2.0694688260555267, 127.13048297166824),
        },
        -3.8230734991900666,
        [0.7952399775634678, 0.871269098441132, 0.39804537801515594, -0.7708233915084874],
    ),
    (
        dict(d_model=32, d_state=8, headdim=8, ngroups=2, D_has_hdim=True, norm_before_gate=True, chunk_size=8),
        {
            "dt_bias": (-30.546829223632812, 30.546829223632812),
            "A_log": (14.797225654125214, 14.797225654125214),
            "D": (64.0, 64.0),
            "in_proj.weight": (-8.52488199628715, 470.56850362241676),
            "conv1d.weight": (0.9623092412948608, 96.8118999004364),
            "conv1d.bias": (2.9379488825798035, 21.0637064576149),
            "norm.weight": (64.0, 64.0),
            "out_proj.weight": (1.875120848417282, 127.91198137402534),
        },
        -6.996264404938525,
        [0.0005925260667330951, -0.18103923086070203, 0.11464671480508191, 0.023195612617427846],
    ),
]


def gated_rmsnorm(x, z, weight, eps, group_size, norm_before_gate):
    """layernorm_gated.rms_norm_ref's maths: x, z (..., d) -> (..., d)."""
    if z is not None and not norm_before_gate:
        x = x * F.silu(z)
    xg = x.reshape(*x.shape[:-1], -1, group_size)
    out = (xg / torch.sqrt(xg.pow(2).mean(-1, keepdim=True) + eps)).reshape(x.shape) * weight
    if z is not None and norm_before_gate:
        out = out * F.silu(z)
    return out


def plain_forward(m: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """mamba2.Mamba2's maths written out, with the step-by-step SSD reference: (B, L, D) -> (B, L, D)."""
    b, L, _ = u.shape
    h, p, g, n = m.nheads, m.headdim, m.ngroups, m.d_state
    d_mlp = m.d_inner - m.d_ssm
    zxbcdt = F.linear(u, m.in_proj.weight, m.in_proj.bias)
    z0, x0, z, xBC, dt = torch.split(zxbcdt, [d_mlp, d_mlp, m.d_ssm, m.d_ssm + 2 * g * n, h], dim=-1)
    xBC = xBC.transpose(1, 2)  # (b, conv_dim, L)
    K = m.d_conv
    w = m.conv1d.weight[:, 0, :]
    conv = sum(w[:, k, None] * F.pad(xBC, (K - 1 - k, 0))[..., :L] for k in range(K))
    if m.conv1d.bias is not None:
        conv = conv + m.conv1d.bias[:, None]
    x, B, C = torch.split(F.silu(conv).transpose(1, 2), [m.d_ssm, g * n, g * n], dim=-1)
    dt = F.softplus(dt + m.dt_bias)
    if m.dt_limit != (0.0, math.inf):
        dt = dt.clamp(*m.dt_limit)
    D = m.D.reshape(h, p) if m.D_has_hdim else m.D
    y = ssd_scan_ref(x.reshape(b, L, h, p), dt, -torch.exp(m.A_log), B.reshape(b, L, g, n), C.reshape(b, L, g, n),
                     D=D, z=None if m.rmsnorm else z.reshape(b, L, h, p))
    y = y.reshape(b, L, m.d_ssm)
    if m.rmsnorm:
        y = gated_rmsnorm(y, z, m.norm.weight, m.norm.eps, m.d_ssm // g, m.norm_before_gate)
    if d_mlp:
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


def make(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> Mamba2:
    torch.manual_seed(seed)
    m = Mamba2(**kw).to(dtype)
    with torch.no_grad():  # move D, the norm weight and the biases off their init values
        m.D.add_(torch.randn_like(m.D) * 0.3)
        if m.rmsnorm:
            m.norm.weight.add_(torch.randn_like(m.norm.weight) * 0.2)
        if m.conv1d.bias is not None:
            m.conv1d.bias.add_(torch.randn_like(m.conv1d.bias) * 0.1)
    return m


def randn(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, layout", MAMBA_SSM_LAYOUTS)
def test_state_dict_keys_and_shapes_match_mamba_ssm(kw, layout):
    sd = Mamba2(**kw).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == layout


@pytest.mark.parametrize("kw, layout", MAMBA_SSM_LAYOUTS[1:])
def test_foreign_state_dict_loads_strict_and_drives_the_maths(kw, layout):
    gen = torch.Generator().manual_seed(3)
    foreign = {k: torch.randn(shape, generator=gen) * 0.3 for k, shape in layout}
    m = Mamba2(**kw, chunk_size=4).double()
    m.load_state_dict({k: v.double() for k, v in foreign.items()}, strict=True)
    u = randn(2, 9, kw["d_model"], dtype=torch.float64)
    torch.testing.assert_close(m(u), plain_forward(m, u), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw, init, out_sum, out_last", MAMBA_SSM_PINNED)
def test_init_and_output_match_mamba_ssm_pinned_values(kw, init, out_sum, out_last):
    torch.manual_seed(0)
    assert_init_and_output_match_pinned(Mamba2(**kw), init, randn(2, 11, 32, dtype=torch.float64), out_sum, out_last)


def test_init_ranges():
    torch.manual_seed(0)
    m = Mamba2(d_model=128, d_state=8, headdim=4, A_init_range=(2, 5), dt_min=0.002, dt_max=0.05,
               dt_init_floor=0.004, conv_init=0.3)
    assert m.nheads == 64
    A = torch.exp(m.A_log.detach())
    assert A.min() >= 2 and A.max() <= 5 and A.max() - A.min() > 2  # uniform in A_init_range
    dt = F.softplus(m.dt_bias.detach())
    assert dt.min() >= 0.004 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert m.conv1d.weight.abs().max() <= 0.3
    assert torch.equal(m.D, torch.ones(64)) and torch.equal(m.norm.weight, torch.ones(256))
    assert m.norm.group_size == 256 and not m.norm.norm_before_gate and m.norm.eps == 1e-5
    assert Mamba2(d_model=32, d_state=8, headdim=8, D_has_hdim=True).D.shape == (64,)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(d_model=24, headdim=32)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(d_model=32, headdim=16, ngroups=3)
    with pytest.raises(ValueError, match="A_init_range"):
        Mamba2(d_model=32, headdim=16, A_init_range=(0, 4))
    with pytest.raises(ValueError, match="dt_limit"):
        Mamba2(d_model=32, headdim=16, dt_limit=(0.2, 0.1))


# ---------------------------------------------------------------------------------------------------------------
SMALL = dict(d_model=32, d_state=8, headdim=8, chunk_size=8)
CASES = [
    pytest.param(dict(SMALL), 1, id="L1"),
    pytest.param(dict(SMALL), 5, id="L5-shorter-than-chunk"),
    pytest.param(dict(SMALL, chunk_size=4, d_conv=3), 23, id="L23-odd-several-chunks"),
    pytest.param(dict(SMALL, ngroups=2), 19, id="ngroups2"),
    pytest.param(dict(SMALL, ngroups=4, norm_before_gate=True), 9, id="ngroups4-norm-before-gate"),
    pytest.param(dict(SMALL, D_has_hdim=True, bias=True), 12, id="D_has_hdim-bias"),
    pytest.param(dict(SMALL, rmsnorm=False), 10, id="no-rmsnorm"),
    pytest.param(dict(SMALL, d_ssm=32, conv_bias=False), 11, id="d_ssm-mlp-branch"),
    pytest.param(dict(SMALL, dt_limit=(0.02, 0.06)), 10, id="dt_limit"),
]


@pytest.mark.parametrize("kw, L", CASES)
def test_forward_and_gradients_match_plain_float64(kw, L):
    m = make(dtype=torch.float64, **kw)
    u = randn(2, L, kw["d_model"], dtype=torch.float64).requires_grad_()
    w = randn(2, L, kw["d_model"], seed=2, dtype=torch.float64)
    assert_forward_and_grads_match(m, plain_forward, u, w)


def test_dt_limit_clamps():
    m = make(dtype=torch.float64, **SMALL)
    limited = make(dtype=torch.float64, **SMALL, dt_limit=(0.05, 0.06))
    u = randn(1, 10, 32, dtype=torch.float64)
    assert not torch.allclose(m(u), limited(u))
    wide = make(dtype=torch.float64, **SMALL, dt_limit=(1e-9, 100.0))  # wider than every dt: changes nothing
    torch.testing.assert_close(wide(u), m(u), rtol=0, atol=0)


def test_float32_forward_close_to_float64():
    m = make(**SMALL)
    u = randn(2, 40, 32)
    y32 = m(u)
    y64 = plain_forward(m.double(), u.double())
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, L", CASES)
def test_step_reproduces_forward(kw, L):
    m = make(**kw)
    conv_state, ssm_state = assert_steps_reproduce_forward(m, randn(2, L, kw["d_model"]))
    assert conv_state.shape == (2, m.conv_dim, m.d_conv)
    assert ssm_state.shape == (2, m.nheads, m.headdim, m.d_state)


@pytest.mark.parametrize("splits", [[37], [1, 36], [2, 1, 34], [8, 8, 21], [13, 24], [36, 1]])
def test_windowed_forward_equals_one_pass(splits):
    assert_windows_equal_one_pass(make(**SMALL, ngroups=2), randn(2, 37, 32), splits)


def test_steps_and_windows_interleave():
    assert_steps_then_window(make(**SMALL), randn(1, 14, 32), n_steps=6)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_causal(backend, monkeypatch):
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", backend)
    m = make(**SMALL)
    u = randn(2, 30, 32)
    t = 11
    v = u.clone()
    v[:, t + 1 :] = randn(2, 30 - t - 1, 32, seed=9) * 5
    ya, yb = m(u), m(v)
    torch.testing.assert_close(ya[:, : t + 1], yb[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(ya[:, t + 1 :], yb[:, t + 1 :])


def test_torch_backend_matches_plain(monkeypatch):
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "torch")
    m = make(dtype=torch.float64, **dict(SMALL, ngroups=2, chunk_size=4))
    u = randn(2, 13, 32, dtype=torch.float64)
    torch.testing.assert_close(m(u), plain_forward(m, u), rtol=1e-10, atol=1e-12)
    out1, s = m(u[:, :6], return_state=True)
    out2, _ = m(u[:, 6:], state=s, return_state=True)
    torch.testing.assert_close(torch.cat([out1, out2], 1), m(u), rtol=1e-10, atol=1e-12)


def test_rmsnorm_gated_groups():
    x, z = randn(3, 12, dtype=torch.float64), randn(3, 12, seed=2, dtype=torch.float64)
    norm = RMSNormGated(12, eps=1e-5, group_size=4, norm_before_gate=False).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 12))
    torch.testing.assert_close(norm(x, z), gated_rmsnorm(x, z, norm.weight, 1e-5, 4, False))
    # each group of 4 is normalised on its own: scaling one group's input leaves it unchanged (z = None, eps ~ 0)
    tiny = RMSNormGated(12, eps=1e-12, group_size=4).double()
    x2 = x.clone()
    x2[:, :4] *= 7
    torch.testing.assert_close(tiny(x2)[:, :4], tiny(x)[:, :4])
    torch.testing.assert_close(tiny(x2)[:, 4:], tiny(x)[:, 4:], rtol=0, atol=0)
    assert list(norm.state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="group_size"):
        RMSNormGated(12, group_size=5)


def test_bad_input_names_the_argument():
    m = make(**SMALL)
    with pytest.raises(ValueError, match=r"u must have last dimension d_model=32"):
        m(torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match=r"u must have 3 dimensions"):
        m(torch.zeros(2, 3, 5, 32))
    with pytest.raises(ValueError, match=r"hidden_states.*length 1"):
        m.step(torch.zeros(2, 3, 32), *m.allocate_inference_cache(2))
    conv_state, ssm_state = m.allocate_inference_cache(2)
    with pytest.raises(ValueError, match=r"ssm_state.*\(batch, nheads, headdim, d_state\)"):
        m(torch.zeros(2, 5, 32), state=(conv_state, ssm_state[..., :4]))
    with pytest.raises(ValueError, match=r"conv_state.*\(batch, conv_dim, d_conv\)"):
        m.step(torch.zeros(2, 1, 32), conv_state[:1], ssm_state)
    with pytest.raises(ValueError, match="u contains NaN"):
        m(torch.tensor([[[math.inf] * 32]]))
