"""Real browser (one server, one Chromium): the Calibration page draws its reliability diagram, fits a temperature,
shows the per-class table and prediction sets, and downloads the auto-accept thresholds the core computes; the review
screen shows the prediction set of the sample on screen and offers the "possibly unknown" queue.

Kept cheap: the drawn workspace at a small scale (about 80 images over 9 classes; drawing the images was most of the
setup at 0.15). At this size the page's 1,000-draw bootstraps take well under a second, so fewer draws would save
nothing; the server start and the browser dominate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.calibration import load_temperature
from core.thresholds import ThresholdConfig, auto_accept_thresholds
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app
from tests.pages.eval_workspaces import CHECKPOINT, build_drawn_workspace, load_table

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 240_000  # the server's first page imports torch and reads the dataset; 2 busy cores
SCALE = 0.06  # of the drawn demo: about 80 images, every class in the val split's sets


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM}")
    root = build_drawn_workspace(tmp_path_factory.mktemp("e2e-calibration") / "demo", scale=SCALE)
    with serve_app(root, root / "streamlit.log") as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield url, root, browser
        finally:
            browser.close()


def _open_page(browser, url: str, link: str):
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("link", name=link).click(timeout=TIMEOUT_MS)
    return context, page


def _settled(page) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=TIMEOUT_MS)


def test_calibration_page_draws_the_reliability_diagram_and_fits(served) -> None:
    url, root, browser = served
    context, page = _open_page(browser, url, "Calibration")
    try:
        page.get_by_role("heading", name="Reliability diagram").wait_for()
        _settled(page)
        chart = page.locator(".js-plotly-plot").first
        chart.wait_for()
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 2  # diagonal + uncalibrated
        page.get_by_role("button", name="Fit temperature on the val split").click()
        page.get_by_text("Temperature-scaled (T = ").wait_for()
        _settled(page)
        fit = load_temperature(root / ".taxalens", CHECKPOINT)
        assert fit is not None
        assert page.get_by_text(f"T = {fit.temperature:.3f}").first.is_visible()
        page.get_by_role("heading", name="Per class").wait_for()
        page.get_by_role("heading", name="Prediction sets").wait_for()
        assert page.get_by_text("Empirical coverage").is_visible()
        # the thresholds a deployment downloads are the core's, class by class
        with page.expect_download() as download:
            page.get_by_role("button", name="Thresholds (JSON)").click()
        exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        expected = auto_accept_thresholds(load_table(root).for_split("val"), ThresholdConfig(precision=0.95))
        assert exported["target_precision"] == 0.95 and exported["checkpoint"] == CHECKPOINT
        assert exported["accepted_share"] == pytest.approx(expected.accepted_share)
        for row in expected.frame.itertuples(index=False):
            threshold = exported["classes"][row[0]]["threshold"]
            assert (threshold is None) if math.isnan(row.threshold) else threshold == pytest.approx(row.threshold)
    finally:
        context.close()


def test_review_screen_shows_the_prediction_set(served) -> None:
    url, _, browser = served
    context, page = _open_page(browser, url, "Review queue")
    try:
        page.get_by_text("Prediction set (90%):").wait_for()
        _settled(page)
    finally:
        context.close()
    context = browser.new_context(viewport={"width": 1600, "height": 1400})  # a link to the "possibly unknown" queue
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{url}/review?queue=possibly_unknown", wait_until="domcontentloaded")
        page.get_by_text("most unusual first").wait_for()
        _settled(page)
        assert page.get_by_text("Prediction set (90%):").is_visible()
        assert "queue=possibly_unknown" in page.url  # the queue stays the one the link named
    finally:
        context.close()
