"""The ``condorbrain`` command. Thin: each subcommand parses its options and calls a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    print(f"CUDA: {torch.cuda.is_available()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="condorbrain", description=__doc__)
    p.add_argument("--version", action="version", version=f"condorbrain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("smoke", help="train a tiny Mamba-2 model on random data for a few steps")
    s.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=_cmd_smoke)

    i = sub.add_parser("info", help="print versions and which scan path (compiled CPU / PyTorch) is used")
    i.set_defaults(func=_cmd_info)
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
