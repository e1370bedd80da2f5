"""Training throughput and peak memory of CondorBrain per backbone, side by side in one run (issue 4, section 4).

Rows: CondorBrain with the Mamba-2 backbone, with the Mamba backbone, and seed 002's Transformer baseline
(``transformer_baseline(config, match_params=True)``: causal SDPA with RoPE plus a gated MLP sized so a block has
about the parameters of a Mamba-2 block). Every row uses the preset's model config with only the mixer changed, and
the preset's batch size and lookback.

One timed training step = what :func:`condorbrain.train.fit` does per optimizer step, without its bookkeeping:
forward of the whole model (embedding, backbone, regime gate, three expert decoders) under the loop's precision (bf16
autocast on CUDA, float32 on the CPU), :func:`condorbrain.models.condor_loss` on every head with the default
``LossWeights``, backward, gradient clipping at norm 1, and a fused AdamW step. Inputs and targets are random tensors
made once (no data loading in the timing). The model is in training mode (the preset's dropout and stochastic depth
act). ``--warmup`` steps first, then the median of ``--repeats`` timed steps.

Every row runs in its own fresh process (spawn), so its memory is its own:

* CPU: ``--threads`` torch threads (2 by default, the development machine); time by ``time.perf_counter``; memory =
  the process's peak resident set (``ru_maxrss``), reported whole and as the rise above the resident set just before
  the first step (model, optimizer and batch built; imports included in the whole figure only).
* CUDA: the runtime settings of ``fit``'s benchmark mode (TF32, cudnn.benchmark, expandable_segments; via
  :func:`condorbrain.train.runtime_mode`); time by CUDA events around each step; memory =
  ``torch.cuda.max_memory_allocated`` over warm-up and timed steps (reserved memory reported beside). A row that runs
  out of memory is reported as such (try ``--batch`` or ``--grad-checkpointing``). The figures of
  ``../shared/ANCHORS.md`` (official Mamba-2 layers, measured elsewhere) are printed beside the table, labelled as
  reference, not measured in this run.

    .venv/bin/python benchmarks/train_throughput.py                       # cpu-small on the CPU, 2 threads
    .venv/bin/python benchmarks/train_throughput.py --device cuda --preset h100-seed
    .venv/bin/python benchmarks/train_throughput.py --device cuda --batch 256 --grad-checkpointing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_seconds, rss_mib  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("mamba2", "mamba", "attention")
ROW_NAMES = {"mamba2": "CondorBrain Mamba-2", "mamba": "CondorBrain Mamba",
             "attention": "Transformer baseline (param-matched)"}

# ../shared/ANCHORS.md, GPU table, "train, B=1024" at the seeds' production config (d_model 512, 24 layers,
# lookback 120, batch 1024) on one H100 80GB HBM3, bf16 autocast, fused AdamW. Not measured by this script.
REFERENCE = [
    {"name": "official mamba_ssm Mamba2, fused path (ref_m2_fused, 39.7M params)", "tokens_per_s": 355_391,
     "samples_per_s": 2_962, "peak_gib": 38.8},
    {"name": "official mamba_ssm Mamba2, no causal_conv1d (ref_m2)", "tokens_per_s": 197_649,
     "samples_per_s": 1_647, "peak_gib": 56.0},
    {"name": "anchor Transformer block + 4x MLP (attn, 75.6M params)", "tokens_per_s": 343_209,
     "samples_per_s": 2_860, "peak_gib": 67.3},
    {"name": "the seed's claim (seed 000)", "tokens_per_s": 150_000, "samples_per_s": 1_250, "peak_gib": None},
]
REFERENCE_NOTE = ("reference, not measured in this run: ../shared/ANCHORS.md, one H100 80GB, d_model 512, 24 layers, "
                  "lookback 120, batch 1024, bf16 autocast; the anchors' model is Linear + blocks + RMSNorm + Linear "
                  "with MSE on the last step, not CondorBrain's heads and loss")


def read_preset(name_or_path: str) -> tuple[Any, Any, Path]:
    """(CondorBrainConfig, TrainConfig, path) of a preset name in configs/ or a preset file path."""
    from condorbrain.models import CondorBrainConfig
    from condorbrain.train import TrainConfig

    path = Path(name_or_path)
    if not path.suffix:
        path = ROOT / "configs" / f"{name_or_path}.toml"
    if not path.exists():
        raise SystemExit(f"preset {name_or_path!r}: no file {path}")
    train = tomllib.loads(path.read_text()).get("train", {}) if path.suffix == ".toml" else \
        json.loads(path.read_text()).get("train", {})
    return CondorBrainConfig.from_file(path), TrainConfig.from_dict(train), path


def backbone_config(base: Any, backbone: str) -> Any:
    """The preset's model config with the given backbone; attention is the param-matched Transformer baseline."""
    from condorbrain.models import transformer_baseline

    if backbone == "attention":
        return transformer_baseline(base, match_params=True)
    return dataclasses.replace(base, mixer=backbone)


def random_targets(cfg: Any, batch: int, generator: Any) -> dict[str, Any]:
    """Targets of every head of ``condor_loss``, of realistic size (the config's scales), shapes (B, ...)."""
    import torch

    s = cfg.target_scales()
    ret_scale = torch.tensor(s["ret"])
    hold = s["vol"]
    return {
        "ret": torch.randn(batch, cfg.n_horizons, generator=generator) * ret_scale,
        "vol": hold * (0.5 + torch.rand(batch, generator=generator)),
        "up": hold * torch.rand(batch, generator=generator),
        "down": hold * torch.rand(batch, generator=generator),
        "wing": hold * torch.rand(batch, generator=generator),
        "pop": (torch.rand(batch, generator=generator) > 0.5).float(),
        "roi": 0.3 * torch.randn(batch, generator=generator),
        "max_dd": hold * torch.rand(batch, generator=generator),
        "regime": torch.randint(0, cfg.n_regimes, (batch,), generator=generator),
    }


def _run_row(cfg: Any, batch: int, device_name: str, threads: int, warmup: int, repeats: int, lr: float,
             grad_checkpointing: bool, q: Any) -> None:
    """Child process: build one model, time ``repeats`` training steps after ``warmup``, put the result on ``q``."""
    import torch

    try:
        q.put(_measure(cfg, batch, device_name, threads, warmup, repeats, lr, grad_checkpointing))
    except torch.OutOfMemoryError:  # reported in the table; the other rows still run
        q.put({"error": "out of memory"})
    except (RuntimeError, ValueError) as err:
        q.put({"error": f"{type(err).__name__}: {err}"})


def _measure(cfg: Any, batch: int, device_name: str, threads: int, warmup: int, repeats: int, lr: float,
             grad_checkpointing: bool) -> dict[str, Any]:
    import torch

    from condorbrain.models import CondorBrain, LossWeights, condor_loss
    from condorbrain.ssm import scan_backend
    from condorbrain.train import TrainConfig, runtime_mode

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    with runtime_mode(TrainConfig(deterministic=False, device=device_name), device):  # before CUDA starts
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, cfg.lookback, cfg.n_features, generator=g).to(device)  # (B, L, F), z-scored
        targets = {k: v.to(device) for k, v in random_targets(cfg, batch, g).items()}
        weights = LossWeights()
        model = CondorBrain(cfg).to(device).train()
        model.gradient_checkpointing = grad_checkpointing
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)  # fused, as fit's

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = model(x)  # last step: PolicyOutput of (B, ...) fields
                loss, _ = condor_loss(out, targets, weights, cfg)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        rss_before = rss_mib()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):  # also builds the compiled CPU scan / autotunes cuDNN on first use
            step()
        times = device_seconds(step, device, repeats)

    seconds = statistics.median(times)
    result: dict[str, Any] = {
        "params": sum(p.numel() for p in params),
        "step_ms": seconds * 1e3,
        "step_ms_min": min(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "tokens_per_s": batch * cfg.lookback / seconds,
        "samples_per_s": batch / seconds,
        "scan_backend": scan_backend(device, torch.float32) if cfg.mixer != "attention" else None,
    }
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        result["peak_mib"] = peak
        result["peak_rise_mib"] = peak - rss_before
    return result


def run_row(cfg: Any, batch: int, device: str, threads: int, warmup: int, repeats: int, lr: float,
            grad_checkpointing: bool) -> dict[str, Any]:
    """One row in a fresh (spawned) process; ``{"error": ...}`` if it failed."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run_row, args=(cfg, batch, device, threads, warmup, repeats, lr, grad_checkpointing, q))
    p.start()
    p.join()
    if not q.empty():
        return q.get()
    return {"error": f"the row's process ended with exit code {p.exitcode} (killed for memory?)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--preset", default=None, help="preset name in configs/ or a file (default: cpu-small on the "
                                                   "CPU, h100-seed on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per row (CPU)")
    ap.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps (the median is reported)")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated subset of "
                                                                      f"{','.join(BACKBONES)}")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute backbone activations in backward")
    ap.add_argument("--out", default="bench-results/train_throughput.json")
    args = ap.parse_args(argv)
    backbones = [b for b in args.backbones.split(",") if b]
    if bad := sorted(set(backbones) - set(BACKBONES)):
        ap.error(f"unknown backbone(s) {bad}; choose from {BACKBONES}")
    if args.warmup < 1 or args.repeats < 1:
        ap.error("--warmup and --repeats must be >= 1")

    import torch

    from condorbrain.ssm import cpu_kernel

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (no GPU, or a CPU-only torch build)")
    preset = args.preset or ("h100-seed" if cuda else "cpu-small")
    model_cfg, train_cfg, preset_path = read_preset(preset)
    batch = args.batch or train_cfg.batch_size
    L = model_cfg.lookback

    if cuda:
        hw = torch.cuda.get_device_name(torch.device(args.device))
        where = f"{hw}, bf16 autocast, CUDA-event timing"
    else:
        hw = platform.processor() or platform.machine()
        compiled = "yes" if cpu_kernel.available() else f"no ({cpu_kernel.unavailable_reason()})"
        where = f"{hw}, {args.threads} threads, float32, compiled CPU scan: {compiled}"
    print(f"torch {torch.__version__}; {where}")
    print(f"preset {preset} ({preset_path.name}): d_model {model_cfg.d_model}, {model_cfg.n_layer} layers, "
          f"lookback {L}, batch {batch}, {model_cfg.n_features} features"
          f"{', gradient checkpointing' if args.grad_checkpointing else ''}")
    print(f"one step = forward + condor_loss (all heads) + backward + clip + fused AdamW; {args.warmup} warm-up, "
          f"median of {args.repeats} (fastest in brackets: on a shared machine a median far above it means "
          f"contention); each row in a fresh process\n")

    mem_head = "peak alloc MiB" if cuda else "peak RSS MiB"
    head = (f"{'backbone':<38} {'params':>10} {'ms/step':>9} {'(min)':>7} {'tokens/s':>11} {'samples/s':>10} "
            f"{mem_head:>14}")
    if not cuda:
        head += f" {'(rise MiB)':>11}"
    print(head)
    results = []
    for backbone in backbones:
        cfg = backbone_config(model_cfg, backbone)
        r = run_row(cfg, batch, args.device, args.threads, args.warmup, args.repeats, train_cfg.lr,
                    args.grad_checkpointing)
        r = {"backbone": backbone, "name": ROW_NAMES[backbone], "batch": batch, "lookback": L,
             "model_config": cfg.to_dict(), **r}
        results.append(r)
        if "error" in r:
            print(f"{r['name']:<38} {r['error']}")
            continue
        line = (f"{r['name']:<38} {r['params']:>10,} {r['step_ms']:>9.1f} {r['step_ms_min']:>7.1f} "
                f"{r['tokens_per_s']:>11,.0f} "
                f"{r['samples_per_s']:>10,.1f} {r['peak_mib']:>14,.0f}")
        if not cuda:
            line += f" {r['peak_rise_mib']:>11,.0f}"
        print(line, flush=True)

    ok = {r["backbone"]: r for r in results if "error" not in r}
    ratios = {}
    if "mamba2" in ok:
        print("\nSame run, tokens/s relative to CondorBrain Mamba-2:")
        for b, r in ok.items():
            ratios[b] = r["tokens_per_s"] / ok["mamba2"]["tokens_per_s"]
            print(f"  {r['name']:<38} {ratios[b]:.2f}x")

    if cuda:
        print(f"\nFor comparison -- {REFERENCE_NOTE}:")
        for ref in REFERENCE:
            print(f"  [reference, not measured in this run] {ref['name']:<66} {ref['tokens_per_s']:>9,} tokens/s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"device": args.device, "hardware": hw, "preset": preset, "batch": batch, "lookback": L,
                   "threads": args.threads if not cuda else None, "amp": "bf16" if cuda else "fp32",
                   "warmup": args.warmup, "repeats": args.repeats, "grad_checkpointing": args.grad_checkpointing,
                   "torch": torch.__version__, "memory": "torch.cuda.max_memory_allocated" if cuda else
                   "peak RSS of the row's process (ru_maxrss)"},
        "results": results,
        "tokens_per_s_relative_to_mamba2": ratios,
        "reference_not_measured": {"note": REFERENCE_NOTE, "rows": REFERENCE} if cuda else None,
    }, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
