"""Streaming steppers: the eager stepper and the CUDA-graph replay reproduce the batch forward at every step; reset.

The CUDA-graph tests run only where a GPU is visible (they are skipped on the CPU machine, and meant for the GPU one).
"""

from __future__ import annotations

import pytest
import torch

from condorbrain.models import CondorBrain, CondorBrainConfig, PolicyOutput
from condorbrain.ssm import Backbone, BackboneConfig, mamba, mamba2
from condorbrain.ssm.graph import (
    EagerStep,
    GraphedForward,
    GraphedStep,
    graph_unavailable_reason,
    make_stepper,
    streaming_path,
)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU (none visible here)")
TINY = dict(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=8, n_heads=2, lookback=16, horizons=(1, 3, 5),
            hold_horizon=5, quantiles=(0.25, 0.5, 0.75), d_expert=24)
SSM_MIXERS = [pytest.param(dict(mixer="mamba2", ngroups=2), id="mamba2"), pytest.param(dict(mixer="mamba"), id="mamba")]


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_model(device: str = "cpu", **kw) -> CondorBrain:
    torch.manual_seed(0)
    return CondorBrain(CondorBrainConfig(**{**TINY, **kw})).to(device).eval()


def assert_policy_close(a: PolicyOutput, b: PolicyOutput, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    for name, x, y in zip(PolicyOutput._fields, a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def stream_against_batch(stepper: EagerStep, model: CondorBrain, x: torch.Tensor, rtol: float, atol: float) -> None:
    """Every step of ``stepper`` over x (B, L, F) equals the batch forward's output at that step."""
    with torch.no_grad():
        every = model(x, all_steps=True)  # (B, L, ...) fields
    for t in range(x.shape[1]):
        out = stepper.step(x[:, t : t + 1])
        assert_policy_close(out, PolicyOutput(*(f[:, t] for f in every)), rtol, atol)


# --- eager path (any machine) -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", SSM_MIXERS)
def test_eager_stepper_equals_batch_forward_at_every_step_and_reset_restarts(kw):
    m = tiny_model(**kw)
    x = randn(3, 10, 24)
    stepper = EagerStep(m, batch_size=3)
    assert stepper.path == "eager" and stepper.input_shape == (3, 1, 24)
    stream_against_batch(stepper, m, x, 1e-5, 1e-5)
    assert stepper.steps == 10
    stepper.reset()
    assert stepper.steps == 0
    assert all(not t.any() for layer in stepper.cache for t in layer)  # zeroed in place
    stream_against_batch(stepper, m, x, 1e-5, 1e-5)  # from scratch again, not continuing the old history


def test_eager_stepper_on_a_backbone_and_with_attention():
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(d_model=16, n_layer=2, mixer="mamba2", d_state=8, headdim=8, chunk_size=4)).eval()
    x = randn(2, 7, 16)
    with torch.no_grad():
        full = bb(x)  # (B, L, D)
    stepper = make_stepper(bb, batch_size=2)
    assert isinstance(stepper, EagerStep) and stepper.path == "eager"
    for t in range(7):
        torch.testing.assert_close(stepper.step(x[:, t : t + 1]), full[:, t : t + 1], rtol=1e-5, atol=1e-5)
    m = tiny_model(mixer="attention", d_intermediate=12)  # the KV cache grows: eager only, reset empties it
    stepper = EagerStep(m, batch_size=2, max_seqlen=8)
    x = randn(2, 8, 24)
    stream_against_batch(stepper, m, x, 1e-5, 1e-5)
    stepper.reset()
    stream_against_batch(stepper, m, x, 1e-5, 1e-5)


def test_step_input_is_checked():
    stepper = EagerStep(tiny_model(), batch_size=2)
    with pytest.raises(ValueError, match=r"x_t must have shape \(2, 1, 24\)"):
        stepper.step(torch.zeros(1, 1, 24))
    with pytest.raises(ValueError, match="x_t contains NaN or inf"):
        stepper.step(torch.full((2, 1, 24), float("nan")))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        EagerStep(tiny_model(), batch_size=0)


def test_paths_and_the_no_cuda_error():
    assert streaming_path("cpu") == "eager"
    assert streaming_path("cuda") == ("cuda-graph" if CUDA else "eager")
    attn = tiny_model(mixer="attention")
    assert "not static" in graph_unavailable_reason(attn, "cuda" if CUDA else "cpu") or not CUDA
    assert streaming_path("cuda", attn) == "eager"
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        GraphedStep(tiny_model(), batch_size=1, device="cpu")
    if not CUDA:
        with pytest.raises(RuntimeError, match=r"torch.cuda.is_available\(\) is False"):
            GraphedStep(tiny_model(), batch_size=1, device="cuda")
    with pytest.raises(RuntimeError, match="GraphedForward: CUDA graphs need a CUDA device.*call the module itself"):
        GraphedForward(tiny_model(), (2, 16, 24), device="cpu")


def test_checks_read_no_data_only_while_capturing(monkeypatch):
    """While a CUDA stream is capturing, the input checks skip their finiteness test (a host read the capture
    refuses) and keep the shape tests; otherwise NaN is refused as ever."""
    from condorbrain.ssm import _checks

    m = tiny_model()
    nan = torch.full((2, 1, 16), float("nan"))
    with pytest.raises(ValueError, match="contains NaN or inf"):
        mamba2.check_hidden_states("u", nan, 16, seqlen=1)
    monkeypatch.setattr(_checks, "capturing", lambda: True)
    mamba2.check_hidden_states("u", nan, 16, seqlen=1)  # no data read: no NaN seen
    m._check_input(torch.full((2, 1, 24), float("nan")), seqlen=1, name="x_t")
    with pytest.raises(ValueError, match=r"u must have length 1"):  # shapes still checked
        mamba.check_hidden_states("u", torch.zeros(2, 3, 16), 16, seqlen=1)
    with pytest.raises(ValueError, match=r"x_t must have shape"):
        m._check_input(torch.zeros(2, 2, 24), seqlen=1, name="x_t")


# --- CUDA graph (GPU machine) -------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kw", SSM_MIXERS)
def test_graph_replay_equals_batch_forward_over_50_steps(kw, batch, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # float32 compared at 1e-4: no TF32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    m = tiny_model("cuda", **kw)
    x = randn(batch, 50, 24).cuda()
    stepper = make_stepper(m, batch_size=batch)
    assert isinstance(stepper, GraphedStep) and stepper.path == "cuda-graph"
    stream_against_batch(stepper, m, x, 1e-4, 1e-4)
    stepper.reset()
    stream_against_batch(stepper, m, x[:, :10], 1e-4, 1e-4)
    stepper.reset()
    with torch.no_grad():  # and it equals the eager stepper, both from no history
        eager = EagerStep(m, batch_size=batch)
        for t in range(5):
            assert_policy_close(eager.step(x[:, t : t + 1]), PolicyOutput(*(f.clone() for f in
                                                                              stepper.step(x[:, t : t + 1]))))


@needs_cuda
def test_graph_on_a_backbone_in_bfloat16_and_refusals():
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(d_model=64, n_layer=3, d_state=16, headdim=16)).cuda().to(torch.bfloat16).eval()
    x = randn(4, 20, 64).cuda().to(torch.bfloat16)
    eager, graphed = EagerStep(bb, 4), GraphedStep(bb, 4)
    for t in range(20):
        torch.testing.assert_close(graphed.step(x[:, t : t + 1]), eager.step(x[:, t : t + 1]))  # the same kernels
    with pytest.raises(ValueError, match="not static"):
        GraphedStep(tiny_model("cuda", mixer="attention"), 1)
    with pytest.raises(ValueError, match="training mode"):
        GraphedStep(tiny_model("cuda").train(), 1)


@needs_cuda
@pytest.mark.parametrize("kw", SSM_MIXERS)
def test_graphed_forward_equals_the_forward(kw, monkeypatch):
    # whole windows through the replayed forward: the module's own forward on each of three different inputs (the
    # static output overwritten by each call), CondorBrain's named tuple of heads included
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    m = tiny_model("cuda", **kw)
    graphed = GraphedForward(m, (3, 16, 24))
    for seed in (1, 2, 3):
        x = randn(3, 16, 24, seed=seed).cuda()
        with torch.no_grad():
            want = m(x)
        assert_policy_close(PolicyOutput(*(f.clone() for f in graphed(x))), want, 1e-5, 1e-5)
    with pytest.raises(ValueError, match=r"x must have shape \(3, 16, 24\) \(the shape captured\)"):
        graphed(randn(2, 16, 24).cuda())
    with pytest.raises(ValueError, match="x contains NaN or inf"):  # a CPU input is checked for free
        graphed(torch.full((3, 16, 24), float("nan")))


@needs_cuda
def test_graphed_forward_under_autocast_and_refusals():
    # a float32 backbone under bf16 autocast, as the benchmark's inference forward runs: the same kernels as the
    # eager forward under the same autocast
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(d_model=64, n_layer=3, d_state=16, headdim=16)).cuda().eval()
    x = randn(4, 40, 64).cuda()
    graphed = GraphedForward(bb, (4, 40, 64), autocast_dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = bb(x)
    torch.testing.assert_close(graphed(x), want)
    with pytest.raises(ValueError, match="training mode"):
        GraphedForward(tiny_model("cuda").train(), (1, 16, 24))
    with pytest.raises(ValueError, match="input_shape must be positive ints"):
        GraphedForward(bb, (4, 0, 64))


@needs_cuda
def test_graphed_forward_reads_updated_weights_through_their_inference_casts():
    # the graph reads in_proj's bf16 weight and out_proj's with the norm's folded in from condorbrain.ssm.casts
    # (made once, before the capture); a new checkpoint loaded in place has them remade in place before the next
    # replay, so the replay equals the eager forward with the new weights
    from condorbrain.ssm import casts

    torch.manual_seed(0)
    config = BackboneConfig(d_model=64, n_layer=3, d_state=16, headdim=16)
    bb = Backbone(config).cuda().eval()
    other = Backbone(config).cuda().eval()  # another draw of the weights
    x = randn(4, 40, 64).cuda().to(torch.bfloat16)  # a bf16 stream, as the models' embedding gives under autocast
    graphed = GraphedForward(bb, (4, 40, 64), dtype=torch.bfloat16, autocast_dtype=torch.bfloat16)
    assert graphed._casts  # the graph reads cached casts (else this test tests nothing)

    def eager() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return bb(x)

    torch.testing.assert_close(graphed(x), eager())
    before = graphed(x).clone()
    bb.load_state_dict(other.state_dict())
    got = graphed(x)
    assert not torch.equal(got, before)
    casts.clear()  # the eager forward's casts made anew from the new weights
    torch.testing.assert_close(got, eager())
