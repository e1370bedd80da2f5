"""Tiny models, data and a loss with the (total, parts) protocol, shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from condorbrain.train import TensorBatches, TrainConfig


def data(n: int = 40, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)
    return x, {"ret": y[:, :1], "vol": y[:, 1:]}


class TinyNet(nn.Module):
    """Linear -> GELU -> dropout -> two heads; dropout makes the global torch RNG matter."""

    def __init__(self, d: int = 4, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout))
        self.ret = nn.Linear(hidden, 1)
        self.vol = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)  # (B, hidden)
        return {"ret": self.ret(h), "vol": self.vol(h)}  # (B, 1) each


def loss_fn(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
    """Mean over samples of a Huber (ret) + MSE (vol) loss."""
    ret = nn.functional.huber_loss(out["ret"].float(), targets["ret"])
    vol = nn.functional.mse_loss(out["vol"].float(), targets["vol"])
    return ret + 0.5 * vol, {"ret": ret, "vol": vol}


def make_model(seed: int = 0, dropout: float = 0.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout=dropout)


def cfg(**kw) -> TrainConfig:
    base = dict(lr=0.05, warmup_steps=2, batch_size=4, epochs=2, ema_decay=0.0, clip_grad_norm=0.0,
                weight_decay=0.0, log_every=1, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def batches(cfg: TrainConfig, n: int = 40, seed: int = 0, shuffle: bool = True) -> TensorBatches:
    x, y = data(n)
    return TensorBatches(x, y, cfg.batch_size, seed=seed, shuffle=shuffle)


def records(run_dir: Path, drop=("time", "samples_per_s")) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
