"""Peer models the CPU benchmark compares against, on the same wrapper network.

``NaiveMamba2`` is the plain PyTorch Mamba-2 of ``shared/bench/anchor_bench.py`` (chunked SSD through einsum, no custom
kernel) -- the "plain einsum Mamba-2" whose CPU time ``shared/ANCHORS.md`` records -- kept here unchanged in substance
so the ratio is measured against the same code. ``mambapy`` (PyPI, pinned in the ``bench`` extra) is imported lazily.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def _segsum(x):
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), -1)
    x = x.masked_fill(~mask, 0)
    s = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), 0)
    return s.masked_fill(~mask, -torch.inf)


def _ssd(X, A, B, C, chunk):
    b, l, h, p = X.shape
    c = l // chunk
    X, B, C = (t.reshape(b, c, chunk, *t.shape[2:]) for t in (X, B, C))
    A = A.reshape(b, c, chunk, h).permute(0, 3, 1, 2)
    Acs = torch.cumsum(A, -1)
    L = torch.exp(_segsum(A))
    Yd = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L.to(C.dtype), X)
    decay = torch.exp(Acs[..., -1:] - Acs)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay.to(B.dtype), X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)
    dchunk = torch.exp(_segsum(F.pad(Acs[..., -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", dchunk.to(states.dtype), states)[:, :-1]
    Yo = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(Acs).to(C.dtype))
    return (Yd + Yo).reshape(b, l, h, p)


class NaiveMamba2(nn.Module):
    """anchor_bench.py's plain PyTorch Mamba-2 block."""

    def __init__(self, d, d_state=64, expand=2, headdim=16, d_conv=4, chunk=64):
        super().__init__()
        self.di = expand * d
        self.h = self.di // headdim
        self.p = headdim
        self.n = d_state
        self.chunk = chunk
        self.in_proj = nn.Linear(d, 2 * self.di + 2 * d_state + self.h, bias=False)
        self.conv = nn.Conv1d(self.di + 2 * d_state, self.di + 2 * d_state, d_conv, groups=self.di + 2 * d_state,
                              padding=d_conv - 1)
        self.dt_bias = nn.Parameter(torch.rand(self.h) * 0.1)
        self.A_log = nn.Parameter(torch.log(torch.rand(self.h) * 15 + 1))
        self.D = nn.Parameter(torch.ones(self.h))
        self.norm = RMSNorm(self.di)
        self.out_proj = nn.Linear(self.di, d, bias=False)

    def forward(self, u):
        b, l, _ = u.shape
        z, xBC, dt = torch.split(self.in_proj(u), [self.di, self.di + 2 * self.n, self.h], -1)
        xBC = F.silu(self.conv(xBC.transpose(1, 2))[..., :l].transpose(1, 2))
        x, B, C = torch.split(xBC, [self.di, self.n, self.n], -1)
        dt = F.softplus(dt.float() + self.dt_bias)
        A = -torch.exp(self.A_log.float())
        pad = (-l) % self.chunk
        X = x.reshape(b, l, self.h, self.p)
        Xs = X * dt[..., None].to(X.dtype)
        Bh = B[:, :, None, :].expand(b, l, self.h, self.n)
        Ch = C[:, :, None, :].expand(b, l, self.h, self.n)
        Ad = A * dt
        if pad:
            Xs, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (Xs, Bh, Ch))
            Ad = F.pad(Ad, (0, 0, 0, pad))
        y = _ssd(Xs, Ad, Bh, Ch, self.chunk)[:, :l]
        y = y + X * self.D[:, None]
        y = self.norm(y.reshape(b, l, self.di)) * F.silu(z)
        return self.out_proj(y)


class Net(nn.Module):
    """anchor_bench.py's wrapper: Linear(24 -> d), n pre-norm residual mixer blocks, RMSNorm, Linear(d -> 8)."""

    def __init__(self, mixer, d: int, n_layers: int, n_in: int = 24, n_out: int = 8):
        super().__init__()
        self.emb = nn.Linear(n_in, d)
        self.norms = nn.ModuleList(RMSNorm(d) for _ in range(n_layers))
        self.mixers = nn.ModuleList(mixer(d) for _ in range(n_layers))
        self.fn = RMSNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        h = self.emb(x)
        for n, m in zip(self.norms, self.mixers):
            h = h + m(n(h))
        return self.head(self.fn(h))


class MambapyNet(nn.Module):
    """mambapy's own residual stack (norm + Mamba block per layer) inside the same input/output layers as Net."""

    def __init__(self, d: int, n_layers: int, pscan: bool, n_in: int = 24, n_out: int = 8):
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig

        self.emb = nn.Linear(n_in, d)
        self.body = Mamba(MambaConfig(d_model=d, n_layers=n_layers, d_state=16, expand_factor=2, pscan=pscan))
        self.fn = RMSNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        return self.head(self.fn(self.body(self.emb(x))))
