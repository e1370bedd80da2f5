"""The ``condorbrain`` command. Thin: each subcommand parses its options and calls a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from condorbrain import __version__


def _cmd_smoke(args: argparse.Namespace) -> int:
    from condorbrain.smoke import smoke_run

    smoke_run(steps=args.steps, seed=args.seed)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from condorbrain.ssm import cpu_kernel, scan_backend

    print(f"condorbrain {__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"CPU scan path: {scan_backend('cpu')}"
          + (f" ({cpu_kernel.unavailable_reason()})" if not cpu_kernel.available() else ""))
    from condorbrain.ssm import triton as triton_path
    from condorbrain.ssm.graph import streaming_path

    cuda = torch.cuda.is_available()
    print(f"CUDA: {cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
    if cuda:
        ok, why = triton_path.status("cuda")
        print(f"GPU scan path: {scan_backend('cuda')}" + ("" if ok else f" (Triton kernels unavailable: {why})"))
        print(f"GPU streaming: {streaming_path('cuda')}")
    else:
        print(f"GPU kernels (Triton): {triton_path.status('cuda')[1]}")
    if triton_path.interpreting():  # TRITON_INTERPRET=1: the kernels on the CPU (how the tests check them)
        ok, why = triton_path.status("cpu")
        print(f"Triton interpreter on the CPU: {'usable, ' if ok else 'not usable: '}{why}")
    return 0


# ------------------------------------------------------------------------------------------------------------------
# condorbrain data ...

def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _csv_names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cmd_data_synth(args: argparse.Namespace) -> int:
    import json
    import time

    from condorbrain.data import MarketConfig, write_synth_market

    config = MarketConfig(n_sessions=args.sessions, start=args.start, seed=args.seed, symbol=args.symbol,
                          n_expiries=args.expiries, strikes_each_side=args.strikes_each_side,
                          strike_step=args.strike_step)
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        written = write_synth_market(out, config, chunk_sessions=args.chunk_sessions, progress=not args.no_progress)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    (out / "market.json").write_text(json.dumps({
        "what": "synthetic intraday market written by `condorbrain data synth`; every value is simulated",
        "config": {"n_sessions": config.n_sessions, "start": config.start.isoformat(), "seed": config.seed,
                   "symbol": config.symbol, "n_expiries": config.n_expiries,
                   "strikes_each_side": config.strikes_each_side, "strike_step": config.strike_step},
        "bars": written.n_bars, "quotes": written.n_quotes, "parts": written.n_parts,
    }, indent=2) + "\n")
    print(_table([("bars", f"{written.n_bars:,}  ({written.bars_dir})"),
                  ("quotes", f"{written.n_quotes:,}  ({written.quotes_dir})"),
                  ("contracts per minute", f"{config.contracts_per_minute}"),
                  ("parquet parts per table", f"{written.n_parts}"),
                  ("seconds", f"{seconds:.2f}")]))
    return 0


def _build_config(args: argparse.Namespace, daily: bool):
    """Flags given on the command line > the --config file > the daily defaults of --embedded > BuildConfig's."""
    import dataclasses
    import datetime as dt
    import json

    from condorbrain.data import ChainConfig
    from condorbrain.dataset import DAILY_MAX_STALENESS, BuildConfig

    config = BuildConfig()
    if daily:  # daily bars, their staleness, and the chains' own rate assumptions
        chain = ChainConfig()
        config = dataclasses.replace(
            config, max_staleness=DAILY_MAX_STALENESS,
            features=dataclasses.replace(config.features, ivr_window=252, rate=chain.rate,
                                         dividend_yield=chain.div_yield))
    if args.config is not None:
        merged = config.to_dict()
        for key, value in json.loads(Path(args.config).read_text()).items():  # nested configs merge field by field
            both = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = {**merged[key], **value} if both else value
        config = BuildConfig.from_dict(merged)
    feats = {k: v for k, v in (("ivr_window", args.ivr_window), ("rate", args.rate),
                               ("dividend_yield", args.dividend_yield)) if v is not None}
    top: dict[str, object] = {k: v for k, v in (("extra_sets", args.extra), ("horizons", args.horizons),
                                                ("chunk_rows", args.chunk_rows)) if v is not None}
    if args.max_staleness_s is not None:
        top["max_staleness"] = dt.timedelta(seconds=args.max_staleness_s)
    return dataclasses.replace(config, features=dataclasses.replace(config.features, **feats), **top)


def _cmd_data_build(args: argparse.Namespace) -> int:
    import datetime as dt
    import json

    from condorbrain.data import DataValidationError, load_bars, load_quotes
    from condorbrain.dataset import build_dataset

    try:
        config = _build_config(args, daily=args.embedded is not None)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if (args.embedded is None) == (args.bars is None or args.quotes is None):
        print("error: give either --bars and --quotes, or --embedded", file=sys.stderr)
        return 2
    provenance: dict[str, str] = {}
    names: dict[str, str] = {}
    try:
        if args.embedded:
            from condorbrain.data import load_nasdaq, load_sp500, load_vix, synth_chains

            bars = load_sp500() if args.embedded == "sp500" else load_nasdaq()
            vix = load_vix() if args.embedded == "sp500" else None
            quotes = synth_chains(bars, vix=vix)
            names = {"bars": f"embedded {args.embedded} (arch.data)", "quotes": "synth_chains on those bars"}
            provenance = {
                "bars": f"REAL: {args.embedded} daily OHLCV as shipped in the arch package, stamped 16:00 New York",
                "quotes": "SYNTHETIC: Black-Scholes chains from condorbrain.data.synth_chains; ATM level from the "
                          "real VIX (arch.data.vix, 2014-2019) where it covers the date"
                          + (", else" if vix is not None else "; no VIX used,")
                          + " an EWMA realised-vol proxy of past closes; skew, term structure and spreads modelled",
            }
        else:
            interval = dt.timedelta(seconds=args.bar_interval_s) if args.bar_interval_s else None
            # loaded unvalidated: build_dataset validates them strictly once, naming these paths in its errors
            bars = load_bars(args.bars, stamped=args.bars_stamped, bar_interval=interval, assume_tz=args.assume_tz,
                             validate=False)
            quotes = load_quotes(args.quotes, assume_tz=args.assume_tz, validate=False)
            names = {"bars": str(args.bars), "quotes": str(args.quotes)}
            for kind, path in (("bars", Path(args.bars)), ("quotes", Path(args.quotes))):
                marker = path.parent / "market.json"
                if path.is_dir() and marker.is_file():
                    provenance[kind] = f"SYNTHETIC: condorbrain data synth market ({marker})"
        summary = build_dataset(bars, quotes, args.out, config, source_names=names, provenance=provenance,
                                overwrite=args.overwrite, progress=not args.no_progress)
    except (DataValidationError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.table())
    return 0


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from condorbrain.data.io import read_table
    from condorbrain.data.validate import validate

    kind = args.kind
    path = Path(args.path)
    if not path.exists():
        print(f"error: {path}: no such file or directory", file=sys.stderr)
        return 2
    if kind is None:
        import polars as pl

        if path.is_dir() or path.suffix in (".parquet", ".pq"):
            cols = pl.scan_parquet(sorted(path.glob("*.parquet")) if path.is_dir() else path).collect_schema().names()
        else:
            cols = pl.read_csv(path, n_rows=0).columns
        kind = "quotes" if "underlying" in cols else "bars" if "symbol" in cols else None
        if kind is None:
            print(f"error: {path}: cannot tell bars from quotes (no 'symbol' or 'underlying' column); pass --kind",
                  file=sys.stderr)
            return 2
    try:
        df = read_table(args.path, kind, assume_tz=args.assume_tz)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = validate(df, kind, source=str(args.path), min_rows=args.min_rows, max_rows_listed=args.max_rows_listed)
    print(report)
    return 1 if args.strict and not report.ok else 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    import polars as pl

    path = Path(args.path)
    if not path.exists():
        print(f"error: {path}: no such file or directory", file=sys.stderr)
        return 2
    if path.is_dir() and (path / "metadata.json").is_file():
        from condorbrain.dataset import read_metadata

        m = read_metadata(path)
        c = m["counts"]
        rows = [
            ("dataset", str(path)),
            ("rows", f"{m['rows']:,} ({c['valid_rows']:,} valid, {c['rows_without_quote']:,} without a quote)"),
            ("features", f"{len(m['features'])}: {', '.join(f['name'] for f in m['features'])}"),
            ("targets", f"{len(m['targets'])}: {', '.join(t['name'] for t in m['targets'])}"),
            ("segments (contracts)", f"{c['segments']:,}"),
            ("bars (with rows)", f"{c['bars']:,} ({c['bars_with_rows']:,})"),
            ("time range (UTC)", f"{m['time_range_utc']['first']} .. {m['time_range_utc']['last']}"),
            ("symbols", ", ".join(m["symbols"])),
            ("row order", m["row_order"]),
            ("created", f"{m['created_utc']} by condorbrain {m['condorbrain_version']}"),
        ]
        rows += [(f"provenance: {k}", v) for k, v in m["provenance"].items()]
        print(_table(rows))
        return 0
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            print(f"error: {path}: neither a dataset folder nor a directory of .parquet parts", file=sys.stderr)
            return 2
        lf = pl.scan_parquet(parts)
    elif path.suffix in (".parquet", ".pq"):
        lf = pl.scan_parquet(path)
    else:
        print(f"error: {path}: expected a dataset folder, a .parquet file or a directory of parts", file=sys.stderr)
        return 2
    schema = lf.collect_schema()
    stats = [pl.len().alias("rows")]
    if "ts" in schema:
        stats += [pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")]
    sym = "symbol" if "symbol" in schema else "underlying" if "underlying" in schema else None
    if sym:
        stats.append(pl.col(sym).unique().sort().alias("symbols").implode())
    got = lf.select(stats).collect().row(0, named=True)
    rows = [("file", str(path)), ("rows", f"{got['rows']:,}"),
            ("columns", ", ".join(f"{k}: {v}" for k, v in schema.items()))]
    if "ts" in schema:
        rows.append(("time range", f"{got['first']} .. {got['last']}"))
    if sym:
        rows.append((f"{sym}s", ", ".join(map(str, got["symbols"]))))
    print(_table(rows))
    return 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    import datetime as dt

    d = sub.add_parser("data", help="market data: synthesize, build a dataset, validate, inspect",
                       description="Market data: write a synthetic market, build a training dataset, validate a "
                                   "bars / quotes file, print a summary of a dataset or Parquet file.")
    dsub = d.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    d.set_defaults(func=lambda a: (d.print_help(), 0)[1])

    s = dsub.add_parser("synth", help="write a synthetic 1-minute market (bars + quotes Parquet parts)",
                        description="Write OUT/bars/part-*.parquet, OUT/quotes/part-*.parquet and OUT/market.json: "
                                    "a seeded regime-switching intraday market with option quotes every minute.")
    s.add_argument("out", type=Path, help="output folder (its bars/ and quotes/ must not hold parts yet)")
    s.add_argument("--sessions", type=int, default=21, help="trading sessions of 390 bars (default 21)")
    s.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 2),
                   help="first calendar date, YYYY-MM-DD (default 2024-01-02)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--symbol", default="SPY", help="ticker of the underlying (default SPY)")
    s.add_argument("--expiries", type=int, default=2, help="weekly expiries listed at a time (default 2)")
    s.add_argument("--strikes-each-side", type=int, default=12,
                   help="strikes above and below the centre strike (default 12: 2 x 25 x 2 = 100 contracts)")
    s.add_argument("--strike-step", type=float, default=1.0, help="distance between strikes, USD (default 1)")
    s.add_argument("--chunk-sessions", type=int, default=21, help="sessions per Parquet part (default 21)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=_cmd_data_synth)

    b = dsub.add_parser("build", help="bars + quotes -> validated, joined, featurised dataset folder",
                        description="Validate bars and quotes, as-of join them, compute CondorBrain's 24 features "
                                    "(+ optional sets) and the targets, and write a dataset folder (features.npy, "
                                    "targets.npy, valid.npy, segment_ids.npy, timestamps.npy, segments.parquet, "
                                    "metadata.json). Rows are never dropped: invalid ones are kept and counted.")
    b.add_argument("out", type=Path, help="dataset folder to write")
    b.add_argument("--bars", type=Path, help="bars: CSV, Parquet, or a directory of Parquet parts")
    b.add_argument("--quotes", type=Path, help="option quotes: CSV, Parquet, or a directory of Parquet parts")
    b.add_argument("--embedded", choices=("sp500", "nasdaq"),
                   help="instead of files: real daily bars shipped with arch, with synthetic chains (synth_chains; "
                        "the real VIX sets the ATM level for sp500 where it covers the date)")
    b.add_argument("--bars-stamped", choices=("end", "start"), default="end",
                   help="whether the bars file's ts is the bar's end (default) or start time")
    b.add_argument("--bar-interval-s", type=float, default=None,
                   help="bar length in seconds, required with --bars-stamped start")
    b.add_argument("--assume-tz", default=None,
                   help="IANA zone of timestamps that carry none, e.g. America/New_York (default: such ts are errors)")
    b.add_argument("--config", type=Path, default=None,
                   help="JSON build config (the form --print-config prints); flags given here override it")
    b.add_argument("--max-staleness-s", type=float, default=None,
                   help="oldest quote the join still uses, seconds (default 120, two 1-minute bars; 345600 = 4 "
                        "days with --embedded: a daily bar may use the previous session's quote)")
    b.add_argument("--extra", type=_csv_names, default=None,
                   help="optional feature sets to append, comma-separated: microstructure, interaction, forecaster "
                        "(default none)")
    b.add_argument("--horizons", type=_csv_ints, default=None,
                   help="target horizons in bars, comma-separated (default 1,5,10,30)")
    b.add_argument("--ivr-window", type=int, default=None,
                   help="IV-rank look-back in bars (default 1950 = 5 sessions of 1-minute bars; 252 with --embedded)")
    b.add_argument("--rate", type=float, default=None,
                   help="risk-free rate for iv and greeks, annual, continuous (default 0; the chains' 0.02 with "
                        "--embedded)")
    b.add_argument("--dividend-yield", type=float, default=None,
                   help="dividend yield, annual, continuous (default 0; the chains' 0.018 with --embedded)")
    b.add_argument("--chunk-rows", type=int, default=None,
                   help="joined rows per contract group, bounds memory (default 1000000)")
    b.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    b.add_argument("--print-config", action="store_true", help="print the effective build config as JSON and exit")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    b.set_defaults(func=_cmd_data_build)

    v = dsub.add_parser("validate", help="print the validation report of a bars or quotes file",
                        description="Check a bars or quotes file (CSV, Parquet or a directory of parts) and print "
                                    "each problem with its count and first rows. Exit code 1 with --strict when "
                                    "there is a problem, 2 when the file cannot be read.")
    v.add_argument("path", type=Path, help="the file or directory of Parquet parts")
    v.add_argument("--kind", choices=("bars", "quotes"), default=None,
                   help="table kind (default: quotes if there is an 'underlying' column, else bars)")
    v.add_argument("--strict", action="store_true", help="exit with code 1 if any problem is found")
    v.add_argument("--assume-tz", default=None, help="IANA zone of timestamps that carry none")
    v.add_argument("--min-rows", type=int, default=2, help="fewest rows accepted (default 2)")
    v.add_argument("--max-rows-listed", type=int, default=5, help="offending rows listed per problem (default 5)")
    v.set_defaults(func=_cmd_data_validate)

    i = dsub.add_parser("info", help="summary of a dataset folder or a Parquet file / directory of parts",
                        description="Print rows, columns, time range and symbols of a Parquet file or directory "
                                    "of parts, or the metadata summary of a dataset folder.")
    i.add_argument("path", type=Path, help="dataset folder, .parquet file or directory of parts")
    i.set_defaults(func=_cmd_data_info)


# ------------------------------------------------------------------------------------------------------------------
# condorbrain run | train | evaluate | backtest | predict

def _job_config(args: argparse.Namespace):
    """Flags given > the --config file's [model] / [train] / [run] tables > configs/cpu-small.toml."""
    import dataclasses

    from condorbrain.main_job import DEFAULT_PRESET, RunConfig

    cfg = RunConfig.from_file(args.config or DEFAULT_PRESET)
    train_changes = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps)) if v is not None}
    if train_changes:
        cfg = dataclasses.replace(cfg, train=cfg.train.replace(**train_changes))
    if args.mixer:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, mixer=args.mixer))
    if args.max_bars is not None:
        cfg = dataclasses.replace(cfg, max_bars=args.max_bars)
    if args.single_split:
        cfg = dataclasses.replace(cfg, walk_forward=None)
    return cfg


def _print_json(obj: object) -> int:
    import json

    print(json.dumps(obj, indent=2, default=str))
    return 0


def _job_out(args: argparse.Namespace, prefix: str) -> Path:
    if args.out is not None:
        return args.out
    if args.resume:
        raise SystemExit("--resume needs --out: the folder of the run to continue")
    import time

    return Path("runs") / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")


def _cmd_run(args: argparse.Namespace) -> int:
    from condorbrain.main_job import run_main_job

    cfg = _job_config(args)
    if args.print_config:
        return _print_json(cfg.to_dict())
    out = _job_out(args, "main")
    print(f"run folder: {out}")
    run_main_job(cfg, out, resume=args.resume)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from condorbrain.main_job import train_job

    cfg = _job_config(args)
    if args.print_config:
        return _print_json(cfg.to_dict())
    out = _job_out(args, "train")
    print(f"run folder: {out}")
    _, summary = train_job(cfg, out, resume=args.resume)
    print(f"trained: {summary['steps']} steps ({summary['stopped']}); final checkpoint {summary['checkpoint']}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from condorbrain.main_job import RunConfig, evaluate_run
    from condorbrain.train import CheckpointError

    try:
        if args.print_config:
            return _print_json(RunConfig.from_file(args.run_dir / "config.json").to_dict())
        evaluate_run(args.run_dir)
    except (FileNotFoundError, CheckpointError) as e:  # a bad run folder: the message names the file
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.run_dir / 'evaluation.json'} and {args.run_dir / 'predictions.parquet'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from condorbrain.report import write_report

    try:
        paths = write_report(args.run_dir)
    except FileNotFoundError as e:  # the message names the missing file
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {paths.html} and {paths.json}")
    return 0


def _optional_float(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _cmd_backtest(args: argparse.Namespace) -> int:
    import dataclasses

    from condorbrain.backtest_job import backtest_config, backtest_run
    from condorbrain.main_job import RunConfig
    from condorbrain.train import CheckpointError

    overrides = {k: getattr(args, k) for k in ("max_open", "take_profit", "close_dte", "stop_loss")
                 if getattr(args, k) is not _UNSET}
    out = args.out if args.out is not None else args.run_dir
    try:
        config = backtest_config(RunConfig.from_file(args.run_dir / "config.json"), **overrides)
    except FileNotFoundError:
        print(f"error: {args.run_dir / 'config.json'} does not exist: {args.run_dir} is not a run folder (condorbrain "
              "train / run write one)", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        return _print_json({"run_dir": str(args.run_dir), "out": str(out), "backtest": dataclasses.asdict(config)})
    try:
        backtest_run(args.run_dir, config, out)
    except (FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'backtest.json'}, the trade logs trades_*.parquet and backtest_equity.parquet")
    return 0


_UNSET = object()
"""Default of the backtest flags: the run's config / BacktestConfig's default applies (None means 'never')."""


def _cmd_predict(args: argparse.Namespace) -> int:
    from condorbrain.data import DataValidationError
    from condorbrain.predictor import PredictConfig, Predictor, predict_bars
    from condorbrain.train import CheckpointError

    # Flags given > the --config file's [predict] table > PredictConfig's defaults; --bars / --embedded replace both.
    flags = {k: getattr(args, k) for k in ("last", "out", "assume_tz") if getattr(args, k) is not None}
    if args.bars is not None or args.embedded is not None:
        flags.update(bars=args.bars, embedded=args.embedded)
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
    try:
        cfg = PredictConfig.from_file(args.config, **flags) if args.config else PredictConfig(**flags)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        return _print_json({"run_dir": str(args.run_dir), "predict": cfg.to_dict()})
    try:
        predictor = Predictor.from_run(args.run_dir)
    except (FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        bars, vix = cfg.load_bars()
    except (FileNotFoundError, DataValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    table, last_policy = predict_bars(predictor, bars, vix, last=cfg.last)
    out = Path(cfg.out) if cfg.out else args.run_dir / "predict.parquet"
    if out.suffix == ".csv":
        table.write_csv(out)
    else:
        table.write_parquet(out)
    print(f"streamed {table.height} bars {table['ts'][0]:%Y-%m-%d} .. {table['ts'][-1]:%Y-%m-%d}; wrote {out}")
    print(f"\npolicy at {table['ts'][-1]:%Y-%m-%d} (the last bar):")
    print(last_policy)
    return 0


def _add_job_options(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="preset file with [model], [train], [run] tables (default: configs/cpu-small.toml)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"run folder (default: a new runs/{prefix}-YYYYmmdd-HHMMSS, so a rerun never collides)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out from its last checkpoint")
    p.add_argument("--epochs", type=int, default=None, help="override [train] epochs")
    p.add_argument("--max-steps", type=int, default=None, help="override [train] max_steps")
    p.add_argument("--mixer", choices=("mamba2", "mamba", "attention"), default=None,
                   help="override [model] mixer (attention = the Transformer baseline)")
    p.add_argument("--max-bars", type=int, default=None,
                   help="override [run] max_bars: keep only the last N daily bars (quick runs)")
    p.add_argument("--single-split", action="store_true",
                   help="one chronological split ([run] val_start / test_start) instead of the [walk_forward] windows")
    p.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="condorbrain", description=__doc__)
    p.add_argument("--version", action="version", version=f"condorbrain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("smoke", help="train a tiny Mamba-2 model on random data for a few steps")
    s.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=_cmd_smoke)

    r = sub.add_parser("run", help="the main job: real S&P 500 + VIX, train CondorBrain, evaluate and "
                                      "backtest vs baselines")
    _add_job_options(r, "main")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("train", help="the main job's training part: data, fit, a run folder (no evaluation)",
                       description="Build the dataset from the embedded S&P 500 + VIX, train CondorBrain and write a "
                                   "run folder (config.json, checkpoints/, metrics.jsonl, train.json). Evaluate it "
                                   "with `condorbrain evaluate`, use it with `condorbrain predict`.")
    _add_job_options(t, "train")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="re-run the held-out evaluation of a trained run folder",
                       description="Load RUN_DIR's config, final checkpoint (EMA weights) and saved scaler, rebuild "
                                   "its data, score the test period next to the baselines, print the tables with "
                                   "verdicts, and write RUN_DIR/evaluation.json and predictions.parquet.")
    e.add_argument("run_dir", type=Path, help="a run folder written by condorbrain train or run")
    e.add_argument("--print-config", action="store_true", help="print the run's config as JSON and exit")
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="stream a trained run over daily bars, bar by bar with carried state",
                        description="Load RUN_DIR, compute the 24 features of the bars (as in training), run the "
                                    "model's streaming step mode over them with carried state (equal to the batch "
                                    "forward), write one policy per bar to a Parquet / CSV file and print the last "
                                    "policy. Options also come from the [predict] table of --config.")
    pr.add_argument("run_dir", type=Path, help="a run folder written by condorbrain train or run")
    src = pr.add_mutually_exclusive_group()
    src.add_argument("--bars", type=Path, default=None,
                     help="daily bars file: CSV, Parquet or a directory of parts, in the bars schema")
    src.add_argument("--embedded", choices=("sp500", "nasdaq"), default=None,
                     help="the real daily bars shipped with arch (sp500 with the VIX); the default without --bars")
    pr.add_argument("--last", type=int, default=None,
                    help="stream over the last N bars only (default: every bar with complete features)")
    pr.add_argument("--out", type=Path, default=None, help="output .parquet or .csv (default RUN_DIR/predict.parquet)")
    pr.add_argument("--assume-tz", default=None, help="IANA zone of --bars timestamps that carry none")
    pr.add_argument("--config", type=Path, default=None, help="TOML / JSON file whose [predict] table sets options")
    pr.add_argument("--print-config", action="store_true", help="print the effective options as JSON and exit")
    pr.set_defaults(func=_cmd_predict)

    bt = sub.add_parser("backtest", help="backtest a trained run's condors on its held-out period vs baselines",
                        description="Load RUN_DIR (config, final checkpoint, saved scaler), take the model's condor "
                                    "at every bar of the held-out test period, backtest it on the synthetic chains "
                                    "of those bars next to the rule-based condor (16 delta) and buy-and-hold with "
                                    "the same config and capital, print the comparison table and the verdict "
                                    "(Sharpe), and write backtest.json, trades_<strategy>.parquet, "
                                    "backtest_equity.parquet and decisions.parquet.")
    bt.add_argument("run_dir", type=Path, help="a run folder written by condorbrain train or run")
    bt.add_argument("--out", type=Path, default=None, help="folder for the files (default: RUN_DIR)")
    bt.add_argument("--max-open", type=int, default=_UNSET, help="most positions open at once (default 1)")
    bt.add_argument("--take-profit", type=_optional_float, default=_UNSET,
                    help="close at this fraction of max profit, or 'none' (default 0.5)")
    bt.add_argument("--close-dte", type=_optional_float, default=_UNSET,
                    help="close at this many calendar days to expiry, or 'none' (default 21)")
    bt.add_argument("--stop-loss", type=_optional_float, default=_UNSET,
                    help="close when the loss reaches this multiple of the credit, or 'none' (default 2)")
    bt.add_argument("--print-config", action="store_true", help="print the effective backtest config as JSON and exit")
    bt.set_defaults(func=_cmd_backtest)

    rp = sub.add_parser("report", help="write a run folder's self-contained HTML report and its JSON numbers",
                        description="Read RUN_DIR's evaluation, predictions and backtest files and write "
                                    "RUN_DIR/report.html (plots: equity against the baselines, drawdown, P&L "
                                    "distribution, calibration, volatility forecast against realized, regime "
                                    "probabilities; the walk-forward windows) and report.json (the same numbers).")
    rp.add_argument("run_dir", type=Path, help="a run folder written by condorbrain run (or evaluate + backtest)")
    rp.set_defaults(func=_cmd_report)

    i = sub.add_parser("info", help="print versions and which scan path (compiled CPU / PyTorch) is used")
    i.set_defaults(func=_cmd_info)

    _add_data_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
