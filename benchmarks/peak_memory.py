"""Peak memory of one training step on the GPU path, predicted on the CPU (issue 6: peak <= 30 GiB at the seed config;
the official fused layer peaks at 38.8 GiB, ../shared/ANCHORS.md).

What ``torch.cuda.max_memory_allocated`` reports on a GPU is the largest sum of live tensor allocations. The same sum
is followed here on the CPU: a ``TorchDispatchMode`` sees every tensor an op creates (autocast's weight copies, the
Triton host code's ``torch.empty`` outputs, autograd's gradient buffers) and adds its storage's size; a finalizer on
the storage takes it off when the storage is freed. The step is ``benchmarks/gpu.py``'s training step (the anchors'
wrapper network, bf16 autocast, MSE on the last step, backward) with the Triton path of the layers
(``CONDORBRAIN_SCAN_BACKEND=triton``) run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before
triton is imported): the same host code, so the same tensors created and freed in the same order as on a GPU. The
interpreter's own scratch (numpy arrays inside a kernel) is not a torch tensor and is not counted; nor is the GPU
allocator's rounding to 512 B blocks. Garbage is collected after every launch: the interpreter holds a launch's
arguments in a reference cycle, which would keep tensors alive that a GPU run frees.

At the seed size the peak comes early in the backward: every layer's activations are alive and the top layer's
backward adds its working set. At the sizes the interpreter can run, the weights' gradients outweigh the
activations and the peak moves elsewhere, so the parts are measured apart, each as a slope per token between two
lengths (which cancels whatever does not grow with tokens):

* ``layer``: bytes alive after the forward, per layer (1 and 2 layers): the activations one layer keeps;
* ``rest``: the same outside the layers (input Linear, final norm, head);
* ``working``: with one layer, the bytes alive above what was alive when the backward started, at its largest per
  token: the working set (allocation by allocation, see ``working_per_token``).

What does not grow with tokens comes from the seed network's parameter count: the fp32 weights, their gradients,
AdamW's two moments and autocast's bf16 weight copies, 18 B per parameter (fused AdamW adds no tensors). So::

    peak(24 layers, 1024 x 120 tokens) ~ tokens * (24 * layer + rest + working) + 18 B * parameters

A prediction, not a measurement: ``benchmarks/gpu.py`` measures the real peak on a GPU (case a).

    .venv/bin/python benchmarks/peak_memory.py [--lengths 128,256] [--conv-out kept|recomputed]
        [--models cb_m2,cb_m2n] [--out bench-results/peak_memory.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: the Triton path on the CPU

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpu_models as gm
import torch
import torch.nn.functional as F
from _common import around_interpreted_launches
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

D_MODEL = 512
SEED = {"layers": 24, "batch": 1024, "L": 120}
OFFICIAL_PEAK_GIB = 38.8  # ../shared/ANCHORS.md, "train, B=1024", ref_m2_fused, one H100
BAR_PEAK_GIB = 30.0  # issue 6 (benchmarks/gpu.py's BAR_TRAIN_PEAK_GIB)
PARAM_BYTES = 4 + 4 + 8 + 2  # fp32 weight, fp32 gradient, AdamW's two fp32 moments, autocast's bf16 copy
ROWS = (("triton", "cb_m2"), ("triton + library RMSNorm", "cb_m2n"))  # (label, _gpu_models network)


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, created while the mode is on: ``live`` now, ``peak`` since :meth:`mark`, and
    ``timeline``: the live bytes after each allocation since :meth:`mark` (the first entry: at the mark)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}
        self.timeline: list[int] | None = None

    def mark(self) -> int:
        """Restart the peak at the current live bytes and start the timeline there; returns them."""
        self.peak = self.live
        self.timeline = [self.live]
        return self.live

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()  # one Python object per storage for its whole life (torch keeps it)
            key = id(storage)
            if key in inputs or key in self._sizes or storage.nbytes() == 0:
                continue  # a view or an in-place op (of a tensor made before the mode, too): nothing new
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            if self.timeline is not None:
                self.timeline.append(self.live)
            weakref.finalize(storage, self._freed, key)
        return out


@contextlib.contextmanager
def _collect_after(kernel_name: str) -> Iterator[None]:
    """Collect garbage after an interpreted Triton launch. The interpreter keeps a launch's tensor arguments in a
    reference cycle (its argument-copying closures over a dict of storages) until Python's next collection, so a
    tensor the host code deletes after a launch would otherwise outlive it, as it does not on a GPU."""
    try:
        yield
    finally:
        gc.collect()


def forward_backward_bytes(model: str, n_layers: int, batch: int, L: int) -> dict:
    """Bytes alive after the forward (above the parameters and inputs), the backward's peak above that, and the
    backward's timeline above that (bytes alive after each allocation)."""
    torch.manual_seed(0)
    net = gm.build(model, D_MODEL, n_layers).train()
    x = torch.randn(batch, L, gm.N_IN)
    y = torch.randn(batch, gm.N_OUT)
    with around_interpreted_launches(_collect_after), LiveBytes() as mem:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)[:, -1]  # (B, 8)
        loss = F.mse_loss(out.float(), y)
        after_forward = mem.mark()
        loss.backward()
        return {"after_forward": after_forward, "backward_extra": mem.peak - after_forward,
                "backward_timeline": [v - after_forward for v in mem.timeline]}


def working_per_token(short: list[int], long: list[int], d_tokens: int) -> float:
    """The backward's working set per token: the largest per-token slope of the bytes alive above the forward's, taken
    allocation by allocation (the host code makes the same allocations in the same order at both lengths).

    Not the slope of the two peaks: at the lengths the interpreter can run, the peak falls where the one layer's
    weight gradients are allocated, which do not grow with tokens, and at the other length it may fall elsewhere, so
    that slope can come out negative (it did, -0.4 GiB at the seed, with the conv output kept). At the seed's 122,880
    tokens the per-token parts are what count; the parts that do not grow with tokens are in the parameters' 18 B.
    """
    if len(short) != len(long):
        raise RuntimeError(f"the backward made {len(short)} allocations at one length and {len(long)} at the other: "
                           "the timelines do not line up, so no per-allocation slope can be taken")
    return max((b - a) / d_tokens for a, b in zip(short, long, strict=True))


def anchors_norm_cuda_extra(tokens: int = 4096) -> float:
    """Bytes a token that one of the anchors' four-op RMSNorms keeps for the backward under CUDA's autocast beyond
    what it keeps under the CPU's, up to the bf16 copy the next Linear takes (and keeps).

    This prediction runs on the CPU, and the two autocasts differ on these ops: CUDA's runs ``pow`` and ``rsqrt`` in
    float32 (its float32 list), so ``x`` is copied to float32 for ``pow`` (which keeps it) and ``x * rsqrt`` is
    float32 (kept by the product with ``w``); the CPU's runs them in bf16. CUDA's rules are applied here by hand (an
    autocast for CUDA does nothing to CPU tensors). The library's RMSNorm is one op each way and has no such gap.
    """
    norm = gm.RMSNorm(D_MODEL)

    def kept(fn) -> float:
        x = torch.randn(tokens, D_MODEL, dtype=torch.bfloat16, requires_grad=True)
        with LiveBytes() as mem:
            out = fn(x)  # noqa: F841 (alive until the count: the in-projection keeps it)
            return mem.live / tokens

    def cpu(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return norm(x).to(torch.bfloat16)

    def cuda(x: torch.Tensor) -> torch.Tensor:
        r = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + norm.eps)  # pow, rsqrt: float32
        return (x * r * norm.w).to(torch.bfloat16)  # float32 by promotion; the in-projection's bf16 copy

    return kept(cuda) - kept(cpu)


def measure(label: str, model: str, lengths: tuple[int, int], batch: int) -> dict:
    t0 = time.perf_counter()
    at = {(n, L): forward_backward_bytes(model, n, batch, L) for n in (1, 2) for L in lengths}
    d_tokens = batch * (lengths[1] - lengths[0])

    def slope(n: int, key: str) -> float:
        return (at[n, lengths[1]][key] - at[n, lengths[0]][key]) / d_tokens

    layer = slope(2, "after_forward") - slope(1, "after_forward")
    rest = slope(1, "after_forward") - layer
    working = working_per_token(at[1, lengths[0]]["backward_timeline"], at[1, lengths[1]]["backward_timeline"],
                                d_tokens)
    params = sum(p.numel() for p in gm.build(model, D_MODEL, SEED["layers"]).parameters())
    tokens = SEED["batch"] * SEED["L"]
    fixed = PARAM_BYTES * params
    seed = tokens * (SEED["layers"] * layer + rest + working) + fixed
    # the anchors' norms (a pre-norm a layer and the final one) keep more on a GPU: see anchors_norm_cuda_extra
    gpu_extra = (SEED["layers"] + 1) * tokens * anchors_norm_cuda_extra() if model == "cb_m2" else 0.0
    return {"path": label, "model": model, "measured": {f"{n} layers, L {L}": {k: x for k, x in v.items() if k != "backward_timeline"}
                                                      for (n, L), v in at.items()},
            "layer_bytes_per_token": layer, "rest_bytes_per_token": rest, "working_bytes_per_token": working,
            "seed_params": params, "seed_activations_gib": tokens * (SEED["layers"] * layer + rest) / 2**30,
            "seed_working_gib": tokens * working / 2**30, "seed_fixed_gib": fixed / 2**30,
            "seed_peak_gib": seed / 2**30, "seed_cuda_autocast_extra_gib": gpu_extra / 2**30,
            "seed_peak_gib_on_a_gpu": (seed + gpu_extra) / 2**30, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="128,256", help="two sequence lengths (multiples of the chunk, 64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(m for _, m in ROWS),
                    help="comma-separated subset of the networks (cb_m2: the anchors' norm; cb_m2n: the library's)")
    ap.add_argument("--conv-out", choices=("kept", "recomputed"), default="kept",
                    help="the fused layer's conv output kept for the backward (fused._SAVE_CONV_OUT, the default) "
                    "or recomputed there")
    ap.add_argument("--out", default="bench-results/peak_memory.json")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if bad := sorted(set(models) - {m for _, m in ROWS}):
        ap.error(f"unknown model(s) {bad}; choose from {','.join(m for _, m in ROWS)}")
    lengths = tuple(int(s) for s in args.lengths.split(","))
    if len(lengths) != 2 or lengths[0] >= lengths[1]:
        ap.error("--lengths takes two increasing lengths")
    torch.set_num_threads(args.threads)
    os.environ["CONDORBRAIN_SCAN_BACKEND"] = "triton"
    from condorbrain.ssm.triton import fused

    fused._SAVE_CONV_OUT = args.conv_out == "kept"

    rows = [measure(label, model, lengths, args.batch) for label, model in ROWS if model in models]
    print(f"Training step peak, predicted from the tensors alive on the CPU (Triton path under the interpreter, "
          f"bf16 autocast), d_model {D_MODEL}; per token from L = {lengths[0]} and {lengths[1]}, batch {args.batch}")
    print(f"{'path':<26} {'B/tok/layer':>12} {'working B/tok':>14} {'seed acts GiB':>14} {'seed working GiB':>17} "
          f"{'params+optim GiB':>17} {'seed peak GiB':>14} {'CUDA autocast +GiB':>19} {'on a GPU GiB':>13}")
    for r in rows:
        print(f"{r['path']:<26} {r['layer_bytes_per_token']:>12,.0f} {r['working_bytes_per_token']:>14,.0f} "
              f"{r['seed_activations_gib']:>14.1f} {r['seed_working_gib']:>17.1f} {r['seed_fixed_gib']:>17.1f} "
              f"{r['seed_peak_gib']:>14.1f} {r['seed_cuda_autocast_extra_gib']:>19.1f} "
              f"{r['seed_peak_gib_on_a_gpu']:>13.1f}")
    print(f"\nSeed config: {SEED['layers']} layers, batch {SEED['batch']}, L {SEED['L']}. Predicted, not measured "
          f"(benchmarks/gpu.py case a measures it on a GPU). The official fused layer's measured peak: "
          f"{OFFICIAL_PEAK_GIB} GiB. Bar: <= {BAR_PEAK_GIB:.0f} GiB.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"d_model": D_MODEL, "lengths": lengths, "batch": args.batch,
                   "autocast": "bfloat16", "conv_out": args.conv_out, "torch": torch.__version__,
                   "machine": platform.machine()},
        "seed": SEED, "results": rows, "official_peak_gib": OFFICIAL_PEAK_GIB, "bar_peak_gib": BAR_PEAK_GIB},
        indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
