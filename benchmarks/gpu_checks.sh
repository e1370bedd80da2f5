#!/usr/bin/env bash
# Everything a session with a GPU machine should run, in one or two device calls (device time is scarce).
#
# The GPU image has python3 with torch (CUDA) and triton but not this project's data dependencies (polars, arch):
# the SSM core needs none of them, so this runs from the source tree (PYTHONPATH=src), no install.
#
#   part 1 (~5 min): the CUDA cases of the SSM tests (Triton kernels against the CPU references, fused Mamba-2,
#                    CUDA-graph streaming == batch forward), then benchmark cases a (training) and b (inference)
#   part 2 (~5 min): benchmark cases c (streaming latency) and d (L = 512 ... 32k)
#
# From the device tool, in the repository root (results come back from $OUT):
#   bash benchmarks/gpu_checks.sh 1        and then        bash benchmarks/gpu_checks.sh 2
# With the official mamba_ssm beside ours: export its Python files (fetch state-spaces/mamba, copy mamba_ssm/ into
# the git-ignored .anchors/), carry .anchors, and set MAMBA_SSM_SRC=.anchors before the command. Never commit it.
set -uo pipefail
part=${1:-1}
out=${OUT:-bench-results}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
if [ "$part" = 1 ]; then
    python3 -m pytest -q -p no:cacheprovider tests/ssm 2>&1 | tee "$out/tests_ssm.log" | tail -40
    python3 benchmarks/gpu.py --case a,b --quick --out "$out/gpu_ab.json" 2>&1 | tee "$out/gpu_ab.log"
else
    python3 benchmarks/gpu.py --case c,d --quick --out "$out/gpu_cd.json" 2>&1 | tee "$out/gpu_cd.log"
fi
