"""A small end-to-end run of the SSM core on random data: the README's first command until the main job exists.

Task: from a random (B, L, 24) sequence, predict at every step the mean of feature 0 over the last 8 steps, a
target only a model with memory can fit. A 2-layer Mamba-2 backbone trains for a few steps with AdamW; then the
trained model is run in streaming mode (one step at a time, carried state) and checked against the batch forward.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from condorbrain.ssm import Backbone, BackboneConfig, scan_backend


class _TinyNet(nn.Module):
    def __init__(self, n_in: int, d_model: int, n_layer: int) -> None:
        super().__init__()
        self.emb = nn.Linear(n_in, d_model)
        cfg = BackboneConfig(d_model=d_model, n_layer=n_layer, mixer="mamba2", d_state=16, headdim=16, chunk_size=32)
        self.backbone = Backbone(cfg)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.emb(x))).squeeze(-1)  # (B, L)

    @torch.no_grad()
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        cache = self.backbone.allocate_inference_cache(x.shape[0], x.shape[1])
        outs = [self.head(self.backbone.step(self.emb(x[:, t:t + 1]), cache)) for t in range(x.shape[1])]
        return torch.cat(outs, dim=1).squeeze(-1)  # (B, L)


def _batch(gen: torch.Generator, batch: int, L: int, n_in: int, window: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, L, n_in, generator=gen)
    padded = F.pad(x[..., 0], (window - 1, 0))  # (B, L + window - 1), zeros before the start
    y = padded.unfold(1, window, 1).mean(-1)  # (B, L): trailing mean, causal
    return x, y


def smoke_run(steps: int = 30, seed: int = 0, batch: int = 16, L: int = 64) -> dict[str, float]:
    """Train the tiny model for ``steps`` steps; returns first/last loss, the streaming error and the time."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_in = 24
    net = _TinyNet(n_in, d_model=32, n_layer=2)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    print(f"smoke run: {sum(p.numel() for p in net.parameters()):,} parameters, scan path "
          f"'{scan_backend('cpu')}', {torch.get_num_threads()} threads")
    x_val, y_val = _batch(torch.Generator().manual_seed(seed + 1), 64, L, n_in)
    with torch.no_grad():
        first = F.mse_loss(net(x_val), y_val).item()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="train", unit="step")
    for i in bar:
        x, y = _batch(gen, batch, L, n_in)
        loss = F.mse_loss(net(x), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} in the smoke run")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rate = batch * (i + 1) / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:.0f}")
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        last = F.mse_loss(net(x_val), y_val).item()
        batch_out = net(x_val[:4])
    stream_err = (net.stream(x_val[:4]) - batch_out).abs().max().item()
    print(f"validation MSE {first:.4f} -> {last:.4f} (predicting zero: {y_val.square().mean().item():.4f}); "
          f"streaming vs batch max |diff| {stream_err:.2e}; {seconds:.1f} s")
    return {"first_loss": first, "last_loss": last, "stream_max_abs_diff": stream_err, "seconds": seconds}
