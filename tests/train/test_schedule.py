"""The learning-rate schedule and the decisions taken after validation."""

import functools
import math

import pytest
import torch

from condorbrain.train import EarlyStopping, ReduceOnPlateau, cosine_with_warmup


def test_cosine_with_warmup_exact_values():
    # W = 4, T = 12, min_ratio = 0.1: warm-up (s + 1) / 4, then 0.1 + 0.9 * 0.5 * (1 + cos(pi (s - 4) / 8)).
    f = functools.partial(cosine_with_warmup, warmup_steps=4, total_steps=12, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(8) == pytest.approx(0.55, abs=1e-15)  # halfway: cos(pi / 2) = 0
    assert f(6) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)), abs=1e-15)  # cos(pi / 4)
    assert f(12) == pytest.approx(0.1, abs=1e-15)
    assert f(100) == pytest.approx(0.1, abs=1e-15)  # held at the floor past the end
    values = [f(s) for s in range(4, 13)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing after the warm-up


def test_cosine_without_warmup_and_to_zero():
    f = functools.partial(cosine_with_warmup, warmup_steps=0, total_steps=4)
    assert [f(s) for s in range(5)] == pytest.approx([1.0, 0.5 * (1 + math.sqrt(0.5)), 0.5,
                                                      0.5 * (1 - math.sqrt(0.5)), 0.0], abs=1e-15)


def test_cosine_is_a_lambda_lr_function():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(cosine_with_warmup, warmup_steps=2, total_steps=6, min_ratio=0.0))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0 * cosine_with_warmup(s, 2, 6) for s in range(6)], abs=1e-15)
    assert lrs[:3] == [1.0, 2.0, 2.0]


@pytest.mark.parametrize("bad", [dict(warmup_steps=5, total_steps=5), dict(warmup_steps=-1, total_steps=5),
                                 dict(warmup_steps=0, total_steps=5, min_ratio=1.5)])
def test_cosine_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        cosine_with_warmup(0, **bad)


CURVE = [1.0, 0.9, 0.95, 0.92, 0.91, 0.9, 0.5, 0.49999, 0.6, 0.7, 0.8, 0.2, 0.3, 0.4, 0.5]


@pytest.mark.parametrize("patience", [0, 1, 2])
def test_plateau_matches_torch_reduce_lr_on_plateau(patience):
    """The scale follows torch's ReduceLROnPlateau (mode min, rel threshold 1e-4) on a scripted curve."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=patience,
                                                           threshold=1e-4, threshold_mode="rel", min_lr=0.0)
    ours = ReduceOnPlateau(patience=patience, factor=0.5, threshold=1e-4)
    for loss in CURVE:
        reference.step(loss)
        ours.update(loss)
        assert ours.scale == opt.param_groups[0]["lr"]
    assert ours.scale < 1.0


def test_plateau_hand_curve_and_floor():
    plateau = ReduceOnPlateau(patience=1, factor=0.5, min_scale=0.3)
    # 1.0 best; 1.0 bad (1); 1.1 bad (2 > 1): 0.5; 0.9 best; 0.95 bad (1); 0.95 bad (2): max(0.25, 0.3) = 0.3
    assert [plateau.update(v) for v in [1.0, 1.0, 1.1, 0.9, 0.95, 0.95]] == [False, False, True, False, False, True]
    assert plateau.scale == 0.3
    assert not plateau.update(0.95) and not plateau.update(0.95)  # at the floor: no further reduction
    assert plateau.scale == 0.3
    restored = ReduceOnPlateau(patience=1, factor=0.5, min_scale=0.3)
    restored.load_state_dict(plateau.state_dict())
    assert restored.state_dict() == plateau.state_dict()


def test_early_stopping_scripted_curve():
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    # improvements need a drop > 0.01 below the best: 0.995 and 0.992 do not count
    decisions = [stopper.update(v) for v in [1.0, 0.9, 0.895, 0.892, 0.85, 0.86, 0.87, 0.845]]
    assert decisions == [False, False, False, False, False, False, False, True]
    assert stopper.best == 0.85 and stopper.should_stop
    fresh = EarlyStopping(patience=3)
    fresh.load_state_dict(stopper.state_dict())
    assert fresh.should_stop and fresh.best == 0.85
    assert EarlyStopping(patience=1).state_dict() == {"best": None, "bad_evals": 0}  # inf is stored as None
