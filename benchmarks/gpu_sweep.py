"""The library's fixed kernel settings, tried side by side on one GPU in one process (issue 6): the next step after
``gpu.py`` and ``gpu_profile.py`` have said which kernels the time goes to.

The kernels have no autotuner (one fixed config each, so that the same host code runs under Triton's interpreter,
see ``condorbrain.ssm.triton.ssd.launch_options``); their sizes are module constants. Each variant below sets some of
them (or an environment variable), then times the library's network (``cb_m2n``, ``benchmarks/_gpu_models.py``) at
the seed sizes with ``--layers`` layers (default 4: the per-layer kernels are the same, the run 6x shorter):

  train   one training step (bf16 autocast, MSE on the last step, fused AdamW): ms per layer
  infer   one inference forward: ms per layer
  stream  one streaming step at batch 1, captured in a CUDA graph: us per layer
  long    (with --long, the default) a training step at the longest and the shortest of gpu.py's case (d) lengths
          (L 32k at batch 8 and L 512 at batch 512: the same tokens), the ratio of the two: the bar's
          per-token cost, which the state passing (a loop over chunks) moves and the seed's L 120 does not

The default variant runs first and again last: the spread between its two timings is the noise the other rows are
read against. Rows print as they finish and the JSON is rewritten after each; ``--deadline-s`` starts no variant
after that many seconds. A variant that fails (a kernel that does not compile at that size, out of memory) is
recorded and the others still run.

    python benchmarks/gpu_sweep.py --out $OUT/gpu_sweep.json                         # on the GPU machine
    python benchmarks/gpu_sweep.py --variants ssd.HEADS_PER_PROGRAM=2 step._STATE_TILE=1024+step._GEMV_MAX_BK=512
    python benchmarks/gpu_sweep.py --device cpu --tiny                               # smoke test of the harness
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu  # noqa: E402

# Each variant: "+"-joined settings, each "module.NAME=value" (module in condorbrain.ssm.triton) or "env:NAME=value".
# Tried on an H200 on 2026-11-26 (benchmarks/results/h200-2026-11-26/NOTES.md) and settled, so no longer in the list:
# run 3: ssd.HEADS_PER_PROGRAM=2 and 1, env:CONDORBRAIN_SSD_DOT=tf32, fused._BLOCK_ROWS=32 (slower),
# step._STATE_TILE=1024 and 512, step._GEMV_MAX_BK=512 (noise or slower), fused._CONV_BWD_BC=128 (faster: now the
# default); run 4: step._PDL=0 (12.4 against 10.3 us a layer: PDL stays on), ssd._STATE_PROGRAMS=1 and
# ssd.HEADS_PER_PROGRAM=8 (noise).
# On an H100 on 2026-11-26 (run 6, benchmarks/results/h100-2026-11-26/NOTES.md), against the default's 8.53 / 8.44
# ms a layer's training step and 1.955 its inference forward: fused._CONV_IN_SSD=1 (9.64; infer 3.15),
# fused._NORM_IN_SSD=1 (8.80; 2.27), fused._CONV_BWD_WARPS=8 (9.38), fused._CONV_GATE_IN_BWD=1 with 8 warps (9.75),
# fused._NORM_OUT_IN_BWD=0 (8.90), fused._GRADS_IN_ACT_DTYPE=0 (9.03), ssd._BWD_STATES_BF16=0 (8.64), ssd._BC_HEADS=4
# (12.89), ssd._DX_HEADS=4 (8.48), ssd._DX_CHANNEL_BLOCKS=1 with 8 warps (8.45; infer 2.04), ssd._SCAN_FWD_STAGES=2
# (8.48; infer 2.07): all slower or noise; fused._NORM_BWD_ROWS=16 with no cap on programs (8.14): faster, now the
# default. ssd._DX_STAGES=2 and ssd._BC_HEADS=4 ended in illegal memory accesses, both in _chunk_bwd_dx (run 7,
# CUDA_LAUNCH_BLOCKING=1), whose loops of runtime trip counts inside its loop over heads are since replaced by masked
# loads (see NOTES.md): both rows are here again to say whether that was it.
# Run 7: fused._NORM_LINEAR=1 (the gated norm and out_proj in one Triton kernel: 8.95 against 8.13 training, 2.76
# against 1.99 inference; its 128 x 128 tile and 2 stages no better: the kernel is deleted), fused._BLOCK_L=32
# (noise) and 64 (slower), fused._NORM_BWD_ROWS=4 with 4096 programs (8.52), 8 (8.47; 8.46 on 4 warps), 32 on 16
# warps (10.62), ssd.HEADS_PER_PROGRAM=16 (noise), ssd._MAX_CHUNK=32 with 4 warps (9.32, inference 2.48): settled.
# Run 8 (24 layers; ms a layer, training / inference): the deferred gated norm (fused._DEFER_NORM, default on) 1.81
# against 1.89 once its scan ran unpipelined (ssd._SCAN_SUMSQ_STAGES=1; 2 stages 2.33 at 4 layers, 3 stages 2.27),
# then all of a group's heads a program on 4 warps (ssd._SCAN_SUMSQ_HEADS=16, ssd._SCAN_SUMSQ_WARPS=4: 1.745; the
# others are in ssd.py's comment); ssd._SCAN_Z_EARLY and ssd._SCAN_SQ_TILE (slower: deleted), fused._CONV_BC=64
# (8.94 / 2.21) and 256 (7.87 / 1.83) against 7.80 / 1.81, fused._BLOCK_ROWS=4, 8 and 32, fused._BLOCK_L=8 and 32
# (noise): settled. ssd._DX_STAGES=2 faulted again: compute-sanitizer names a shared-memory read out of bounds in
# _chunk_bwd_dx (the compiler's pipelined buffers; see ssd.py), so it is out of the list; ssd._BC_HEADS=4, which
# faulted in runs 6b and 7, is last, where a fault (which ends the process's CUDA context) costs no other row.
# Run 9 (24 layers): ssd._PREV_CHUNK_TERM (default on: chunk 1's term formed in the scan, no state passed) 1.646 /
# 1.656 against 1.748; with it ssd._SCAN_SUMSQ_WARPS=8 (1.870) and ssd._SCAN_FWD_STAGES=2 (1.656; training 8.00);
# a 128-step chunk for the inference forward alone (one chunk at L 120: 1.764 on 8 warps, 1.776 with 8 heads a
# program, 2.203 on 16; removed), fused._CONV_WARPS=2 (1.742 against 1.742 / 1.757), 8 (2.715), fused._BLOCK_L=64
# on 4 or 8 warps (1.741, 1.866), 32 or 8 on 2 warps (1.787, 1.767): settled. ssd._BC_HEADS=4 ran clean under
# compute-sanitizer at one layer (0 errors), so its faults of runs 6b and 7 are still unexplained.
# Run 10 (24 layers, --train-only; ms a layer's training step, the default 7.78 / 7.80): the backward's loops
# software-pipelined, fused._CONV_BWD_STAGES=3 with fused._CONV_BWD_BL=8 (7.52; 2 stages 7.55 on 16 steps, 7.60 on
# 8; 4 stages 7.52) and fused._NORM_BWD_STAGES=3 on 4-row tiles over 4096 programs, 4 warps (with the conv's: 7.30),
# and fused._SAVE_CONV_OUT=1 (7.51 alone; all three 7.03): now the defaults. Register caps (ptxas .maxnreg) on the
# latency-bound backward kernels: _chunk_bwd_dx at 168 (7.76) and 128 (8.26), _chunk_bwd_bc at 128 (7.81), no
# better: not kept. fused._CONV_BWD_PROGRAMS=32768 (7.85), fused._CONV_BWD_BC=64 (7.34 against 7.03). The forward
# conv and its backward's SiLU derivative over runs of a row's steps in a pipelined loop: 7.01-7.04 training and
# 1.626-1.640 inference against 7.03 / 1.626 (noise: removed). Run 10e: the conv's backward as one kernel (g kept in
# registers, its shifted rows by 0/1 matmuls) 7.52 against 7.00 (removed; see fused.py).
# Fourteenth session (no GPU): _chunk_bwd_dx and _chunk_bwd_bc restructured (ssd.py; not yet timed: the A/B against
# 921f88e is gpu_checks.sh's with .baseline), and two switches for the first run to decide: ssd._COLSUM_IN_DX, which
# moves a column sum from bc to dx, and ssd._DX_MAXNREG=168 (dx in three blocks an SM).
# Fifteenth session (no GPU): fused._DSILU_IN_SSD, the conv's SiLU derivative applied where the SSD's backward
# kernels store dx, dB, dC, the conv recomputed there (_conv_bwd_gate not run: ~4.6 KB a token and layer less moved);
# fused._CONV_BWD_SLIDE, the conv's whole backward (its SiLU's derivative too) as one kernel that carries the taps'
# windows from step to step (~6.9 KB a token and layer less moved than _conv_bwd_gate + _conv_bwd).
DEFAULT_VARIANTS = (  # the most telling first: a run's --deadline-s may stop before the last ones
    "default",
    "fused._CONV_BWD_SLIDE=1",  # the conv's backward as one kernel, each input read once (2 warps, pipelined loads)
    "fused._CONV_BWD_SLIDE=1+fused._CONV_SLIDE_WARPS=4",  # ... one channel a thread (its loads not pipelined)
    "fused._DSILU_IN_SSD=1",  # the SiLU's derivative where dx, dB, dC are stored: _conv_bwd_gate not run
    "fused._DSILU_IN_SSD=1+fused._CONV_BWD_SLIDE=1",  # both
    "ssd._COLSUM_IN_DX=1",  # dL/da's column sums of dL/dM in _chunk_bwd_dx (M^T's bf16 residual as a 2nd matmul)
    "ssd._DX_MAXNREG=168",  # _chunk_bwd_dx in 168 registers (no spill at the seed): three blocks an SM
    "ssd._COLSUM_IN_DX=1+ssd._DX_MAXNREG=168",  # both (dx still without a spill, triton 3.6)
    "fused._SAVE_CONV_OUT=0",  # the conv output recomputed by the backward (6.3 GiB less at the seed)
    "fused._CONV_BWD_STAGES=1+fused._CONV_BWD_BL=16",  # the conv's backward unpipelined (run 9's)
    "fused._NORM_BWD_STAGES=1+fused._NORM_BWD_ROWS=16+fused._NORM_BWD_PROGRAMS=1073741824+fused._NORM_BWD_WARPS=8",
    "ssd._PREV_CHUNK_TERM=0",  # the deferred scan with the states passed between chunks (_state_fwd)
    "fused._DEFER_NORM=0",  # the inference forward with each gated norm's own kernel
    "default",
    "ssd._BC_HEADS=4",
)
MODEL = "cb_m2n"


def parse(variant: str) -> list[tuple[str, str, str]]:
    """(kind, target, value) of each setting of a variant: kind "env" (target a variable) or a module name."""
    if variant == "default":
        return []
    settings = []
    for part in variant.split("+"):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"variant setting {part!r} is not NAME=value")
        if key.startswith("env:"):
            settings.append(("env", key[4:], value))
        else:
            module, dot, name = key.partition(".")
            if not dot:
                raise ValueError(f"variant setting {part!r}: expected module.NAME=value or env:NAME=value")
            settings.append((module, name, value))
    return settings


def _convert(value: str, like: Any) -> Any:
    """``value`` as the type of the setting it replaces (a bool from 0/1/true/false: bool("False") is True; a
    Python literal where the setting is None: "auto" by default)."""
    if like is None:
        return ast.literal_eval(value)
    if isinstance(like, bool):
        if value.lower() not in ("0", "1", "true", "false"):
            raise ValueError(f"{value!r} is not a bool setting (0, 1, true, false)")
        return value.lower() in ("1", "true")
    return type(like)(value)


@contextmanager
def applied(variant: str) -> Iterator[None]:
    """The variant's settings in force inside the block, the previous values restored after."""
    undo = []
    try:
        for kind, target, value in parse(variant):
            if kind == "env":
                undo.append(lambda t=target, old=os.environ.get(target): os.environ.__setitem__(t, old)
                            if old is not None else os.environ.pop(t, None))
                os.environ[target] = value
            else:
                module = importlib.import_module(f"condorbrain.ssm.triton.{kind}")
                if not hasattr(module, target):
                    raise ValueError(f"condorbrain.ssm.triton.{kind} has no setting {target}")
                old = getattr(module, target)
                undo.append(lambda m=module, t=target, o=old: setattr(m, t, o))
                setattr(module, target, _convert(value, old))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def measure(variant: str, setup: gpu.Setup, timer: gpu.Timer, long: bool = True,
            train_only: bool = False) -> dict[str, Any]:
    """The timings of one variant, per layer (train_only: the training step's alone)."""
    n = setup.layers
    with applied(variant):
        row: dict[str, Any] = {"variant": variant}
        step, _ = gpu.train_step(MODEL, setup, setup.L, setup.batch, n)
        sec, _ = timer(step, setup.warmup, setup.reps)
        row["train_ms_per_layer"] = sec * 1e3 / n
        del step
        if train_only:
            return row
        fwd, _ = gpu.infer_step(MODEL, setup)
        sec, _ = timer(fwd, setup.warmup, setup.reps * 2)
        row["infer_ms_per_layer"] = sec * 1e3 / n
        del fwd
        path = "cuda-graph" if setup.cuda else "eager"
        stream, _ = gpu.stream_step(MODEL, setup, 1, path)
        sec, _ = timer(stream, setup.stream_warmup, setup.stream_reps)
        row["stream_us_per_layer"] = sec * 1e6 / n
        row["stream_path"] = path
        if long:
            per_token = []
            for L in (setup.long_lengths[-1], setup.long_lengths[0]):
                step, _ = gpu.train_step(MODEL, setup, L, setup.long_tokens // L, setup.long_layers)
                sec, _ = timer(step, setup.warmup, setup.long_reps)
                per_token.append(sec / setup.long_tokens)
                del step
            row["long_cost_ratio"] = per_token[0] / per_token[1]
            row["long_ms_per_layer"] = per_token[0] * setup.long_tokens * 1e3 / setup.long_layers
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test of the harness)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--long", action=argparse.BooleanOptionalAction, default=True,
                    help="also the (d) per-token cost ratio, longest / shortest length (two more training steps)")
    ap.add_argument("--train-only", action="store_true",
                    help="time the training step alone (settings of the backward's kernels): no inference, "
                         "streaming or long rows")
    ap.add_argument("--deadline-s", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-results/gpu_sweep.json"))
    args = ap.parse_args(argv)
    args.long = args.long and not args.train_only  # --train-only: no long rows either
    for v in args.variants:
        parse(v)  # a typo fails before any timing
    setup = gpu.make_setup(args.device, args.tiny, quick=True)
    if not args.tiny:
        setup = dataclasses.replace(setup, layers=args.layers)
    timer = gpu.Timer(torch.device(args.device))
    env = gpu.environment(setup)
    print("; ".join(f"{k} {v}" for k, v in env.items() if k != "mamba_ssm_fused"))
    print(f"{MODEL}: d_model {setup.d}, {setup.layers} layers, lookback {setup.L}, batch {setup.batch} "
          f"(streaming: batch 1); median of repeats; per layer")
    head = f"{'variant':<48} {'train ms':>10}" + ("" if args.train_only else f" {'infer ms':>10} {'stream us':>10}")
    if args.long:
        head += f" {f'L{setup.long_lengths[-1]} ms':>10} {'cost/L0':>8}"
    print(head, flush=True)
    start, rows = time.monotonic(), []
    for v in args.variants:
        if args.deadline_s is not None and time.monotonic() - start >= args.deadline_s:
            row = {"variant": v, "skipped": f"time budget (--deadline-s {args.deadline_s:g}) spent"}
        else:
            row = {"variant": v, **gpu.guarded(measure, v, setup, timer, args.long, args.train_only)}
        rows.append(row)
        if "train_ms_per_layer" in row:
            line = f"{v:<48} {row['train_ms_per_layer']:>10.3f}"
            if "infer_ms_per_layer" in row:
                line += f" {row['infer_ms_per_layer']:>10.3f} {row['stream_us_per_layer']:>10.2f}"
            if "long_cost_ratio" in row:
                line += f" {row['long_ms_per_layer']:>10.3f} {row['long_cost_ratio']:>8.3f}"
            print(line, flush=True)
        else:
            print(f"{v:<48} {row.get('error') or row.get('skipped')}", flush=True)
        gpu.write_json(args.out, {"config": {**dataclasses.asdict(setup), **env, "model": MODEL}, "rows": rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
