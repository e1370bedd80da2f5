"""The run report (issue 5, section 4): one self-contained HTML page per run folder, with the plots people would
rather look at than read, and the same numbers as JSON.

- `inputs`: the run folder's files (required: ``backtest_equity.parquet``, ``evaluation.json``,
  ``predictions.parquet``; the rest optional).
- `numbers`: the report's numbers (equity and drawdown per strategy, P&L histograms, calibration bins, volatility
  forecasts against realized, regime probabilities, tables, verdicts): ``report.json``.
- `plots`: those numbers drawn as inline SVG (matplotlib's ``Figure``, never pyplot).
- `page`: the HTML page and :func:`write_report`.

``write_report(run_dir)`` writes ``report.html`` and ``report.json`` into the run folder and returns their paths;
``build_report(run_dir)`` returns the JSON numbers without writing anything.
"""

from condorbrain.report.inputs import REQUIRED_FILES, RunFiles, read_run_files
from condorbrain.report.numbers import ReportConfig, build_report, drawdown, json_safe, pnl_histogram, report_numbers
from condorbrain.report.page import ReportPaths, render_page, write_report

__all__ = ["REQUIRED_FILES", "ReportConfig", "ReportPaths", "RunFiles", "build_report", "drawdown", "json_safe",
           "pnl_histogram", "read_run_files", "render_page", "report_numbers", "write_report"]
