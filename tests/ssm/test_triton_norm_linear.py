"""The gated RMSNorm joined to out_proj (``condorbrain.ssm.triton.norm_linear``) against the float64 norm then Linear.

Under the interpreter on the CPU (conftest sets TRITON_INTERPRET=1), and on a GPU where one is at hand. Shapes are
picked so that every tile edge is partial: rows not a multiple of the row block, outputs not a multiple of the
column block (and more than one column block), channels not a multiple of the channel step, groups narrower and
wider than a step.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")

import torch.nn.functional as F

from condorbrain.ssm.triton import norm_linear
from condorbrain.ssm.triton.norm_linear import gated_rmsnorm_linear

F64 = torch.float64


def reference(y, z, nw, eps, gs, norm_before_gate, W, bias):
    """Float64: Mamba2's RMSNormGated (per group) then F.linear; and the rows' 1/rms (rows, groups)."""
    y, z, nw, W = (t.double() if t is not None else None for t in (y, z, nw, W))
    b, L, K = y.shape
    gate = F.silu(z) if z is not None else None
    v = y * gate if gate is not None and not norm_before_gate else y
    vg = v.reshape(b, L, K // gs, gs)
    rstd = torch.rsqrt(vg.pow(2).mean(-1) + eps)  # (b, L, groups)
    u = (vg * rstd[..., None]).reshape(b, L, K) * nw
    if gate is not None and norm_before_gate:
        u = u * gate
    return F.linear(u, W, bias.double() if bias is not None else None), rstd.reshape(b * L, -1)


def check(device, dtype, b, L, K, N, gs, gate=True, norm_before_gate=False, bias=True, z_slice=True, rtol=None):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(b, L, K, generator=gen, dtype=F64) * 2.0
    # z as a column slice of a wider buffer (zxbcdt's), so that its row stride is not K
    zbuf = torch.randn(b, L, K + 24, generator=gen, dtype=F64)
    z = (zbuf[..., 8:8 + K] if z_slice else zbuf[..., :K].contiguous()) if gate else None
    nw = 1.0 + 0.5 * torch.randn(K, generator=gen, dtype=F64)
    W = torch.randn(N, K, generator=gen, dtype=F64) / K**0.5
    bb = torch.randn(N, generator=gen, dtype=F64) if bias else None
    want, want_rstd = reference(y, z, nw, 1e-5, gs, norm_before_gate, W, bb)
    to = {"device": device, "dtype": dtype}
    got, rstd = gated_rmsnorm_linear(y.to(**to), z.to(**to) if z is not None else None, nw.to(**to), 1e-5, gs,
                                     norm_before_gate, W.to(**to), bb.to(**to) if bb is not None else None)
    assert got.shape == (b, L, N) and got.dtype == dtype and got.is_contiguous()
    tol = rtol or (2e-2 if dtype == torch.bfloat16 else 1e-5)
    err = (got.double().cpu() - want).abs().max().item()
    assert err <= tol * want.abs().max().item(), f"out: max error {err:.3g}"
    # the rows' 1/rms: the inputs rounded to dtype are what it sees
    assert torch.allclose(rstd.double().cpu(), want_rstd, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("gate,norm_before_gate", [(True, False), (True, True), (False, False)],
                         ids=["norm(y silu(z))", "norm(y) silu(z)", "no gate"])
def test_one_group(device, dtype, gate, norm_before_gate, monkeypatch):
    # 2 x 37 = 74 rows (blocks of 32: 3, the last partial), 80 outputs (blocks of 32: 3), 72 channels (steps of 32)
    monkeypatch.setattr(norm_linear, "_BM", 32)
    monkeypatch.setattr(norm_linear, "_BN", 32)
    monkeypatch.setattr(norm_linear, "_BK", 32)
    check(device, dtype, 2, 37, 72, 80, 72, gate=gate, norm_before_gate=norm_before_gate)


@pytest.mark.parametrize("gs", [24, 48], ids=["groups narrower than a step", "groups wider than a step"])
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_groups(device, gs, norm_before_gate, monkeypatch):
    # 96 channels in groups of 24 (4 groups, each inside one 32-channel step, the steps starting at the group's
    # first channel) or 48 (2 groups of one and a half steps); no bias, z contiguous
    monkeypatch.setattr(norm_linear, "_BM", 16)
    monkeypatch.setattr(norm_linear, "_BN", 32)
    monkeypatch.setattr(norm_linear, "_BK", 32)
    check(device, torch.float32, 3, 11, 96, 40, gs, norm_before_gate=norm_before_gate, bias=False, z_slice=False)


def test_default_tile(device):
    # the module's own tile (64 x 256, channel steps of 64) over a few rows: one row block, one column block
    check(device, torch.bfloat16, 2, 20, 128, 48, 128)


def test_rejects_bad_arguments():
    y = torch.randn(2, 3, 8)
    W = torch.randn(4, 8)
    nw = torch.ones(8)
    with pytest.raises(ValueError, match="group_size 3 does not divide"):
        gated_rmsnorm_linear(y, None, nw, 1e-5, 3, False, W)
    with pytest.raises(ValueError, match="weight: bfloat16 or float32"):
        gated_rmsnorm_linear(y, None, nw, 1e-5, 8, False, W.half())
    with pytest.raises(ValueError, match="shapes"):
        gated_rmsnorm_linear(y, None, nw, 1e-5, 8, False, torch.randn(4, 6))
    with pytest.raises(ValueError, match="unit channel stride"):
        gated_rmsnorm_linear(y, torch.randn(2, 8, 3).mT, nw, 1e-5, 8, False, W)  # z: channel stride 3
