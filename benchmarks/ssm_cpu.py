"""CPU benchmark of the SSM layers, side by side with their peers in one run (issue 2, section 5).

Config (shared/ANCHORS.md's CPU table): 4 layers, d_model 64, batch 32, length 120, float32, 2 threads, one
training step = forward + backward of MSE on the last step. Every row runs in its own fresh process (so its peak
RSS is its own), with the same inputs, warm-up, and median of ``--repeats`` timings.

Rows: condorbrain Mamba / Mamba2 on the compiled CPU scan and on the pure-PyTorch chunked scan; mambapy 1.2.0
(parallel scan, and sequential at L=120); the plain einsum Mamba-2 of shared/bench/anchor_bench.py.
Bars: Mamba >= 5x faster than mambapy's pscan, Mamba2 >= 2x faster than the plain einsum Mamba-2 (same run).

    .venv/bin/python benchmarks/ssm_cpu.py [--repeats 7] [--lengths 120,1024,8192] [--out bench-results/ssm_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss_mib  # noqa: E402


HERE = Path(__file__).resolve().parent

ROWS = {
    # name: (model kind, scan backend)
    "condorbrain Mamba (compiled scan)": ("cb_mamba", "compiled"),
    "condorbrain Mamba (PyTorch chunked scan)": ("cb_mamba", "torch"),
    "mambapy 1.2.0 Mamba (pscan)": ("mambapy_pscan", None),
    "mambapy 1.2.0 Mamba (sequential)": ("mambapy_seq", None),
    "condorbrain Mamba2 (compiled scan)": ("cb_mamba2", "compiled"),
    "condorbrain Mamba2 (PyTorch chunked SSD)": ("cb_mamba2", "torch"),
    "plain einsum Mamba2 (anchor_bench)": ("naive_m2", None),
}
BARS = [
    ("condorbrain Mamba (compiled scan)", "mambapy 1.2.0 Mamba (pscan)", 5.0),
    ("condorbrain Mamba2 (compiled scan)", "plain einsum Mamba2 (anchor_bench)", 2.0),
]


def _build(kind: str, d: int, n_layers: int):
    sys.path.insert(0, str(HERE))
    from _peers import MambapyNet, NaiveMamba2, Net

    from condorbrain.ssm import Mamba, Mamba2

    if kind == "cb_mamba":
        return Net(lambda dm: Mamba(d_model=dm, d_state=16, d_conv=4, expand=2), d, n_layers)
    if kind == "cb_mamba2":
        return Net(lambda dm: Mamba2(d_model=dm, d_state=64, d_conv=4, expand=2, headdim=16, chunk_size=64), d, n_layers)
    if kind == "naive_m2":
        return Net(lambda dm: NaiveMamba2(dm, d_state=64, headdim=16, chunk=64), d, n_layers)
    if kind in ("mambapy_pscan", "mambapy_seq"):
        return MambapyNet(d, n_layers, pscan=kind == "mambapy_pscan")
    raise ValueError(kind)


def _run_row(kind: str, backend: str | None, threads: int, d: int, n_layers: int, batch: int, L: int,
             repeats: int, q) -> None:
    if backend:
        os.environ["CONDORBRAIN_SCAN_BACKEND"] = backend
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(kind, d, n_layers)
    x = torch.randn(batch, L, 24)
    y = torch.randn(batch, 8)
    params = sum(p.numel() for p in net.parameters())

    def train_step():
        out = net(x)[:, -1]
        torch.nn.functional.mse_loss(out, y).backward()
        net.zero_grad(set_to_none=True)

    def fwd():
        with torch.no_grad():
            net(x)

    def median(fn):
        fn()  # warm-up (also builds the compiled scan on first use)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    base = rss_mib()
    t_train = median(train_step)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    t_fwd = median(fwd)
    q.put({"params": params, "train_s": t_train, "fwd_s": t_fwd, "peak_rss_mib": peak,
           "tokens_per_s": batch * L / t_train})


def run_row(name: str, threads: int, d: int, n_layers: int, batch: int, L: int, repeats: int) -> dict:
    kind, backend = ROWS[name]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run_row, args=(kind, backend, threads, d, n_layers, batch, L, repeats, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        return {"name": name, "L": L, "batch": batch, "error": f"exit code {p.exitcode}"}
    return {"name": name, "L": L, "batch": batch, **q.get()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="120,1024,8192", help="lengths for the scaling table (batch 4)")
    ap.add_argument("--out", default="bench-results/ssm_cpu.json")
    args = ap.parse_args(argv)
    d, n_layers = 64, 4

    import torch

    from condorbrain.ssm import cpu_kernel

    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"compiled scan: {'yes' if cpu_kernel.available() else cpu_kernel.unavailable_reason()}")
    results = []
    print(f"\n4 layers, d_model {d}, batch 32, L 120, float32: train step = forward + backward (median of "
          f"{args.repeats})")
    print(f"{'model':<44} {'params':>8} {'train s':>9} {'fwd s':>8} {'tokens/s':>10} {'peak MiB':>9}")
    for name in ROWS:
        r = run_row(name, args.threads, d, n_layers, 32, 120, args.repeats)
        results.append(r)
        if "error" in r:
            print(f"{name:<44} {r['error']}")
            continue
        print(f"{name:<44} {r['params']:>8,} {r['train_s']:>9.4f} {r['fwd_s']:>8.4f} {r['tokens_per_s']:>10,.0f} "
              f"{r['peak_rss_mib']:>9.1f}")
    by = {r["name"]: r for r in results if r["L"] == 120 and "error" not in r}
    bars = []
    print("\nBars (ratio of train-step times, same run):")
    for ours, peer, need in BARS:
        if ours in by and peer in by:
            ratio = by[peer]["train_s"] / by[ours]["train_s"]
            ok = ratio >= need
            bars.append({"ours": ours, "peer": peer, "ratio": ratio, "bar": need, "met": ok})
            print(f"  {ours} vs {peer}: {ratio:.2f}x (bar {need:.0f}x) {'MET' if ok else 'NOT MET'}")

    lengths = [int(s) for s in args.lengths.split(",") if s]
    if lengths:
        print("\nScaling with L, batch 4 (train step seconds; per 1k tokens in brackets)")
        scale_rows = [n for n in ROWS if "sequential" not in n]
        print(f"{'model':<44} " + " ".join(f"{'L=' + str(L):>18}" for L in lengths))
        for name in scale_rows:
            cells = []
            for L in lengths:
                r = run_row(name, args.threads, d, n_layers, 4, L, max(3, args.repeats // 2))
                results.append(r)
                cells.append(f"{'error':>18}" if "error" in r else
                             f"{r['train_s']:>8.3f} [{r['train_s'] / (4 * L) * 1e3:>7.4f}]")
            print(f"{name:<44} " + " ".join(cells))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {"d_model": d, "layers": n_layers, "threads": args.threads,
                                          "torch": torch.__version__, "machine": platform.machine()},
                               "results": results, "bars": bars}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
