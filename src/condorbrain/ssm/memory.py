"""What a forward keeps for its backward: the activation memory a training step holds, measured on any device.

:func:`saved_activation_bytes` runs a forward under ``torch.autograd.graph.saved_tensors_hooks`` and counts the
distinct storages the graph still holds when the forward returns. Parameters and leaf inputs that require grad, and
views of them (a Linear saves its weight transposed), are left out (they live anyway), and so is a tensor saved by
a node that is freed at once (e.g. inside an input check): it is no activation. Used by the fused Mamba-2 path's
memory test and ``benchmarks/activation_memory.py``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["saved_activation_bytes"]


class _Held:
    """What the graph keeps in place of a saved tensor: alive exactly as long as the node that saved it."""

    __slots__ = ("__weakref__", "t")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def saved_activation_bytes(forward: Callable[[], Any], tag: Callable[[], str] | None = None) -> dict[str, int]:
    """Bytes the graph of ``forward()`` (called here) keeps for the backward, by tag.

    Args:
        forward: runs the forward (its output is held until the count is taken, then dropped).
        tag: called at each save, names where it happened (e.g. the module running); None: everything under
            ``"all"``. A storage saved under two tags counts once, under the first.

    Returns:
        tag -> bytes of the distinct storages still held.
    """
    held: list[tuple[weakref.ref, int, int, str]] = []

    def lives_anyway(t: torch.Tensor) -> bool:
        return isinstance(t, torch.nn.Parameter) or (t.is_leaf and t.requires_grad)

    def pack(t: torch.Tensor) -> _Held:
        h = _Held(t)
        if not (lives_anyway(t) or (t._base is not None and lives_anyway(t._base))):
            st = t.untyped_storage()
            held.append((weakref.ref(h), st.data_ptr(), st.nbytes(), "all" if tag is None else tag()))
        return h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        out = forward()
    seen: dict[int, tuple[int, str]] = {}
    for ref, ptr, nbytes, where in held:
        if ref() is not None and ptr not in seen:
            seen[ptr] = (nbytes, where)
    del out
    totals: dict[str, int] = {}
    for nbytes, where in seen.values():
        totals[where] = totals.get(where, 0) + nbytes
    return totals
