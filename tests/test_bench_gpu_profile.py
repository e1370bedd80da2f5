"""benchmarks/gpu_profile.py: the kernel breakdown runs in its CPU smoke mode (operators instead of kernels) and
writes per-step times by kind that add up; kernels are sorted into kinds by name. (No timing is asserted.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _bench import benchmark_module


@pytest.fixture(scope="module")
def prof():
    with benchmark_module("gpu_profile") as module:
        yield module


@pytest.mark.parametrize(("name", "kind"), [
    ("_chunk_scan_fwd", "condorbrain triton"),
    ("_rmsnorm_bwd", "condorbrain triton"),
    ("_mamba2_step_ssm", "condorbrain triton"),
    ("_chunk_bwd_bc", "condorbrain triton"),
    ("_chunk_scan_chunk_state_bwd_dx_kernel", "other triton"),  # the official kernels' names are alike
    ("_state_passing_fwd_kernel", "other triton"),
    ("_layer_norm_fwd_1pass_kernel", "other triton"),
    ("triton_poi_fused_add_0", "other triton"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNN", "matmul"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copy"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>", "elementwise/reduction"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("Memcpy DtoD (Device -> Device)", "copy"),
    ("aten::addmm", "matmul"),
    ("cudaGraphLaunch", "other"),
])
def test_kernel_kinds(prof, name, kind):
    if kind == "condorbrain triton" and not prof.our_kernels():
        pytest.skip("triton is not installed: no kernel of ours to name")
    assert prof.kind_of(name) == kind


def test_cpu_smoke_run(prof, tmp_path):
    out = tmp_path / "p.json"
    threads = torch.get_num_threads()
    try:
        assert prof.main(["--device", "cpu", "--tiny", "--threads", "1", "--steps", "2", "--top", "5",
                          "--models", "cb_m2n,ref_m2,attn", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["models"]["ref_m2"] == {}  # CUDA only: no phase
    assert set(res["models"]["cb_m2n"]) == {"train", "infer", "stream", "long"}
    assert set(res["models"]["attn"]) == {"train", "infer", "long"}  # attention has no streaming step
    for model in ("cb_m2n", "attn"):
        for phase, r in res["models"][model].items():
            assert r["unit"] == "cpu us" and r["total_us_per_step"] > 0, (model, phase)
            assert math.isclose(sum(r["by_kind"].values()), r["total_us_per_step"], rel_tol=1e-9)
            assert len(r["top"]) == min(5, r["kernels"])
            times = [t["us_per_step"] for t in r["top"]]
            assert times == sorted(times, reverse=True) and all(0 < t["share"] <= 1 for t in r["top"])
    # a training step runs the optimizer; the forward does not
    assert "optimizer" in res["models"]["attn"]["train"]["by_kind"]
    assert "optimizer" in res["models"]["attn"]["long"]["by_kind"]
    assert "optimizer" not in res["models"]["attn"]["infer"]["by_kind"]


def test_device_idle_time_is_the_span_less_the_union_of_kernels(prof):
    # two steps: kernels a [0, 10), b [5, 12) overlapping a, then a gap of 8, c [20, 30); d [30, 31) right after; a gap
    # of 69, e [100, 140)
    kernels = [(20.0, 30.0, "c"), (0.0, 10.0, "a"), (5.0, 12.0, "b"), (30.0, 31.0, "d"), (100.0, 140.0, "e")]
    t = prof.device_idle(kernels, steps=2, top=1)
    assert t["span_us_per_step"] == 70.0  # 140 us over two steps
    assert t["busy_us_per_step"] == (12 + 11 + 40) / 2
    assert t["idle_us_per_step"] == (8 + 69) / 2
    assert t["gaps"] == [{"us": 69.0, "after": "d", "before": "e"}]
    assert prof.device_idle([], steps=3)["idle_us_per_step"] == 0.0
