"""Real browser: hovering a point of the Embedding map (PCA) shows that sample's thumbnail (an <img> fetched from
Python on hover); a lasso drawn on the map opens the gallery of exactly the points inside it (relayed to the page's
selection fragment by pages/_map_events), and the selection becomes the review queue "selection"."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from core.embedding_map import NO_UMAP_ENV, points_in_polygon, project_embeddings
from core.images import load_image_rgb
from core.workspace import load_workspace
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


def isolated_point(pixels: np.ndarray, inside: np.ndarray) -> int:
    """The point inside the plot area farthest (in pixels) from every other point: hovering it can hit no other."""
    gaps = np.sqrt(((pixels[:, None, :] - pixels[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(gaps, np.inf)
    nearest = np.where(inside, gaps.min(axis=1), -1.0)
    return int(np.argmax(nearest))


def reference_thumbnail(path: str):
    """The sample's image reduced as the gallery's thumbnails are (longest side 160 px), as an RGB array."""
    image = load_image_rgb(path)
    image.thumbnail((160, 160))
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_hover_shows_the_thumbnail_and_lasso_opens_its_gallery_and_queue(served_workspace, tmp_path):
    sync_api = sync_playwright_or_skip()
    url, root = served_workspace
    val = load_table(root).for_split("val")
    coords = project_embeddings(val.embeddings, method="pca")  # what the page draws for PCA
    samples = load_workspace(root).load_dataset().samples.set_index("sample_id")

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

        # Hover the most isolated point: its thumbnail appears beside the pointer, fetched for that sample.
        def to_pixels(points: np.ndarray) -> np.ndarray:
            fx = (points[:, 0] - axes["xr"][0]) / (axes["xr"][1] - axes["xr"][0])
            fy = (axes["yr"][1] - points[:, 1]) / (axes["yr"][1] - axes["yr"][0])
            return np.stack([box["x"] + axes["x0"] + fx * axes["xl"], box["y"] + axes["y0"] + fy * axes["yl"]], 1)

        point_pixels = to_pixels(coords.astype(np.float64))
        fractions = (point_pixels - [box["x"] + axes["x0"], box["y"] + axes["y0"]]) / [axes["xl"], axes["yl"]]
        row = isolated_point(point_pixels, ((fractions > 0.05) & (fractions < 0.95)).all(axis=1))
        sample_id = str(val.frame["sample_id"].iloc[row])
        page.locator(".js-plotly-plot[data-tl-hover=attached][data-tl-select=attached]").wait_for(timeout=60_000)
        hx, hy = point_pixels[row]
        page.mouse.move(hx - 30, hy - 30)
        page.mouse.move(hx, hy, steps=6)
        preview = page.locator(f'img[data-sample-id="{sample_id}"]')
        preview.wait_for(state="visible", timeout=60_000)
        assert preview.get_attribute("alt") == sample_id
        assert preview.evaluate("img => img.complete && img.naturalWidth > 0")
        src = preview.get_attribute("src")
        assert src.startswith("data:image/jpeg;base64,")
        expected_pixels = reference_thumbnail(str(samples.loc[sample_id, "path"]))
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"),
                           dtype=np.float32)
        assert shown.shape == expected_pixels.shape
        assert np.abs(shown - expected_pixels).mean() < 6, "the preview is another image than the hovered sample's"
        other = samples.loc[str(val.frame["sample_id"].iloc[(row + 1) % len(val)]), "path"]
        other_pixels = reference_thumbnail(str(other))
        if other_pixels.shape == shown.shape:  # the check above can tell two samples apart
            assert np.abs(shown - other_pixels).mean() > np.abs(shown - expected_pixels).mean()
        page.screenshot(path=str(tmp_path / "map_hover.png"), full_page=True)
        # A click on that point selects it alone (its sample opens large)
        page.mouse.click(hx, hy)
        page.get_by_text("Selection: 1 images").wait_for(timeout=60_000)
        page.get_by_text(sample_id).first.wait_for(timeout=60_000)
        page.mouse.move(box["x"] + 2, box["y"] + 2)  # away from the plot: the preview goes
        sync_api.expect(preview).to_be_hidden(timeout=10_000)

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
