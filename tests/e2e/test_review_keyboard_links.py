"""Real browser (one server, one Chromium): 30 review decisions by keyboard alone, each stored once and no Streamlit
dialog opened; a confusion-cell link opens the same gallery in a fresh browser; a relabel shows on the Overview once
the sidebar's labels are switched to "as curated"."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from core.curation import apply_curated_labels, curated_labels
from core.labelstore import LabelStore
from core.metrics import compute_headline_metrics
from core.workspace import load_workspace
from pages._evaluation import cell_heading
from pages._review_support import SHORTCUTS
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app
from tests.pages.eval_workspaces import build_drawn_workspace, load_table

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 90_000
ACTION_OF_KEY = {SHORTCUTS["rv-confirm"]: "confirm", SHORTCUTS["rv-exclude"]: "exclude",
                 SHORTCUTS["rv-unsure"]: "unsure", SHORTCUTS["rv-relabel"]: "relabel", SHORTCUTS["rv-undo"]: "undo"}
MOVES = (SHORTCUTS["rv-next"], SHORTCUTS["rv-prev"])
SAMPLE_CAPTION = re.compile(r"Sample (\d+) of (\d+) · queue rank \d+ · (\S+)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, workspace root, playwright browser): one server and one Chromium for the module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM}")
    root = build_drawn_workspace(tmp_path_factory.mktemp("e2e-review") / "demo")
    with serve_app(root, root / "streamlit.log") as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield url, root, browser
        finally:
            browser.close()


def _open_page(browser, url: str, link: str):
    """A fresh context at the entry page, then the sidebar link `link` (a first visit straight to a page's path on a
    fresh server runs Streamlit's legacy pages/ mode)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("link", name=link).click(timeout=TIMEOUT_MS)
    return context, page


def _settled(page) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=TIMEOUT_MS)


def _shown_sample(page) -> str:
    text = page.locator(".st-key-rv-nav").inner_text(timeout=TIMEOUT_MS)
    match = SAMPLE_CAPTION.search(text)
    assert match, text
    return match.group(3)


def _events(root: Path) -> list:
    with LabelStore(load_workspace(root).label_store_url) as store:
        return store.events()


def _assert_no_dialog(page) -> None:
    assert page.locator('[role="dialog"]').count() == 0, "a Streamlit dialog opened (Clear caches?)"


def test_thirty_keyboard_decisions_are_each_stored_once(served, tmp_path: Path) -> None:
    url, root, browser = served
    context, page = _open_page(browser, url, "Review queue")
    page.get_by_role("textbox", name="Reviewer").fill("ann")
    page.get_by_role("textbox", name="Reviewer").press("Enter")
    page.locator(".st-key-rv-confirm button:not([disabled])").wait_for(timeout=TIMEOUT_MS)
    _settled(page)
    page.locator("h1").first.click()  # focus leaves the text box: keys go to the page
    start = len(_events(root))

    # No label is cut: each action button's text fits its box (a cut label overflows with an ellipsis).
    cut = page.evaluate("""() => [...document.querySelectorAll('.st-key-rv-actions button')].flatMap(b =>
        [...b.querySelectorAll('p, span, div')].filter(e => e.scrollWidth > e.clientWidth + 1)
        .map(e => b.innerText))""")
    assert cut == [], cut

    s = SHORTCUTS  # confirm, exclude, undo, unsure, confirm, relabel, undo, exclude, next, previous, unsure
    keys = [s["rv-confirm"], s["rv-exclude"], s["rv-undo"], s["rv-unsure"], s["rv-confirm"], s["rv-relabel"],
            s["rv-undo"], s["rv-exclude"], s["rv-next"], s["rv-prev"], s["rv-unsure"]]
    decisions: list[tuple[str, str]] = []  # (sample_id, action) the page should have stored, in order
    with_history = without_history = 0
    step = 0
    while len(decisions) < 30:
        key = keys[step % len(keys)]
        step += 1
        before = _shown_sample(page)
        has_history = page.get_by_text("History of this sample").count() > 0
        relabel = key == SHORTCUTS["rv-relabel"]
        facts = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Suggested:").first
        suggested = facts.inner_text() if relabel else None
        page.keyboard.press(key)
        if key in MOVES:
            page.wait_for_function(
                "s => !document.querySelector('.st-key-rv-nav').innerText.includes(s)", arg=before, timeout=TIMEOUT_MS)
            _settled(page)
            continue
        action = ACTION_OF_KEY[key]
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while len(_events(root)) < start + len(decisions) + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        # the page moves on (after an undo: back to the undone sample); then its run ends
        page.wait_for_function(
            "s => !document.querySelector('.st-key-rv-nav').innerText.includes(s)", arg=before, timeout=TIMEOUT_MS)
        _settled(page)
        events = _events(root)[start:]
        assert len(events) == len(decisions) + 1, (key, [(e.sample_id, e.action) for e in events])  # once each
        event = events[-1]
        if action == "undo":
            undone = next(e for e in events if e.id == event.reverts_id)
            assert event.sample_id == undone.sample_id
            page.wait_for_function("s => document.querySelector('.st-key-rv-nav').innerText.includes(s)",
                                   arg=event.sample_id, timeout=TIMEOUT_MS)  # back to the undone sample
        else:
            assert event.sample_id == before and event.action == action, (key, before, event)
            if relabel:  # the picker started on this sample's suggestion
                assert suggested is not None and f"Suggested: {event.new_label} (" in suggested, suggested
        decisions.append((event.sample_id, event.action))
        with_history += has_history
        without_history += not has_history
        _assert_no_dialog(page)

    events = _events(root)[start:]
    assert [(e.sample_id, e.action) for e in events] == decisions and len(events) == 30
    assert with_history >= 3 and without_history >= 3, (with_history, without_history)
    assert page.get_by_text("Clear caches").count() == 0
    page.screenshot(path=str(tmp_path / "review_keyboard.png"), full_page=True)
    context.close()


def test_a_copied_confusion_cell_link_opens_the_same_gallery_in_a_fresh_browser(served) -> None:
    url, root, browser = served
    table = load_table(root).for_split("val")
    names = table.class_names
    y, p = table.frame["label_idx"].to_numpy(), table.frame["pred_idx"].to_numpy()
    k = len(names)
    counts = np.bincount(y[y >= 0] * k + p[y >= 0], minlength=k * k).reshape(k, k)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.unravel_index(int(off.argmax()), off.shape)
    heading = cell_heading(int(counts[true_idx, pred_idx]), names[true_idx], names[pred_idx])
    n_shown = min(int(counts[true_idx, pred_idx]), 24)

    context, page = _open_page(browser, url, "Confusion matrix")
    page.get_by_text("Most confused pairs").wait_for(timeout=TIMEOUT_MS)
    point_index = list(zip(*np.nonzero(counts), strict=True)).index((true_idx, pred_idx))
    point = page.locator(".stPlotlyChart").first.locator(".scatterlayer .trace").first.locator("path.point")
    point.nth(point_index).wait_for(timeout=TIMEOUT_MS)
    box = point.nth(point_index).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text(heading).wait_for(timeout=TIMEOUT_MS)
    grid = page.locator(".st-key-cm-gallery-grid")
    grid.get_by_role("button", name="Inspect").nth(1).click()  # open a sample too
    page.locator('[data-testid="stImageCaption"]').filter(has_text=re.compile(r"^images/")).first.wait_for(
        timeout=TIMEOUT_MS)
    _settled(page)
    captions = sorted(grid.locator('[data-testid="stImageCaption"]').all_inner_texts())
    assert len(captions) == n_shown
    inspected = page.locator('[data-testid="stImageCaption"]').filter(has_text=re.compile(r"^images/")).first
    inspected_id = inspected.inner_text().strip()

    page.locator(".st-key-cm-link button").first.click()
    code = page.locator('[data-testid="stPopoverBody"] code, [data-baseweb="popover"] code').first
    code.wait_for(timeout=TIMEOUT_MS)
    link = code.inner_text().strip()
    assert link.startswith(f"{url}/confusion?") and "true=" in link and "sample=" in link, link
    context.close()

    fresh = browser.new_context(viewport={"width": 1600, "height": 1400})  # no cookies, no session: only the link
    fresh.set_default_timeout(TIMEOUT_MS)
    other = fresh.new_page()
    other.goto(link, wait_until="domcontentloaded")
    other.get_by_text(heading).wait_for(timeout=TIMEOUT_MS)
    grid = other.locator(".st-key-cm-gallery-grid")
    grid.locator("img").nth(n_shown - 1).wait_for(timeout=TIMEOUT_MS)
    _settled(other)
    assert sorted(grid.locator('[data-testid="stImageCaption"]').all_inner_texts()) == captions
    other.get_by_text(inspected_id, exact=True).first.wait_for(timeout=TIMEOUT_MS)  # the same open sample
    other.reload(wait_until="domcontentloaded")  # and a reload keeps it all
    other.get_by_text(heading).wait_for(timeout=TIMEOUT_MS)
    fresh.close()


def test_a_relabel_changes_the_overview_once_labels_are_curated(served) -> None:
    url, root, browser = served
    workspace = load_workspace(root)
    table = load_table(root).for_split("val")
    frame = table.frame
    wrong = frame[(frame["label_idx"] >= 0) & (frame["label_idx"] != frame["pred_idx"])].iloc[-1]

    context, page = _open_page(browser, url, "Overview")
    page.get_by_text("Headline metrics").wait_for(timeout=TIMEOUT_MS)
    _settled(page)
    accuracy = page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first
    given_text = accuracy.locator('[data-testid="stMetricValue"]').inner_text()

    with LabelStore(workspace.label_store_url) as store:  # a reviewer elsewhere relabels a misclassified sample
        store.record(str(wrong["sample_id"]), "relabel", reviewer="bob", label=str(wrong["pred"]),
                     given_label=str(wrong["label"]))
        curated = apply_curated_labels(table, curated_labels(store.states(frame["sample_id"])))
    expected = compute_headline_metrics(curated.table, n_boot=0)["accuracy"].value
    given = compute_headline_metrics(table, n_boot=0)["accuracy"].value
    assert given_text == f"{given:.3f}" and expected != given

    page.locator('[data-testid="stSidebar"]').get_by_text("as curated").click()
    page.get_by_text("labels as curated").first.wait_for(timeout=TIMEOUT_MS)
    _settled(page)
    accuracy = page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first
    assert accuracy.locator('[data-testid="stMetricValue"]').inner_text() == f"{expected:.3f}"
    assert "vs as given" in accuracy.inner_text()  # the delta to the given labels
    page.get_by_text("As given vs as curated").wait_for(timeout=TIMEOUT_MS)
    assert "labels=curated" in page.url
    context.close()
