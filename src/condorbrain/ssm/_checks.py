"""Argument checks shared by the scans: a bad argument gets a ValueError naming it and the expected shape."""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: Tensor, shape: tuple[int, ...], expected: str, check_finite: bool = True) -> None:
    """Raise ValueError unless ``t`` is a floating tensor of ``shape`` (documented as ``expected``) with no NaN/inf."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {expected} = {tuple(shape)}, got {tuple(t.shape)}")
    # NaN would otherwise spread silently through the whole scan. One cheap reduction pass first (a sum is
    # non-finite if any element is); only then the exact elementwise check, since a sum can also overflow.
    if check_finite and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def check_same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
