"""Argument checks shared by the scans: a bad argument gets a ValueError naming it and the expected shape."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def capturing() -> bool:
    """True while the current CUDA stream is being captured into a graph: a check must not read a value back to the
    host then (``bool(tensor)`` would fail the capture). ``is_current_stream_capturing`` raises on CPU-only builds."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


_INPUT_SCANNED: ContextVar[bool] = ContextVar("condorbrain_input_scanned", default=False)


@contextlib.contextmanager
def input_scanned() -> Iterator[None]:
    """Inside it, :func:`all_finite` answers True without looking: for the layers of a network whose input was
    scanned once at its entry (``Backbone``, ``CondorBrain``), so that each layer does not scan its own input again.
    On a GPU a scan is a pass over the tensor and a host sync: one per layer cost 9% of the seed network's
    inference forward on an H200 (24 scans, 5.8 of 67 ms of device time, and the launch queue drained 24 times).
    A NaN arising inside the network (an overflow) is then not named by a layer; the training loop checks its
    loss."""
    token = _INPUT_SCANNED.set(True)
    try:
        yield
    finally:
        _INPUT_SCANNED.reset(token)


def all_finite(t: Tensor) -> bool:
    """Whether ``t`` has no NaN / inf; True without looking while capturing a CUDA graph (see :func:`capturing`)
    and inside :func:`input_scanned`."""
    return capturing() or _INPUT_SCANNED.get() or bool(torch.isfinite(t).all())


def check_tensor(name: str, t: Tensor, shape: tuple[int, ...], expected: str, check_finite: bool = True) -> None:
    """Raise ValueError unless ``t`` is a floating tensor of ``shape`` (documented as ``expected``) with no NaN/inf."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {expected} = {tuple(shape)}, got {tuple(t.shape)}")
    # NaN would otherwise spread silently through the whole scan. One cheap reduction pass first (a sum is
    # non-finite if any element is); only then the exact elementwise check, since a sum can also overflow. On a GPU
    # the layers check their inputs once; the scans' own arguments are not read back (a host sync per call). Inside
    # a network whose input was scanned (input_scanned), not at all.
    if (check_finite and t.device.type == "cpu" and not _INPUT_SCANNED.get() and not bool(torch.isfinite(t.sum()))
            and not bool(torch.isfinite(t).all())):
        raise ValueError(f"{name} contains NaN or inf")


def check_same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")


def check_bc(name: str, X: Tensor, batch: int, dim: int, L: int, N: int) -> None:
    """The selective scan's B or C: (dim, N) time-invariant, (batch, N, L), or (batch, G, N, L) with G | dim."""
    shapes = {2: ((dim, N), "(dim, N)"), 3: ((batch, N, L), "(batch, N, L)")}
    if isinstance(X, Tensor) and X.dim() == 4:
        G = X.shape[1]
        if G < 1 or dim % G:
            raise ValueError(f"{name} has G={G} groups, which must divide dim={dim}; expected (batch, G, N, L)")
        shapes[4] = ((batch, G, N, L), "(batch, G, N, L)")
    if not isinstance(X, Tensor) or X.dim() not in shapes:
        raise ValueError(f"{name} must be (dim, N), (batch, N, L) or (batch, G, N, L), "
                         f"got {getattr(X, 'shape', type(X))}")
    check_tensor(name, X, *shapes[X.dim()])


def check_selective_scan_args(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                              z: Tensor | None, delta_bias: Tensor | None, initial_state: Tensor | None,
                              chunk_size: int) -> None:
    """Every argument of ``selective_scan`` (and of its Triton twin): shapes, dtypes, finiteness, one device."""
    if not isinstance(u, Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a tensor of shape (batch, dim, L), got {getattr(u, 'shape', type(u))}")
    batch, dim, L = u.shape
    check_tensor("u", u, (batch, dim, L), "(batch, dim, L)")
    check_tensor("delta", delta, (batch, dim, L), "(batch, dim, L)")
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim, N) with dim={dim}, got {getattr(A, 'shape', type(A))}")
    N = A.shape[1]
    check_tensor("A", A, (dim, N), "(dim, N)")
    if A.is_complex():
        raise ValueError("A must be real; complex A is not supported")
    check_bc("B", B, batch, dim, L, N)
    check_bc("C", C, batch, dim, L, N)
    if D is not None:
        check_tensor("D", D, (dim,), "(dim,)")
    if z is not None:
        check_tensor("z", z, (batch, dim, L), "(batch, dim, L)")
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, (dim,), "(dim,)")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (batch, dim, N), "(batch, dim, N)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
