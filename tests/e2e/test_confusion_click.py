"""Real browser: clicking an off-diagonal confusion-matrix cell opens the gallery of exactly that cell's images."""

from __future__ import annotations

import time

import numpy as np
import pytest

from core.confusion import rank_confused_pairs
from pages._evaluation import cell_heading
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app, sync_playwright_or_skip
from tests.pages.eval_workspaces import build_drawn_workspace, load_table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory):
    """`streamlit run app.py` on a small demo workspace with predictions; yields (url, workspace root)."""
    root = build_drawn_workspace(tmp_path_factory.mktemp("e2e") / "demo")
    with serve_app(root, root / "streamlit.log") as url:
        yield url, root


def test_click_off_diagonal_cell_opens_its_gallery(served_workspace, tmp_path):
    sync_api = sync_playwright_or_skip()
    url, root = served_workspace

    # The cell to click: the largest off-diagonal cell of the val split, and its position among the trace's points
    # (the figure lists non-empty cells in row-major order of (true, pred)).
    table = load_table(root).for_split("val")
    names = table.class_names
    k = len(names)
    y, p = table.frame["label_idx"].to_numpy(), table.frame["pred_idx"].to_numpy()
    keep = y >= 0
    counts = np.bincount(y[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.unravel_index(int(off.argmax()), off.shape)
    expected_n = int(counts[true_idx, pred_idx])
    assert expected_n > 0
    cells = list(zip(*np.nonzero(counts), strict=True))
    point_index = cells.index((true_idx, pred_idx))

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        # Open the app at its entry page, then navigate: a first visit straight to /confusion on a fresh server runs
        # in Streamlit's legacy pages/-folder mode until some session has run st.navigation once.
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Confusion matrix").click(timeout=90_000)
        page.get_by_text("Most confused pairs").wait_for(timeout=90_000)
        chart = page.locator(".stPlotlyChart").first
        chart.locator(".scatterlayer .trace").first.locator("path.point").nth(point_index).wait_for(timeout=60_000)
        point = chart.locator(".scatterlayer .trace").first.locator("path.point").nth(point_index)
        box = point.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

        heading = cell_heading(expected_n, names[true_idx], names[pred_idx])  # shown escaped, reads the same
        page.get_by_text(heading).wait_for(timeout=60_000)
        grid = page.locator(".st-key-cm-gallery-grid")
        grid.locator("img").nth(min(expected_n, 24) - 1).wait_for(timeout=60_000)
        time.sleep(1.0)  # let the last thumbnails paint before the screenshot
        page.screenshot(path=str(tmp_path / "confusion_click.png"), full_page=True)
        images = grid.locator("img")
        assert images.count() == min(expected_n, 24)
        captions = grid.locator('[data-testid="stImageCaption"]').all_inner_texts()
        shown = [c for c in captions if "→" in c]
        assert len(shown) == min(expected_n, 24)
        # N thumbnails, each captioned with the cell's classes: exactly the N samples of that cell.
        assert all(c.startswith(f"{names[true_idx]} → {names[pred_idx]}") for c in shown), shown
        buttons = grid.get_by_role("button", name="Inspect")
        assert buttons.count() == min(expected_n, 24)

        # The ranked pairs beside the matrix open the same gallery: tick the second row's checkbox (the grid is a
        # canvas: header and rows are 35 px high, the selection column about 28 px wide).
        second = rank_confused_pairs(counts, names).iloc[1]
        pairs = page.locator("[class*=\"st-key-cm-pairs-\"]").first.bounding_box()
        page.mouse.click(pairs["x"] + 14, pairs["y"] + 35 + 35 + 17)
        second_heading = cell_heading(int(second["count"]), second["true"], second["pred"])
        page.get_by_text(second_heading).wait_for(timeout=60_000)
        # Streamlit keeps the previous run's elements until the new run finishes: wait for the count to settle.
        sync_api.expect(grid.locator("img")).to_have_count(min(int(second["count"]), 24), timeout=60_000)
        sync_api.expect(grid.get_by_role("button", name="Inspect")).to_have_count(min(int(second["count"]), 24))
        browser.close()
