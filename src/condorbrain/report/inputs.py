"""The run folder's files that the report reads.

Required (``FileNotFoundError`` naming the file when absent): ``backtest_equity.parquet`` (``strategy``, then the
equity curve columns, one row per strategy and bar), ``evaluation.json`` (forecast tables, verdicts, the POP
reliability curves) and ``predictions.parquet`` (one row per test bar: forecasts, baselines, labels).

Optional (the report says "no data" where one is absent): ``backtest.json`` (the strategy table, its verdict, the
backtest config), ``trades_<strategy>.parquet`` (trade logs), ``config.json``, ``train.json`` and
``walk_forward.json``. The JSON files may hold the non-standard ``NaN`` / ``Infinity`` tokens that Python's ``json``
writes; they are read as floats.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["REQUIRED_FILES", "RunFiles", "read_run_files"]

REQUIRED_FILES = ("backtest_equity.parquet", "evaluation.json", "predictions.parquet")
"""Files a run folder must hold for a report."""


@dataclass(frozen=True)
class RunFiles:
    """The contents of one run folder (see the module docstring for what each file is)."""

    run_dir: Path
    equity: pl.DataFrame
    """``backtest_equity.parquet``: ``strategy``, ``ts``, ``equity`` (currency), ... one row per strategy and bar."""
    evaluation: dict[str, Any]
    """``evaluation.json``."""
    predictions: pl.DataFrame
    """``predictions.parquet``, sorted by ``ts``."""
    backtest: dict[str, Any] | None
    """``backtest.json``, or None when absent."""
    trades: dict[str, pl.DataFrame]
    """Trade log per strategy, for the strategies whose ``trades_<strategy>.parquet`` exists."""
    config: dict[str, Any] | None
    """``config.json``, or None."""
    train: dict[str, Any] | None
    """``train.json``, or None."""
    walk_forward: dict[str, Any] | None
    """``walk_forward.json``, or None (a run without walk-forward windows)."""

    @property
    def strategies(self) -> list[str]:
        """Strategy names: the backtest table's order when there is one, else first appearance in the equity file."""
        return _strategy_names(self.equity, self.backtest)


def _strategy_names(equity: pl.DataFrame, backtest: dict[str, Any] | None) -> list[str]:
    """The backtest table's strategies in its order, then those only in the equity file (first appearance)."""
    in_equity = equity.get_column("strategy").unique(maintain_order=True).to_list()
    names = [row["strategy"] for row in (backtest or {}).get("table", []) if "strategy" in row]
    return names + [name for name in in_equity if name not in names]


def read_run_files(run_dir: str | os.PathLike[str]) -> RunFiles:
    """Read a run folder. Raises FileNotFoundError (naming the file) when a required file is missing."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder not found: {root}")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{name} not found in run folder {root} "
                                    f"(a report needs {', '.join(REQUIRED_FILES)})")
    equity = pl.read_parquet(root / "backtest_equity.parquet")
    for col in ("strategy", "ts", "equity"):
        if col not in equity.columns:
            raise ValueError(f"backtest_equity.parquet: missing column {col!r}")
    predictions = pl.read_parquet(root / "predictions.parquet")
    if "ts" not in predictions.columns:
        raise ValueError("predictions.parquet: missing column 'ts'")
    backtest = _optional_json(root / "backtest.json")
    trades = {name: pl.read_parquet(root / f"trades_{name}.parquet") for name in _strategy_names(equity, backtest)
              if (root / f"trades_{name}.parquet").is_file()}
    return RunFiles(
        run_dir=root,
        equity=equity,
        evaluation=json.loads((root / "evaluation.json").read_text()),
        predictions=predictions.sort("ts", maintain_order=True),
        backtest=backtest,
        trades=trades,
        config=_optional_json(root / "config.json"),
        train=_optional_json(root / "train.json"),
        walk_forward=_optional_json(root / "walk_forward.json"),
    )


def _optional_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
