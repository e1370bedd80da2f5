"""benchmarks/sass_counts.py: SASS parsed into instructions and loops, counted by kind; blocks an SM holds; a seed
step's warp-instructions and their price at a measured run's rates; and the script end to end (compiling for sm_90 in a
subprocess, where ptxas and nvdisasm ship with triton)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _bench import BENCH, benchmark_module

# Two loops, the second holding a third: a branch back to an earlier label closes a loop, one forward does not
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   FFMA R3, R2, R2, R3 ;
        /*0030*/              @!P0 BRA `(.L_x_0) ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_1:
        /*0050*/                   MUFU.EX2 R5, R3 ;
.L_x_2:
        /*0060*/                   SHFL.BFLY PT, R6, R5, 0x1, 0x1f ;
        /*0070*/               @P1 BRA `(.L_x_2) ;
        /*0080*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0090*/               @P2 BRA `(.L_x_3) ;
        /*00a0*/               @P3 BRA `(.L_x_1) ;
.L_x_3:
        /*00b0*/                   STG.E desc[UR4][R4.64], R3 ;
        /*00c0*/                   EXIT ;
"""


@pytest.fixture(scope="module")
def sc():
    with benchmark_module("sass_counts") as module:
        yield module


def test_sass_parsed_into_loops_and_kinds(sc):
    instrs, labels = sc.parse_sass(SASS)
    assert [op for op, _ in instrs] == ["MOV", "LDG", "FFMA", "BRA", "BAR", "MUFU", "SHFL", "BRA", "HGMMA", "BRA",
                                        "BRA", "STG", "EXIT"]
    assert labels == {".L_x_0": 1, ".L_x_1": 5, ".L_x_2": 6, ".L_x_3": 11}
    assert instrs[3] == ("BRA", ".L_x_0")
    # the inner loop (.L_x_2) lies inside the second; the forward branch to .L_x_3 closes none
    assert sc.outer_loops(instrs, labels) == [(1, 3), (5, 10)]
    counts = sc.kinds(instrs)
    assert counts == {"all": 13, "bar": 1, "mma": 1, "mufu": 1, "ldg": 1, "stg": 1, "smem": 0, "shfl": 1, "fp": 1,
                      "local": 0}
    assert sc.kinds(instrs[5:11])["all"] == 6


def test_blocks_per_sm(sc):
    # registers (allocated per warp in units of 256), then shared memory, warps and blocks cap it
    assert sc.blocks_per_sm(255, 8, 0) == 1
    assert sc.blocks_per_sm(128, 8, 0) == 2
    assert sc.blocks_per_sm(120, 8, 34 * 1024) == 2
    assert sc.blocks_per_sm(64, 4, 512) == 8
    assert sc.blocks_per_sm(32, 4, 84 * 1024) == 2  # shared memory: 228 KB an SM
    assert sc.blocks_per_sm(16, 1, 0) == 32  # at most 32 blocks an SM


def _row(kernel, calls, programs, iterations, warps, total, in_loops, case="training"):
    return {"case": case, "kernel": kernel, "calls": calls, "seed_programs": programs,
            "seed_iterations": iterations, "warps": warps, "kernel_counts": {"all": total},
            "loop_counts": {"all": in_loops} if in_loops else None}


@pytest.mark.parametrize("calibration", ["h100-run7", "h200-run5"])
def test_seed_step_priced_at_measured_rates(sc, calibration):
    # warp-instructions: calls x programs x warps x (instructions outside the loops + iterations x those inside)
    row = _row("_chunk_scan_fwd", 1, 8192, 4, 8, 1000, 600)
    assert sc.warp_instructions(row) == 8192 * 8 * (400 + 4 * 600)
    assert sc.warp_instructions(_row("_conv_fwd", 2, 100, 1, 4, 50, 0)) == 2 * 100 * 4 * 50
    assert sc.warp_instructions(_row("_other", 1, None, None, 4, 50, 0)) is None
    # a kernel's rate from the measured tree's counts over its measured time; priced back, that tree's own rows give
    # that time
    measured = [row, _row("_conv_fwd", 2, 100, 1, 4, 50, 0)]
    rates = sc.rates(measured, calibration)
    ms = sc.CALIBRATIONS[calibration]["ms_per_layer"]
    want = sc.warp_instructions(row) / sc.SMS / (ms["_chunk_scan_fwd"] * 1000)
    assert rates["_chunk_scan_fwd"] == pytest.approx(want)
    table = sc._priced(measured, rates)
    total = float(table.splitlines()[-1].split()[-1])
    assert total == pytest.approx(24 * (ms["_chunk_scan_fwd"] + ms["_conv_fwd"]), abs=0.05)
    # every Triton kernel of the seed block's training step has a measured time
    assert set(ms) == {"_chunk_bwd_dx", "_rmsnorm_bwd", "_chunk_bwd_bc", "_conv_bwd", "_conv_fwd", "_rmsnorm_fwd",
                       "_chunk_scan_fwd", "_conv_bwd_gate", "_state_fwd", "_state_bwd", "_cumsum_fwd"}


def test_seed_launches_follow_the_host_code(sc, monkeypatch):
    from condorbrain.ssm.triton import fused, ssd

    # the forward scan: HEADS_PER_PROGRAM heads a program, all 16 of the group with the norm inside
    assert sc.seed_launch("_chunk_scan_fwd", {"T": 64}) == (1024 * 2 * 16 // ssd.HEADS_PER_PROGRAM,
                                                           ssd.HEADS_PER_PROGRAM)
    assert sc.seed_launch("_chunk_scan_fwd", {"T": 64, "NORM": True}) == (1024 * 2, 16)
    monkeypatch.setattr(ssd, "_DX_HEADS", 4)
    assert sc.seed_launch("_chunk_bwd_dx", {"T": 32, "BP": 32}) == (1024 * 4 * 4 * 2, 4)  # 4 chunks, 2 channel blocks
    assert sc.seed_launch("_conv_bwd", {"BL": 16, "BC": 128}) == (1024 * 9, 8)
    monkeypatch.setattr(fused, "_NORM_BWD_ROWS", 4)
    monkeypatch.setattr(fused, "_NORM_BWD_PROGRAMS", 4096)
    assert sc.seed_launch("_rmsnorm_bwd", {}) == (4096, 122880 / 4 / 4096)
    assert sc.seed_launch("_no_such_kernel", {}) == (None, None)


def test_script_counts_the_inference_forward(tmp_path):
    """The script on its own (compiling for sm_90 needs triton out of interpreter mode: a subprocess), the inference
    forward of the seed block: every launch counted, the scan's loop over heads found."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "nvdisasm").exists() or not (bin_dir / "ptxas").exists():
        pytest.skip(f"no ptxas / nvdisasm in {bin_dir} (they ship with triton's CUDA backend)")
    out = tmp_path / "counts.json"
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(BENCH / "sass_counts.py"), "--case", "inference", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["kernel"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"_chunk_scan_fwd", "_conv_fwd", "_cumsum_fwd", "_rmsnorm_fwd"} <= set(rows)
    assert "_state_fwd" not in rows  # L 120 is two chunks: the scan forms chunk 1's term itself (ssd.PREV)
    scan = rows["_chunk_scan_fwd"]
    assert scan["loops"] == 1 and 0 < scan["loop_counts"]["all"] < scan["kernel_counts"]["all"]
    # tensor cores; no spill in the loop over heads. Outside it one 2-byte spill store and load (255 registers:
    # C.B0^T is held too), in the form timed on an H100 (run 9d: faster than the state passed between chunks)
    assert scan["loop_counts"]["mma"] > 0 and scan["loop_counts"]["local"] == 0 and scan["kernel_counts"]["local"] <= 2
    assert scan["blocks_per_sm"] >= 1 and scan["seed_programs"] and scan["seed_iterations"]
    assert "priced" not in proc.stdout and "_chunk_scan_fwd" in proc.stdout
