"""Benchmark: the whole data pipeline at the seeds' scale, as a user runs it (issue 3 section 6).

Stages: synthesize a 1-minute market to Parquet (`write_synth_market`, 256 sessions x 390 bars x 100 contracts),
then `build_dataset` on those files (load + strict validation, plan, bar features + targets, as-of join + the 24
features by contract groups, ivr + valid mask, metadata): ~10M joined rows. Then random batches of
1024 x 120 x 24 from the LazySequenceDataset on the written folder (`open_dataset`, memory-mapped).

Memory: the peak resident set (VmHWM from /proc/self/status) is reset before each stage (writing 5 to
/proc/self/clear_refs, Linux >= 4.0) so each stage reports its own peak; getrusage's ru_maxrss is reported for the
whole process as well. Issue 3's bars: whole build (synthesize + build) <= 120 s; peak RSS <= 3x the final float32
feature array; a random batch <= 10 ms (median).

    .venv/bin/python benchmarks/data_pipeline.py                          # full size (~10M joined rows)
    .venv/bin/python benchmarks/data_pipeline.py --sessions 5 --out /tmp/small.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from condorbrain.data import MarketConfig, RandomBatchSampler, write_synth_market
from condorbrain.dataset import BuildConfig, build_dataset, open_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, proc_status  # noqa: E402



def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=256, help="trading sessions of 390 bars (default 256: ~10M rows)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-staleness-s", type=float, default=120.0, help="max quote age for the join (default 120)")
    p.add_argument("--chunk-rows", type=int, default=1_000_000, help="joined rows per contract group (default 1M)")
    p.add_argument("--seq-len", type=int, default=120, help="window length (default 120)")
    p.add_argument("--batch", type=int, default=1024, help="batch size (default 1024)")
    p.add_argument("--repeats", type=int, default=200, help="timed batches after 20 warm-up batches (default 200)")
    p.add_argument("--workdir", type=Path, default=None, help="where to write the market and dataset (default: a "
                                                                "temporary folder, removed at the end)")
    p.add_argument("--out", type=Path, default=Path("bench-results/data_pipeline.json"), help="JSON output path")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="data_pipeline_", dir=args.workdir))
    baseline = proc_status()["VmRSS"]  # the interpreter with numpy, polars, torch imported, before any data
    stages: list[dict[str, float | int | str]] = []
    can_reset = _reset_peak()

    def record(name: str, seconds: float, rows: int, peak: int | None) -> None:
        stages.append({"stage": name, "seconds": round(seconds, 3), "rows": rows,
                       "rows_per_s": round(rows / seconds) if seconds > 0 else 0,
                       "peak_rss_mib": None if peak is None else round(peak / 2**20, 1)})

    try:
        config = MarketConfig(n_sessions=args.sessions, seed=args.seed)
        _reset_peak()
        t0 = time.perf_counter()
        written = write_synth_market(work / "market", config, progress=True)
        synth_s = time.perf_counter() - t0
        synth_peak = proc_status()["VmHWM"]
        record("synthesize -> Parquet", synth_s, written.n_bars + written.n_quotes, synth_peak)

        build_cfg = BuildConfig(max_staleness=dt.timedelta(seconds=args.max_staleness_s), chunk_rows=args.chunk_rows)
        _reset_peak()
        t0 = time.perf_counter()
        summary = build_dataset(written.bars_dir, written.quotes_dir, work / "dataset", build_cfg, progress=True)
        build_s = time.perf_counter() - t0
        build_peak = proc_status()["VmHWM"]
        per_stage_rows = {"load + validate": written.n_bars + written.n_quotes, "plan": written.n_quotes,
                          "bar features + targets": written.n_bars, "join + features": summary.rows,
                          "ivr + valid mask": summary.rows, "write metadata": summary.segments}
        for name, sec in summary.seconds.items():
            record(f"  build: {name}", sec, per_stage_rows.get(name, summary.rows), None)
        record("build (all stages)", build_s, summary.rows, build_peak)

        _reset_peak()
        before = proc_status()
        t0 = time.perf_counter()
        ds = open_dataset(work / "dataset", args.seq_len)
        open_s = time.perf_counter() - t0
        batches = list(RandomBatchSampler(len(ds), args.batch, num_batches=args.repeats + 20, seed=args.seed))
        for idx in batches[:20]:  # warm-up: fault the file's pages into this process
            ds.batch(idx)
        times = []
        for idx in batches[20:]:
            t1 = time.perf_counter()
            b = ds.batch(idx)
            times.append(time.perf_counter() - t1)
        shape = tuple(b.x.shape)
        after = proc_status()
        times_ms = sorted(1e3 * t for t in times)
        batch_median = statistics.median(times_ms)
        record("open lazy dataset", open_s, summary.rows, None)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    whole_s = synth_s + build_s
    feature_bytes = summary.feature_bytes
    peak = max(synth_peak, build_peak)
    bars = {
        "whole_build_s": {"value": round(whole_s, 2), "limit": 120.0, "met": whole_s <= 120.0},
        "peak_rss_over_feature_array": {"value": round(peak / feature_bytes, 3), "limit": 3.0,
                                        "met": peak <= 3 * feature_bytes},
        "peak_rss_above_baseline_over_feature_array": {"value": round((peak - baseline) / feature_bytes, 3),
                                                       "limit": 3.0, "met": peak - baseline <= 3 * feature_bytes},
        "batch_ms_median": {"value": round(batch_median, 3), "limit": 10.0, "met": batch_median <= 10.0},
    }
    result = {
        "benchmark": "data_pipeline",
        "config": {"sessions": args.sessions, "seed": args.seed, "max_staleness_s": args.max_staleness_s,
                   "chunk_rows": args.chunk_rows, "contracts_per_minute": config.contracts_per_minute,
                   "seq_len": args.seq_len, "batch": args.batch, "repeats": args.repeats},
        "bars": written.n_bars, "quotes": written.n_quotes, "joined_rows": summary.rows,
        "valid_rows": summary.valid_rows, "rows_without_quote": summary.rows_without_quote,
        "features": int(ds.n_features), "feature_array_bytes": feature_bytes, "samples": len(ds),
        "batch_shape": list(shape),
        "stages": stages,
        "whole_build_s": round(whole_s, 3),
        "baseline_rss_bytes": baseline,
        "peak_rss_synthesize_bytes": synth_peak, "peak_rss_build_bytes": build_peak,
        "peak_rss_reset_per_stage": can_reset,
        "ru_maxrss_process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "lazy": {"batch_ms_median": batch_median, "batch_ms_p90": times_ms[int(0.9 * (len(times_ms) - 1))],
                 "batch_ms_min": times_ms[0], "rss_anon_growth_bytes": after["RssAnon"] - before["RssAnon"],
                 "rss_file_growth_bytes": after["RssFile"] - before["RssFile"],
                 "dataset_index_bytes": ds.overhead_bytes},
        "bars_from_issue": bars,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "polars_threads": pl.thread_pool_size(),
                    "polars": pl.__version__, "numpy": np.__version__, "python": platform.python_version(),
                    "platform": platform.platform()},
        "when_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }

    print(f"\nbars {written.n_bars:,}  quotes {written.n_quotes:,}  joined rows {summary.rows:,}  "
          f"valid {summary.valid_rows:,}  features {ds.n_features}  array {feature_bytes / 2**20:,.0f} MiB")
    print(f"{'stage':<34} {'seconds':>9} {'rows':>13} {'rows/s':>13} {'peak RSS MiB':>13}")
    for s in stages:
        peak_txt = "" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:,.0f}"
        print(f"{s['stage']:<34} {s['seconds']:>9.2f} {s['rows']:>13,} {s['rows_per_s']:>13,} {peak_txt:>13}")
    print(f"{'whole build (synthesize + build)':<34} {whole_s:>9.2f}")
    print(f"baseline RSS after imports {baseline / 2**20:,.0f} MiB (included in the peaks above)")
    print(f"random batch {shape}: median {batch_median:.2f} ms, p90 {result['lazy']['batch_ms_p90']:.2f} ms")
    print("bars from issue 3:")
    for k, v in bars.items():
        print(f"  {k:<30} {v['value']:>10} (limit {v['limit']}) {'met' if v['met'] else 'NOT MET'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
