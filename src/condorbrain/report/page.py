"""The run report page: one self-contained HTML file (inline CSS and SVG plots, no scripts, no external references)
and ``report.json`` beside it with the same numbers.

Layout: a header (run, test period, model, training and backtest settings), the verdict lines, then the sections
Strategy comparison (table, equity curves, drawdown, P&L histograms), Forecasts (volatility against realized,
POP calibration, the forecast tables with their verdicts), Regimes and, for a walk-forward run, Walk-forward (one
table per window and the overall). Every piece of text from the run folder is HTML-escaped; a missing optional
input shows a short "no data" note instead of its plot or table.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condorbrain.report import plots
from condorbrain.report.inputs import read_run_files
from condorbrain.report.numbers import ReportConfig, json_safe, report_numbers

__all__ = ["HTML_NAME", "JSON_NAME", "ReportPaths", "render_page", "write_report"]

HTML_NAME = "report.html"
JSON_NAME = "report.json"

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
STRATEGY_COLUMNS = ("strategy", "final_equity", "total_pnl", "trades", "win_rate", "avg_pnl", "profit_factor",
                    "largest_loss", "sharpe", "sortino", "calmar", "max_drawdown", "cagr", "ruined")
"""Columns of the strategy table on the page (``report.json`` keeps every column of ``backtest.json``)."""


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` wrote the report."""

    html: Path
    json: Path


def write_report(run_dir: str | os.PathLike[str], config: ReportConfig | None = None) -> ReportPaths:
    """Write ``report.html`` and ``report.json`` into the run folder ``run_dir`` (each written to a temporary file
    first and moved into place, so a reader never sees half a report).

    Raises FileNotFoundError naming the file when one of :data:`~.inputs.REQUIRED_FILES` is missing."""
    config = config or ReportConfig()
    files = read_run_files(run_dir)
    numbers = report_numbers(files, config)
    text = json.dumps(json_safe(numbers), allow_nan=False, separators=(",", ":"))
    page = render_page(numbers, config)
    paths = ReportPaths(html=files.run_dir / HTML_NAME, json=files.run_dir / JSON_NAME)
    _write_atomic(paths.json, text)
    _write_atomic(paths.html, page)
    return paths


def render_page(numbers: Mapping[str, Any], config: ReportConfig | None = None) -> str:
    """The HTML page for the report's numbers (:func:`~.numbers.report_numbers`)."""
    config = config or ReportConfig()
    run = numbers["run"]
    sections = [_strategies_section(numbers["strategies"], config),
                _forecasts_section(numbers["forecasts"], config),
                _regimes_section(numbers["regimes"], config)]
    nav = [("strategies", "Strategy comparison"), ("forecasts", "Forecasts"), ("regimes", "Regimes")]
    if numbers["walk_forward"] is not None:
        sections.append(_walk_forward_section(numbers["walk_forward"]))
        nav.append(("walk-forward", "Walk-forward"))
    links = " · ".join(f'<a href="#{anchor}">{_e(title)}</a>' for anchor, title in nav)
    notes = "".join(f"<li>{_e(n)}</li>" for n in numbers["notes"])
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>CondorBrain run report: {_e(run['name'])}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        _header(run),
        _verdicts(numbers["verdicts"]),
        f'<nav class="toc">{links}</nav>',
        *sections,
        '<footer><p>The same numbers are in <code>report.json</code> beside this page.</p>',
        f"<ul class='notes'>{notes}</ul>" if notes else "",
        "</footer></main></body></html>",
        "",
    ])


def _header(run: Mapping[str, Any]) -> str:
    facts: list[tuple[str, str]] = []
    period = run.get("test_period")
    if period:
        n = period.get("samples", period.get("bars"))
        facts.append(("test period", f"{_day(period.get('first'))} to {_day(period.get('last'))}"
                      + (f" ({n} bars)" if n is not None else "")))
    if run.get("split"):
        facts.append(("split", _pairs(run["split"])))
    if run.get("model"):
        facts.append(("model", _pairs(run["model"])))
    if run.get("train"):
        facts.append(("training", _pairs(run["train"])))
    if run.get("backtest_config"):
        facts.append(("backtest", _pairs(run["backtest_config"])))
    if run.get("walk_forward") or run.get("walk_forward_mode"):
        facts.append(("walk-forward", str(run.get("walk_forward") or run["walk_forward_mode"])))
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (f"<header><h1>CondorBrain run report</h1><p class='run'>{_e(run['name'])}</p>"
            f"<dl class='facts'>{rows}</dl></header>")


def _verdicts(verdicts: Sequence[Mapping[str, str]]) -> str:
    if not verdicts:
        return "<section class='verdicts'><h2>Verdicts</h2>" + _nodata("no verdict lines in this run") + "</section>"
    items = "".join(f"<li class='{_verdict_class(v['line'])}'><span class='topic'>{_e(v['topic'])}</span>"
                    f"{_e(v['line'])}</li>" for v in verdicts)
    width = max(len(v["topic"]) for v in verdicts) + 2  # one topic column for all lines
    return f"<section class='verdicts'><h2>Verdicts</h2><ul style='--topic: {width}ch'>{items}</ul></section>"


def _strategies_section(s: Mapping[str, Any], config: ReportConfig) -> str:
    names = list(dict.fromkeys([*(r.get("strategy") for r in s["table"] if "strategy" in r), *s["equity"],
                                *s["pnl_histogram"]]))
    colors = plots.series_colors(names)
    missing_trades = [n for n, h in s["pnl_histogram"].items() if h is None or h["trades"] == 0]
    parts = [
        "<section id='strategies'><h2>Strategy comparison</h2>",
        _table(s["table"], STRATEGY_COLUMNS) if s["table"] else _nodata("no strategy table (backtest.json)"),
        _figure(plots.equity_svg(s["equity"], colors, s["initial_capital"], config.max_plot_points),
                "Equity of every strategy over the test period, same bars, capital and rules.",
                "no equity curves"),
        _figure(plots.drawdown_svg(s["drawdown"], colors, config.max_plot_points),
                "Drawdown: the fall from each strategy's running peak (100% = all the capital lost).",
                "no equity curves"),
        _figure(plots.pnl_svg(s["pnl_histogram"]),
                "P&L per trade (currency), bars stacked by the trade's exit reason.", "no trades in any strategy"),
    ]
    if missing_trades:
        parts.append(_nodata("no trades for " + ", ".join(missing_trades)))
    skipped = [{"strategy": name, **reasons} for name, reasons in s["skipped"].items()]
    if skipped:
        parts += ["<h3>Decisions not opened, by reason</h3>", _table(skipped)]
    parts.append("</section>")
    return "\n".join(parts)


def _forecasts_section(f: Mapping[str, Any], config: ReportConfig) -> str:
    vol = f["volatility"]
    colors = plots.series_colors(list(vol["forecasts"]) if vol else [])
    cal_colors = plots.series_colors(list(f["calibration"] or {}))
    parts = [
        "<section id='forecasts'><h2>Forecasts</h2>",
        _figure(plots.volatility_svg(vol, colors, f["windows"], config.max_plot_points),
                "Volatility forecast made at each bar against the volatility realized over the horizon after it "
                "(not annualised), with the baselines." + (" Dotted lines: walk-forward window starts."
                                                           if f["windows"] else ""),
                "no volatility forecasts in predictions.parquet"),
        _figure(plots.calibration_svg(f["calibration"], cal_colors),
                "Calibration of the probability of profit: observed frequency against the mean predicted "
                "probability per bin (marker area grows with the bin's count); on the diagonal = calibrated.",
                "no reliability curve in evaluation.json", narrow=True),
    ]
    if not f["tables"]:
        parts.append(_nodata("no forecast tables in evaluation.json"))
    parts += _tables(f["tables"], f["verdicts"], "h3")
    parts.append("</section>")
    return "\n".join(parts)


def _regimes_section(r: Mapping[str, Any] | None, config: ReportConfig) -> str:
    caption = "Predicted regime probabilities per bar, stacked."
    if r is not None and r.get("label") is not None:
        caption += (" Strip below: the realized regime label (the main job's terciles of trailing realized "
                    "volatility, 0 = calmest).")
    return "\n".join(["<section id='regimes'><h2>Regimes</h2>",
                      _figure(plots.regimes_svg(r, config.max_plot_points), caption,
                              "no regime probabilities in predictions.parquet"),
                      "</section>"])


def _walk_forward_section(wf: Mapping[str, Any]) -> str:
    """One block per window (its periods, forecast tables with verdicts, backtest table and verdict), then the
    overall; every table rendered from its rows as written."""
    windows = wf.get("windows") or []
    parts = ["<section id='walk-forward'><h2>Walk-forward</h2>",
             f"<p>Mode: {_e(wf.get('mode') or '?')}; {len(windows)} windows.</p>"]
    for w in windows:
        spans = "; ".join(f"{name} {_day((w.get(name) or {}).get('first'))} to {_day((w.get(name) or {}).get('last'))}"
                          for name in ("train", "val", "test") if w.get(name))
        parts.append(f"<h3>Window {_e(w.get('window', '?'))}</h3><p class='period'>{_e(spans)}</p>")
        parts += _tables(w.get("tables") or {}, w.get("verdicts") or {}, "h4")
        parts += _backtest_block(w)
        if not w.get("tables") and not w.get("backtest"):
            parts.append(_nodata("no tables for this window"))
    overall = wf.get("overall") or {}
    parts.append("<h3>Overall</h3>")
    parts += _tables(overall.get("tables") or {}, overall.get("verdicts") or {}, "h4")
    parts += _backtest_block(overall)
    if not overall.get("tables") and not overall.get("backtest"):
        parts.append(_nodata("no overall tables"))
    parts.append("</section>")
    return "\n".join(parts)


def _backtest_block(block: Mapping[str, Any]) -> list[str]:
    """A walk-forward block's ``backtest`` rows and ``backtest_verdict``, if it has them."""
    if not block.get("backtest"):
        return []
    return ["<h4>backtest</h4>", *_verdict_line(block.get("backtest_verdict")),
            _table(block["backtest"], STRATEGY_COLUMNS)]


def _tables(tables: Mapping[str, Sequence[Mapping[str, Any]]], verdicts: Mapping[str, Any], heading: str
            ) -> list[str]:
    """Each table under its topic as a heading, its verdict line (if any) above it."""
    out = []
    for topic, rows in tables.items():
        out += [f"<{heading}>{_e(topic)}</{heading}>", *_verdict_line(verdicts.get(topic)), _table(rows)]
    return out


def _verdict_line(line: Any) -> list[str]:
    if not line:
        return []
    text = re.sub(r"^\s*->\s*", "", str(line))
    return [f"<p class='verdict {_verdict_class(text)}'>{_e(text)}</p>"]


def _table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """Rows of dicts as a table: ``columns`` that occur in them (in that order), else every key in first-seen
    order."""
    if not rows:
        return _nodata("empty table")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    if columns is not None:
        keys = [c for c in columns if c in keys] or keys
    head = "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in keys)  # spaces: long headers may wrap
    body = "".join("<tr>" + "".join(_cell(row.get(k)) for k in keys) + "</tr>" for row in rows)
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _figure(svg: str | None, caption: str, missing: str, *, narrow: bool = False) -> str:
    if svg is None:
        return _nodata(missing)
    cls = "plot narrow" if narrow else "plot"
    return f"<figure class='{cls}'>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _nodata(text: str) -> str:
    return f"<p class='nodata'>No data: {_e(text)}.</p>"


def _verdict_class(line: str) -> str:
    return "lose" if "LOSES" in line else "win" if "beats" in line else "neutral"


def _fmt(v: Any) -> str:
    """A table cell: integers with thousands separators, floats with 4 significant digits (large ones whole),
    NaN / None as a dash, infinities as signs."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, str) and v in ("inf", "-inf"):
        return "∞" if v == "inf" else "−∞"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(json_safe(v))
    return str(v)


def _cell(v: Any) -> str:
    """A ``<td>``: numbers right-aligned; a timestamp shows its date, the full value on hover."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"<td class='num'>{_e(_fmt(v))}</td>"
    if isinstance(v, str) and _TIMESTAMP.match(v):
        return f"<td title='{_e(v)}'>{_e(v[:10])}</td>"
    return f"<td>{_e(_fmt(v))}</td>"


def _pairs(d: Mapping[str, Any], prefix: str = "") -> str:
    """``{"a": 1, "b": {"c": 2}}`` -> ``"a 1, b.c 2"``."""
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.append(_pairs(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k} {_fmt(v)}")
    return ", ".join(out)


def _day(ts: Any) -> str:
    """The date part of an ISO time string ('2015-01-02T21:00:00' -> '2015-01-02')."""
    return "?" if ts is None else str(ts)[:10]


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in ``path``'s folder, then move it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # the usual permissions (umask), unlike mkstemp's 0600
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_CSS = """
:root { --fg: #1d2330; --muted: #5b6577; --line: #dde2ea; --bg: #ffffff; --panel: #f6f8fb;
        --lose: #b3261e; --lose-bg: #fdecea; --win: #1e7b34; --win-bg: #e8f5ec; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0; }
h2 { font-size: 21px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
h4 { font-size: 14px; margin: 16px 0 6px; color: var(--muted); }
.run { color: var(--muted); margin: 2px 0 12px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; padding: 12px 16px;
           background: var(--panel); border-radius: 8px; font-size: 13px; }
dl.facts dt { color: var(--muted); font-weight: 600; }
dl.facts dd { margin: 0; }
.verdicts ul { list-style: none; padding: 0; margin: 0; }
.verdicts li, p.verdict { padding: 9px 14px; margin: 6px 0; border-radius: 6px; border-left: 5px solid;
                          font-size: 15px; }
.verdicts li { display: grid; grid-template-columns: var(--topic, 14em) 1fr; gap: 12px; }
.verdicts .topic { font-weight: 700; }
.lose { background: var(--lose-bg); border-color: var(--lose); }
.win { background: var(--win-bg); border-color: var(--win); }
.neutral { background: var(--panel); border-color: var(--muted); }
nav.toc { margin: 18px 0 0; font-size: 14px; }
nav.toc a { color: #1f5fbf; text-decoration: none; }
.table { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); }
td { white-space: nowrap; }
th { text-align: left; vertical-align: bottom; background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:first-child td { font-weight: 600; }
figure.plot { margin: 14px 0 22px; }
figure.plot svg { width: 100%; height: auto; display: block; }
figure.plot.narrow svg { max-width: 640px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
p.nodata { color: var(--muted); font-style: italic; background: var(--panel); padding: 8px 12px; border-radius: 6px; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""
