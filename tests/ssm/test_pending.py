"""The deferred gated norm of the Mamba-2 inference forward (``condorbrain.ssm.pending``) against the layer's own
forward: the scan's sums of squares, ``mamba2_deferred_forward`` multiplied out, every consumer of a pending output
(the next block's add + norm + in_proj, ``RMSNorm.add_forward``, another norm, the gated MLP's norm), a whole
Backbone in float32 and under bf16 autocast, where it is taken and where not, and causality.

Under Triton's interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

from condorbrain.ssm import triton as triton_path
from condorbrain.ssm.blocks import Backbone, BackboneConfig, RMSNorm, norm_then_mix
from condorbrain.ssm.mamba2 import Mamba2
from condorbrain.ssm.pending import PendingScaled, materialize

pytestmark = [pytest.mark.skipif(not triton_path.available("cpu") and not torch.cuda.is_available(),
                                 reason=triton_path.status("cpu")[1]),
              pytest.mark.usefixtures("triton_layers")]


def _layer(device, **kw) -> Mamba2:
    torch.manual_seed(0)
    m = Mamba2(32, d_state=16, headdim=8, chunk_size=8, **kw).to(device).eval()  # 8 heads
    with torch.no_grad():  # a norm weight and D that are not all ones, so that folding them shows
        if m.rmsnorm:
            m.norm.weight.uniform_(0.5, 1.5)
        m.D.uniform_(-1.0, 1.0)
    return m


def _input(device, shape=(2, 19, 32), seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 1.5).to(device)


@pytest.mark.parametrize("heads", [4, 2, 8])
def test_scan_sums_of_squares(device, heads, monkeypatch):
    """The scan kernel's per-row partial sums of squares add up to the squared gated output over the row, whatever
    the heads a program (one partial sum a program: 2, 4 or 1 of them here)."""
    from condorbrain.ssm.triton import ssd

    monkeypatch.setattr(ssd, "_SCAN_SUMSQ_HEADS", heads)
    g = torch.Generator().manual_seed(0)
    b, L, h, p, n = 2, 21, 8, 8, 16
    x, z = (torch.randn(b, L, h, p, generator=g).to(device) for _ in range(2))
    B, C = (torch.randn(b, L, 1, n, generator=g).to(device) for _ in range(2))
    dt = torch.rand(b, L, h, generator=g).to(device)
    A, D2 = -torch.rand(h, generator=g).to(device), torch.randn(h, p, generator=g).to(device)
    d = ssd._dims(x, B, 8)
    ss = torch.empty(b * L, ssd.scan_partials(d), device=device)
    assert ss.shape[1] == 8 // heads  # 8 heads over programs of _SCAN_SUMSQ_HEADS
    out, *_ = ssd._forward(x, dt, A, B, C, D2, z, None, None, d, False, want_final=False, ss=ss)
    want = out.double().square().sum((-1, -2)).flatten()
    torch.testing.assert_close(ss.double().sum(-1), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ss: a forward of one group"):
        ssd._forward(x, dt, A, B, C, D2, z, None, None, d, False, want_final=False,
                     ss=torch.empty(b * L, ss.shape[1] + 1, device=device))


def test_deferred_forward_multiplied_out_is_the_layer(device):
    """mamba2_deferred_forward, its 1/rms applied, equals the layer's fused forward (norm, then out_proj)."""
    from condorbrain.ssm.triton import ssd
    from condorbrain.ssm.triton.fused import mamba2_deferred_forward

    m = _layer(device)
    zxbcdt = m.in_proj(_input(device))
    with torch.no_grad():
        want = m._fused_forward(zxbcdt)
        got = mamba2_deferred_forward(zxbcdt, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m._D(),
                                      m.norm.weight, m.out_proj.weight, headdim=m.headdim, d_state=m.d_state,
                                      chunk_size=m.chunk_size, eps=m.norm.eps)
    assert isinstance(got, PendingScaled) and got.shape == want.shape and got.dtype == want.dtype
    assert got.ss.shape == (2 * 19, 8 // min(8, ssd._SCAN_SUMSQ_HEADS))  # 8 heads: a partial sum a scan program
    torch.testing.assert_close(got.materialize(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(materialize(got), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="no backward"):  # autograd recording: refused, not silently wrong
        mamba2_deferred_forward(zxbcdt, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m._D(), m.norm.weight,
                                m.out_proj.weight, headdim=m.headdim, d_state=m.d_state)


@pytest.mark.parametrize("L,passed", [(19, False), (32, False), (40, True)],
                         ids=["two chunks", "two full chunks", "three chunks"])
def test_deferred_forward_two_chunks_pass_no_state(device, L, passed, monkeypatch):
    """Over two chunks (T 16 here) the deferred scan forms chunk 1's term from chunk 0's inputs and no state is
    passed (ssd._PREV_CHUNK_TERM): the layer's fused forward either way; over three the states are passed."""
    from condorbrain.ssm.triton import ssd
    from condorbrain.ssm.triton.fused import mamba2_deferred_forward

    m = _layer(device)
    zxbcdt = m.in_proj(_input(device, shape=(2, L, 32)))
    passes = []
    real = ssd._entering_states
    monkeypatch.setattr(ssd, "_entering_states", lambda *a, **k: passes.append(1) or real(*a, **k))
    with torch.no_grad():
        want = m._fused_forward(zxbcdt)
        got = mamba2_deferred_forward(zxbcdt, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m._D(),
                                      m.norm.weight, m.out_proj.weight, headdim=m.headdim, d_state=m.d_state,
                                      chunk_size=m.chunk_size, eps=m.norm.eps)
    assert ssd._dims(zxbcdt.new_empty(2, L, 8, 8), zxbcdt.new_empty(2, L, 1, 16), m.chunk_size)["T"] == 16
    assert len(passes) == 2 if passed else len(passes) == 1  # the fused forward's own pass (not the deferred one)
    torch.testing.assert_close(got.materialize(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sumsq_heads", [16, 4], ids=["one partial sum", "two partial sums"])
def test_pending_consumers_match_the_multiplied_out_tensor(device, sumsq_heads, monkeypatch):
    """Each reader of a branch output takes a PendingScaled as it takes the tensor it stands for: the next
    block's add + norm + in_proj, RMSNorm.add_forward (one kernel), and a norm without add_forward (multiplied
    out first); with the rows' sums of squares in one partial sum a row (the scan's default: a program over all of
    a group's heads) or in several."""
    from condorbrain.ssm.triton import ssd

    monkeypatch.setattr(ssd, "_SCAN_SUMSQ_HEADS", sumsq_heads)
    m = _layer(device)
    x, u = _input(device), _input(device, seed=2)
    with torch.no_grad():
        res, pending = m.forward_prenormed(u, torch.full((32,), 0.9, device=device), 1e-5, defer_norm=True)
        assert isinstance(pending, PendingScaled) and pending.ss.shape[1] == 8 // min(8, sumsq_heads)
        h = pending.materialize()
        nxt = _layer(device)
        norm = RMSNorm(32).to(device)
        got_mix = norm_then_mix(norm, nxt, x, pending)
        want_mix = norm_then_mix(norm, nxt, x, h)
        got_add, want_add = norm.add_forward(x, pending), norm.add_forward(x, h)
        layer_norm = torch.nn.LayerNorm(32).to(device)
        got_ln, want_ln = norm_then_mix(layer_norm, nxt, x, pending), norm_then_mix(layer_norm, nxt, x, h)
    for got, want in ((got_mix, want_mix), (got_add, want_add), (got_ln, want_ln)):
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res, u)


@pytest.mark.parametrize("d_intermediate", [0, 48], ids=["no MLP", "gated MLP"])
def test_backbone_inference_deferred_equals_plain(device, d_intermediate, monkeypatch):
    """A whole Backbone's inference forward with the gated norms deferred (the default) equals it with the switch
    off and the PyTorch path, and the deferred forward is what ran."""
    from condorbrain.ssm.triton import fused

    torch.manual_seed(0)
    config = BackboneConfig(d_model=32, n_layer=3, mixer="mamba2", d_state=16, headdim=8, chunk_size=8,
                            d_intermediate=d_intermediate)
    model = Backbone(config).to(device).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.norm.weight.uniform_(0.5, 1.5)
    x = _input(device)
    calls = []
    real = fused.mamba2_deferred_forward
    monkeypatch.setattr(fused, "mamba2_deferred_forward", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(backend, defer=True):
        monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", backend)
        monkeypatch.setattr(fused, "_DEFER_NORM", defer)
        with torch.no_grad():
            return model(x)

    got = run("triton")
    assert len(calls) == 3
    plain = run("triton", defer=False)
    want = run("torch" if device.type == "cuda" else "auto")
    assert len(calls) == 3
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_backbone_inference_deferred_bfloat16_autocast(device, monkeypatch):
    """Under bf16 autocast (the benchmark's setting): the deferred forward within bf16's rounding of the plain
    one (both round the matmuls' outputs; the deferred one rounds out_proj's input before its 1/rms, the plain one
    after), against the float32 forward."""
    from condorbrain.ssm.triton import fused

    torch.manual_seed(0)
    model = Backbone(BackboneConfig(d_model=32, n_layer=2, mixer="mamba2", d_state=16, headdim=8,
                                    chunk_size=8)).to(device).eval()
    x = _input(device)
    outs = {}
    for defer in (True, False):
        monkeypatch.setattr(fused, "_DEFER_NORM", defer)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            outs[defer] = model(x).float()
    with torch.no_grad():
        exact = model(x)
    scale = exact.abs().max().item()
    err_deferred, err_plain = ((outs[d] - exact).abs().max().item() for d in (True, False))
    assert err_deferred <= 3e-2 * scale and err_plain <= 3e-2 * scale
    assert err_deferred <= 2 * err_plain + 1e-3 * scale  # no worse than bf16 makes the plain path


@pytest.mark.parametrize("defer", [True, False], ids=["deferred norm", "norm kept"])
def test_backbone_inference_casts_made_once_and_follow_the_weights(device, defer, monkeypatch):
    """Under bf16 autocast with no gradient, in_proj's weight in bf16 and out_proj's (with the norm's weight folded
    in, where the norm is deferred) come from condorbrain.ssm.casts, made once: the output is bit for bit the one
    with them made anew, and after a training step (AdamW, in place) the next forward reads the new weights."""
    from condorbrain.ssm import casts
    from condorbrain.ssm.triton import fused

    monkeypatch.setattr(fused, "_DEFER_NORM", defer)
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(d_model=32, n_layer=2, mixer="mamba2", d_state=16, headdim=8,
                                    chunk_size=8)).to(device).eval()
    x = _input(device).to(torch.bfloat16)  # a bf16 stream, as the models' embedding gives under autocast

    def forward(anew: bool) -> torch.Tensor:
        if anew:
            casts.clear()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return model(x).float()

    first = forward(anew=True)
    assert len(casts._CACHE) == 4  # in_proj's and out_proj's weights, 2 layers
    assert torch.equal(forward(anew=False), first)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    model(x).square().mean().backward()
    opt.step()
    model.eval()
    after = forward(anew=False)
    assert not torch.equal(after, first)
    assert torch.equal(after, forward(anew=True))
    casts.clear()


def test_where_the_norm_is_deferred(device):
    """Only where no gradient is recorded, the switch is on and the norm's 1/rms is one factor a row; elsewhere
    forward_prenormed returns a tensor (the same values)."""
    x, w = _input(device), torch.ones(32, device=device)
    plain = _layer(device)
    with torch.no_grad():
        assert plain.defers_norm(x)
    assert not plain.defers_norm(x)  # autograd recording (the parameters want gradients)
    _, h = plain.forward_prenormed(x, w, 1e-5, defer_norm=True)
    assert isinstance(h, torch.Tensor)
    for kw in ({"ngroups": 2}, {"norm_before_gate": True}, {"bias": True}, {"rmsnorm": False}, {"d_ssm": 32}):
        m = _layer(device, **kw)
        with torch.no_grad():
            assert not m.defers_norm(x), kw
            _, h = m.forward_prenormed(x, w, 1e-5, defer_norm=True)
            assert isinstance(h, torch.Tensor), kw
            torch.testing.assert_close(h, m(RMSNorm(32).to(device)(x)), rtol=1e-5, atol=1e-6)


def test_deferred_inference_is_causal(device):
    """Changing the input from step k on leaves every output before k unchanged on the deferred path (the scan's
    row sums are of a row's own channels)."""
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(d_model=32, n_layer=2, mixer="mamba2", d_state=16, headdim=8,
                                    chunk_size=8)).to(device).eval()
    x = _input(device)
    y = x.clone()
    y[:, 11:] = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(7)).to(device) * 5
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :11], b[:, :11], rtol=0, atol=0)
    assert (a[:, 11:] - b[:, 11:]).abs().max() > 1e-3


def test_pending_scaled_checks_its_sums():
    with pytest.raises(ValueError, match=r"ss must be \(6, K\) float32"):
        PendingScaled(torch.zeros(2, 3, 4), torch.zeros(5, 2), 8, 1e-5)
    with pytest.raises(ValueError, match="float32"):
        PendingScaled(torch.zeros(2, 3, 4), torch.zeros(6, 2, dtype=torch.float64), 8, 1e-5)
