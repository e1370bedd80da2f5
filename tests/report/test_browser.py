"""The report page in a real headless browser (Debian's ``chromium``): it renders with no console error, uncaught
exception or failed load, and its screenshot is not blank. The controls prove that the detection works: pages with
a deliberate ``console.error``, a thrown exception and a missing image are caught, and a blank page fails the
screenshot check.

Without chromium these tests skip, except under CI (``CI=true``), where they fail."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import matplotlib.image
import numpy as np
import pytest
from _browser import Browser, find_chromium
from _run_folder import make_run

from condorbrain.report import write_report
from condorbrain.report.plots import PALETTE


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module's page loads (each in a new tab)."""
    path = find_chromium()
    if path is None:
        reason = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI the browser tests must run")
        pytest.skip(reason)
    with Browser(path) as b:
        yield b


def _ink(png: bytes) -> tuple[float, int, np.ndarray]:
    """Share of pixels unlike the most common colour (the background), number of distinct colours (4 bits per
    channel), and the RGB image (H, W, 3) in 0..255."""
    rgb = np.round(matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    background = np.argmax(np.bincount(codes.ravel()))
    coarse = ((rgb[..., 0] >> 4) << 8) | ((rgb[..., 1] >> 4) << 4) | (rgb[..., 2] >> 4)
    colours = int(np.count_nonzero(np.bincount(coarse.ravel())))
    return float(np.mean(codes != background)), colours, rgb


@pytest.mark.parametrize(("body", "expected"), [
    ("<script>console.error('deliberate failure')</script>", "console.error: deliberate failure"),
    ("<script>throw new TypeError('deliberate exception')</script>", "uncaught exception: TypeError: deliberate"),
    ("<img src='missing.png' alt=''>", "log error (network): Failed to load resource"),
])
def test_detects_page_errors(browser, tmp_path, body, expected):
    page = tmp_path / "bad.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>bad</title></head><body><p>text</p>{body}</body></html>")
    errors = browser.load(page.as_uri(), width=400, height=300).errors
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_clean_blank_page(browser, tmp_path):
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>")
    load = browser.load(page.as_uri(), width=400, height=300)
    assert load.errors == []
    ink, colours, _ = _ink(load.screenshot)
    assert ink == 0.0 and colours == 1  # what the report's check below would reject


def test_report_renders_without_errors(browser, tmp_path):
    paths = write_report(make_run(tmp_path, walk_forward=True))
    load = browser.load(paths.html.as_uri(), width=1280, height=2000)
    shot = tmp_path / "report.png"
    shot.write_bytes(load.screenshot)  # to look at when this fails
    assert load.errors == [], f"browser errors (screenshot: {shot})"
    ink, colours, rgb = _ink(load.screenshot)
    assert rgb.shape == (2000, 1280, 3)
    assert ink > 0.10 and colours > 50, f"the screenshot looks blank: {ink:.3f} inked, {colours} colours ({shot})"
    # the plots were drawn: pixels in the model's line colour (equity curve, drawdown, volatility)
    model = np.array([int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5)])
    assert np.sum(np.all(np.abs(rgb - model) <= 12, axis=-1)) > 200, f"no plot lines in the screenshot ({shot})"
