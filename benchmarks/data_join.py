"""Benchmark: synthesize an intraday market, validate it and as-of join bars with option quotes.

The default size is the seeds' scale: 256 sessions x 390 one-minute bars x 100 contracts ~ 10M joined rows.
Prints a table (seconds per stage, rows/s, peak RSS) and writes JSON to --out.

    .venv/bin/python benchmarks/data_join.py                      # full size (~10M joined rows)
    .venv/bin/python benchmarks/data_join.py --sessions 5 --out /tmp/small.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import polars as pl

from condorbrain.data import MarketConfig, asof_join, synth_market, validate_bars, validate_quotes


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=256, help="trading sessions of 390 bars (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-staleness-s", type=float, default=120.0,
                   help="max quote age in seconds for the join (default 120)")
    p.add_argument("--out", type=Path, default=Path("bench-results/data_join.json"), help="JSON output path")
    args = p.parse_args(argv)

    config = MarketConfig(n_sessions=args.sessions, seed=args.seed)
    stages: list[dict[str, float | int | str]] = []

    def record(name: str, seconds: float, rows: int) -> None:
        stages.append({"stage": name, "seconds": round(seconds, 3), "rows": rows,
                       "rows_per_s": round(rows / seconds) if seconds > 0 else 0,
                       "peak_rss_mib": round(_peak_rss_mib(), 1)})

    t = time.perf_counter()
    bars, quotes = synth_market(config, progress=True)
    record("synthesize", time.perf_counter() - t, bars.height + quotes.height)

    t = time.perf_counter()
    validate_bars(bars, strict=True)
    validate_quotes(quotes, strict=True)
    record("validate", time.perf_counter() - t, bars.height + quotes.height)

    t = time.perf_counter()
    joined = asof_join(bars, quotes, dt.timedelta(seconds=args.max_staleness_s))
    record("asof_join", time.perf_counter() - t, joined.height)

    missing = joined.get_column("quote_ts").null_count()
    result = {
        "benchmark": "data_join",
        "config": {"sessions": args.sessions, "seed": args.seed, "max_staleness_s": args.max_staleness_s,
                   "contracts_per_minute": config.contracts_per_minute, "quote_prob": config.quote_prob},
        "bars": bars.height, "quotes": quotes.height, "joined_rows": joined.height,
        "joined_missing_quote_fraction": round(missing / max(joined.height, 1), 6),
        "joined_estimated_mib": round(joined.estimated_size("mb"), 1),
        "stages": stages,
        "total_seconds": round(sum(float(s["seconds"]) for s in stages), 3),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "machine": {"cpus": os.cpu_count(), "polars_threads": pl.thread_pool_size(), "polars": pl.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
        "when_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }

    print(f"\nbars {bars.height:,}  quotes {quotes.height:,}  joined rows {joined.height:,}  "
          f"missing quotes {result['joined_missing_quote_fraction']:.2%}")
    print(f"{'stage':<12} {'seconds':>9} {'rows':>13} {'rows/s':>13} {'peak RSS MiB*':>13}")
    for s in stages:
        print(f"{s['stage']:<12} {s['seconds']:>9.2f} {s['rows']:>13,} {s['rows_per_s']:>13,} "
              f"{s['peak_rss_mib']:>13,.0f}")
    print(f"{'total':<12} {result['total_seconds']:>9.2f}")
    print("* peak resident set size of the process up to the end of the stage (getrusage ru_maxrss)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
