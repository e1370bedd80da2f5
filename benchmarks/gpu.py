"""GPU benchmark, side by side in one process on one card (issue 6, sections 1, 3, 4): this project's Mamba-2 and
Mamba layers (Mamba-2 also with the library's own RMSNorm, ``cb_m2n``: the network as the library builds it), the
official ``mamba_ssm`` Mamba2 (when importable) and a Transformer (torch SDPA), each inside the anchors' wrapper
network (Linear(24 -> 512), N pre-norm residual blocks, RMSNorm, Linear(512 -> 8), MSE on the last
step; see ``_gpu_models.py``).

Cases (the seed config: d_model 512, 24 layers, lookback 120, batch 1024, bf16 autocast, fused AdamW):

  a  training step (forward, MSE on the last step, backward, AdamW): tokens/s, samples/s, peak GiB; launched op by op
     ("eager") and, for this project's layers, the whole step captured in a CUDA graph and replayed ("cuda-graph":
     what of the step is host time)
  b  inference forward (no grad): samples/s, launched op by op ("eager") and replayed from a CUDA graph
     (``condorbrain.ssm.graph.GraphedForward``, "cuda-graph")
  c  streaming: one new bar through the 24 layers with carried state, batch 1 and 1024, eager and captured in a CUDA
     graph (``condorbrain.ssm.graph``), bf16 weights and states: latency per step
  d  long sequences: L = 512 .. 32768 at 262,144 tokens per training step, 4 layers: tokens/s, per-token cost / L=512

Floors first: the card's matrix throughput (a large bf16 matmul) and memory bandwidth (a large copy). Every figure is
printed beside both: the time its FLOPs would take at the matmul rate, and its bytes at the copy rate, as % of the
measured time (100% = at the floor). The FLOPs and bytes are analytic (``_gpu_models.py``: Linears' matmul FLOPs plus
the mixing, x3 for a training step; bytes a lower bound: parameters, optimizer traffic, activations once per pass).

Timing: CUDA events around each call after warm-up (perf_counter on the CPU); the median of the repeats is reported
(the fastest beside it). Inputs are random (never all zero). A row that runs out of memory is recorded as
"out of memory" and the others still run. Rows print as they finish and the JSON is rewritten after each, so a run
killed at its time limit keeps what it measured; with ``--deadline-s`` no row starts after that many seconds (the
rest are recorded as skipped), models run in the order given (the library's network and its peers first).

Bars beside each figure: training >= 1,000,000 tokens/s and peak <= 30 GiB; inference >= 25,000 samples/s;
streaming batch 1 <= 0.2 ms; per-token cost flat within 15% across L.

    MAMBA_SSM_SRC=.anchors python benchmarks/gpu.py --out $OUT/gpu.json          # on the GPU machine
    python benchmarks/gpu.py --quick --deadline-s 400 --models cb_m2n,ref_m2,attn  # start no row after 400 s
    python benchmarks/gpu.py --case a,c --quick
    python benchmarks/gpu.py --device cpu --tiny                                    # smoke test of the harness
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpu_models as gm  # noqa: E402
from _common import device_seconds  # noqa: E402

from condorbrain.ssm.graph import EagerStep, GraphedStep, graph_unavailable_reason  # noqa: E402

try:  # an A/B against an older revision's library (PYTHONPATH=.baseline/src): its graph module may lack it
    from condorbrain.ssm.graph import GraphedForward
except ImportError:
    GraphedForward = None

CASES = {"a": "training step", "b": "inference forward", "c": "streaming step", "d": "long sequences"}
# In the order they run: the library's network and its two peers first, so that a run cut short by its time budget
# still has the comparison the bars are about.
TRAIN_MODELS = ("cb_m2n", "ref_m2", "attn", "cb_m2", "cb_m1")
STREAM_MODELS = ("cb_m2n", "ref_m2", "cb_m2", "cb_m1")
MODEL_NAMES = {"cb_m2": "condorbrain Mamba2", "cb_m2n": "condorbrain Mamba2+norm",
               "cb_m1": "condorbrain Mamba", "ref_m2": "official mamba_ssm Mamba2", "attn": "Transformer (SDPA)"}
BAR_TRAIN_TOKENS_PER_S = 1_000_000
BAR_TRAIN_PEAK_GIB = 30.0
BAR_INFER_SAMPLES_PER_S = 25_000
BAR_STREAM_B1_MS = 0.2
BAR_FLAT_RATIO = 1.15
BARS = {"train_tokens_per_s": BAR_TRAIN_TOKENS_PER_S, "train_peak_gib": BAR_TRAIN_PEAK_GIB,
        "infer_samples_per_s": BAR_INFER_SAMPLES_PER_S, "stream_batch1_ms": BAR_STREAM_B1_MS,
        "long_flat_ratio": BAR_FLAT_RATIO}


class Skip(Exception):
    """A row that cannot run here (a peer not installed, a GPU-only path on the CPU); the reason is recorded."""


@dataclass(frozen=True)
class Setup:
    """Sizes and repetitions of one run."""

    device: str
    tiny: bool
    d: int
    layers: int
    L: int
    batch: int
    stream_batches: tuple[int, ...]
    long_lengths: tuple[int, ...]
    long_tokens: int
    long_layers: int
    warmup: int
    reps: int
    stream_warmup: int
    stream_reps: int
    long_reps: int

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def sizes(self) -> gm.Sizes:
        return gm.TINY if self.tiny else gm.FULL

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: bf16 autocast and bf16 streaming weights on CUDA, float32 on the CPU."""
        return torch.bfloat16 if self.cuda else torch.float32

    @property
    def elem_bytes(self) -> int:
        return 2 if self.cuda else 4


def make_setup(device: str, tiny: bool, quick: bool) -> Setup:
    if tiny:
        return Setup(device, True, d=16, layers=1, L=8, batch=2, stream_batches=(1, 2), long_lengths=(8, 16, 32, 64),
                     long_tokens=128, long_layers=1, warmup=1, reps=1, stream_warmup=1, stream_reps=2, long_reps=1)
    return Setup(device, False, d=512, layers=24, L=120, batch=1024, stream_batches=(1, 1024),
                 long_lengths=(512, 2048, 8192, 32768), long_tokens=262_144, long_layers=4, warmup=3,
                 reps=5 if quick else 10, stream_warmup=10, stream_reps=50 if quick else 200,
                 long_reps=3 if quick else 5)


class Timer:
    """Median (and fastest) seconds of ``fn`` after warm-up: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any], warmup: int, reps: int) -> tuple[float, float]:
        for _ in range(warmup):
            fn()
        self.sync()
        times = device_seconds(fn, self.device, reps)
        return statistics.median(times), min(times)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


# --- floors -------------------------------------------------------------------------------------------------------
def measure_floors(setup: Setup, timer: Timer) -> dict[str, Any]:
    """Matrix throughput (FLOP/s of an n x n x n matmul) and memory bandwidth (bytes/s of a copy, read + write)."""
    dev, dt = timer.device, setup.dtype
    n = 256 if setup.tiny else 8192
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dt, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dt, generator=g)
    t_mm, _ = timer(lambda: a @ b, 2 if setup.tiny else 5, 3 if setup.tiny else 20)
    numel = (2**22 if setup.tiny else 2**30) // setup.elem_bytes  # 4 MiB / 1 GiB
    src = torch.randn(numel, device=dev, dtype=dt, generator=g)
    dst = torch.empty_like(src)
    t_cp, _ = timer(lambda: dst.copy_(src), 2 if setup.tiny else 5, 3 if setup.tiny else 20)
    return {"matmul_flops_per_s": 2 * n**3 / t_mm, "matmul_shape": [n, n, n], "matmul_dtype": str(dt),
            "copy_bytes_per_s": 2 * numel * setup.elem_bytes / t_cp, "copy_bytes": numel * setup.elem_bytes}


def floor_figures(seconds: float, flops: float, nbytes: float, floors: dict[str, Any]) -> dict[str, float]:
    """The FLOPs and bytes of a measured call, and the time each floor implies as % of the measured time."""
    t_flops = flops / floors["matmul_flops_per_s"]
    t_bytes = nbytes / floors["copy_bytes_per_s"]
    return {"flops": flops, "bytes": nbytes, "matmul_floor_pct": 100 * t_flops / seconds,
            "bandwidth_floor_pct": 100 * t_bytes / seconds}


# --- rows ---------------------------------------------------------------------------------------------------------
def build_model(name: str, setup: Setup, n_layers: int) -> torch.nn.Module:
    """The wrapper network with mixer ``name`` on the device (float32 weights); Skip where it cannot run here."""
    if name == "ref_m2" and not setup.cuda:
        raise Skip("the official mamba_ssm Mamba2 runs Triton kernels: CUDA only")
    try:
        net = gm.build(name, setup.d, n_layers, setup.sizes)
    except ImportError as err:
        raise Skip(str(err)) from None
    return net.to(setup.device)


def train_step(name: str, setup: Setup, L: int, batch: int, n_layers: int,
               path: str = "eager") -> tuple[Callable[[], None], int]:
    """(one training step of the wrapper with mixer ``name``: bf16 autocast (CUDA), MSE on the last step, fused
    AdamW; its parameter count). Random inputs of (batch, L, 24). ``path`` "eager": launched op by op;
    "cuda-graph": the whole step (forward, backward, AdamW) captured once and replayed (static inputs, a capturable
    AdamW, autocast's weight cache off), which takes the host out of the step: the two rows side by side say how
    much of the eager step is the GPU waiting for Python. Skip where the graph cannot be captured here."""
    device = torch.device(setup.device)
    graphed = path == "cuda-graph"
    if graphed and (reason := graph_unavailable_reason(None, device)):
        raise Skip(reason)
    torch.manual_seed(0)
    net = build_model(name, setup, n_layers).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True, capturable=graphed)
    x = torch.randn(batch, L, gm.N_IN, device=setup.device)  # (B, L, 24)
    y = torch.randn(batch, gm.N_OUT, device=setup.device)
    params = sum(p.numel() for p in net.parameters())

    def update() -> None:  # what the graph captures: the step but for freeing the gradients
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.cuda, cache_enabled=not graphed):
            out = net(x)[:, -1]  # (B, 8)
        F.mse_loss(out.float(), y).backward()
        opt.step()

    def step() -> None:
        update()
        opt.zero_grad(set_to_none=True)

    if not graphed:
        return step, params
    # PyTorch's whole-network capture: warm-up on a side stream (the allocator, cuBLAS and autotuners settle), the
    # gradients None before the capture so that the captured backward allocates them from the graph's pool
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        update()
    return graph.replay, params


def infer_step(name: str, setup: Setup, path: str = "eager") -> tuple[Callable[[], None], int]:
    """(a forward of the wrapper over random (batch, L, 24), no grad, bf16 autocast on CUDA, launched op by op
    ("eager") or replayed from a CUDA graph ("cuda-graph": ``condorbrain.ssm.graph.GraphedForward``); its parameter
    count). Skip where the graph cannot be captured here."""
    if path == "cuda-graph" and (reason := graph_unavailable_reason(None, torch.device(setup.device))):
        raise Skip(reason)
    if path == "cuda-graph" and GraphedForward is None:
        raise Skip("this revision of the library has no condorbrain.ssm.graph.GraphedForward")
    torch.manual_seed(0)
    net = build_model(name, setup, setup.layers).eval()
    x = torch.randn(setup.batch, setup.L, gm.N_IN, device=setup.device)
    params = sum(p.numel() for p in net.parameters())
    if path == "cuda-graph":
        graphed = GraphedForward(net, tuple(x.shape), autocast_dtype=torch.bfloat16)
        return (lambda: graphed(x)), params
    device_type = torch.device(setup.device).type

    @torch.no_grad()
    def fwd() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=setup.cuda):
            net(x)

    return fwd, params


def stream_step(name: str, setup: Setup, batch: int, path: str) -> tuple[Callable[[], Any], int]:
    """(one streaming step through every layer, weights and states in the compute dtype, eager or graph-replayed;
    the parameter count). Skip where the path cannot run here."""
    if path == "cuda-graph" and (reason := graph_unavailable_reason(None, torch.device(setup.device))):
        raise Skip(reason)
    torch.manual_seed(0)
    net = build_model(name, setup, setup.layers).to(setup.dtype).eval()
    make = GraphedStep if path == "cuda-graph" else EagerStep
    stepper = make(net, batch, dtype=setup.dtype, n_inputs=gm.N_IN)
    x = torch.randn(batch, 1, gm.N_IN, device=setup.device, dtype=setup.dtype)
    return (lambda: stepper.step(x)), sum(p.numel() for p in net.parameters())


def train_row(name: str, setup: Setup, timer: Timer, floors: dict[str, Any], L: int, batch: int, n_layers: int,
              reps: int, path: str = "eager") -> dict[str, Any]:
    """Timing of :func:`train_step`: tokens/s, samples/s, peak memory."""
    step, params = train_step(name, setup, L, batch, n_layers, path)
    if setup.cuda:
        torch.cuda.reset_peak_memory_stats(timer.device)
    sec, fastest = timer(step, setup.warmup, reps)
    cost = gm.model_cost(name, setup.d, n_layers, L, setup.sizes)
    flops, nbytes = gm.train_step_cost(cost, params, batch * L, setup.elem_bytes)
    return {"params": params, "L": L, "batch": batch, "layers": n_layers, "ms": sec * 1e3, "ms_fastest": fastest * 1e3,
            "tokens_per_s": batch * L / sec, "samples_per_s": batch / sec,
            "peak_gib": torch.cuda.max_memory_allocated(timer.device) / 2**30 if setup.cuda else None,
            **floor_figures(sec, flops, nbytes, floors)}


def infer_row(name: str, setup: Setup, timer: Timer, floors: dict[str, Any], path: str = "eager") -> dict[str, Any]:
    """Timing of :func:`infer_step`: samples/s."""
    fwd, params = infer_step(name, setup, path)
    sec, fastest = timer(fwd, setup.warmup, setup.reps * 2)
    cost = gm.model_cost(name, setup.d, setup.layers, setup.L, setup.sizes)
    flops, nbytes = gm.forward_cost(cost, params, setup.batch * setup.L, setup.elem_bytes)
    return {"params": params, "L": setup.L, "batch": setup.batch, "layers": setup.layers, "path": path,
            "ms": sec * 1e3, "ms_fastest": fastest * 1e3, "samples_per_s": setup.batch / sec,
            "tokens_per_s": setup.batch * setup.L / sec, **floor_figures(sec, flops, nbytes, floors)}


def stream_row(name: str, setup: Setup, timer: Timer, floors: dict[str, Any], batch: int,
               path: str) -> dict[str, Any]:
    """Timing of :func:`stream_step`: latency per step."""
    step, params = stream_step(name, setup, batch, path)
    sec, fastest = timer(step, setup.stream_warmup, setup.stream_reps)
    cost = gm.model_cost(name, setup.d, setup.layers, 1, setup.sizes, streaming=True)
    flops, nbytes = gm.stream_step_cost(cost, params, batch, setup.elem_bytes)
    return {"params": params, "batch": batch, "layers": setup.layers, "path": path, "ms": sec * 1e3,
            "ms_fastest": fastest * 1e3, "steps_per_s": 1 / sec, "stream_bars_per_s": batch / sec,
            **floor_figures(sec, flops, nbytes, floors)}


def guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one row: out of memory, a skip or an error is recorded instead of ending the run."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    except Skip as why:
        return {"skipped": str(why)}
    except Exception as err:  # noqa: BLE001  (one broken row must not lose the others' figures)
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    finally:
        if torch.cuda.is_available():  # hand the row's memory back before the next (a full collection: ~0.2 s)
            gc.collect()
            torch.cuda.empty_cache()


# --- table --------------------------------------------------------------------------------------------------------
def _bar(value: float | None, limit: float, at_most: bool, judged: bool) -> dict[str, Any]:
    met = None if value is None or not judged else (value <= limit if at_most else value >= limit)
    return {"bar": limit, "at_most": at_most, "met": met}


def _bar_text(bar: dict[str, Any]) -> str:
    sign = "<=" if bar["at_most"] else ">="
    verdict = {True: "met", False: "NOT met", None: "not judged"}[bar["met"]]
    return f"[bar {sign} {bar['bar']:,}: {verdict}]"


def _floors_text(r: dict[str, Any]) -> str:
    return f"{r['flops'] / 1e9:>10,.2f} {r['matmul_floor_pct']:>7.1f}% {r['bytes'] / 1e9:>9,.3f} " \
           f"{r['bandwidth_floor_pct']:>7.1f}%"


FLOOR_HEAD = f"{'GFLOP':>10} {'%mm':>8} {'GB':>9} {'%bw':>8}"


def _row_name(r: dict[str, Any]) -> str:
    return MODEL_NAMES[r["model"]] + (" (fused)" if r.get("fused") else "")


def print_head(case: str, cols: list[tuple[str, str, str]]) -> None:
    """A case's table head: the model, ``cols`` (json key, header, format), the floors; rows follow as they finish."""
    print(f"\n({case}) {CASES[case]}")
    print(f"{'model':<32} " + " ".join(f"{h:>12}" for _, h, _ in cols) + f" {FLOOR_HEAD}", flush=True)


def print_row(r: dict[str, Any], cols: list[tuple[str, str, str]]) -> None:
    label = _row_name(r) + (f" {r['path']}" if "path" in r else "")
    if "error" in r or "skipped" in r:
        print(f"{label:<32} {r.get('error') or 'skipped: ' + r['skipped']}", flush=True)
        return
    cells = " ".join(f"{'-' if r.get(k) is None else format(r[k], f):>12}" for k, _, f in cols)
    bars = " ".join(_bar_text(b) for b in r.get("bars", {}).values())
    print(f"{label:<32} {cells} {_floors_text(r)} {bars}", flush=True)


# --- cases --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """When the run stops starting rows (``--deadline-s``; None: never). A GPU session's device time is scarce and a
    command past its limit is killed: rows past the deadline are recorded as skipped, and the JSON written after
    every row keeps what was measured."""

    deadline: float | None  # time.monotonic() value
    seconds: float | None

    @classmethod
    def start(cls, seconds: float | None) -> Budget:
        return cls(None if seconds is None else time.monotonic() + seconds, seconds)

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def reason(self) -> str:
        return f"time budget (--deadline-s {self.seconds:g}) spent before this row started"


@dataclass(frozen=True)
class Run:
    """What every case needs: sizes, timer, floors, the models in the order they run, the time budget."""

    setup: Setup
    timer: Timer
    floors: dict[str, Any]
    models: tuple[str, ...]
    budget: Budget

    def row(self, fn: Callable[..., dict[str, Any]], name: str, *args: Any) -> dict[str, Any]:
        """``guarded(fn, name, setup, timer, floors, *args)``, or skipped once the budget is spent."""
        if self.budget.spent():
            return {"skipped": self.budget.reason}
        return guarded(fn, name, self.setup, self.timer, self.floors, *args)


def case_train(run: Run) -> Iterator[dict[str, Any]]:
    s = run.setup
    for name in run.models:
        # the captured step for this project's layers only (whether our step waits on the host; the peers' rows
        # would cost device time the runs are short of)
        for path in ("eager", "cuda-graph") if name.startswith("cb_") else ("eager",):
            r = {"model": name, "path": path, **run.row(train_row, name, s.L, s.batch, s.layers, s.reps, path)}
            if "ms" in r:
                r["bars"] = {"tokens_per_s": _bar(r["tokens_per_s"], BAR_TRAIN_TOKENS_PER_S, False, not s.tiny),
                             "peak_gib": _bar(r["peak_gib"], BAR_TRAIN_PEAK_GIB, True, not s.tiny)}
            yield r


def case_infer(run: Run) -> Iterator[dict[str, Any]]:
    for name in run.models:
        for path in ("eager", "cuda-graph"):
            r = {"model": name, "path": path, **run.row(infer_row, name, path)}
            if "ms" in r:
                r["bars"] = {"samples_per_s": _bar(r["samples_per_s"], BAR_INFER_SAMPLES_PER_S, False,
                                                   not run.setup.tiny)}
            yield r


def case_stream(run: Run) -> Iterator[dict[str, Any]]:
    for name in (m for m in run.models if m in STREAM_MODELS):
        for batch in run.setup.stream_batches:
            for path in ("eager", "cuda-graph"):
                r = {"model": name, "batch": batch, "path": path, **run.row(stream_row, name, batch, path)}
                if "ms" in r and batch == 1:
                    r["bars"] = {"ms": _bar(r["ms"], BAR_STREAM_B1_MS, True, not run.setup.tiny)}
                yield r


def case_long(run: Run) -> Iterator[dict[str, Any]]:
    s = run.setup
    for name in run.models:
        base = None
        for L in s.long_lengths:
            batch = s.long_tokens // L
            r = {"model": name, "L": L, "batch": batch,
                 **run.row(train_row, name, L, batch, s.long_layers, s.long_reps)}
            if "ms" in r:
                per_token = r["ms"] / (batch * L)
                base = per_token if L == s.long_lengths[0] else base
                if base is not None:
                    r["per_token_cost_vs_first_L"] = per_token / base
                    r["bars"] = {"per_token_cost_vs_first_L": _bar(r["per_token_cost_vs_first_L"], BAR_FLAT_RATIO,
                                                                   True, not s.tiny)}
            yield r


CASE_FNS: dict[str, Callable[[Run], Iterator[dict[str, Any]]]] = {
    "a": case_train, "b": case_infer, "c": case_stream, "d": case_long}
CASE_COLS = {
    "a": [("ms", "ms/step", ",.2f"), ("tokens_per_s", "tokens/s", ",.0f"), ("samples_per_s", "samples/s", ",.0f"),
          ("peak_gib", "peak GiB", ".2f")],
    "b": [("ms", "ms", ",.2f"), ("samples_per_s", "samples/s", ",.0f"), ("tokens_per_s", "tokens/s", ",.0f")],
    "c": [("batch", "batch", "d"), ("ms", "ms/step", ",.4f"), ("ms_fastest", "(fastest)", ",.4f")],
    "d": [("L", "L", ",d"), ("batch", "batch", ",d"), ("tokens_per_s", "tokens/s", ",.0f"),
          ("per_token_cost_vs_first_L", "cost/L0", ".3f"), ("peak_gib", "peak GiB", ".2f")],
}


def environment(setup: Setup) -> dict[str, Any]:
    import condorbrain

    # the library's source in use (an A/B run points PYTHONPATH at another revision's, see gpu_checks.sh)
    env: dict[str, Any] = {"torch": torch.__version__, "device": setup.device,
                           "condorbrain": str(Path(condorbrain.__file__).resolve().parent)}
    if setup.cuda:
        env["gpu"] = torch.cuda.get_device_name(torch.device(setup.device))
    try:
        _, env["mamba_ssm_fused"] = gm.official_mamba2()
        env["mamba_ssm"] = "importable" + (", fused path (causal_conv1d)" if env["mamba_ssm_fused"] else
                                           ", no causal_conv1d: unfused path")
    except ImportError as err:
        env["mamba_ssm"], env["mamba_ssm_fused"] = str(err), False
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--device", default="cuda", help="cuda (cuda:N) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test of the harness in seconds")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    ap.add_argument("--models", default=",".join(TRAIN_MODELS),
                    help=f"comma-separated, in the order they run (default: {','.join(TRAIN_MODELS)})")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no row after this many seconds (later rows are recorded as skipped)")
    ap.add_argument("--settings", default="default", metavar="VARIANT",
                    help="the library's kernel settings for the whole run, written as benchmarks/gpu_sweep.py's "
                         "variants (e.g. ssd._SCAN_SUMSQ_HEADS=2+fused._CONV_BC=64); default: the library's own")
    ap.add_argument("--out", default="bench-results/gpu.json")
    args = ap.parse_args(argv)
    cases = [c for c in args.case.split(",") if c]
    if bad := sorted(set(cases) - set(CASES)):
        ap.error(f"unknown case(s) {bad}; choose from {','.join(CASES)}")
    models = tuple(m for m in args.models.split(",") if m)
    if bad := sorted(set(models) - set(TRAIN_MODELS)):
        ap.error(f"unknown model(s) {bad}; choose from {','.join(TRAIN_MODELS)}")
    with contextlib.ExitStack() as stack:
        if args.settings != "default":
            import gpu_sweep  # here, not at the top: it imports this module

            stack.enter_context(gpu_sweep.applied(args.settings))
        return _run(args, cases, models)


def _run(args: argparse.Namespace, cases: list[str], models: tuple[str, ...]) -> int:
    """main's measurements, under its settings."""
    budget = Budget.start(args.deadline_s)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (no GPU, or a CPU-only torch build); "
                         "use --device cpu --tiny for a smoke test")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    setup = make_setup(args.device, args.tiny, args.quick)
    timer = Timer(device)
    env = {**environment(setup), "settings": args.settings}
    print("; ".join(f"{k} {v}" for k, v in env.items() if k != "mamba_ssm_fused"))
    print(f"d_model {setup.d}, {setup.layers} layers, lookback {setup.L}, batch {setup.batch}; "
          f"{'bf16 autocast, CUDA events' if setup.cuda else 'float32, perf_counter'}; median of repeats"
          + ("; TINY smoke sizes: bars not judged" if setup.tiny else ""))

    floors = measure_floors(setup, timer)
    print(f"floors: matmul {floors['matmul_flops_per_s'] / 1e12:,.1f} TFLOP/s ({floors['matmul_dtype']}, "
          f"{'x'.join(map(str, floors['matmul_shape']))}); copy {floors['copy_bytes_per_s'] / 1e9:,.0f} GB/s (read + "
          f"write of {floors['copy_bytes'] / 2**20:,.0f} MiB)")
    print("%mm / %bw: the time the row's FLOPs / bytes take at the matmul / copy floor, as % of its measured time")

    out = Path(args.out)
    results: dict[str, Any] = {}
    run = Run(setup, timer, floors, models, budget)

    def save() -> None:  # after every row: a run killed at its time limit keeps what it measured
        write_json(out, {"config": {**dataclasses.asdict(setup), **env, "models": list(models)}, "floors": floors,
                         "cases": results, "bars": BARS})

    for case in cases:
        print_head(case, CASE_COLS[case])
        rows: list[dict[str, Any]] = []
        results[case] = {"title": CASES[case], "rows": rows}
        for r in CASE_FNS[case](run):
            if r["model"] == "ref_m2":
                r["fused"] = env["mamba_ssm_fused"]
            rows.append(r)
            print_row(r, CASE_COLS[case])
            save()
    save()
    print(f"\nwrote {out}")
    return 0


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)

if __name__ == "__main__":
    sys.exit(main())
