#!/usr/bin/env bash
# Everything a session with a GPU machine should run, in ONE device call: a session has 15 minutes of device time,
# machine start included, and one command may run 10. The budget (seconds, default 540) fits `run` with
# timeout_s=600; every step is bounded by what is left of it, and whatever finished comes back from $OUT.
#
# The GPU image has python3 with torch (CUDA), triton and pytest-xdist but not this project's data dependencies
# (polars, arch): the SSM core and these checks need none of them, so this runs from the source tree
# (PYTHONPATH=src), no install.
#
#   1. (<= 150 s) the CUDA cases of the SSM tests, 8 processes: every Triton kernel against its CPU reference
#      (outputs and gradients), the fused Mamba-2 layer, CUDA-graph streaming == batch forward. They also compile
#      the kernels into Triton's cache before the timings.
#   2. benchmarks/gpu.py, cases a (training), b (inference), c (streaming), d (L = 512 ... 32k), the library's
#      network and its peers first; no row starts in the last 150 s of the budget, the JSON is rewritten after each;
#      then the A/B: the library's network again from another revision's source (.baseline/src, made by
#      benchmarks/export_baseline.sh, carried) or under GPU_AB_ENV.
#   3. with GPU_SWEEP=1, benchmarks/gpu_sweep.py: the kernels' fixed settings (tile sizes, heads per program, bf16 or
#      tf32 operands) tried side by side on 4 layers; GPU_SWEEP_ARGS are passed on to it (e.g. "--layers 24
#      --train-only --variants default fused._CONV_BWD_SLIDE=1 default": ~7 s a variant at 24 layers, train only).
#   4. (what is left) benchmarks/gpu_profile.py: where the time of a training step, an inference forward and a
#      streaming step goes, kernel by kernel, ours and the official layer's (when exported, below).
#   5. with GPU_SANITIZE=1, compute-sanitizer (memcheck) on one layer's training step (gpu_sweep.py --layers 1
#      --train-only: every kernel of the step, forward and backward, at the seed's batch and length; ~230 s on an
#      H100): the pipelined loops' shared-memory buffers are the compiler's, which no interpreter run checks.
#      GPU_SANITIZE_VARIANT: a gpu_sweep.py variant to check instead of the default (a switch about to be adopted).
#
# GPU_TESTS=0, GPU_BENCH=0, GPU_PROFILE=0 skip steps 1, 2 and 4 (e.g. one call for the tests and the sweep, a second
# for the benchmark, its A/B and the profile; a call of its own for step 5:
# `GPU_TESTS=0 GPU_BENCH=0 GPU_PROFILE=0 GPU_SANITIZE=1 bash benchmarks/gpu_checks.sh 300`).
# From the device tool, in the repository root (results come back from $OUT: gpu.txt, tests_cuda.log, gpu.log,
# gpu.json, gpu_ab.log/.json, gpu_sweep.log, gpu_profile.log; GPU_MODELS picks gpu.py's rows, GPU_PROFILE_MODELS the
# profile's):
#   run(command="bash benchmarks/gpu_checks.sh", timeout_s=600)
# With the official mamba_ssm beside ours (its unfused Triton path; the fused one needs its CUDA extension built,
# ~6 minutes): `bash benchmarks/export_anchors.sh <git dir from fetch state-spaces/mamba>` here, then
#   run(command="MAMBA_SSM_SRC=.anchors bash benchmarks/gpu_checks.sh", carry=[".anchors"], timeout_s=600)
# and with the A/B against the previous revision (`bash benchmarks/export_baseline.sh <rev>` here first):
#   run(command="MAMBA_SSM_SRC=.anchors bash benchmarks/gpu_checks.sh", carry=[".anchors", ".baseline"], timeout_s=600)
# Never commit .anchors. A smoke test of this script on a CPU machine (tiny sizes, interpreted kernels):
#   GPU_CHECKS_SMOKE=1 PATH=.venv/bin:$PATH bash benchmarks/gpu_checks.sh 200
set -uo pipefail
budget=${1:-540}
out=${OUT:-bench-results}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
left() { echo $((budget - SECONDS)); }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    echo "MAMBA_SSM_SRC=${MAMBA_SSM_SRC:-} $(cat "${MAMBA_SSM_SRC:-/nonexistent}/REVISION" 2>/dev/null)"
} 2>&1 | tee "$out/gpu.txt"

# Warnings stay warnings here (-W default): the image's torch/triton versions differ from CI's, where they are errors.
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
smoke=${GPU_CHECKS_SMOKE:+--device cpu --tiny}
if [ "${GPU_TESTS:-1}" != 0 ]; then  # GPU_TESTS=0: skipped (the same code's tests passed in an earlier call)
    timeout -k 10 150 python3 -m pytest -q -p no:cacheprovider $parallel -W default -k "cuda or graph" tests/ssm \
        > "$out/tests_cuda.log" 2>&1
    echo "tests: exit $? after ${SECONDS} s; $(tail -1 "$out/tests_cuda.log")" | tee -a "$out/gpu.txt"
fi

models=${GPU_MODELS:-cb_m2n,ref_m2,attn,cb_m2,cb_m1}
if [ "${GPU_BENCH:-1}" != 0 ]; then  # GPU_BENCH=0: neither gpu.py nor the A/B (e.g. a call for the tests and sweep)
    timeout $(($(left) - 60)) python3 benchmarks/gpu.py $smoke --quick --deadline-s $(($(left) - 150)) \
        --models "$models" --out "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
    echo "benchmark: exit $? after ${SECONDS} s" | tee -a "$out/gpu.txt"
fi

# A/B in the same run, on the same machine: the library's network (training, inference, streaming) again, either
# under GPU_AB_ENV (e.g. "CONDORBRAIN_SSD_DOT=tf32") or, by default, from the library source of another revision
# where benchmarks/export_baseline.sh put one (.baseline/src, carried)
ab_env=${GPU_AB_ENV:-}
if [ -z "$ab_env" ] && [ -d .baseline/src ]; then ab_env="PYTHONPATH=.baseline/src"; fi
if [ -n "$ab_env" ] && [ "${GPU_BENCH:-1}" != 0 ]; then
    echo "A/B: $ab_env $(cat .baseline/REVISION 2>/dev/null)" | tee -a "$out/gpu.txt"
    env $ab_env timeout $(($(left) - 50)) python3 benchmarks/gpu.py $smoke --quick --case a,b,c --models cb_m2n \
        --out "$out/gpu_ab.json" > "$out/gpu_ab.log" 2>&1
    echo "A/B: exit $? after ${SECONDS} s" | tee -a "$out/gpu.txt"
fi

# With GPU_SWEEP=1: the kernels' fixed settings tried side by side (benchmarks/gpu_sweep.py), before the profile
if [ -n "${GPU_SWEEP:-}" ]; then
    # shellcheck disable=SC2086  # GPU_SWEEP_ARGS: words on purpose
    timeout $(($(left) - 40)) python3 benchmarks/gpu_sweep.py $smoke --deadline-s $(($(left) - 90)) \
        --out "$out/gpu_sweep.json" ${GPU_SWEEP_ARGS:-} > "$out/gpu_sweep.log" 2>&1
    echo "sweep: exit $? after ${SECONDS} s" | tee -a "$out/gpu.txt"
    rm -f "$out/gpu_sweep.json"  # at most 8 files come back; the log has the table
fi

if [ "${GPU_PROFILE:-1}" != 0 ]; then  # GPU_PROFILE=0: no profile
    timeout $(($(left) - 5)) python3 benchmarks/gpu_profile.py $smoke --models "${GPU_PROFILE_MODELS:-cb_m2n,ref_m2}" \
        --out "$out/gpu_profile.json" \
        > "$out/gpu_profile.log" 2>&1
    echo "profile: exit $? after ${SECONDS} s" | tee -a "$out/gpu.txt"
    rm -f "$out/gpu_profile.json"  # at most 8 files come back; the log has its tables
fi

if [ -n "${GPU_SANITIZE:-}" ]; then
    if command -v compute-sanitizer > /dev/null && [ -z "$smoke" ]; then
        timeout $(($(left) - 5)) compute-sanitizer --tool memcheck python3 benchmarks/gpu_sweep.py --layers 1 \
            --train-only --variants ${GPU_SANITIZE_VARIANT:-default} --out /tmp/sanitize_sweep.json \
            > "$out/sanitizer.log" 2>&1
        echo "sanitizer: exit $? after ${SECONDS} s; $(grep 'ERROR SUMMARY' "$out/sanitizer.log")" | tee -a "$out/gpu.txt"
    else
        echo "sanitizer: skipped (no compute-sanitizer, or a CPU smoke run)" | tee -a "$out/gpu.txt"
    fi
fi
