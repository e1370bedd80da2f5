"""Derived copies of parameters for inference (a weight in the matmul dtype, a weight with a norm's folded in),
made once and reused while the parameters they come from are unchanged.

Under bf16 autocast a float32 weight is cast on every call, and the deferred gated norm folds the norm's weight
into out_proj's on every call: about 50 of the ~350 kernels of the seed's inference forward (H100 run 8d: ~0.25 ms of
42.8, launches not counted), for results that are the same each time. Where no gradient is recorded, the fused
path takes them from here instead. ``torch.autocast``'s own cache would not do: it keeps a cast only within one
autocast region and only for tensors that require grad, and the fused path casts outside autocast.

Validity: an entry keeps each source's version counter and storage; a source changed in place through the tensor
(an optimizer step, ``load_state_dict``, an EMA swap) or re-pointed (``module.to(...)``) has it remade on next use, in
place (the same storage, so a CUDA graph that reads it reads the new values once :func:`refresh` has run: the graph
wrappers of :mod:`condorbrain.ssm.graph` call it before each replay). Not seen: writes through ``.data`` (it carries
no version counter); call :func:`clear` after such. Entries are keyed weakly by their first source (freed with it);
:func:`clear` drops them all. Memory: one copy per weight used (the seed's 24 layers: ~80 MB in bf16).

Written by hand: this is a cache keyed by a tensor's identity and version, which no library offers.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["cast", "clear", "folded", "recording", "refresh"]


def _stamp(t: Tensor) -> tuple:
    return t._version, t.data_ptr(), t.dtype, t.shape, t.device


@dataclass(eq=False)
class _Entry:
    """out = make(*sources), as of the sources' stamps."""

    sources: tuple[weakref.ref, ...]
    stamps: tuple[tuple, ...]
    out: Tensor
    make: Callable[..., None]  # make(out, *sources): writes out in place

    def current(self) -> tuple[Tensor, ...] | None:
        """The sources, if all alive and the first still of out's shape, else None."""
        srcs = tuple(r() for r in self.sources)
        return None if any(s is None for s in srcs) or srcs[0].shape != self.out.shape else srcs

    def refresh(self, srcs: tuple[Tensor, ...]) -> None:
        stamps = tuple(_stamp(s) for s in srcs)
        if stamps != self.stamps:
            with torch.inference_mode(False), torch.no_grad():
                self.make(self.out, *srcs)
            self.stamps = stamps


_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()  # first source -> {key: _Entry}
_RECORDING: list[list[_Entry]] = []


def _cached(key: tuple, sources: tuple[Tensor, ...], shape: torch.Size, dtype: torch.dtype,
            make: Callable[..., None]) -> Tensor | None:
    """The entry's output for ``key`` (made or remade as needed), or None where no cache applies (a gradient is
    recorded, a source is an inference tensor, or a CUDA graph is being captured and the entry is missing or
    stale: what is made inside a capture is recorded, not run)."""
    if torch.is_grad_enabled() or any(s.is_inference() for s in sources):
        return None
    per = _CACHE.get(sources[0])
    entry = per.get(key) if per is not None else None
    cur = entry.current() if entry is not None else None
    if cur is None or any(a is not b for a, b in zip(cur, sources, strict=True)):
        entry = None  # a co-source re-created, or the shape changed: a new entry
    stamps = tuple(_stamp(s) for s in sources)
    if entry is None or entry.stamps != stamps:
        if sources[0].is_cuda and torch.cuda.is_current_stream_capturing():
            return None
        if entry is None:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor: remade in place later, anywhere
                out = torch.empty(shape, dtype=dtype, device=sources[0].device)
            entry = _Entry(tuple(weakref.ref(s) for s in sources), (), out, make)
            _CACHE.setdefault(sources[0], {})[key] = entry
        entry.refresh(sources)
    for rec in _RECORDING:
        rec.append(entry)
    return entry.out


def cast(w: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``w.to(dtype)`` from the cache where one applies (no gradient recorded: see :func:`_cached`), else w itself,
    for the caller's own cast (which, where a gradient is recorded, autograd sees as it always did). None -> None."""
    if w is None or w.dtype == dtype:
        return w
    out = _cached(("cast", dtype), (w,), w.shape, dtype, Tensor.copy_)  # make(out, w): out.copy_(w)
    return w if out is None else out


def _fold(out: Tensor, w: Tensor, scale: Tensor) -> None:
    # the float32 product rounded once into out's dtype, one kernel
    torch.mul(w.to(torch.float32), scale.to(torch.float32), out=out)


def folded(w: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``w * scale`` (w: (n_out, n_in), scale: (n_in,), a norm's weight folded into the Linear after it) computed in
    float32 and rounded once into ``dtype``, for inference (no gradient flows through it); from the cache where no
    gradient is recorded."""
    out = _cached(("fold", dtype), (w, scale), w.shape, dtype, _fold)
    if out is None:
        out = torch.empty(w.shape, dtype=dtype, device=w.device)
        with torch.no_grad():
            _fold(out, w, scale)
    return out


@contextlib.contextmanager
def recording() -> Iterator[list[_Entry]]:
    """Collects the entries served inside the block (a graph capture's: what the graph reads) into the list
    yielded, which keeps them alive."""
    served: list[_Entry] = []
    _RECORDING.append(served)
    try:
        yield served
    finally:
        _RECORDING.remove(served)


def refresh(entries: list[_Entry]) -> None:
    """Remake in place every entry of ``entries`` whose sources changed (a graph's, before it is replayed). An
    entry whose source was freed is left as it is (its graph reads a parameter that no longer exists anyway)."""
    for entry in entries:
        srcs = entry.current()
        if srcs is not None:
            entry.refresh(srcs)


def clear() -> None:
    """Drop every entry (after writing parameters through ``.data``, or to free the copies). Entries a graph
    recorded stay alive with it."""
    _CACHE.clear()
