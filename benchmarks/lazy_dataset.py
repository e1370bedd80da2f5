"""Random-batch latency and memory overhead of LazySequenceDataset on a (10M, 24) float32 memmap.

Builds the array in a temporary directory (written in chunks, never whole in RAM), memory-maps it read-only,
builds the dataset with contract segments and timestamps, then times ``dataset.batch`` on random batches of
1024 x 120 x 24 (median of many). Memory is read from /proc/self/status: ``RssAnon`` is the process's own memory
(what a copy of the array would add to), ``RssFile`` the mapped file pages, which live in the page cache and are
shared, not copied. Issue 3's bar: a batch in <= 10 ms, overhead < 5% of the array.

    python benchmarks/lazy_dataset.py [--rows 10000000] [--out bench-results/lazy_dataset.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from condorbrain.data.sequences import LazySequenceDataset, RandomBatchSampler

import sys
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, proc_status  # noqa: E402



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--features", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=120)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--segments", type=int, default=100, help="contracts, of equal length")
    p.add_argument("--repeats", type=int, default=200, help="timed batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results/lazy_dataset.json"))
    args = p.parse_args()

    n, f, L, B = args.rows, args.features, args.seq_len, args.batch
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npy"
        t0 = time.perf_counter()
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, f))
        rng = np.random.default_rng(args.seed)
        for lo in range(0, n, 1_000_000):
            hi = min(lo + 1_000_000, n)
            mm[lo:hi] = rng.standard_normal((hi - lo, f), dtype=np.float32)
        mm.flush()
        del mm
        write_s = time.perf_counter() - t0

        per = n // args.segments
        seg = np.minimum(np.arange(n, dtype=np.int64) // per, args.segments - 1).astype(np.int32)
        ts = (np.arange(n, dtype=np.int64) - np.searchsorted(seg, seg)) * 60  # each contract's own minute clock
        x = np.load(path, mmap_mode="r")
        array_bytes = x.nbytes
        before = proc_status()
        t0 = time.perf_counter()
        ds = LazySequenceDataset(x, L, segment_ids=seg, timestamps=ts, max_gap=60)
        build_s = time.perf_counter() - t0
        after_build = proc_status()

        sampler = RandomBatchSampler(len(ds), B, num_batches=args.repeats + 20, seed=args.seed)
        batches = list(sampler)
        # warm-up: the first batches fault the file's pages into this process's page tables
        t0 = time.perf_counter()
        for idx in batches[:20]:
            ds.batch(idx)
        warm_s = (time.perf_counter() - t0) / 20
        times = []
        for idx in batches[20:]:
            t0 = time.perf_counter()
            b = ds.batch(idx)
            times.append(time.perf_counter() - t0)
        assert b.x.shape == (B, L, f)
        after_batches = proc_status()
        del b

    times_ms = sorted(1e3 * t for t in times)
    anon_overhead = max(after_batches["RssAnon"] - before["RssAnon"] - B * L * f * 4, 0)
    result = {
        "rows": n, "features": f, "seq_len": L, "batch": B, "segments": args.segments, "repeats": args.repeats,
        "array_bytes": array_bytes,
        "samples": len(ds),
        "write_memmap_s": write_s,
        "build_dataset_s": build_s,
        "batch_ms_median": statistics.median(times_ms),
        "batch_ms_p90": times_ms[int(0.9 * (len(times_ms) - 1))],
        "batch_ms_min": times_ms[0],
        "batch_ms_first20_mean": 1e3 * warm_s,
        "dataset_index_bytes": ds.overhead_bytes,
        "rss_anon_build_delta_bytes": after_build["RssAnon"] - before["RssAnon"],
        "rss_anon_overhead_bytes": anon_overhead,
        "rss_anon_overhead_pct_of_array": 100 * anon_overhead / array_bytes,
        "rss_file_growth_bytes": after_batches["RssFile"] - before["RssFile"],
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "numpy": np.__version__, "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    rows = [
        ("array", f"{n:,} x {f} float32 = {array_bytes / 2**20:,.0f} MiB, {args.segments} segments"),
        ("samples (valid windows)", f"{len(ds):,}"),
        ("write memmap", f"{write_s:.2f} s"),
        ("build dataset", f"{build_s * 1e3:.1f} ms"),
        (f"batch {B}x{L}x{f} median", f"{result['batch_ms_median']:.2f} ms (bar: <= 10 ms)"),
        ("batch p90 / min", f"{result['batch_ms_p90']:.2f} / {result['batch_ms_min']:.2f} ms"),
        ("first 20 batches (cold pages), mean", f"{result['batch_ms_first20_mean']:.2f} ms"),
        ("dataset index", f"{ds.overhead_bytes:,} bytes"),
        ("RssAnon growth, building", f"{result['rss_anon_build_delta_bytes'] / 2**20:.1f} MiB"),
        ("RssAnon overhead (less one batch)",
         f"{anon_overhead / 2**20:.1f} MiB = {result['rss_anon_overhead_pct_of_array']:.2f}% of the array "
         "(bar: < 5%)"),
        ("RssFile growth (mapped page cache, shared)",
         f"{(after_batches['RssFile'] - before['RssFile']) / 2**20:,.0f} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"LazySequenceDataset on {os.cpu_count()} CPUs ({cpu_model()})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
