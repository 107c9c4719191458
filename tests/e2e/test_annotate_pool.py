"""Real browser (one server, one Chromium): ten images of an unlabelled pool of real bccd crops labelled by keyboard
alone in the review screen's "Label new images" queue (accept and pick 1-5), each stored once as a `label` event with
the class that was on screen; `python -m cli export` then lists exactly those ten with status `new`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from core.dataset import split_pool_sample_id
from core.labelstore import LabelStore
from core.pools import load_pool
from core.workspace import load_workspace
from pages._annotate import SHORTCUTS, TITLE
from tests.e2e.streamlit_server import CHROMIUM_ARGS, REPO, serve_app, sync_playwright_or_skip
from tests.pages.eval_workspaces import POOL, add_pool, build_bccd_workspace

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 90_000
IMAGE_CAPTION = re.compile(r"Image \d+ of (\d+) · (\S+)")
SUGGESTION = re.compile(r"^(\d)\. (.+) · [\d.]+%$", re.MULTILINE)


@pytest.fixture(scope="module")
def served(tmp_path_factory, bccd_root: Path):
    """(url, workspace root, browser): a bccd workspace with a 14-image pool predicted by its tiny checkpoint."""
    from models.inference import predict_pool

    sync_api = sync_playwright_or_skip()
    root = build_bccd_workspace(tmp_path_factory.mktemp("e2e-annotate") / "ws", bccd_root, taxonomy=False)
    add_pool(root, bccd_root, n=14)
    workspace = load_workspace(root)
    predict_pool(workspace, "tiny", load_pool(workspace, POOL), num_workers=0)
    with serve_app(root, root / "streamlit.log") as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            yield url, root, browser
        finally:
            browser.close()


def _events(root: Path) -> list:
    with LabelStore(load_workspace(root).label_store_url) as store:
        return store.events()


def _shown(page) -> str:
    text = page.locator(".st-key-an-nav").inner_text(timeout=TIMEOUT_MS)
    match = IMAGE_CAPTION.search(text)
    assert match, text
    return match.group(2)


def _settled(page) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=TIMEOUT_MS)


def test_ten_pool_images_labelled_by_keyboard_reach_the_export_as_new(served, tmp_path: Path) -> None:
    url, root, browser = served
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("link", name="Review queue").click()
    page.get_by_role("textbox", name="Your name", exact=True).fill("ann")
    page.get_by_role("textbox", name="Your name", exact=True).press("Enter")
    _settled(page)
    page.get_by_label("Queue", exact=True).click()
    page.get_by_role("option", name=TITLE).click()
    page.locator(".st-key-an-accept button:not([disabled])").wait_for(timeout=TIMEOUT_MS)
    _settled(page)
    page.locator("h1").first.click()  # focus leaves the select box: keys go to the page
    start = len(_events(root))

    s = SHORTCUTS
    keys = [s["an-accept"], s["an-pick-2"], s["an-accept"], s["an-pick-3"], s["an-pick-1"], s["an-pick-5"],
            s["an-accept"], s["an-pick-4"], s["an-pick-2"], s["an-accept"]]
    expected: list[tuple[str, str]] = []  # (sample id, class) each key press should store
    for key in keys:
        before = _shown(page)
        facts = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Suggestions").first.inner_text()
        suggestions = {int(n): name.strip() for n, name in SUGGESTION.findall(facts)}
        assert len(suggestions) == 5, facts
        expected.append((before, suggestions[1 if key == s["an-accept"] else int(key)]))
        page.keyboard.press(key)
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while len(_events(root)) < start + len(expected) and time.monotonic() < deadline:
            time.sleep(0.1)
        page.wait_for_function("s => !document.querySelector('.st-key-an-nav').innerText.includes(s)", arg=before,
                               timeout=TIMEOUT_MS)  # the next image is on screen
        _settled(page)
        assert page.locator('[role="dialog"]').count() == 0, "a Streamlit dialog opened"
    events = _events(root)[start:]
    assert [(e.sample_id, e.new_label) for e in events] == expected  # once each, the class that was on screen
    assert {e.action for e in events} == {"label"} and {e.reviewer for e in events} == {"ann"}
    assert len({e.sample_id for e in events}) == 10
    assert store_chain_ok(root)
    remaining = IMAGE_CAPTION.search(page.locator(".st-key-an-nav").inner_text()).group(1)
    assert int(remaining) == 14 - 10
    context.close()

    out = tmp_path / "curated.csv"
    done = subprocess.run([sys.executable, "-m", "cli", "export", "--workspace", str(root), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    export = pd.read_csv(out, dtype=str, keep_default_na=False)
    new = export[export["status"] == "new"]
    assert sorted(zip(new["path"], new["label"], strict=True)) == sorted(
        (split_pool_sample_id(sample_id)[1], label) for sample_id, label in expected)
    assert set(new["pool"]) == {POOL} and set(new["label_source"]) == {"manual"}


def store_chain_ok(root: Path) -> bool:
    with LabelStore(load_workspace(root).label_store_url) as store:
        return store.verify_chain().ok
