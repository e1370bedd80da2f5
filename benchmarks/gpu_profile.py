"""Where the time of a step goes, kernel by kernel (issue 6): torch.profiler over the steps ``benchmarks/gpu.py``
times, at its sizes, so that a session with a GPU leaves a breakdown behind as well as the totals.

For each model (default: ``cb_m2n``, the library's network, and the official ``ref_m2`` when importable) and each
phase (a training step at the seed config, an inference forward, a streaming step at batch 1 in a CUDA graph, and
"long": a training step at case (d)'s longest length, L 32k at batch 8 on 4 layers, where the per-token cost bar is
decided: what grows with the number of chunks shows beside the seed's "train"), after
warm-up, ``--steps`` steps are profiled. Printed per phase: the device time per step, split into kinds (matmuls,
this project's Triton kernels, other Triton kernels, elementwise/reductions, copies, optimizer, other), and the
``--top`` kernels with their calls and microseconds per step and their share; on a GPU also the device timeline:
the time from the profiled steps' first kernel to their last, and how much of it no kernel was running (the GPU
waiting on the host: launches, Python, a host sync), with the largest gaps and the kernels around them. On the CPU
(``--device cpu --tiny``, a smoke test of the script) the CPU time of the operators is reported instead.

    python3 benchmarks/gpu_profile.py --out $OUT/gpu_profile.json                      # on the GPU machine
    python benchmarks/gpu_profile.py --device cpu --tiny --models cb_m2n
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu  # the timed steps, built the same way

PHASES = ("train", "infer", "stream", "long")
# Kinds of kernels, by name (first match wins), after this project's own (its Triton modules' kernels, by exact name:
# the official kernels have similar ones).
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "sm90_", "sm80_", "ampere_", "hopper_", "nvjet", "aten::mm",
                "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("optimizer", ("multi_tensor_apply", "fused_adam", "adam", "foreach")),
    ("copy", ("copy", "memcpy", "memset", "cat", "to_copy", "fill")),
    ("elementwise/reduction", ("elementwise", "reduce", "vectorized", "aten::", "softmax", "gelu", "silu", "mul",
                               "add", "sum")),
)


@functools.cache
def our_kernels() -> frozenset[str]:
    """Names of this project's Triton kernels (empty without triton)."""
    try:
        from triton.runtime.jit import KernelInterface

        from condorbrain.ssm.triton import fused, selective, ssd, step
    except ImportError:
        return frozenset()
    return frozenset(name for mod in (fused, selective, ssd, step) for name, obj in vars(mod).items()
                     if isinstance(obj, KernelInterface))


def kind_of(name: str) -> str:
    """The kind of a kernel (or, on the CPU, of an operator) by its name."""
    if name in our_kernels():
        return "condorbrain triton"
    low = name.lower()
    if "triton" in low or name.startswith("_"):
        return "other triton"
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def phase_fn(phase: str, model: str, setup: gpu.Setup) -> Callable[[], Any]:
    if phase == "train":
        return gpu.train_step(model, setup, setup.L, setup.batch, setup.layers)[0]
    if phase == "infer":
        return gpu.infer_step(model, setup)[0]
    if phase == "long":
        L = setup.long_lengths[-1]
        return gpu.train_step(model, setup, L, setup.long_tokens // L, setup.long_layers)[0]
    return gpu.stream_step(model, setup, 1, "cuda-graph" if setup.cuda else "eager")[0]


def device_idle(kernels: list[tuple[float, float, str]], steps: int, top: int = 5) -> dict[str, Any]:
    """The device timeline of ``kernels`` ((start us, end us, name), the profiled steps' kernels in any order): per
    step, the span from the first start to the last end, the time some kernel was running (the union of the
    intervals: concurrent kernels count once) and the rest, idle; and the ``top`` largest idle gaps, each with the
    kernels that end before it and start after it."""
    if not kernels:
        return {"span_us_per_step": 0.0, "busy_us_per_step": 0.0, "idle_us_per_step": 0.0, "gaps": []}
    ordered = sorted(kernels)
    busy, gaps = 0.0, []
    cur_start, cur_end, cur_name = ordered[0]
    for start, end, name in ordered[1:]:
        if start > cur_end:  # a gap: nothing runs from cur_end to start
            busy += cur_end - cur_start
            gaps.append({"us": start - cur_end, "after": cur_name, "before": name})
            cur_start, cur_end, cur_name = start, end, name
        elif end > cur_end:
            cur_end, cur_name = end, name
    busy += cur_end - cur_start
    span = cur_end - ordered[0][0]
    gaps.sort(key=lambda g: -g["us"])
    return {"span_us_per_step": span / steps, "busy_us_per_step": busy / steps,
            "idle_us_per_step": (span - busy) / steps, "gaps": gaps[:top]}


def launchers(events: Any, steps: int, top: int) -> list[dict[str, Any]]:
    """Who launches the small kernels: each kernel that is neither ours nor a matmul, counted by the operator that
    launched it (the innermost, and its outermost ancestor), calls a step, the most first."""
    calls: collections.Counter = collections.Counter()
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        for k in e.kernels:
            if kind_of(k.name) in ("condorbrain triton", "matmul"):
                continue
            root = e
            while root.cpu_parent is not None:
                root = root.cpu_parent
            calls[(k.name[:48], e.name, root.name)] += 1
    return [{"kernel": k, "op": op, "under": root, "calls_per_step": n / steps}
            for (k, op, root), n in calls.most_common(top)]


def profile_phase(fn: Callable[[], Any], steps: int, warmup: int, cuda: bool, top: int) -> dict[str, Any]:
    """Kernels (CUDA) or operators (CPU) of ``steps`` calls of ``fn`` after ``warmup``: per-step times by kind and
    the ``top`` names."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        if cuda:  # kernels: events that ran on the device
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = evt.self_device_time_total
        else:  # operators (top-level or not): their own CPU time
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append({"name": evt.key, "kind": kind_of(evt.key), "calls_per_step": evt.count / steps,
                         "us_per_step": us / steps})
    timeline = device_idle([(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                            if e.device_type == torch.autograd.DeviceType.CUDA], steps) if cuda else None
    small = launchers(prof.events(), steps, top) if cuda else []
    total = sum(r["us_per_step"] for r in rows)
    by_kind: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        r["share"] = r["us_per_step"] / total if total else 0.0
        by_kind[r["kind"]] += r["us_per_step"]
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"unit": "device us" if cuda else "cpu us", "total_us_per_step": total, "kernels": len(rows),
            "launches_per_step": sum(r["calls_per_step"] for r in rows),
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])), "top": rows[:top],
            "timeline": timeline, "launchers": small}


def print_phase(model: str, phase: str, res: dict[str, Any]) -> None:
    what = "kernel launches" if res["unit"].startswith("device") else "operator calls"
    print(f"\n{gpu.MODEL_NAMES[model]}, {phase}: {res['total_us_per_step'] / 1e3:,.3f} ms of {res['unit'].split()[0]} "
          f"time per step, {res['launches_per_step']:,.0f} {what}, {res['kernels']} distinct")
    print("  by kind: " + "; ".join(f"{k} {v / 1e3:,.3f} ms ({100 * v / res['total_us_per_step']:.0f}%)"
                                    for k, v in res["by_kind"].items()))
    if t := res.get("timeline"):
        print(f"  device timeline: {t['span_us_per_step'] / 1e3:,.3f} ms a step from its first kernel to its last, "
              f"{t['idle_us_per_step'] / 1e3:,.3f} ms of it with no kernel running; largest gaps: " + "; ".join(
                  f"{g['us']:,.0f} us after {g['after'][:40]} before {g['before'][:40]}" for g in t["gaps"]))
    print(f"  {'kernel':<72} {'calls':>7} {'us/step':>10} {'share':>6}")
    for r in res["top"]:
        print(f"  {r['name'][:72]:<72} {r['calls_per_step']:>7,.0f} {r['us_per_step']:>10,.1f} "
              f"{100 * r['share']:>5.1f}%")
    if res.get("launchers"):
        print(f"  small kernels by the operator that launched them ({'kernel':<48} {'operator':<28} under, calls a step)")
        for r in res["launchers"]:
            print(f"    {r['kernel']:<48} {r['op'][:28]:<28} {r['under'][:40]:<40} {r['calls_per_step']:>6,.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cb_m2n,ref_m2", help="comma-separated models of benchmarks/gpu.py")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per phase (after 3 warm-up steps)")
    ap.add_argument("--top", type=int, default=25, help="kernels listed per phase")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    ap.add_argument("--out", default="bench-results/gpu_profile.json")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    phases = [p for p in args.phases.split(",") if p]
    if bad := sorted(set(models) - set(gpu.TRAIN_MODELS)):
        ap.error(f"unknown model(s) {bad}; choose from {','.join(gpu.TRAIN_MODELS)}")
    if bad := sorted(set(phases) - set(PHASES)):
        ap.error(f"unknown phase(s) {bad}; choose from {','.join(PHASES)}")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible; use --device cpu --tiny for a smoke test")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    setup = gpu.make_setup(args.device, args.tiny, quick=True)
    print(f"{torch.cuda.get_device_name(device) if setup.cuda else 'CPU'}; torch {torch.__version__}; d_model "
          f"{setup.d}, {setup.layers} layers, lookback {setup.L}, batch {setup.batch} (streaming: batch 1)")
    results: dict[str, Any] = {"config": {"device": args.device, "tiny": args.tiny, "steps": args.steps,
                                          "d": setup.d, "layers": setup.layers, "L": setup.L, "batch": setup.batch},
                               "models": {}}
    out = Path(args.out)
    for model in models:
        res = results["models"][model] = {}
        for phase in phases:
            if (phase == "stream" and model not in gpu.STREAM_MODELS) or (model == "ref_m2" and not setup.cuda):
                continue
            got = gpu.guarded(lambda p=phase, m=model: profile_phase(phase_fn(p, m, setup), args.steps, 3, setup.cuda,
                                                                     args.top))
            res[phase] = got
            if "total_us_per_step" in got:
                print_phase(model, phase, got)
            else:
                print(f"\n{gpu.MODEL_NAMES[model]}, {phase}: {got.get('error') or 'skipped: ' + got['skipped']}")
            gpu.write_json(out, results)  # after each phase: a run killed at its limit keeps the rest
    gpu.write_json(out, results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
