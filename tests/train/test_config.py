"""TrainConfig: validation, dict round trip, immutability."""

import dataclasses

import pytest

from condorbrain.train import TrainConfig


def test_defaults_round_trip_and_hash():
    cfg = TrainConfig(betas=[0.8, 0.95], max_steps=50, warmup_steps=5)
    assert cfg.betas == (0.8, 0.95)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(TrainConfig.from_dict(cfg.to_dict()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


@pytest.mark.parametrize("bad", [
    dict(lr=0.0), dict(lr=float("nan")), dict(weight_decay=-1.0), dict(betas=(0.9, 1.0)), dict(ema_decay=1.0),
    dict(grad_accum_steps=0), dict(batch_size=0), dict(max_steps=10, warmup_steps=10), dict(amp="fp16"),
    dict(plateau_factor=1.0), dict(early_stopping_patience=0), dict(clip_grad_norm=-1.0), dict(epochs=True),
    dict(deterministic=1), dict(keep_checkpoints=0), dict(min_lr_ratio=2.0), dict(device=""),
])
def test_invalid_values_raise(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_replace_validates():
    with pytest.raises(ValueError):
        TrainConfig().replace(lr=-1.0)
    assert TrainConfig().replace(lr=0.1).lr == 0.1
