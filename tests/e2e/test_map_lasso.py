"""Real browser: a lasso drawn on the Embedding map (PCA) opens the gallery of exactly the points inside it, and the
selection becomes the review queue "selection"."""

from __future__ import annotations

import re

import pytest

from core.embedding_map import NO_UMAP_ENV, points_in_polygon, project_embeddings
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app, sync_playwright_or_skip
from tests.pages.eval_workspaces import build_drawn_workspace, load_table

pytestmark = pytest.mark.e2e

# The lasso, as shares of the plot area (x right, y down): the left half, inset from the edges.
LASSO = [(0.02, 0.02), (0.5, 0.02), (0.5, 0.98), (0.02, 0.98)]


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory):
    root = build_drawn_workspace(tmp_path_factory.mktemp("e2e-map") / "demo")
    # PCA only: UMAP's first run compiles numba code for a minute of CPU, and its map would replace the PCA one
    with serve_app(root, root / "streamlit.log", env={NO_UMAP_ENV: "1"}) as url:
        yield url, root


def test_lasso_on_the_map_opens_its_gallery_and_queue(served_workspace, tmp_path):
    sync_api = sync_playwright_or_skip()
    url, root = served_workspace
    val = load_table(root).for_split("val")
    coords = project_embeddings(val.embeddings, method="pca")  # what the page draws for PCA

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Embedding map").click(timeout=90_000)
        page.get_by_text(re.compile(r"^PCA · \d+ points$")).wait_for(timeout=90_000)
        page.get_by_text("No selection yet.").wait_for(timeout=60_000)
        chart = page.locator(".stPlotlyChart .js-plotly-plot").first
        chart.locator(".gl-container canvas, canvas").first.wait_for(timeout=60_000)
        # The plot area and axis ranges as plotly laid them out (pixels relative to the chart's top-left corner).
        axes = chart.evaluate("gd => { const x = gd._fullLayout.xaxis, y = gd._fullLayout.yaxis; "
                              "return {x0: x._offset, xl: x._length, xr: x.range, y0: y._offset, yl: y._length, "
                              "yr: y.range}; }")
        box = chart.bounding_box()
        assert box is not None
        pixels = [(box["x"] + axes["x0"] + fx * axes["xl"], box["y"] + axes["y0"] + fy * axes["yl"])
                  for fx, fy in LASSO]
        polygon = [(axes["xr"][0] + fx * (axes["xr"][1] - axes["xr"][0]),
                    axes["yr"][1] - fy * (axes["yr"][1] - axes["yr"][0])) for fx, fy in LASSO]
        expected = int(points_in_polygon(coords, polygon).sum())
        assert 0 < expected < len(val), "the lasso must select a real subset"

        # Drag with the lasso tool (the map's default drag mode), closing the path where it started.
        page.mouse.move(*pixels[0])
        page.mouse.down()
        for x, y in [*pixels[1:], pixels[0]]:
            page.mouse.move(x, y, steps=12)
        page.mouse.up()

        page.get_by_text(f"Selection: {expected:,} images").wait_for(timeout=60_000)
        grid = page.locator(".st-key-map-gallery-grid")
        sync_api.expect(grid.locator("img")).to_have_count(min(expected, 24), timeout=60_000)
        page.screenshot(path=str(tmp_path / "map_lasso.png"), full_page=True)

        page.get_by_role("button", name=re.compile(r"^Send .* to the review queue")).click()
        page.get_by_text(f"{expected:,} samples handed over").wait_for(timeout=90_000)
        page.get_by_text(re.compile(rf"^Sample 1 of {expected} ")).wait_for(timeout=90_000)
        browser.close()
