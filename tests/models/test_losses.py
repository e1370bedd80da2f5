"""Losses: pinball against hand-computed values, Huber against torch, exact NaN masking, and condor_loss's weighting,
checks and all-NaN heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from condorbrain.models import (
    TARGET_KEYS,
    CondorBrainConfig,
    LossWeights,
    PolicyOutput,
    bce_with_logits,
    condor_loss,
    cross_entropy,
    huber,
    pinball,
)

NAN = math.nan


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- pinball ------------------------------------------------------------------------------------------------------
def test_pinball_hand_computed():
    levels = (0.1, 0.5, 0.9)
    q = torch.tensor([[0.1, 0.2, 0.3], [0.0, 1.0, 2.0]])
    y = torch.tensor([0.25, 3.0])
    # By hand, rho_tau(u) = max(tau u, (tau - 1) u), u = y - q:
    # row 0: u = (0.15, 0.05, -0.05) -> 0.1*0.15 = 0.015, 0.5*0.05 = 0.025, (0.9-1)*(-0.05) = 0.005
    # row 1: u = (3, 2, 1)           -> 0.3, 1.0, 0.9
    # mean of the six = (0.045 + 2.2) / 6 = 0.37416666...
    torch.testing.assert_close(pinball(q, y, levels), torch.tensor(2.245 / 6))
    # scale 0.5 doubles every u, so the loss
    torch.testing.assert_close(pinball(q, y, levels, scale=0.5), torch.tensor(2 * 2.245 / 6))
    # a per-sample scale (broadcast against y): row 0 at scale 1, row 1 at scale 2 -> (0.045 + 1.1) / 6
    torch.testing.assert_close(pinball(q, y, levels, scale=torch.tensor([1.0, 2.0])), torch.tensor(1.145 / 6))
    # one level: the absolute error / 2 at the median
    torch.testing.assert_close(pinball(torch.tensor([[1.0]]), torch.tensor([4.0]), (0.5,)), torch.tensor(1.5))


def test_pinball_minimised_at_the_empirical_quantile():
    y = torch.arange(1.0, 101.0)  # 1 .. 100
    grid = torch.linspace(0.0, 101.0, 1011)
    losses = torch.stack([pinball(torch.full((100, 1), float(c)), y, (0.9,)) for c in grid])
    best = grid[losses.argmin()]
    assert 90.0 <= best <= 91.0  # any point between the 90th and 91st order statistics


def test_pinball_shape_errors():
    with pytest.raises(ValueError, match="levels must have shape"):
        pinball(torch.zeros(2, 3), torch.zeros(2), (0.5, 0.9))
    with pytest.raises(ValueError, match="must match target"):
        pinball(torch.zeros(2, 3), torch.zeros(3), (0.1, 0.5, 0.9))


# --- huber, bce, cross-entropy against torch --------------------------------------------------------------------
def test_huber_matches_torch():
    pred, target = 2.0 * randn(7, 4, seed=1), 2.0 * randn(7, 4, seed=2)
    for delta in (0.3, 1.0, 5.0):
        torch.testing.assert_close(huber(pred, target, delta=delta), F.huber_loss(pred, target, delta=delta))
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0])  # per column, e.g. per horizon
    torch.testing.assert_close(huber(pred, target, delta=0.7, scale=scale),
                               F.huber_loss(pred / scale, target / scale, delta=0.7))
    err = (pred - target).abs()
    assert (err < 0.3).any() and (err > 1.0).any()  # both branches of Huber are exercised


def test_bce_and_cross_entropy_match_torch_without_nan():
    logits, p = randn(9, seed=3), torch.rand(9, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(bce_with_logits(logits, p), F.binary_cross_entropy_with_logits(logits, p))
    cl, labels = randn(4, 5, 3, seed=5), torch.randint(0, 3, (4, 5), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(cross_entropy(cl, labels), F.cross_entropy(cl.reshape(-1, 3), labels.reshape(-1)))


# --- NaN masking ---------------------------------------------------------------------------------------------------
def test_nan_masking_is_exact_with_zero_gradient():
    pred = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    target = torch.tensor([1.0, NAN, 0.0, NAN])
    loss = huber(pred, target)
    # finite pairs: (0.5, 1.0) -> 0.5 * 0.25 = 0.125; (2.0, 0.0) -> |e| = 2 > 1: 1 * (2 - 0.5) = 1.5; mean 0.8125
    torch.testing.assert_close(loss, torch.tensor(0.8125))
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([-0.5, 0.0, 1.0, 0.0]) / 2)

    q = torch.tensor([[0.1, 0.2, 0.3], [5.0, 6.0, 7.0]], requires_grad=True)
    loss = pinball(q, torch.tensor([0.25, NAN]), (0.1, 0.5, 0.9))
    torch.testing.assert_close(loss, torch.tensor(0.045 / 3))  # row 0 of test_pinball_hand_computed
    loss.backward()
    assert torch.equal(q.grad[1], torch.zeros(3))

    logits = torch.tensor([0.3, -2.0, 1.0], requires_grad=True)
    loss = bce_with_logits(logits, torch.tensor([1.0, NAN, 0.0]))
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[[0, 2]], torch.tensor([1.0, 0.0])))
    loss.backward()
    assert logits.grad[1] == 0.0

    cl = randn(5, 3, seed=8).requires_grad_()
    for labels in (torch.tensor([2, -1, 0, -1, 1]), torch.tensor([2.0, NAN, 0.0, NAN, 1.0])):
        loss = cross_entropy(cl, labels)
        torch.testing.assert_close(loss, F.cross_entropy(cl[[0, 2, 4]], torch.tensor([2, 0, 1])))
        cl.grad = None
        loss.backward()
        assert torch.equal(cl.grad[[1, 3]], torch.zeros(2, 3))


def test_all_nan_gives_zero_not_nan():
    pred = randn(4).requires_grad_()
    nan4 = torch.full((4,), NAN)
    for loss in (huber(pred, nan4), bce_with_logits(pred, nan4),
                 pinball(pred.unsqueeze(-1).expand(4, 2), nan4, (0.2, 0.8)),
                 cross_entropy(pred.unsqueeze(-1).expand(4, 3), torch.full((4,), -1))):
        assert loss.item() == 0.0
        pred.grad = None
        loss.backward()
        assert torch.equal(pred.grad, torch.zeros(4))


def test_cross_entropy_label_checks():
    with pytest.raises(ValueError, match=r"class labels must be in 0..2 or -1"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integral"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="must match target"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0]))


# --- condor_loss ---------------------------------------------------------------------------------------------------
CFG = CondorBrainConfig(horizons=(1, 4), hold_horizon=4, quantiles=(0.25, 0.75), step_vol=0.5)
# target_scales: ret (0.5 * 1, 0.5 * 2) = (0.5, 1.0); vol / up / down / wing / max_dd 0.5 * 2 = 1.0; roi 1.


def hand_batch() -> tuple[PolicyOutput, dict[str, torch.Tensor]]:
    """B = 3, H = 2, Q = 2; NaN targets where a horizon runs past the data, and max_dd all NaN."""
    out = PolicyOutput(
        ret=torch.tensor([[0.1, -0.2], [0.0, 0.3], [0.2, 0.2]]),
        vol=torch.tensor([0.5, 1.0, 2.0]),
        up_q=torch.tensor([[0.5, 1.0], [0.2, 0.4], [1.0, 3.0]]),
        down_q=torch.tensor([[0.3, 0.6], [0.1, 0.2], [0.5, 0.9]]),
        wing=torch.tensor([0.2, 0.3, 0.4]),
        pop_logit=torch.tensor([0.0, 1.0, -1.0]),
        roi=torch.tensor([0.1, -0.2, 0.3]),
        max_dd=torch.tensor([0.1, 0.2, 0.3]),
        regime_logits=torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]]),
    )
    targets = {
        "ret": torch.tensor([[0.3, -0.2], [0.0, NAN], [NAN, NAN]]),
        "vol": torch.tensor([0.5, 3.0, NAN]),
        "up": torch.tensor([0.75, NAN, NAN]),
        "down": torch.tensor([0.2, 0.1, NAN]),
        "wing": torch.tensor([0.2, 0.5, 0.4]),
        "pop": torch.tensor([1.0, 0.0, NAN]),
        "roi": torch.tensor([NAN, -0.2, 0.0]),
        "max_dd": torch.full((3,), NAN),
        "regime": torch.tensor([0, -1, 2]),
    }
    return out, targets


def test_condor_loss_hand_computed():
    out, targets = hand_batch()
    w = LossWeights(ret=1.0, vol=2.0, up=1.0, down=0.5, wing=0.25, pop=1.0, roi=3.0, max_dd=7.0, regime=0.5)
    total, parts = condor_loss(out, targets, w, CFG)
    # By hand (scaled errors e = (pred - y) / scale; Huber delta 1):
    # ret: finite (0,0): e = -0.2/0.5 = -0.4 -> 0.08; (0,1): 0 -> 0; (1,0): 0 -> 0; mean 0.08 / 3
    # vol: e = 0 -> 0; e = -2 -> 1.5; mean 0.75
    # up: y = 0.75, q = (0.5, 1.0), levels (0.25, 0.75): u = (0.25, -0.25) -> 0.0625, 0.0625; mean 0.0625
    # down: row 0: u = (-0.1, -0.4) -> 0.075, 0.1; row 1: u = (0, -0.1) -> 0, 0.025; mean 0.2 / 4 = 0.05
    # wing: e = (0, -0.2, 0) -> (0, 0.02, 0); mean 0.02 / 3
    # pop: BCE(0, 1) = ln 2; BCE(1, 0) = ln(1 + e); mean
    # roi: e = (0, 0.3) -> (0, 0.045); mean 0.0225
    # max_dd: every target NaN -> 0
    # regime: CE of rows 0 (label 0) and 2 (label 2)
    pop = (math.log(2.0) + math.log(1.0 + math.e)) / 2
    ce = (-math.log(math.e / (math.e + 2.0)) + math.log(3.0)) / 2
    expected = dict(ret=0.08 / 3, vol=0.75, up=0.0625, down=0.05, wing=0.02 / 3, pop=pop, roi=0.0225, max_dd=0.0,
                    regime=ce)
    assert parts.keys() == expected.keys()
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value, rel=1e-6, abs=1e-7), key
    weighted = sum(getattr(w, k) * v for k, v in expected.items())
    assert total.item() == pytest.approx(weighted, rel=1e-6)


def test_condor_loss_gradients_are_finite_and_zero_where_masked():
    out, targets = hand_batch()
    out = PolicyOutput(*(f.clone().requires_grad_() for f in out))
    total, _ = condor_loss(out, targets, LossWeights(), CFG)
    total.backward()
    for name, f in zip(PolicyOutput._fields, out):
        assert f.grad is not None and torch.isfinite(f.grad).all(), name
    assert torch.equal(out.max_dd.grad, torch.zeros(3))  # all-NaN head
    assert torch.equal(out.ret.grad[2], torch.zeros(2)) and out.ret.grad[1, 1] == 0
    assert torch.equal(out.up_q.grad[1:], torch.zeros(2, 2))
    assert torch.equal(out.regime_logits.grad[1], torch.zeros(3))


def test_condor_loss_all_steps_shapes():
    g = torch.Generator().manual_seed(0)
    B, L = 2, 5
    out = PolicyOutput(ret=torch.randn(B, L, 2, generator=g), vol=torch.rand(B, L, generator=g),
                       up_q=torch.rand(B, L, 2, generator=g).cumsum(-1), down_q=torch.rand(B, L, 2, generator=g),
                       wing=torch.rand(B, L, generator=g), pop_logit=torch.randn(B, L, generator=g),
                       roi=torch.randn(B, L, generator=g), max_dd=torch.rand(B, L, generator=g),
                       regime_logits=torch.randn(B, L, 3, generator=g))
    targets = {k: torch.rand(getattr(out, f).shape[:-1] if k in ("up", "down") else getattr(out, f).shape,
                             generator=g) for k, f in TARGET_KEYS.items() if k != "regime"}
    targets["regime"] = torch.randint(0, 3, (B, L), generator=g)
    targets["ret"][:, -2:] = NAN  # the last steps' horizons run past the data
    total, parts = condor_loss(out, targets, LossWeights(), CFG)
    assert torch.isfinite(total) and set(parts) == set(TARGET_KEYS)
    per_step = [condor_loss(PolicyOutput(*(f[:, t] for f in out)), {k: v[:, t] for k, v in targets.items()},
                            LossWeights(), CFG)[1]["vol"] for t in range(L)]
    torch.testing.assert_close(parts["vol"], torch.stack(per_step).mean())  # equal counts per step


def test_condor_loss_checks():
    out, targets = hand_batch()
    with pytest.raises(ValueError, match=r"unknown target key\(s\) \['volatility'\]"):
        condor_loss(out, {**targets, "volatility": targets["vol"]}, LossWeights(), CFG)
    missing = {k: v for k, v in targets.items() if k != "roi"}
    with pytest.raises(ValueError, match=r"targets has no 'roi' but its weight is 0.5"):
        condor_loss(out, missing, LossWeights(), CFG)
    total, parts = condor_loss(out, missing, LossWeights(roi=0.0), CFG)  # weight 0: may be absent
    assert "roi" not in parts and torch.isfinite(total)
    with pytest.raises(ValueError, match=r"targets\['vol'\] must have shape \(3,\) \(as out.vol\), got \(3, 1\)"):
        condor_loss(out, {**targets, "vol": targets["vol"][:, None]}, LossWeights(), CFG)
    with pytest.raises(ValueError, match=r"targets\['up'\] must have shape \(3,\) \(as out.up_q\)"):
        condor_loss(out, {**targets, "up": torch.zeros(3, 2)}, LossWeights(), CFG)
    with pytest.raises(ValueError, match="config has"):
        condor_loss(out, targets, LossWeights(), CondorBrainConfig())
    with pytest.raises(ValueError, match="weights must be a LossWeights"):
        condor_loss(out, targets, {"ret": 1.0}, CFG)  # type: ignore[arg-type]


def test_loss_weights_defaults_and_validation():
    w = LossWeights()
    assert (w.ret, w.vol, w.up, w.down, w.pop) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (w.wing, w.roi, w.max_dd, w.regime, w.huber_delta) == (0.5, 0.5, 0.5, 0.5, 1.0)
    for field, value in (("vol", -1.0), ("pop", NAN), ("huber_delta", 0.0), ("regime", True)):
        with pytest.raises(ValueError, match=field):
            LossWeights(**{field: value})
    with pytest.raises(ValueError, match="at least one head weight"):
        LossWeights(**{k: 0.0 for k in TARGET_KEYS})
