"""EMA shadow weights: the update rule on a hand example, swapping in and out, state round trip."""

import pytest
import torch
from torch import nn

from condorbrain.train import EMA


def _model() -> nn.Linear:
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0]]))
        m.bias.fill_(0.0)
    return m


def test_ema_hand_example():
    m = _model()
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[2.0, 0.0]]))
        m.bias.fill_(10.0)
    ema.update()  # 0.9 * [1, 2] + 0.1 * [2, 0] = [1.1, 1.8];  0.9 * 0 + 0.1 * 10 = 1.0
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.1, 1.8]]), atol=1e-6, rtol=0)
    assert torch.allclose(ema.shadow["bias"], torch.tensor([1.0]), atol=1e-6, rtol=0)
    ema.update()  # 0.9 * [1.1, 1.8] + 0.1 * [2, 0] = [1.19, 1.62];  0.9 * 1 + 0.1 * 10 = 1.9
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.19, 1.62]]), atol=1e-6, rtol=0)
    assert torch.allclose(ema.shadow["bias"], torch.tensor([1.9]), atol=1e-6, rtol=0)
    assert ema.num_updates == 2


def test_swapped_in_restores_live_weights_even_on_error():
    m = _model()
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update()  # shadow weight = [[2, 2.5]]
    with ema.swapped_in():
        assert torch.equal(m.weight, torch.tensor([[2.0, 2.5]]))
        assert m(torch.tensor([[1.0, 1.0]])).item() == pytest.approx(4.5)
    assert torch.equal(m.weight, torch.full((1, 2), 3.0))
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped_in():
            raise RuntimeError("boom")
    assert torch.equal(m.weight, torch.full((1, 2), 3.0))


def test_state_dict_round_trip_and_model_state():
    m = _model()
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(5.0)
    ema.update()
    other = EMA(_model(), decay=0.5)
    other.load_state_dict(ema.state_dict(), num_updates=ema.num_updates)
    assert all(torch.equal(other.shadow[k], v) for k, v in ema.shadow.items())
    full = ema.model_state_dict(m)
    assert set(full) == set(m.state_dict()) and torch.equal(full["weight"], ema.shadow["weight"])
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({"weight": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({"weight": torch.zeros(2, 2), "bias": torch.zeros(1)})


def test_frozen_parameters_are_not_tracked():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    m[0].weight.requires_grad_(False)
    assert "0.weight" not in EMA(m, 0.9).shadow


def test_decay_must_be_in_open_unit_interval():
    with pytest.raises(ValueError):
        EMA(_model(), 1.0)
