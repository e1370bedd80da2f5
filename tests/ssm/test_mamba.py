"""Mamba layer: parity with mamba_ssm's layout and init, a float64 plain forward, streaming, windows, causality."""

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

from condorbrain.ssm import Mamba, selective_scan_ref

# ---------------------------------------------------------------------------------------------------------------
# Parity with mamba_ssm. Read off state-spaces/mamba at commit e9594ce1c732d97440f0332fdc43170a2294dbfa,
# mamba_ssm/modules/mamba_simple.py (Mamba.__init__): the order is the module's own parameters (A_log, D) first,
# then its submodules in registration order (in_proj, conv1d, x_proj, dt_proj, out_proj), as nn.Module.state_dict
# lists them. d_inner = expand * d_model, dt_rank = ceil(d_model / 16).
# ---------------------------------------------------------------------------------------------------------------
MAMBA_SSM_LAYOUTS = [
    (
        dict(d_model=16),  # d_inner 32, d_state 16, dt_rank 1
        [
            ("A_log", (32, 16)),
            ("D", (32,)),
            ("in_proj.weight", (64, 16)),
            ("conv1d.weight", (32, 1, 4)),
            ("conv1d.bias", (32,)),
            ("x_proj.weight", (33, 32)),
            ("dt_proj.weight", (32, 1)),
            ("dt_proj.bias", (32,)),
            ("out_proj.weight", (16, 32)),
        ],
    ),
    (
        dict(d_model=40, d_state=8, d_conv=3, expand=3, dt_rank=5, bias=True, conv_bias=False),  # d_inner 120
        [
            ("A_log", (120, 8)),
            ("D", (120,)),
            ("in_proj.weight", (240, 40)),
            ("in_proj.bias", (240,)),
            ("conv1d.weight", (120, 1, 3)),
            ("x_proj.weight", (21, 120)),
            ("dt_proj.weight", (120, 5)),
            ("dt_proj.bias", (120,)),
            ("out_proj.weight", (40, 120)),
            ("out_proj.bias", (40,)),
        ],
    ),
    (
        dict(d_model=33),  # dt_rank "auto" = ceil(33 / 16) = 3
        [
            ("A_log", (66, 16)),
            ("D", (66,)),
            ("in_proj.weight", (132, 33)),
            ("conv1d.weight", (66, 1, 4)),
            ("conv1d.bias", (66,)),
            ("x_proj.weight", (35, 66)),
            ("dt_proj.weight", (66, 3)),
            ("dt_proj.bias", (66,)),
            ("out_proj.weight", (33, 66)),
        ],
    ),
]

# Produced by running mamba_ssm's own Mamba class (mamba_simple.py at the commit above) on the CPU, with its
# non-CUDA fallbacks (nn.Conv1d for the convolution, selective_scan_ref for the scan), torch 2.13.0:
#   torch.manual_seed(0); m = Mamba(d_model=16)            -> (sum, sum of |.|) of each parameter, in float64
#   m.double(); x = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
#   y = m(x)                                                 -> y.sum(), y[1, -1, :4]
# Equal numbers here mean the same initialisation scheme *and* the same order of random draws as mamba_ssm.
MAMBA_SSM_INIT_SEED0 = {
    "A_log": (981.4995346069336, 981.4995346069336),
    "D": (32.0, 32.0),
    "in_proj.weight": (-0.10628849267959595, 129.67615002393723),
    "conv1d.weight": (-5.829057931900024, 32.87828469276428),
    "conv1d.bias": (-2.429889440536499, 7.860281586647034),
    "x_proj.weight": (1.925727994836052, 93.14937771343102),
    "dt_proj.weight": (-1.0995339155197144, 15.768988251686096),
    "dt_proj.bias": (-142.73969340324402, 142.73969340324402),
    "out_proj.weight": (-4.060959200716752, 43.461951787576254),
}
MAMBA_SSM_OUT_SUM = -0.4170086990988061
MAMBA_SSM_OUT_LAST = [-0.048989417010268724, -0.02639195356279165, 0.04628948198042875, 0.000887441634525467]


def plain_forward(m: Mamba, u: torch.Tensor) -> torch.Tensor:
    """mamba_simple.Mamba's maths written out, with the step-by-step scan reference: (B, L, D) -> (B, L, D)."""
    L = u.shape[1]
    xz = F.linear(u, m.in_proj.weight, m.in_proj.bias)
    x, z = xz.chunk(2, dim=-1)  # (B, L, d_inner)
    x, z = x.transpose(1, 2), z.transpose(1, 2)  # (B, d_inner, L)
    K = m.d_conv
    w = m.conv1d.weight[:, 0, :]  # (d_inner, K); tap k sees x[t - (K - 1 - k)]
    conv = sum(w[:, k, None] * F.pad(x, (K - 1 - k, 0))[..., :L] for k in range(K))
    if m.conv1d.bias is not None:
        conv = conv + m.conv1d.bias[:, None]
    x = F.silu(conv)
    dt, B, C = torch.split(x.transpose(1, 2) @ m.x_proj.weight.t(), [m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = (dt @ m.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L)
    y = selective_scan_ref(x, delta, -torch.exp(m.A_log), B.transpose(1, 2), C.transpose(1, 2), m.D, z=z,
                           delta_bias=m.dt_proj.bias, delta_softplus=True)
    return F.linear(y.transpose(1, 2), m.out_proj.weight, m.out_proj.bias)


def make(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> Mamba:
    torch.manual_seed(seed)
    m = Mamba(**kw).to(dtype)
    with torch.no_grad():  # move D and the biases off their init values so that every term is exercised
        m.D.add_(torch.randn_like(m.D) * 0.3)
        if m.conv1d.bias is not None:
            m.conv1d.bias.add_(torch.randn_like(m.conv1d.bias) * 0.1)
    return m


def randn(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, layout", MAMBA_SSM_LAYOUTS)
def test_state_dict_keys_and_shapes_match_mamba_ssm(kw, layout):
    sd = Mamba(**kw).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == layout


@pytest.mark.parametrize("kw, layout", MAMBA_SSM_LAYOUTS)
def test_foreign_state_dict_loads_strict_and_drives_the_maths(kw, layout):
    gen = torch.Generator().manual_seed(3)
    foreign = {k: torch.randn(shape, generator=gen) * 0.3 for k, shape in layout}
    m = Mamba(**kw).double()
    m.load_state_dict({k: v.double() for k, v in foreign.items()}, strict=True)
    u = randn(2, 9, kw["d_model"], dtype=torch.float64)
    torch.testing.assert_close(m(u), plain_forward(m, u), rtol=1e-10, atol=1e-12)


def test_init_and_output_match_mamba_ssm_pinned_values():
    torch.manual_seed(0)
    assert_init_and_output_match_pinned(Mamba(d_model=16), MAMBA_SSM_INIT_SEED0, randn(2, 11, 16, dtype=torch.float64),
                                        MAMBA_SSM_OUT_SUM, MAMBA_SSM_OUT_LAST)


def test_init_ranges():
    dt_min, dt_max, floor = 0.004, 0.07, 0.01
    torch.manual_seed(0)
    m = Mamba(d_model=64, d_state=12, dt_min=dt_min, dt_max=dt_max, dt_init_floor=floor)
    A = -torch.exp(m.A_log)
    torch.testing.assert_close(A, -torch.arange(1, 13, dtype=torch.float32).expand(128, 12))  # S4D-real
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= floor * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    assert (dt <= floor * (1 + 1e-5)).any() and dt.max() > 0.03  # floored below, spread to the top
    bound = m.dt_rank**-0.5
    assert m.dt_rank == 4 and m.dt_proj.weight.abs().max() <= bound
    torch.manual_seed(0)
    mc = Mamba(d_model=64, dt_init="constant", dt_scale=0.5)
    assert torch.all(mc.dt_proj.weight == 0.5 * bound)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="d_state"):
        Mamba(16, d_state=0)
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(16, dt_rank="big")
    with pytest.raises(ValueError, match="dt_min"):
        Mamba(16, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(16, dt_init="normal")


# ---------------------------------------------------------------------------------------------------------------
CASES = [
    pytest.param(dict(d_model=16), 1, id="L1"),
    pytest.param(dict(d_model=16, d_conv=3), 7, id="L7-odd"),
    pytest.param(dict(d_model=24, d_state=5, bias=True), 70, id="L70-longer-than-a-chunk-bias"),
    pytest.param(dict(d_model=16, conv_bias=False, expand=1, d_conv=2), 13, id="no-conv-bias-expand1"),
]


@pytest.mark.parametrize("kw, L", CASES)
def test_forward_and_gradients_match_plain_float64(kw, L):
    m = make(dtype=torch.float64, **kw)
    u = randn(3, L, kw["d_model"], dtype=torch.float64).requires_grad_()
    w = randn(3, L, kw["d_model"], seed=2, dtype=torch.float64)
    assert_forward_and_grads_match(m, plain_forward, u, w)


def test_float32_forward_close_to_float64():
    m = make(d_model=16)
    u = randn(2, 40, 16)
    y32 = m(u)
    y64 = plain_forward(m.double(), u.double())
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, L", CASES)
def test_step_reproduces_forward(kw, L):
    m = make(**kw)
    conv_state, ssm_state = assert_steps_reproduce_forward(m, randn(2, L, kw["d_model"]))
    assert conv_state.shape == (2, m.d_inner, m.d_conv) and ssm_state.shape == (2, m.d_inner, m.d_state)


@pytest.mark.parametrize("splits", [[50], [1, 49], [2, 3, 45], [17, 16, 17], [49, 1]])
def test_windowed_forward_equals_one_pass(splits):
    assert_windows_equal_one_pass(make(d_model=16), randn(2, 50, 16), splits)


def test_steps_and_windows_interleave():
    assert_steps_then_window(make(d_model=16, d_conv=4), randn(1, 12, 16), n_steps=5)


def test_causal():
    m = make(d_model=16)
    u = randn(2, 30, 16)
    t = 17
    v = u.clone()
    v[:, t + 1 :] = randn(2, 30 - t - 1, 16, seed=9) * 5
    ya, yb = m(u), m(v)
    assert torch.equal(ya[:, : t + 1], yb[:, : t + 1])
    assert not torch.allclose(ya[:, t + 1 :], yb[:, t + 1 :])


def test_half_precision_inputs_run():
    m = make(d_model=16).to(torch.bfloat16)
    y = m(randn(2, 9, 16).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_bad_input_names_the_argument():
    m = make(d_model=16)
    with pytest.raises(ValueError, match=r"hidden_states.*d_model=16"):
        m(torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match=r"hidden_states.*3 dimensions"):
        m(torch.zeros(5, 16))
    with pytest.raises(ValueError, match=r"hidden_states.*length 1"):
        m.step(torch.zeros(2, 2, 16), *m.allocate_inference_cache(2))
    conv_state, ssm_state = m.allocate_inference_cache(2)
    with pytest.raises(ValueError, match=r"conv_state.*\(batch, d_inner, d_conv\)"):
        m(torch.zeros(2, 5, 16), state=(conv_state[:, :, :3], ssm_state))
    with pytest.raises(ValueError, match=r"ssm_state.*\(batch, d_inner, d_state\)"):
        m.step(torch.zeros(2, 1, 16), conv_state, ssm_state[:1])
    with pytest.raises(ValueError, match="hidden_states contains NaN"):
        m(torch.full((1, 3, 16), math.nan))
