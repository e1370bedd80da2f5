"""The report's plots, drawn from its numbers (:func:`~.numbers.report_numbers`) into inline SVG strings.

Matplotlib is used through :class:`matplotlib.figure.Figure` only (no pyplot, no ``matplotlib.use``), so the
library's global backend is left alone; the report's style (text kept as text in the SVG, light grids) is set in an
``rc_context`` around each figure only, and every id in a figure's SVG is prefixed by the figure's name so that the
SVGs can share one page. Long series are thinned to
``max_points`` per line with :func:`~.numbers.downsample_indices` (peaks and troughs kept). Every function returns
an ``<svg>`` element (no XML prolog) or None when there is nothing to draw.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, PercentFormatter

from condorbrain.report.numbers import downsample_indices

__all__ = ["PALETTE", "calibration_svg", "drawdown_svg", "equity_svg", "pnl_svg", "regimes_svg", "series_colors",
           "volatility_svg"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728",
           "#7f7f7f")
"""Line colours, given out in order (the model first)."""
REGIME_COLORS = ("#4c9f70", "#e0a93b", "#c8553d")
"""Regimes 0, 1, 2 (calm to turbulent); further regimes take :data:`PALETTE`'s colours."""
EXIT_COLORS = {"take_profit": "#3a9a5b", "expiry": "#7fb8d8", "dte": "#4a78b5", "stop": "#c8453a",
               "end_of_data": "#9a9a9a"}
"""Exit reasons (the simulator's) in the P&L histograms: profit taken green, time exits blue, stops red."""
_RC = {"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
       "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False}
_WIDTH = 10.0  # inches


def series_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per name, in order (the first, the model, gets :data:`PALETTE`'s first)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def equity_svg(equity: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str], initial_capital: float | None,
               max_points: int) -> str | None:
    """Every strategy's equity curve (currency) on one chart, the starting capital dashed and 0 (ruin) in red when a
    curve falls below it."""
    if not equity:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH, 4.2), layout="constrained")
        ax = fig.subplots()
        lowest = np.inf
        for i, (name, curve) in enumerate(equity.items()):
            t, (e,) = _thinned(curve["ts"], [curve["equity"]], max_points)
            lowest = min(lowest, float(np.nanmin(e, initial=np.inf)))
            ax.plot(t, e, color=colors[name], lw=2.2 if i == 0 else 1.4, zorder=3 if i == 0 else 2,
                    label=_label(f"{name} (final {_money(curve['final_equity'])})"))
        if initial_capital is not None:
            ax.axhline(initial_capital, color="#555555", lw=0.9, ls="--", zorder=1,
                       label=_label(f"initial capital {_money(initial_capital)}"))
        if lowest <= 0:
            ax.axhline(0.0, color="#c0392b", lw=0.9, zorder=1, label="0: ruined below")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _money(v)))
        ax.set_ylabel("equity")
        _date_axis(ax)
        ax.legend(loc="best", fontsize=9)
        return _svg(fig, "equity")


def drawdown_svg(drawdown: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str], max_points: int
                 ) -> str | None:
    """Every strategy's drawdown from its running peak (percent, 100% = all the capital lost)."""
    if not drawdown:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH, 3.0), layout="constrained")
        ax = fig.subplots()
        for i, (name, dd) in enumerate(drawdown.items()):
            t, (d,) = _thinned(dd["ts"], [dd["drawdown"]], max_points)
            ax.plot(t, -100 * d, color=colors[name], lw=1.8 if i == 0 else 1.2,
                    label=_label(f"{name} (max {100 * dd['max_drawdown']:.1f}%)"))
        ax.set_ylim(-102, 2)
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.set_ylabel("drawdown")
        _date_axis(ax)
        ax.legend(loc="lower left", fontsize=9, ncols=min(3, len(drawdown)))
        return _svg(fig, "drawdown")


def pnl_svg(histograms: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """One panel per strategy with trades: its P&L histogram (currency per trade), bars stacked by exit reason."""
    shown = {name: h for name, h in histograms.items() if h is not None and h["trades"] > 0}
    if not shown:
        return None
    reasons = sorted({r for h in shown.values() for r in h["counts_by_exit_reason"]},
                     key=lambda r: (list(EXIT_COLORS).index(r) if r in EXIT_COLORS else len(EXIT_COLORS), r))
    others = iter(PALETTE[3:])
    reason_color = {r: EXIT_COLORS.get(r) or next(others, "#999999") for r in reasons}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH, 3.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(shown), squeeze=False)[0])
        for ax, (name, h) in zip(axes, shown.items(), strict=True):
            edges = np.asarray(h["bin_edges"], dtype=np.float64)
            left, width = edges[:-1], np.diff(edges)
            stacks = h["counts_by_exit_reason"] or {"": h["counts"]}
            bottom = np.zeros(len(left))
            for reason, counts in stacks.items():
                c = np.asarray(counts, dtype=np.float64)
                ax.bar(left, c, width=width, bottom=bottom, align="edge", color=reason_color.get(reason, PALETTE[0]),
                       edgecolor="white", lw=0.5)
                bottom += c
            ax.axvline(0.0, color="#333333", lw=0.8)
            ax.set_title(_label(f"{name}: {h['trades']} trade{'s' if h['trades'] != 1 else ''}"), fontsize=10)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _money(v)))
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", visible=False)
        axes[0].set_ylabel("trades")
        if reasons:
            handles = [Patch(color=reason_color[r]) for r in reasons]
            fig.legend(handles, [_label(r) for r in reasons], loc="outside lower center", ncols=len(reasons),
                       fontsize=9)
        return _svg(fig, "pnl")


def volatility_svg(vol: Mapping[str, Any] | None, colors: Mapping[str, str],
                   windows: Sequence[Mapping[str, Any]] | None, max_points: int) -> str | None:
    """Realized volatility against each forecast of it, per bar (the forecast made at the bar for the horizon
    after it); walk-forward window starts as dotted lines."""
    if vol is None:
        return None
    names = list(vol["forecasts"])
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH, 3.8), layout="constrained")
        ax = fig.subplots()
        t, ys = _thinned(vol["ts"], [vol["realized"], *(vol["forecasts"][n] for n in names)], max_points)
        ax.plot(t, ys[0], color="#222222", lw=1.6, label="realized", zorder=4)
        for i, (name, y) in enumerate(zip(names, ys[1:], strict=True)):
            ax.plot(t, y, color=colors.get(name, PALETTE[i % len(PALETTE)]), lw=1.8 if i == 0 else 1.0,
                    alpha=1.0 if i == 0 else 0.85, label=_label(name), zorder=3 if i == 0 else 2)
        for w in (windows or [])[1:]:
            ax.axvline(_dates([w["first"]])[0], color="#888888", lw=0.8, ls=":")
        ax.set_ylabel(_label(vol["topic"]))
        _date_axis(ax)
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1), fontsize=9, ncols=len(names) + 1)
        return _svg(fig, "volatility")


def calibration_svg(calibration: Mapping[str, Mapping[str, Any]] | None, colors: Mapping[str, str]) -> str | None:
    """Reliability curves: observed frequency against mean predicted probability per bin (marker area ~ count),
    the diagonal as perfect calibration; the counts per bin below."""
    if not calibration:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH * 0.62, 5.2), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        top.plot([0, 1], [0, 1], color="#888888", ls="--", lw=1, label="perfectly calibrated")
        n_models = len(calibration)
        for i, (name, rel) in enumerate(calibration.items()):
            color = colors.get(name, PALETTE[i % len(PALETTE)])
            count = np.asarray(rel["count"], dtype=np.float64)
            mp = np.asarray(rel["mean_predicted"], dtype=np.float64)
            of = np.asarray(rel["observed_frequency"], dtype=np.float64)
            ok = (count > 0) & np.isfinite(mp) & np.isfinite(of)
            top.plot(mp[ok], of[ok], color=color, lw=1.5, label=_label(name))
            top.scatter(mp[ok], of[ok], s=20 + 200 * np.sqrt(count[ok] / max(count.max(), 1.0)), color=color,
                        alpha=0.7, zorder=3)
            edges = np.asarray(rel["bin_edges"], dtype=np.float64)
            width = np.diff(edges) / (n_models + 1)
            bottom.bar(edges[:-1] + width * (i + 0.5), count, width=width, align="edge", color=color)
        top.set_xlim(-0.03, 1.03)
        top.set_ylim(-0.03, 1.03)
        top.set_ylabel("observed frequency")
        top.legend(loc="upper left", fontsize=9)
        bottom.set_ylabel("count")
        bottom.set_xlabel("predicted probability of profit")
        return _svg(fig, "calibration")


def regimes_svg(regimes: Mapping[str, Any] | None, max_points: int) -> str | None:
    """The predicted regime probabilities over time, stacked; the realized regime label as a strip below (when the
    predictions carry one)."""
    if regimes is None:
        return None
    keys = list(regimes["probabilities"])
    color = {k: REGIME_COLORS[i] if i < len(REGIME_COLORS) else PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    label = regimes.get("label")
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_WIDTH, 3.6 if label is not None else 3.0), layout="constrained")
        if label is not None:
            ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=(5, 1))
        else:
            ax, strip = fig.subplots(), None
        lab = [np.nan if v is None else float(v) for v in label] if label is not None else None
        series = [regimes["probabilities"][k] for k in keys] + ([lab] if lab is not None else [])
        t, ys = _thinned(regimes["ts"], series, max_points)
        probs = [np.nan_to_num(y, nan=0.0) for y in ys[:len(keys)]]
        ax.stackplot(t, *probs, colors=[color[k] for k in keys], labels=[f"regime {k}" for k in keys], alpha=0.9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("predicted probability")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1), fontsize=9, ncols=len(keys))
        ax.grid(False)
        if strip is not None:
            for start, end, value in _runs(t, ys[-1]):
                key = str(int(value))
                strip.axvspan(start, end, color=color.get(key, "#cccccc"), lw=0)
            strip.set_yticks([])
            strip.set_ylabel("realized", rotation=0, ha="right", va="center")
            strip.grid(False)
            _date_axis(strip)
        else:
            _date_axis(ax)
        return _svg(fig, "regimes")


def _thinned(ts: Sequence[str], series: Sequence[Sequence[Any]], max_points: int
             ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Times (datetime64) and float series, thinned together to about ``max_points``."""
    ys = [np.array([np.nan if v is None else v for v in s], dtype=np.float64) for s in series]
    keep = downsample_indices(len(ts), max_points, *ys)
    return _dates([ts[i] for i in keep]), [y[keep] for y in ys]


def _runs(t: np.ndarray, values: np.ndarray) -> list[tuple[np.datetime64, np.datetime64, float]]:
    """Runs of equal, non-NaN ``values``: (first time, next run's first time or the last time, value)."""
    out = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            if not np.isnan(values[start]):
                out.append((t[start], t[min(i, len(t) - 1)], float(values[start])))
            start = i
    return out


def _dates(ts: Sequence[str]) -> np.ndarray:
    """ISO strings (``...Z``, UTC) -> datetime64[s]."""
    return np.array([s.removesuffix("Z") for s in ts], dtype="datetime64[s]")


def _date_axis(ax: Axes) -> None:
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _money(v: float) -> str:
    """Currency, compact: 121,798 -> '122k', -250,499 -> '-250k', 1,234,567 -> '1.23M'."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def _label(text: str) -> str:
    """Text as matplotlib shows it literally (a ``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def _svg(fig: Figure, name: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, DOCTYPE or metadata; every id prefixed by ``name``
    (several SVGs share one page); path coordinates rounded to 0.01 pt (a third of the size)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"condorbrain-{name}"}):  # deterministic clip-path ids
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r'\bid="', f'id="{name}-', text)
    text = re.sub(r"url\(#", f"url(#{name}-", text)
    text = re.sub(r'href="#', f'href="#{name}-', text)
    return re.sub(r' d="([^"]*)"', lambda m: ' d="' + re.sub(r"(\.\d\d)\d+", r"\1", m.group(1)) + '"', text)
