"""The report page and its files: sections, escaping, self-containment, the JSON beside it."""

from __future__ import annotations

import collections
import json
import re

import matplotlib
import pytest
from _run_folder import EQUITY, make_run

from condorbrain.report import build_report, write_report


def _ids(page: str) -> list[str]:
    return re.findall(r'\sid="([^"]+)"', page) + re.findall(r"\sid='([^']+)'", page)


def test_write_report_files(tmp_path):
    run = make_run(tmp_path)
    backend, fonttype = matplotlib.get_backend(), matplotlib.rcParams["svg.fonttype"]
    paths = write_report(run)
    assert (paths.html, paths.json) == (run / "report.html", run / "report.json")
    assert json.loads(paths.json.read_text()) == build_report(run)  # the same numbers
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    # matplotlib's global state is left as it was
    assert (matplotlib.get_backend(), matplotlib.rcParams["svg.fonttype"]) == (backend, fonttype)
    page = paths.html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for section in ("strategies", "forecasts", "regimes"):
        assert f"id='{section}'" in page
    assert "id='walk-forward'" not in page and "Walk-forward" not in page
    assert page.count("<svg") == 6  # equity, drawdown, P&L, volatility, calibration, regimes
    dupes = [i for i, n in collections.Counter(_ids(page)).items() if n > 1]
    assert dupes == []  # the inline SVGs' ids do not collide
    # verdicts at the top, before the first section, with the LOSES line marked
    top = page[:page.index("id='strategies'")]
    assert "<li class='lose'><span class='topic'>volatility, 30 bars</span>condorbrain LOSES on qlike" in top
    assert "<li class='win'>" in top
    # the table shows the numbers put in
    assert ">130,000<" in page and ">−∞<" in page


@pytest.fixture(scope="module")
def wf_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The page of a walk-forward run (read only)."""
    return write_report(make_run(tmp_path_factory.mktemp("wf"), walk_forward=True)).html.read_text()


def test_page_is_self_contained(wf_page):
    page = wf_page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, flags=re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", page, flags=re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page


def test_text_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    run = make_run(tmp_path, strategies={evil: [100.0, 90.0, 95.0], "a&b": [100.0, 101.0, 102.0]})
    page = write_report(run).html.read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in the table and the plots' legends
    assert "a&amp;b" in page


def test_walk_forward_section(wf_page):
    page = wf_page
    wf = page[page.index("id='walk-forward'"):]
    assert "<h3>Window 1</h3>" in wf and "<h3>Window 2</h3>" in wf and "<h3>Overall</h3>" in wf
    assert "train 2000-01-03 to 2011-12-31; val 2012-01-02 to 2012-12-31; test 2013-01-02 to 2013-12-31" in wf
    assert ">90,002<" in wf and ">80,000<" in wf  # window 2's and the overall backtest rows
    for line in ("LOSES on qlike in window 1", "LOSES on sharpe in window 2", "LOSES on qlike overall",
                 "LOSES on sharpe overall"):
        assert f"<p class='verdict lose'>condorbrain {line}</p>" in wf
    assert "href=\"#walk-forward\"" in page  # in the contents line


def test_missing_optional_inputs_show_no_data(tmp_path):
    run = make_run(tmp_path, regimes=False, trades=False)
    (run / "backtest.json").unlink()
    page = write_report(run).html.read_text()
    assert "No data: no regime probabilities in predictions.parquet." in page
    assert "No data: no trades in any strategy." in page
    assert "No data: no strategy table (backtest.json)." in page
    assert page.count("<svg") == 4  # equity, drawdown, volatility, calibration


def test_strategy_without_trades(tmp_path):
    curves = {**EQUITY, "idle": [100.0, 100.0]}
    page = write_report(make_run(tmp_path, strategies=curves)).html.read_text()
    assert "No data: no trades for idle." in page


def test_missing_required_file(tmp_path):
    run = make_run(tmp_path)
    (run / "evaluation.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"evaluation\.json"):
        write_report(run)
    assert not (run / "report.html").exists()
