"""Static instruction counts of the seed Mamba-2 block's Triton kernels, compiled for an H100 (sm_90) on a machine
without a GPU, and each kernel priced at the issue rate a GPU run measured for it (run 7 on an H100, or run 5 on an
H200).

Per kernel: registers, warps, shared memory, the blocks of it an SM holds at once, and what a warp's SASS executes,
in all and in the bodies of its outermost loops (a program's loops over heads, chunks, tiles or steps: each
instruction there runs once an iteration), by kind (barriers, tensor-core, SFU, global and shared memory, shuffles,
float, spills).

Why: most of the layer's kernels are latency-bound at one or two blocks (8 warps) an SM, issuing ~1
warp-instruction a cycle an SM in GPU run 5 (of 4), so an instruction added to their loops costs time at that low
rate, where the same work in a streaming kernel at 32 warps an SM hides behind memory. Counting shows, before a GPU
run, what a change adds where. ``--price`` multiplies out a seed step (calls x programs x warps x instructions a
program, loops by their trip counts at batch 1024) and divides by each kernel's rate in a measured run
(``--calibration``): that run's tree's counts (``PYTHONPATH=.baseline/src``, see ``benchmarks/export_baseline.sh``)
over its measured times. It assumes a kernel keeps its rate; a change of occupancy (registers, warps) changes the
rate, which only a GPU measures, and the rates of memory-bound kernels are the card's (run 5's H200 rates priced
run 7's H100 times of the norms and the conv 30-50% low: benchmarks/results/h100-2026-11-26/NOTES.md).

The launches (a block: the residual add and pre-norm joined to in_proj, then the fused layer with out_proj inside)
are recorded from the host code at the seed sizes (``tests/ssm/test_triton_compile.py``'s machinery: nothing is
launched; each distinct specialisation compiled once by Triton's own pipeline and ptxas) and disassembled with the
``nvdisasm`` that ships in the triton wheel.

    python benchmarks/sass_counts.py                                   # training and inference, defaults
    bash benchmarks/export_baseline.sh 36832b1                          # run 7's kernels into .baseline/
    PYTHONPATH=.baseline/src python benchmarks/sass_counts.py --out run7.json
    python benchmarks/sass_counts.py --price run7.json                  # this tree priced at run 7's H100 rates
    python benchmarks/sass_counts.py --price run7.json --variant ssd._DX_HEADS=4        # a setting the other way
    python benchmarks/sass_counts.py --price run5.json --calibration h200-run5          # (bdbc8fc's counts)

The compiler is the installed triton's; the H100 image's is triton 3.6 (torch 2.11), whose registers and layouts
differ from 3.9's (the checkout's, with torch 2.13): to count what the GPU runs,
    pip install --target /tmp/t36 --no-deps triton==3.6.0
    PYTHONPATH=/tmp/t36:src python benchmarks/sass_counts.py --case training
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The compiling parts import triton, which must not be in interpreter mode: main() sets TRITON_INTERPRET=0 before
# they are imported (_tools), so that the counting functions can be imported by the tests (interpreter mode) alone
recorder = sweep = triton = None


def _tools() -> None:
    """Import what compiling needs: triton (compiling, not interpreting), the compile test's launch recorder (a dev
    tool, as this) and benchmarks/gpu_sweep.py (its variants: settings in force, then undone)."""
    global recorder, sweep, triton
    os.environ["TRITON_INTERPRET"] = "0"
    for folder in (ROOT / "tests" / "ssm", ROOT / "benchmarks"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import gpu_sweep
    import test_triton_compile
    import triton as triton_module

    if triton_module.runtime.jit.JITFunction is not type(importlib.import_module(
            "condorbrain.ssm.triton.ssd")._chunk_scan_fwd):
        raise RuntimeError("triton is in interpreter mode here (TRITON_INTERPRET was set when it was imported): "
                           "run this script on its own")
    recorder, sweep, triton = test_triton_compile, gpu_sweep, triton_module

# SASS opcodes by kind (the rest counted as "other": integer, predicate, moves, branches)
KINDS = {"HGMMA": "mma", "HMMA": "mma", "BAR": "bar", "MUFU": "mufu", "LDG": "ldg", "STG": "stg", "LDS": "smem",
         "LDSM": "smem", "STS": "smem", "SHFL": "shfl", "LDL": "local", "STL": "local", "FFMA": "fp", "FMUL": "fp",
         "FADD": "fp", "FMNMX": "fp", "FSEL": "fp", "FSETP": "fp", "F2FP": "cvt"}
COLUMNS = ("all", "bar", "mma", "mufu", "ldg", "stg", "smem", "shfl", "fp", "local")
_INSTR = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([^;]*);")
_TARGET = re.compile(r"\.L_x_\d+")
_LABEL = re.compile(r"^(\.L_x_\d+):")
SM90_REGS, SM90_SMEM, SM90_WARPS, SM90_BLOCKS = 65536, 228 * 1024, 64, 32  # per SM


def parse_sass(text: str) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    """(opcode, branch target label or None) per instruction, and each label's instruction index."""
    instrs, labels = [], {}
    for line in text.splitlines():
        if m := _LABEL.match(line):
            labels[m.group(1)] = len(instrs)
        elif m := _INSTR.match(line):
            target = _TARGET.search(m.group(2))
            instrs.append((m.group(1), target.group(0) if target else None))
    return instrs, labels


def outer_loops(instrs, labels) -> list[tuple[int, int]]:
    """[first, last] instruction of each outermost loop (a branch back to an earlier label, not inside another)."""
    spans = sorted({(labels[target], i) for i, (op, target) in enumerate(instrs)
                    if op == "BRA" and target in labels and labels[target] < i})
    return [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]


def kinds(instrs) -> dict[str, int]:
    c = collections.Counter(KINDS.get(op, "other") for op, _ in instrs)
    return {"all": len(instrs), **{k: c[k] for k in COLUMNS[1:]}}


def blocks_per_sm(regs: int, warps: int, smem: int) -> int:
    """Blocks of the kernel an SM holds at once: registers (allocated per warp in units of 256), shared memory,
    warps and blocks, each capped (sm_90)."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = SM90_REGS // (regs_per_warp * warps)
    by_smem = SM90_SMEM // smem if smem else SM90_BLOCKS
    return max(0, min(by_regs, by_smem, SM90_WARPS // warps, SM90_BLOCKS))


def compile_counts(kernel, args, kwargs, tmp: Path) -> dict:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs, options = recorder._specialise(kernel, args, kwargs)
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget(*recorder.TARGET), options=options)
    binaries = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    cubin = tmp / "k.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    sass = subprocess.run([binaries / "nvdisasm", "-c", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([binaries / "cuobjdump", "--dump-resource-usage", str(cubin)], capture_output=True,
                           text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    instrs, labels = parse_sass(sass)
    loops = outer_loops(instrs, labels)
    warps = options.get("num_warps", 4)
    smem = compiled.metadata.shared
    programs, iterations = seed_launch(kernel.fn.__name__, constexprs)
    return {"kernel": kernel.fn.__name__, "config": recorder._describe(kernel, constexprs, options), "regs": regs,
            "seed_programs": programs, "seed_iterations": iterations,
            "warps": warps, "smem_kb": round(smem / 1024, 1), "blocks_per_sm": blocks_per_sm(regs, warps, smem),
            "kernel_counts": kinds(instrs), "loops": len(loops),
            "loop_counts": kinds([ins for a, b in loops for ins in instrs[a:b + 1]]) if loops else None}


def _block(inference: bool) -> None:
    """One seed block as the benchmark's network runs it: the residual add and pre-norm joined to in_proj
    (add_rmsnorm_linear_triton, d_model 512 -> 2192), then the fused layer (out_proj inside); in inference, where
    the tree has it and its switch is on, with the gated norm deferred (the previous block's output pending its
    1/rms, this block's left so)."""
    import torch

    from condorbrain.ssm.triton import fused

    deferred = inference and getattr(fused, "_DEFER_NORM", False)
    with torch.set_grad_enabled(not inference):
        x, h = (torch.randn(recorder.BATCH, recorder.SEQLEN, 512, dtype=torch.bfloat16, requires_grad=not inference)
                for _ in range(2))
        if deferred:
            from condorbrain.ssm.pending import PendingScaled

            h = PendingScaled(h, torch.rand(recorder.BATCH * recorder.SEQLEN, 4), 1024, 1e-5)
        w = torch.randn(2192, 512, dtype=torch.bfloat16, requires_grad=not inference)
        outs = fused.add_rmsnorm_linear_triton(x, h, torch.ones(512, requires_grad=not inference), 1e-5, w)
    if not inference:
        recorder._backward(*outs)
    recorder._fused_layer(64, 64, inference=inference, deferred=deferred)


def run(case: str) -> list[dict]:
    """Every distinct launch of one seed block's training step (forward and backward) or inference forward."""
    launches = recorder._record(lambda: _block(case == "inference"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kernel, args, kwargs in launches:
            key = repr((kernel.fn.__name__, recorder._specialise(kernel, args, kwargs)))
            if key not in rows:
                rows[key] = {"case": case, "calls": 0, **compile_counts(kernel, args, kwargs, Path(tmp))}
            rows[key]["calls"] += 1
    return list(rows.values())


# The seed step's sizes (configs/h100-seed.toml): batch 1024, L 120, 16 heads of 64 channels in one group, d_state
# 64, conv_dim 1152; the recorder runs batch 2, so the seed's program counts are derived here from the host code's
# rules (ssd._head_split, _dx_channel_blocks, _state_rows, fused._conv_backward's row split, the norms' tiles)
SEED_B, SEED_L, SEED_HEADS, SEED_P, SEED_N, SEED_CONV = 1024, 120, 16, 64, 64, 1152


def seed_launch(name: str, constexprs: dict) -> tuple[int | None, float | None]:
    """(programs, iterations of its outermost loops per program) of a kernel's launch in one seed layer, from the
    module constants in force (the tree's own: another tree's constants where they differ). The host code's rules
    are restated here rather than called: run 5's tree has not all of them (``_head_split``'s ``most``,
    ``_BC_HEADS``, ``_DX_HEADS``), and the constexprs give what the rest decided (BPS, BP, BN, T)."""
    from condorbrain.ssm.triton import fused, ssd

    def cdiv(a, b):
        return -(-a // b)

    chunks, rows = cdiv(SEED_L, constexprs.get("T", 64)), SEED_B * SEED_L
    heads = getattr(ssd, "HEADS_PER_PROGRAM", 4)
    if name == "_chunk_scan_fwd":
        if constexprs.get("SUMSQ"):  # the deferred norm's scan: heads a program of its own
            heads = getattr(ssd, "_SCAN_SUMSQ_HEADS", heads)
        hpp = SEED_HEADS if constexprs.get("NORM") else min(SEED_HEADS, heads)
        return SEED_B * chunks * SEED_HEADS // hpp, hpp
    if name in ("_chunk_bwd_bc", "_chunk_bwd_dx"):
        hpp = min(SEED_HEADS, getattr(ssd, "_BC_HEADS" if name == "_chunk_bwd_bc" else "_DX_HEADS", heads))
        split = cdiv(SEED_N, constexprs["BN"]) if name == "_chunk_bwd_bc" else SEED_P // constexprs["BP"]
        return SEED_B * chunks * SEED_HEADS // hpp * split, hpp
    if name in ("_state_fwd", "_state_bwd"):  # a loop over the chunks (_state_fwd's: all but the last, no final)
        return SEED_B * SEED_HEADS * cdiv(SEED_P, constexprs["BPS"]), chunks if name == "_state_bwd" else chunks - 1
    if name == "_cumsum_fwd":
        return SEED_B * chunks, 1
    if name in ("_conv_fwd", "_conv_bwd_gate"):
        return SEED_B * cdiv(SEED_L, constexprs["BL"]) * cdiv(SEED_CONV, constexprs["BC"]), 1
    if name == "_conv_bwd":  # whole rows at the seed (1024 x 9 programs >= _CONV_BWD_PROGRAMS)
        return SEED_B * cdiv(SEED_CONV, constexprs["BC"]), cdiv(SEED_L, constexprs["BL"])
    if name == "_rmsnorm_fwd":
        return rows // fused._BLOCK_ROWS, 1
    if name == "_rmsnorm_bwd":  # run 5's tree: a tile of 16 rows a program
        tiles = rows // getattr(fused, "_NORM_BWD_ROWS", 16)
        programs = min(tiles, getattr(fused, "_NORM_BWD_PROGRAMS", tiles))
        return programs, tiles / programs
    return None, None


def warp_instructions(row: dict) -> float | None:
    """Warp-instructions of the row's launches in one seed layer: calls x programs x warps x (the kernel's
    instructions, its loops' once per iteration)."""
    if row["seed_programs"] is None:
        return None
    in_loops = row["loop_counts"]["all"] if row["loop_counts"] else 0
    per_program = row["kernel_counts"]["all"] - in_loops + row["seed_iterations"] * in_loops
    return row["calls"] * row["seed_programs"] * row["warps"] * per_program


# Measured: ms of device time per seed block of each kernel in a training step (its 24 blocks' sum / 24, all its
# calls; the norms' include the final norm's one call of 97 and 49), with the tree whose counts give the rates
CALIBRATIONS = {
    # GPU run 7 (H100 80GB HBM3, commit 36832b1; benchmarks/results/h100-2026-11-26/run7-gpu_profile.log)
    "h100-run7": {"tree": "36832b1", "ms_per_layer": {
        "_chunk_bwd_dx": 25.6266 / 24, "_rmsnorm_bwd": 23.6118 / 24, "_chunk_bwd_bc": 18.8286 / 24,
        "_conv_bwd": 18.1445 / 24, "_conv_fwd": 13.8376 / 24, "_rmsnorm_fwd": 10.3974 / 24,
        "_chunk_scan_fwd": 8.5516 / 24, "_conv_bwd_gate": 8.1167 / 24, "_state_fwd": 5.8796 / 24,
        "_state_bwd": 3.9162 / 24, "_cumsum_fwd": 0.4909 / 24}},
    # GPU run 5 (H200, commit fd61de3 = the kernels of bdbc8fc; benchmarks/results/h200-2026-11-26/run5-gpu_profile.log)
    "h200-run5": {"tree": "bdbc8fc", "ms_per_layer": {
        "_chunk_scan_fwd": 16.9432 / 24, "_chunk_bwd_bc": 25.5081 / 24, "_chunk_bwd_dx": 50.2040 / 24,
        "_conv_bwd": 15.7561 / 24, "_conv_bwd_gate": 11.2425 / 24, "_conv_fwd": 11.8098 / 24,
        "_state_fwd": 5.3110 / 24, "_state_bwd": 5.7752 / 24, "_cumsum_fwd": 0.4528 / 24,
        "_rmsnorm_fwd": 15.6252 / 24, "_rmsnorm_bwd": 22.2366 / 24}},
}
SMS = 132  # streaming multiprocessors of an H100 SXM and of an H200


def rates(measured_rows: list[dict], calibration: str) -> dict[str, float]:
    """Each kernel's issue rate in the calibration's run: warp-instructions per microsecond per SM, from its tree's
    counts (this script's rows, run with ``PYTHONPATH=.baseline/src`` on that tree) and its measured times."""
    ms = CALIBRATIONS[calibration]["ms_per_layer"]
    totals = collections.defaultdict(float)
    for r in measured_rows:
        if r["case"] == "training" and r["kernel"] in ms and (w := warp_instructions(r)):
            totals[r["kernel"]] += w
    return {k: totals[k] / SMS / (ms[k] * 1000) for k in totals}


def _priced(rows: list[dict], rates: dict[str, float]) -> str:
    lines = [(f"{'case':<9} {'kernel':<17} {'calls':>5} {'programs':>8} {'iters':>5} {'M warp-instr':>12} "
              f"{'rate':>5} {'ms/step':>7}  (24 layers at the measured issue rate of the kernel; rate: per us per SM)")]
    for case in dict.fromkeys(r["case"] for r in rows):
        total = 0.0
        for r in (r for r in rows if r["case"] == case):
            w, rate = warp_instructions(r), rates.get(r["kernel"])
            ms = 24 * w / SMS / rate / 1000 if w and rate else None
            total += ms or 0.0
            lines.append(f"{case:<9} {r['kernel']:<17} {r['calls']:>5} {r['seed_programs'] or '':>8} "
                         f"{r['seed_iterations'] or '':>5} {(w or 0) / 1e6:>12.1f} {round(rate) if rate else '':>5} "
                         f"{ms if ms is not None else float('nan'):>7.1f}")
        lines.append(f"{case:<9} {'priced kernels':<17} {'':>5} {'':>8} {'':>5} {'':>12} {'':>5} {total:>7.1f}")
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    head = f"{'case':<9} {'kernel':<17} {'regs':>4} {'warps':>5} {'blk/SM':>6} {'smem KB':>7}  " + " ".join(
        f"{c:>5}" for c in COLUMNS) + "  (per warp: the kernel / its outermost loops' bodies)"
    def cells(counts: dict) -> str:
        return " ".join(f"{counts[c]:>5}" for c in COLUMNS)

    lines = [head]
    for r in rows:
        lines.append(f"{r['case']:<9} {r['kernel']:<17} {r['regs']:>4} {r['warps']:>5} {r['blocks_per_sm']:>6} "
                     f"{r['smem_kb']:>7}  {cells(r['kernel_counts'])}")
        if r["loop_counts"] is not None:
            lines.append(f"{'':<9} {'  in loops (' + str(r['loops']) + ')':<17} {'':>25}  {cells(r['loop_counts'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="default", metavar="SETTINGS",
                        help="settings in force, as benchmarks/gpu_sweep.py's variants: module.NAME=value joined by +, "
                             "e.g. ssd._DX_HEADS=4+fused._CONV_BWD_WARPS=8")
    parser.add_argument("--case", choices=("training", "inference", "both"), default="both")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--price", type=Path, metavar="COUNTS.json",
                        help="this script's JSON for the calibration run's tree (PYTHONPATH=.baseline/src with "
                             ".baseline from that tree: 36832b1 for h100-run7, bdbc8fc for h200-run5): each kernel "
                             "then priced at its issue rate in that run, ms per seed step")
    parser.add_argument("--calibration", choices=sorted(CALIBRATIONS), default="h100-run7",
                        help="the measured run whose per-kernel times give the rates (default: run 7, H100)")
    args = parser.parse_args(argv)
    _tools()
    # the recorder's batch is 2 (tests/ssm/test_triton_compile.py), where the state kernels split a head's rows over
    # programs (ssd._state_rows: fewer than _STATE_PROGRAMS); at the seed's 1024 they take whole heads
    ssd = importlib.import_module("condorbrain.ssm.triton.ssd")
    ssd._STATE_PROGRAMS = 1
    sweep.parse(args.variant)  # a malformed variant fails before anything compiles
    cases = ("training", "inference") if args.case == "both" else (args.case,)
    source = Path(importlib.import_module("condorbrain").__file__).parents[1]
    print(f"source: {source}; variant: {args.variant}; sm_90 (H100), seed block (d_model 512, headdim 64, d_state 64, "
          f"L 120, bf16)")
    with sweep.applied(args.variant):
        rows = [r for case in cases for r in run(case)]
    print(_table(rows))
    if args.price:
        print(f"priced at {args.calibration}'s rates (counts of {CALIBRATIONS[args.calibration]['tree']}: "
              f"{args.price})")
        print(_priced(rows, rates(json.loads(args.price.read_text())["rows"], args.calibration)))
    if args.out:
        args.out.write_text(json.dumps({"source": str(source), "variant": args.variant, "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
