"""The numbers of a run report: what ``report.json`` holds and what the page's plots and tables show.

:func:`report_numbers` gathers them from a run folder's files (:class:`~.inputs.RunFiles`) into one plain dict;
:func:`build_report` returns it JSON-ready (:func:`json_safe`). Its keys:

- ``run``: the folder's name, the test period, the model / training / backtest settings the header shows, and the
  walk-forward mode (None without ``walk_forward.json``).
- ``verdicts``: ``{"topic", "line"}`` per verdict line (the backtest's, one per forecast table, then the
  walk-forward overall ones not among those), the ``-> `` the job prints before each removed.
- ``strategies``: ``table`` (``backtest.json``'s rows), ``skipped`` decisions by reason, and per strategy
  ``equity`` (``ts``, ``equity`` in currency, ``final_equity``, ``bars``), ``drawdown`` (``ts``, ``drawdown``,
  ``max_drawdown``; fractions, :func:`drawdown`; left out for a curve that does not start > 0) and
  ``pnl_histogram`` (:func:`pnl_histogram`; None without a trade log).
- ``forecasts``: ``tables`` and ``verdicts`` from ``evaluation.json``, ``calibration`` (its ``pop_reliability``
  curves as written), ``volatility`` (``ts``, ``realized`` and each forecast per bar) and ``windows`` (first and
  last ``ts`` of each walk-forward window when the predictions carry a ``window`` column).
- ``regimes``: ``ts``, ``probabilities`` per regime and the realized ``label`` (None where unlabelled), or None.
- ``walk_forward``: ``walk_forward.json`` as written, or None.
- ``notes``: what was missing or downsampled.

Times are ISO 8601 strings in UTC (``...Z``). A series longer than ``ReportConfig.max_series_points`` is
downsampled (:func:`downsample_indices`) and marked ``"downsampled": true``; otherwise every bar is kept.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from condorbrain.backtest.strategy_metrics import drawdown
from condorbrain.report.inputs import RunFiles, read_run_files

__all__ = ["ReportConfig", "build_report", "downsample_indices", "drawdown", "json_safe", "pnl_histogram",
           "report_numbers"]


@dataclass(frozen=True)
class ReportConfig:
    """How much of each series the report keeps."""

    max_series_points: int = 20_000
    """Longest series ``report.json`` keeps whole; a longer one is downsampled and marked (about 80 years of daily
    bars fit)."""
    max_plot_points: int = 2_000
    """Points per line in the page's plots (keeps the inline SVGs small); the JSON is not affected."""
    max_pnl_bins: int = 40
    """Most bins of a strategy's P&L histogram."""

    def __post_init__(self) -> None:
        for name in ("max_series_points", "max_plot_points"):
            if getattr(self, name) < 16:
                raise ValueError(f"{name} must be >= 16, got {getattr(self, name)}")
        if self.max_pnl_bins < 1:
            raise ValueError(f"max_pnl_bins must be >= 1, got {self.max_pnl_bins}")


def downsample_indices(n: int, max_points: int, *series: np.ndarray) -> np.ndarray:
    """Indices (sorted, unique) of at most about ``max_points`` of ``n`` points that keep the shape of ``series``:
    the first and last point, and in each of equal-width buckets the minimum and maximum of every series (so peaks
    and troughs survive, unlike plain striding). All of ``range(n)`` when ``n <= max_points``."""
    if n <= max_points:
        return np.arange(n)
    per_bucket = 2 * max(1, len(series))
    n_buckets = max(1, (max_points - 2) // per_bucket)
    bounds = np.linspace(0, n, n_buckets + 1).astype(np.int64)
    keep = [np.array([0, n - 1])]
    for lo, hi in itertools.pairwise(bounds):
        if hi <= lo:
            continue
        keep.append(np.array([lo]))
        for s in series:
            chunk = np.asarray(s[lo:hi], dtype=np.float64)
            if np.isnan(chunk).all():
                continue
            keep.append(lo + np.array([np.nanargmin(chunk), np.nanargmax(chunk)]))
    return np.unique(np.concatenate(keep))


def pnl_histogram(pnl: np.ndarray, exit_reason: Sequence[str] | None = None, max_bins: int = 40) -> dict[str, Any]:
    """Histogram of trade P&L (currency): ``bin_edges`` (B + 1), ``counts`` (B) and, with ``exit_reason``,
    ``counts_by_exit_reason`` (reason -> B counts, summing to ``counts``). Rice's rule for the number of bins,
    ``ceil(2 n^(1/3))`` capped at ``max_bins`` (one bin 10% of the value wide when every trade made the same P&L);
    a NaN P&L is left out and counted in ``n_dropped``."""
    x = np.asarray(pnl, dtype=np.float64)
    finite = np.isfinite(x)
    n = int(finite.sum())
    if n == 0:
        return {"trades": 0, "n_dropped": int(x.size), "bin_edges": [], "counts": [], "counts_by_exit_reason": {}}
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1.0):  # one value: one bin, 10% of it wide (numpy would use 1.0)
        half = max(0.05 * abs(lo), 0.5)
        edges = np.array([lo - half, lo + half])
    else:
        edges = np.histogram_bin_edges(x[finite], bins=int(min(max_bins, math.ceil(2 * n ** (1 / 3)))))
    counts, _ = np.histogram(x[finite], bins=edges)
    out: dict[str, Any] = {"trades": n, "n_dropped": int(x.size - n), "bin_edges": edges.tolist(),
                           "counts": counts.tolist(), "counts_by_exit_reason": {}}
    if exit_reason is not None:
        reasons = np.asarray(exit_reason, dtype=object)[finite]
        for reason in sorted({str(r) for r in reasons}):
            c, _ = np.histogram(x[finite][reasons.astype(str) == reason], bins=edges)
            out["counts_by_exit_reason"][reason] = c.tolist()
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` with every float made valid JSON: NaN -> None, +-inf -> ``"inf"`` / ``"-inf"``; numpy scalars and
    arrays become Python ones, tuples lists. Dict keys become strings."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def build_report(run_dir: str | os.PathLike[str], config: ReportConfig | None = None) -> dict[str, Any]:
    """The report's numbers for the run folder ``run_dir``, JSON-ready (what ``report.json`` holds)."""
    return json_safe(report_numbers(read_run_files(run_dir), config or ReportConfig()))


def report_numbers(files: RunFiles, config: ReportConfig) -> dict[str, Any]:
    """The report's numbers (module docstring) from a read run folder; floats may be NaN / inf (see
    :func:`json_safe`)."""
    notes: list[str] = []
    ev = files.evaluation
    bt = files.backtest
    if bt is None:
        notes.append("backtest.json not found: no strategy table or backtest verdict")
    wf = files.walk_forward
    return {
        "run": _run_summary(files),
        "verdicts": _verdicts(ev, bt, wf),
        "strategies": _strategies(files, config, notes),
        "forecasts": {
            "tables": ev.get("tables", {}),
            "verdicts": ev.get("verdicts", {}),
            "calibration": ev.get("pop_reliability") or None,
            "volatility": _volatility(files, config, notes),
            "windows": _windows(files.predictions),
        },
        "regimes": _regimes(files.predictions, config, notes),
        "walk_forward": wf,
        "notes": notes,
    }


def _run_summary(files: RunFiles) -> dict[str, Any]:
    ev, bt, cfg, train = files.evaluation, files.backtest, files.config or {}, files.train or {}
    period = ev.get("test_period") or (bt or {}).get("test_period")
    model_keys = ("mixer", "d_model", "n_layer", "d_state", "lookback", "horizons", "n_regimes")
    return {
        "name": files.run_dir.name,
        "test_period": period,
        "model": {k: cfg["model"][k] for k in model_keys if k in cfg.get("model", {})} or None,
        "split": None if files.walk_forward else (
            {k: cfg["run"][k] for k in ("val_start", "test_start") if k in cfg.get("run", {})} or None),
        "train": {k: train[k] for k in ("steps", "stopped", "best_step", "best_val_loss") if k in train} or None,
        "backtest_config": (bt or {}).get("config"),
        "walk_forward_mode": (files.walk_forward or {}).get("mode"),
        "walk_forward": _walk_forward_summary(files.walk_forward),
    }


def _walk_forward_summary(wf: Mapping[str, Any] | None) -> str | None:
    """One line: mode, windows with their test periods, purge and embargo."""
    if not wf:
        return None
    tests = ", ".join(f"{str(w['test']['first'])[:10]} to {str(w['test']['last'])[:10]}" for w in wf.get("windows", []))
    gaps = f"; purge {wf['purge_bars']} + embargo {wf['embargo_bars']} bars" if "purge_bars" in wf else ""
    return f"{wf.get('mode')}, {len(wf.get('windows', []))} windows, a model each (tests {tests}){gaps}"


def _verdicts(ev: Mapping[str, Any], bt: Mapping[str, Any] | None, wf: Mapping[str, Any] | None
              ) -> list[dict[str, str]]:
    out = []
    if bt is not None and bt.get("verdict"):
        out.append({"topic": "backtest (Sharpe)", "line": _strip_arrow(bt["verdict"])})
    out += [{"topic": topic, "line": _strip_arrow(line)} for topic, line in ev.get("verdicts", {}).items()]
    overall = ((wf or {}).get("overall") or {}).get("verdicts") or {}
    seen = {v["line"] for v in out}  # a walk-forward run's evaluation.json may hold the overall verdicts already
    out += [{"topic": f"walk-forward, {topic}", "line": _strip_arrow(line)} for topic, line in overall.items()
            if _strip_arrow(line) not in seen]
    return out


def _strip_arrow(line: Any) -> str:
    return re.sub(r"^\s*->\s*", "", str(line))


def _strategies(files: RunFiles, config: ReportConfig, notes: list[str]) -> dict[str, Any]:
    equity: dict[str, Any] = {}
    dd: dict[str, Any] = {}
    hist: dict[str, Any] = {}
    for name in files.strategies:
        curve = files.equity.filter(pl.col("strategy") == name).sort("ts", maintain_order=True)
        if curve.height == 0:
            notes.append(f"{name}: no equity curve in backtest_equity.parquet")
        else:
            e = curve.get_column("equity").cast(pl.Float64).to_numpy()
            has_dd = bool(e[0] > 0)  # a drawdown is a fraction of a positive peak
            d = drawdown(e) if has_dd else np.full(e.size, np.nan)
            if not has_dd:
                notes.append(f"{name}: the equity curve starts at {e[0]}, not > 0: no drawdown")
            keep = downsample_indices(e.size, config.max_series_points, e, d)
            ts = _iso(curve.get_column("ts"))
            down = bool(keep.size < e.size)
            if down:
                notes.append(f"{name}: equity and drawdown downsampled from {e.size} to {keep.size} bars")
            equity[name] = {"ts": [ts[i] for i in keep], "equity": e[keep].tolist(), "bars": int(e.size),
                            "final_equity": float(e[-1]), "downsampled": down}
            if has_dd:
                dd[name] = {"ts": [ts[i] for i in keep], "drawdown": d[keep].tolist(),
                            "max_drawdown": float(np.nanmax(d)) if np.isfinite(d).any() else math.nan,
                            "downsampled": down}
        trades = files.trades.get(name)
        if trades is None or "pnl" not in trades.columns:
            hist[name] = None
            notes.append(f"{name}: no trade log (trades_{name}.parquet)")
        else:
            reasons = trades.get_column("exit_reason").to_list() if "exit_reason" in trades.columns else None
            hist[name] = pnl_histogram(trades.get_column("pnl").cast(pl.Float64).to_numpy(), reasons,
                                       config.max_pnl_bins)
    bt = files.backtest or {}
    return {"table": bt.get("table", []), "skipped": bt.get("skipped", {}), "equity": equity, "drawdown": dd,
            "pnl_histogram": hist,
            "initial_capital": (bt.get("config") or {}).get("initial_capital")}


def _volatility(files: RunFiles, config: ReportConfig, notes: list[str]) -> dict[str, Any] | None:
    p = files.predictions
    if "target_vol" not in p.columns or "pred_vol" not in p.columns:
        notes.append("predictions.parquet has no target_vol / pred_vol: no volatility plot")
        return None
    cols = {"condorbrain": "pred_vol"} | {c.removeprefix("baseline_"): c for c in p.columns
                                          if c.startswith("baseline_")}
    realized = p.get_column("target_vol").cast(pl.Float64).to_numpy()
    forecasts = {name: p.get_column(col).cast(pl.Float64).to_numpy() for name, col in cols.items()}
    keep = downsample_indices(p.height, config.max_series_points, realized, *forecasts.values())
    if keep.size < p.height:
        notes.append(f"volatility series downsampled from {p.height} to {keep.size} bars")
    ts = _iso(p.get_column("ts"))
    topic = next((t for t in files.evaluation.get("tables", {}) if t.startswith("volatility")), "volatility")
    return {"topic": topic, "ts": [ts[i] for i in keep], "realized": realized[keep].tolist(),
            "forecasts": {name: f[keep].tolist() for name, f in forecasts.items()},
            "downsampled": bool(keep.size < p.height)}


def _windows(p: pl.DataFrame) -> list[dict[str, Any]] | None:
    if "window" not in p.columns:
        return None
    spans = (p.group_by("window").agg(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
             .sort("window"))
    return [{"window": w, "first": f, "last": last} for w, f, last in
            zip(spans.get_column("window").to_list(), _iso(spans.get_column("first")), _iso(spans.get_column("last")),
                strict=True)]


def _regimes(p: pl.DataFrame, config: ReportConfig, notes: list[str]) -> dict[str, Any] | None:
    cols = sorted((c for c in p.columns if re.fullmatch(r"pred_regime_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1]))
    if not cols:
        notes.append("predictions.parquet has no pred_regime_* columns: no regime plot")
        return None
    probs = {c.rsplit("_", 1)[1]: p.get_column(c).cast(pl.Float64).to_numpy() for c in cols}
    keep = downsample_indices(p.height, config.max_series_points, *probs.values())
    if keep.size < p.height:
        notes.append(f"regime probabilities downsampled from {p.height} to {keep.size} bars")
    label = None
    if "regime_label" in p.columns:
        lab = p.get_column("regime_label").to_list()
        label = [None if lab[i] is None or lab[i] < 0 else int(lab[i]) for i in keep]
    ts = _iso(p.get_column("ts"))
    return {"ts": [ts[i] for i in keep], "probabilities": {k: v[keep].tolist() for k, v in probs.items()},
            "label": label, "downsampled": bool(keep.size < p.height)}


def _iso(ts: pl.Series) -> list[str]:
    """Datetimes as ISO 8601 UTC strings (naive ones are taken as UTC)."""
    if isinstance(ts.dtype, pl.Date):
        ts = ts.cast(pl.Datetime("us"))
    if isinstance(ts.dtype, pl.Datetime):
        if ts.dtype.time_zone is not None:
            ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_list()
    return [str(v) for v in ts.to_list()]
