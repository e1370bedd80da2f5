"""Activations kept for the backward, per token per layer, of the Mamba-2 training path, and what that is at the seed
config (issue 6: training peak <= 30 GiB; the official fused layer peaks at 38.8 GiB, ../shared/ANCHORS.md).

Measured on the CPU, in bf16 autocast, on the anchors' wrapper network ``_gpu_models.build("cb_m2", 512, 2)``
(d_model 512, expand 2, headdim 64, d_state 64, chunk 64: the seed's layer sizes). A
``torch.autograd.graph.saved_tensors_hooks`` hook sees every tensor autograd saves during one forward; counted are
the distinct storages still held by the graph when the forward returns (parameters and leaf inputs excluded; a
tensor saved by a node that is freed at once, e.g. inside an input check, is not an activation). Each save is
tagged by the module it happened in: a block's mixer (the Mamba2 layer), a block's pre-norm, or the rest (input
Linear, final norm, head). Measured at two lengths, the per-token figure is the slope between them, so whatever
does not grow with L (bf16 copies of weights, per-chunk states) cancels.

Rows:

* ``triton``: the fused GPU training path (``CONDORBRAIN_SCAN_BACKEND=triton``), run under Triton's interpreter
  (``TRITON_INTERPRET=1``, set here before triton is imported): the same host code, so the same saves, as on a GPU.
* ``triton + library RMSNorm``: the same with this project's RMSNorm as the pre-norms and the final norm
  (``_gpu_models`` network ``cb_m2n``): each pre-norm runs inside its Mamba2's in_proj node
  (``condorbrain.ssm.blocks.norm_then_mix``), which keeps the block's input x and one float32 1/rms per token and
  recomputes the normalised input in the backward; counted under the mixer (the pre-norm column is then 0).
* ``compiled``: the CPU path (compiled C++ scan), for comparison.
* official: ``mamba_ssm``'s ``mamba_split_conv1d_scan_combined`` (its fused path) keeps, per token and layer, zxbcdt
  (d_in_proj channels) and the scan's output before the norm (d_ssm), both bf16 under autocast, the norm's 1/rms
  (float32, one per group), and in_proj keeps its bf16 input (d_model): ``(d_in_proj + d_ssm + d_model) * 2 +
  4 * ngroups`` bytes, from its ``ctx.save_for_backward`` (mamba_ssm/ops/triton/ssd_combined.py). Its wrapper
  (pre-norms, rest) is the same network, so those figures are taken from this run.

The seed extrapolation is ``(24 * (mixer + pre-norm) + rest) * 1024 * 120`` bytes: the activations alone. A
training step's peak adds the parameters, gradients and AdamW state (~0.6 GiB at 39.7M parameters) and the
backward's working set (gradients of one layer's activations in flight, float32 in places); for the official layer
the measured 38.8 GiB peak is printed beside its activation figure, the difference being that overhead.

    .venv/bin/python benchmarks/activation_memory.py [--lengths 128,256] [--out bench-results/activation_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: the Triton path on the CPU

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpu_models as gm  # noqa: E402
import torch  # noqa: E402

from condorbrain.ssm.memory import saved_activation_bytes  # noqa: E402

D_MODEL = 512
N_LAYERS = 2  # measured; extrapolated to the seed's 24
SEED = {"layers": 24, "batch": 1024, "L": 120}
OFFICIAL_PEAK_GIB = 38.8  # ../shared/ANCHORS.md, "train, B=1024", ref_m2_fused, one H100, bf16 autocast
BAR_PEAK_GIB = 30.0  # issue 6 (benchmarks/gpu.py's BAR_TRAIN_PEAK_GIB)
ROWS = (("triton", "cb_m2", "triton"), ("triton + library RMSNorm", "cb_m2n", "triton"),
        ("compiled", "cb_m2", "compiled"))  # (label, _gpu_models network, scan backend)


def saved_bytes_by_tag(net: gm.Net, x: torch.Tensor) -> dict[str, int]:
    """Bytes the graph of ``net(x)`` keeps for the backward (:func:`condorbrain.ssm.memory.saved_activation_bytes`),
    by where they were saved: ``mixer`` (all blocks' mixers), ``norm`` (all blocks' pre-norms), ``rest``."""
    from condorbrain.ssm import Mamba2

    tag = ["rest"]
    hooks = []
    for name, mods in (("mixer", net.mixers), ("norm", net.norms)):
        for mod in mods:
            hooks.append(mod.register_forward_pre_hook(lambda *_, n=name: tag.__setitem__(0, n)))
            hooks.append(mod.register_forward_hook(lambda *_: tag.__setitem__(0, "rest")))
    joined = Mamba2.forward_prenormed  # a pre-norm joined to in_proj (norm_then_mix): no module call, so no hook

    def forward_prenormed(self, *args, **kwargs):
        tag[0] = "mixer"
        try:
            return joined(self, *args, **kwargs)
        finally:
            tag[0] = "rest"

    Mamba2.forward_prenormed = forward_prenormed
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            saved = saved_activation_bytes(lambda: net(x), tag=lambda: tag[0])
    finally:
        Mamba2.forward_prenormed = joined
        for h in hooks:
            h.remove()
    return {where: saved.get(where, 0) for where in ("mixer", "norm", "rest")}


def measure(label: str, model: str, backend: str, lengths: tuple[int, int], batch: int) -> dict:
    """Per-token slopes (bytes) of one network on one backend: mixer and pre-norm per layer, rest per token."""
    os.environ["CONDORBRAIN_SCAN_BACKEND"] = backend
    torch.manual_seed(0)
    net = gm.build(model, D_MODEL, N_LAYERS)
    t0 = time.perf_counter()
    at = [saved_bytes_by_tag(net, torch.randn(batch, L, gm.N_IN)) for L in lengths]
    tokens = batch * (lengths[1] - lengths[0])
    slope = {k: (at[1][k] - at[0][k]) / tokens for k in at[0]}
    return {"backend": label, "model": model, "scan_backend": backend, "mixer_per_layer": slope["mixer"] / N_LAYERS,
            "norm_per_layer": slope["norm"] / N_LAYERS, "rest": slope["rest"], "seconds": time.perf_counter() - t0}


def seed_gib(mixer: float, norm: float, rest: float) -> float:
    """Activations of the seed config's training forward, GiB."""
    return (SEED["layers"] * (mixer + norm) + rest) * SEED["batch"] * SEED["L"] / 2**30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="128,256", help="two sequence lengths (multiples of the chunk, 64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-results/activation_memory.json")
    args = ap.parse_args(argv)
    lengths = tuple(int(s) for s in args.lengths.split(","))
    if len(lengths) != 2 or lengths[0] >= lengths[1]:
        ap.error("--lengths takes two increasing lengths")
    torch.set_num_threads(args.threads)

    from condorbrain.ssm import Mamba2

    layer = Mamba2(D_MODEL, d_state=gm.FULL.d_state_m2, expand=gm.FULL.expand, headdim=gm.FULL.headdim)
    d_in_proj, d_ssm, ngroups = layer.in_proj.out_features, layer.d_ssm, layer.ngroups
    official_mixer = (d_in_proj + d_ssm + D_MODEL) * 2 + 4 * ngroups  # see the module docstring

    rows = [measure(*row, lengths, args.batch) for row in ROWS]
    for r in rows:
        r["seed_gib"] = seed_gib(r["mixer_per_layer"], r["norm_per_layer"], r["rest"])
    ref = rows[0]
    official = {"backend": "official fused (analytic)", "mixer_per_layer": official_mixer,
                "norm_per_layer": ref["norm_per_layer"], "rest": ref["rest"]}
    official["seed_gib"] = seed_gib(official_mixer, official["norm_per_layer"], official["rest"])

    print(f"Activations kept for the backward, bf16 autocast, d_model {D_MODEL}, d_inner {layer.d_inner}, d_state "
          f"{layer.d_state}, headdim {layer.headdim} (d_in_proj {d_in_proj}); slope between L = {lengths[0]} and "
          f"{lengths[1]}, batch {args.batch}")
    print(f"{'path':<34} {'mixer B/tok/layer':>18} {'pre-norm':>9} {'rest B/tok':>11} "
          f"{'seed activations GiB':>21}")
    for r in [*rows, official]:
        print(f"{r['backend']:<34} {r['mixer_per_layer']:>18,.0f} {r['norm_per_layer']:>9,.0f} {r['rest']:>11,.0f} "
              f"{r['seed_gib']:>21.1f}")
    print(f"\nSeed config: {SEED['layers']} layers, batch {SEED['batch']}, L {SEED['L']}. Activations only; the "
          f"official layer's measured peak is {OFFICIAL_PEAK_GIB} GiB (activations {official['seed_gib']:.1f} GiB: "
          f"{OFFICIAL_PEAK_GIB - official['seed_gib']:.1f} GiB of parameters, optimizer and backward working set). "
          f"Bar: peak <= {BAR_PEAK_GIB:.0f} GiB.")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"d_model": D_MODEL, "d_inner": layer.d_inner, "d_state": layer.d_state, "headdim": layer.headdim,
                   "d_in_proj": d_in_proj, "measured_layers": N_LAYERS, "lengths": lengths, "batch": args.batch,
                   "autocast": "bfloat16", "torch": torch.__version__, "machine": platform.machine()},
        "seed": SEED, "results": rows, "official": official, "official_peak_gib": OFFICIAL_PEAK_GIB,
        "bar_peak_gib": BAR_PEAK_GIB}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
