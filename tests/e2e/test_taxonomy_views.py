"""Real browser (Chromium) on one served app: the Taxonomy page's per-rank lines and table, the mistake-severity
histogram and the decision-rule view render with the numbers computed directly; the confusion matrix folds to a rank
and a click on a folded cell opens the gallery of every image under it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from core import taxonomy_metrics as T
from core.taxonomy import load_taxonomy
from core.workspace import load_workspace
from pages._evaluation import cell_heading
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app
from tests.pages.eval_workspaces import build_drawn_workspace, load_table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory):
    """`streamlit run app.py` on the small drawn demo workspace (4-rank taxonomy); yields (url, workspace root)."""
    root = build_drawn_workspace(tmp_path_factory.mktemp("e2e-taxonomy") / "demo")
    with serve_app(root, root / "streamlit.log") as url:
        yield url, root


def test_taxonomy_views_in_the_browser(served_workspace, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM}")
    url, root = served_workspace
    workspace = load_workspace(root)
    taxonomy = load_taxonomy(workspace, workspace.load_dataset())
    table = load_table(root).for_split("val")
    ranks = T.rank_metrics_frame(T.metrics_by_rank(table, taxonomy, n_boot=0))
    severity = T.mistake_severity(table, taxonomy, n_boot=0)
    effect = T.decision_rule_effect(table, taxonomy, n_boot=0)
    folded = T.fold_confusion(table, taxonomy, "phylum")
    off = folded.counts.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.unravel_index(int(off.argmax()), off.shape)
    expected_n = int(folded.counts[true_idx, pred_idx])
    assert expected_n > 0
    point_index = list(zip(*np.nonzero(folded.counts), strict=True)).index((true_idx, pred_idx))

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Taxonomy", exact=True).click(timeout=90_000)

        # Per-rank lines ("where accuracy breaks down") with the directly computed accuracies, and the table.
        phylum = ranks.set_index("rank").loc["phylum"]
        page.get_by_text(f"phylum ({phylum['groups']} groups): accuracy {phylum['accuracy']:.1%}").wait_for(
            timeout=90_000)
        # Tables and charts carry no key in the DOM (only widgets do): they are found by kind and position.
        tables, charts = page.locator('[data-testid="stDataFrame"]'), page.locator(".stPlotlyChart")
        sync_api.expect(tables).to_have_count(4, timeout=60_000)  # per-rank, per-class, bottom 10, wild classes
        # The severity histogram (the second chart): one bar per LCA rank with errors, its lines above it.
        page.get_by_text(severity.within_lines()[0]).wait_for(timeout=60_000)
        bars = charts.nth(1).locator(".barlayer .point")
        bars.first.wait_for(timeout=60_000)
        assert int((severity.histogram["errors"] > 0).sum()) <= bars.count() <= len(severity.histogram)

        # The decision-rule view is optional: switch it on.
        page.get_by_text("Show the hierarchy-aware decision rule").click()
        page.get_by_text(f"The rule changes {effect.n_changed:,} of {len(table):,} predictions").wait_for(
            timeout=90_000)
        sync_api.expect(charts).to_have_count(4, timeout=60_000)
        sync_api.expect(tables).to_have_count(6, timeout=60_000)
        decision_bars = charts.nth(2).locator(".barlayer .point")
        decision_bars.first.wait_for(timeout=60_000)
        nonzero = int((effect.per_rank[["accuracy_before", "accuracy_after"]] > 0).to_numpy().sum())
        assert nonzero <= decision_bars.count() <= 2 * len(taxonomy.levels)
        page.screenshot(path=str(tmp_path / "taxonomy_page.png"), full_page=True)

        # The confusion matrix folded to phylum; a click on a folded cell opens every image under it.
        page.get_by_role("link", name="Confusion matrix", exact=True).click(timeout=60_000)
        page.get_by_text("Most confused pairs").wait_for(timeout=90_000)
        page.locator(".st-key-cm-rank").click()
        page.get_by_role("option", name="phylum").click()
        page.get_by_text(f"{len(folded.group_names)} groups at rank").wait_for(timeout=60_000)
        chart = page.locator(".stPlotlyChart").first  # the folded matrix is the only chart in fold mode
        points = chart.locator(".scatterlayer .trace").first.locator("path.point")
        points.nth(point_index).wait_for(timeout=60_000)
        box = points.nth(point_index).bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        heading = cell_heading(expected_n, f"phylum {folded.group_names[true_idx]}",
                               f"phylum {folded.group_names[pred_idx]}")
        page.get_by_text(heading).wait_for(timeout=60_000)
        grid = page.locator(".st-key-cm-fold-gallery-grid")
        sync_api.expect(grid.locator("img")).to_have_count(min(expected_n, 24), timeout=60_000)
        time.sleep(1.0)  # let the thumbnails paint before the screenshot
        page.screenshot(path=str(tmp_path / "confusion_folded.png"), full_page=True)
        captions = [c for c in grid.locator('[data-testid="stImageCaption"]').all_inner_texts() if "→" in c]
        assert len(captions) == min(expected_n, 24)
        # Class-level captions: every label is under the true phylum, every prediction under the predicted one.
        for caption in captions:  # "label → pred · 93%"
            label, rest = (part.strip() for part in caption.split("→", 1))
            pred = rest.split("·")[0].strip()
            assert taxonomy.group_of(label, "phylum") == folded.group_names[true_idx], caption
            assert taxonomy.group_of(pred, "phylum") == folded.group_names[pred_idx], caption
        browser.close()
