"""Kernel launches in one streaming step (one new bar through every layer), counted on the CPU (issue 6: a 24-layer
step at batch 1 in <= 0.2 ms; the official layers replayed in a CUDA graph take 0.545 ms, ../shared/ANCHORS.md).

Inside a CUDA graph a step costs roughly its launch count times the few microseconds each tiny kernel takes to
start and finish, whatever the batch-1 work (reading each layer's weights and states once, ~30 us for the whole
stack at the H100's bandwidth). So the count is the figure to drive down before any timing: this script counts, for
``benchmarks/gpu.py``'s streaming networks at the seed size (``_gpu_models``: d_model 512, 24 layers, the anchors'
mixer sizes), one ``step`` with

* ``eager``: the PyTorch path (``CONDORBRAIN_SCAN_BACKEND=torch``, what the layers ran before the Triton step);
* ``triton``: the Triton path (``CONDORBRAIN_SCAN_BACKEND=triton``: the default on CUDA), kernels run under Triton's
  interpreter (``TRITON_INTERPRET=1``, set here before triton is imported).

Counted is what :class:`condorbrain.ssm.graph.GraphedStep` captures: the network's ``step`` on its state, with the
input checks' finiteness reads skipped as they are during a capture.

What is counted: every Triton launch, and every ATen op that would be a kernel on a GPU, seen through a
``TorchDispatchMode``: an op that writes memory, i.e. one whose schema mutates an argument or one returning a tensor
that shares no storage with its inputs. Views (split, unsqueeze, transpose, ...) and allocations (``empty``) are not
kernels and are not counted; ATen ops the interpreter itself issues while running a Triton kernel are not counted
either. A matmul counts as one launch (cuBLAS may add a split-K reduction). Nothing is timed.

    .venv/bin/python benchmarks/stream_launches.py [--layers 24] [--out bench-results/stream_launches.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: the Triton path on the CPU

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpu_models as gm
import torch
from _common import around_interpreted_launches
from torch.utils._python_dispatch import TorchDispatchMode

from condorbrain.ssm import _checks
from condorbrain.ssm.graph import EagerStep

MODELS = ("cb_m2", "cb_m2n", "cb_m1")
PATHS = {"eager": "torch", "triton": "triton"}  # row -> CONDORBRAIN_SCAN_BACKEND
NOT_KERNELS = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
               "aten::new_empty_strided", "aten::lift_fresh", "aten::detach", "aten::alias", "aten::set_"}


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}


class LaunchCounter(TorchDispatchMode):
    """Counts kernel-like ATen ops (see the module docstring) by name, and Triton launches by kernel name."""

    def __init__(self) -> None:
        super().__init__()
        self.aten: Counter[str] = Counter()
        self.triton: Counter[str] = Counter()
        self._in_triton = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if self._in_triton or name in NOT_KERNELS:
            return out
        flat_in = torch.utils._pytree.tree_leaves((args, kwargs))
        flat_out = torch.utils._pytree.tree_leaves(out)
        if func._schema.is_mutable or not _storages(flat_out) <= _storages(flat_in):
            self.aten[name.removeprefix("aten::")] += 1
        return out

    @contextlib.contextmanager
    def triton_launch(self, kernel_name: str) -> Iterator[None]:
        """Counts one Triton launch; the ATen ops the interpreter issues while running it are not counted."""
        self.triton[kernel_name] += 1
        self._in_triton += 1
        try:
            yield
        finally:
            self._in_triton -= 1


def count_step(model: str, layers: int, backend: str) -> dict:
    """Launches of one batch-1 streaming step (after one warm-up step) of network ``model`` on scan ``backend``."""
    previous = os.environ.get("CONDORBRAIN_SCAN_BACKEND")
    os.environ["CONDORBRAIN_SCAN_BACKEND"] = backend
    try:
        return _count_step(model, layers, backend)
    finally:
        if previous is None:
            os.environ.pop("CONDORBRAIN_SCAN_BACKEND")
        else:
            os.environ["CONDORBRAIN_SCAN_BACKEND"] = previous


def _count_step(model: str, layers: int, backend: str) -> dict:
    torch.manual_seed(0)
    net = gm.build(model, 512, layers).eval()
    stepper = EagerStep(net, 1, n_inputs=gm.N_IN)
    x = torch.randn(1, 1, gm.N_IN)
    stepper.step(x)
    counter = LaunchCounter()
    # What GraphedStep captures: the network's step on the state, with the input checks' host reads skipped as they
    # are while a CUDA graph is being captured (_checks.capturing).
    capturing, _checks.capturing = _checks.capturing, lambda: True
    try:
        with around_interpreted_launches(counter.triton_launch), counter, torch.no_grad():
            net.step(x, stepper.cache)
    finally:
        _checks.capturing = capturing
    aten, tri = sum(counter.aten.values()), sum(counter.triton.values())
    return {"model": model, "path": backend, "layers": layers, "launches": aten + tri, "aten": aten, "triton": tri,
            "per_layer": (aten + tri) / layers, "aten_ops": dict(counter.aten.most_common()),
            "triton_kernels": dict(counter.triton.most_common())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--out", default="bench-results/stream_launches.json")
    args = ap.parse_args(argv)
    rows = [count_step(m, args.layers, backend) for m in MODELS for backend in PATHS.values()]
    print(f"Kernel launches in one streaming step, batch 1, {args.layers} layers, d_model 512 (counted, not timed)")
    print(f"{'network':<8} {'path':<7} {'launches':>9} {'per layer':>10} {'ATen':>6} {'Triton':>7}  most frequent")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in list({**r["triton_kernels"], **r["aten_ops"]}.items())[:5])
        print(f"{r['model']:<8} {r['path']:<7} {r['launches']:>9} {r['per_layer']:>10.1f} {r['aten']:>6} "
              f"{r['triton']:>7}  {top}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"layers": args.layers, "batch": 1, "torch": torch.__version__,
                               "machine": platform.machine(), "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
