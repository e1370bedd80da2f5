"""Blocks: RMSNorm, GatedMLP (mamba_ssm layout), drop-path, attention mixer, pre-norm Block and the Backbone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from condorbrain.ssm import (
    Backbone,
    BackboneConfig,
    Block,
    CausalSelfAttention,
    DropPath,
    GatedMLP,
    Mamba,
    Mamba2,
    RMSNorm,
)


def randn(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
def test_rmsnorm_matches_formula():
    norm = RMSNorm(10, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-1, 2, 10))
    x = randn(3, 4, 10, dtype=torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-14)
    assert list(norm.state_dict()) == ["weight"]  # as mamba_ssm's RMSNorm (bias registered as None)
    xb = x.to(torch.bfloat16)
    assert RMSNorm(10)(xb).dtype == torch.bfloat16


def test_gated_mlp_layout_and_maths():
    # Read off state-spaces/mamba at commit e9594ce1c732d97440f0332fdc43170a2294dbfa, mamba_ssm/modules/mlp.py:
    # hidden = int(8 * in / 3) unless given, rounded up to multiple_of (128); fc1 (2 * hidden, in), fc2 (out, hidden).
    sd = GatedMLP(24).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == [("fc1.weight", (256, 24)), ("fc2.weight", (24, 128))]
    sd = GatedMLP(24, hidden_features=50, out_features=8, bias=True, multiple_of=16).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == [
        ("fc1.weight", (128, 24)), ("fc1.bias", (128,)), ("fc2.weight", (8, 64)), ("fc2.bias", (8,))]
    torch.manual_seed(0)
    mlp = GatedMLP(6, hidden_features=5, multiple_of=1).double()
    x = randn(2, 3, 6, dtype=torch.float64)
    h = x @ mlp.fc1.weight.t()
    expected = (h[..., :5] * F.silu(h[..., 5:])) @ mlp.fc2.weight.t()  # first half is the value, second the gate
    torch.testing.assert_close(mlp(x), expected)


def test_drop_path_identity_in_eval_and_per_sample_in_train():
    torch.manual_seed(0)
    dp = DropPath(0.3)
    x = randn(4000, 3, 5) + 10.0  # no zeros in x
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    dropped = (y == 0).all(dim=(1, 2))
    kept = torch.isclose(y, x / 0.7, rtol=1e-6, atol=0).all(dim=(1, 2))
    assert torch.all(dropped ^ kept)  # every sample entirely dropped or entirely kept (and rescaled)
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    assert torch.equal(DropPath(0.0).train()(x), x)
    with pytest.raises(ValueError, match="p must be in"):
        DropPath(1.0)


# ---------------------------------------------------------------------------------------------------------------
def plain_attention(m: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention with rotate-half RoPE, written out: (B, L, D) -> (B, L, D)."""
    b, L, d = x.shape
    h, hd = m.n_heads, m.head_dim
    q, k, v = (x @ m.in_proj.weight.t()).split(d, dim=-1)
    q, k, v = (t.reshape(b, L, h, hd).transpose(1, 2) for t in (q, k, v))  # (b, h, L, hd)
    pos = torch.arange(L, dtype=torch.float64)
    freqs = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos[:, None] * freqs[None]  # (L, hd/2)
    cos, sin = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)

    def rot(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    q, k = rot(q), rot(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
    y = torch.softmax(scores, -1) @ v  # (b, h, L, hd)
    return y.transpose(1, 2).reshape(b, L, d) @ m.out_proj.weight.t()


def test_attention_matches_plain_and_streams():
    torch.manual_seed(0)
    m = CausalSelfAttention(16, n_heads=2).double()
    x = randn(2, 9, 16, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, plain_attention(m, x), rtol=1e-10, atol=1e-12)
    k_cache, v_cache, n = m.allocate_inference_cache(2, max_seqlen=9)
    steps = [m.step(x[:, t : t + 1], k_cache, v_cache, n)[0] for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), y, rtol=1e-10, atol=1e-12)
    assert int(n) == 9
    with pytest.raises(ValueError, match="KV cache is full"):
        m.step(x[:, :1], k_cache, v_cache, n)
    with pytest.raises(ValueError, match="max_seqlen"):
        m.allocate_inference_cache(2)
    out1, s = m(x[:, :4], return_state=True)
    out2, s = m(x[:, 4:], state=s, return_state=True)
    torch.testing.assert_close(torch.cat([out1, out2], 1), y, rtol=1e-10, atol=1e-12)
    assert s[0].shape == (2, 2, 9, 8)
    assert list(m.state_dict()) == ["in_proj.weight", "out_proj.weight"]  # no RoPE buffers saved
    with pytest.raises(ValueError, match="heads of even size"):
        CausalSelfAttention(12, n_heads=4)


# ---------------------------------------------------------------------------------------------------------------
def test_block_is_prenorm_residual_and_drop_path_is_per_sample():
    torch.manual_seed(0)
    mixer = Mamba(8, d_state=4)
    block = Block(8, mixer, GatedMLP(8, hidden_features=12, multiple_of=4), drop_path=0.5)
    x = randn(64, 6, 8)
    block.eval()
    with torch.no_grad():
        h = x + mixer(block.norm(x))
        expected = h + block.mlp(block.norm2(h))
        torch.testing.assert_close(block(x), expected)
        assert torch.equal(block(x), block(x))  # eval is deterministic
        block.train()
        y = block(x)
    both_dropped = (y == x).all(dim=(1, 2))
    assert 0 < int(both_dropped.sum()) < 64  # some samples skip both branches entirely, others do not
    assert list(block.state_dict())[:1] == ["norm.weight"]
    assert {k.split(".")[0] for k in block.state_dict()} == {"norm", "mixer", "norm2", "mlp"}


# ---------------------------------------------------------------------------------------------------------------
def test_config_validation_and_frozen():
    cfg = BackboneConfig(d_model=32, n_layer=2, mixer="mamba", d_intermediate=48)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3
    assert hash(cfg) == hash(BackboneConfig(d_model=32, n_layer=2, mixer="mamba", d_intermediate=48))
    bad = [
        (dict(d_model=0, n_layer=1), "d_model"),
        (dict(d_model=32, n_layer=0), "n_layer"),
        (dict(d_model=32, n_layer=1, mixer="rnn"), "mixer"),
        (dict(d_model=32, n_layer=1, d_state=0), "d_state"),
        (dict(d_model=32, n_layer=1, drop_path=1.0), "drop_path"),
        (dict(d_model=32, n_layer=1, d_intermediate=-1), "d_intermediate"),
        (dict(d_model=32, n_layer=1, mixer="mamba2", headdim=48), "headdim"),
        (dict(d_model=32, n_layer=1, mixer="mamba2", headdim=16, ngroups=3), "ngroups"),
        (dict(d_model=30, n_layer=1, mixer="attention", n_heads=4), "n_heads"),
        (dict(d_model=32, n_layer=1, norm_eps=0.0), "norm_eps"),
    ]
    for kw, name in bad:
        with pytest.raises(ValueError, match=name):
            BackboneConfig(**kw)


def test_backbone_layout_and_init():
    cfg = BackboneConfig(d_model=32, n_layer=3, mixer="mamba", d_state=8, d_intermediate=40, drop_path=0.2)
    torch.manual_seed(0)
    bb = Backbone(cfg)
    keys = list(bb.state_dict())
    # mamba_ssm MixerModel names without the embedding: layers.{i}.{norm, mixer.*, norm2, mlp.*}, norm_f
    assert keys[:3] == ["layers.0.norm.weight", "layers.0.mixer.A_log", "layers.0.mixer.D"]
    assert "layers.2.norm2.weight" in keys and "layers.2.mlp.fc2.weight" in keys and keys[-1] == "norm_f.weight"
    assert bb.layers[1].mlp.fc2.weight.shape == (32, 40)
    assert [layer.drop_path.p for layer in bb.layers] == pytest.approx([0.0, 0.1, 0.2])
    assert isinstance(bb.layers[0].mixer, Mamba) and bb.layers[2].mixer.layer_idx == 2
    # mamba_ssm's _init_weights: out_proj / fc2 weights ~ U(+-1/sqrt(fan_in)) / sqrt(2 * n_layer)
    bound = 1 / math.sqrt(64) / math.sqrt(2 * 3)
    assert bb.layers[0].mixer.out_proj.weight.abs().max() <= bound
    assert bb.layers[0].mlp.fc2.weight.abs().max() <= 1 / math.sqrt(40) / math.sqrt(6)
    assert bb.layers[0].mixer.dt_proj.bias.abs().min() > 0  # dt bias is kept (marked _no_reinit)
    cfg2 = BackboneConfig(d_model=32, n_layer=2, mixer="mamba2", headdim=16)
    assert isinstance(Backbone(cfg2).layers[0].mixer, Mamba2)
    assert Backbone(cfg2).layers[0].mixer.d_state == 128  # the mixer's own default


MIXERS = [
    pytest.param(dict(mixer="mamba", d_state=8), id="mamba"),
    pytest.param(dict(mixer="mamba2", d_state=8, headdim=16, ngroups=2, chunk_size=8), id="mamba2"),
    pytest.param(dict(mixer="attention", n_heads=4), id="attention"),
]


def make_backbone(**kw) -> Backbone:
    torch.manual_seed(0)
    return Backbone(BackboneConfig(d_model=32, n_layer=2, d_intermediate=24, drop_path=0.1, **kw)).eval()


@pytest.mark.parametrize("kw", MIXERS)
def test_backbone_step_equals_forward(kw):
    bb = make_backbone(**kw)
    x = randn(2, 13, 32)
    with torch.no_grad():
        y = bb(x)
        cache = bb.allocate_inference_cache(2, max_seqlen=13)
        steps = [bb.step(x[:, t : t + 1], cache) for t in range(13)]
    torch.testing.assert_close(torch.cat(steps, 1), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", MIXERS)
def test_backbone_windows_equal_one_pass(kw):
    bb = make_backbone(**kw)
    x = randn(2, 21, 32)
    with torch.no_grad():
        y = bb(x)
        y1, s = bb(x[:, :1], return_state=True)
        y2, s = bb(x[:, 1:9], state=s, return_state=True)
        y3, s = bb(x[:, 9:], state=s, return_state=True)
    assert len(s) == 2
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", MIXERS)
def test_backbone_causal_and_trains(kw):
    bb = make_backbone(**kw)
    x = randn(2, 16, 32)
    t = 9
    x2 = x.clone()
    x2[:, t + 1 :] += 3.0
    with torch.no_grad():
        ya, yb = bb(x), bb(x2)
    torch.testing.assert_close(ya[:, : t + 1], yb[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(ya[:, t + 1 :], yb[:, t + 1 :])
    bb.train()
    bb(x).square().mean().backward()
    for name, p in bb.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_backbone_bad_input():
    bb = make_backbone(mixer="mamba", d_state=8)
    with pytest.raises(ValueError, match=r"x must have last dimension d_model=32"):
        bb(torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match=r"x must have 3 dimensions"):
        bb(torch.zeros(5, 32))
    with pytest.raises(ValueError, match="state must hold one entry per layer"):
        bb(torch.zeros(2, 5, 32), state=[None])
    with pytest.raises(ValueError, match="cache must hold one entry per layer"):
        bb.step(torch.zeros(2, 1, 32), bb.allocate_inference_cache(2)[:1])
    with pytest.raises(ValueError, match=r"x must have length 1"):
        bb.step(torch.zeros(2, 2, 32), bb.allocate_inference_cache(2))
    with pytest.raises(ValueError, match="x contains NaN"):
        bb(torch.full((1, 2, 32), math.nan))


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_backbone_scans_its_input_once(mixer, isfinite_scans):
    """The backbone scans its input for NaN / inf once; its layers, which scan their input when called on their own,
    do not scan again inside it (on a GPU each scan is a host sync), in the forward and the streaming step; after
    the call a layer scans again."""
    bb = make_backbone(mixer=mixer, d_state=8).eval()
    with torch.no_grad():
        bb(torch.randn(2, 5, 32))
        assert isfinite_scans == [(2, 5, 32)]
        isfinite_scans.clear()
        bb.step(torch.randn(2, 1, 32), bb.allocate_inference_cache(2))
        assert isfinite_scans == [(2, 1, 32)]
        isfinite_scans.clear()
        with pytest.raises(ValueError, match="contains NaN"):
            bb.layers[0].mixer(torch.full((1, 3, 32), math.nan))
    assert len(isfinite_scans) == 1
