"""Real browser on a fresh server: the Review queue's first visit ends before Grad-CAM is ready (torch still
importing, the maps on the prefetch thread) and the overlays appear afterwards without any user action (a polling
fragment). Real bccd crops, a tiny real model."""

from __future__ import annotations

import re

import pytest

from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app, sync_playwright_or_skip
from tests.pages.eval_workspaces import build_bccd_workspace

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 90_000


def test_the_grad_cam_overlay_appears_by_itself_after_a_first_visit_that_did_not_wait(tmp_path, bccd_root) -> None:
    sync_api = sync_playwright_or_skip()
    root = build_bccd_workspace(tmp_path / "ws", bccd_root, taxonomy=False)
    log = tmp_path / "streamlit.log"
    with serve_app(root, log) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("link", name="Review queue").click()
            pending = page.get_by_text("Computing Grad-CAM…")
            # the first run draws the sample and its facts and ends with the panel pending: the script is not
            # running while the caption shows (a page that waited for torch and the maps would be)
            page.wait_for_function(
                """() => document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state')
                         === 'notRunning' && document.body.innerText.includes('Computing Grad-CAM…')""")
            assert re.search(r"Sample 1 of \d+", page.locator(".st-key-rv-nav").inner_text())
            overlays = page.locator('[data-testid="stImageCaption"]').filter(has_text=re.compile(r"^Grad-CAM · "))
            overlays.first.wait_for()  # no click, no key: the fragment's poll brings the maps in
            captions = overlays.all_inner_texts()
            assert any(c.startswith("Grad-CAM · suggested: ") for c in captions), captions
            page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
            assert pending.count() == 0  # the poll stopped with the maps shown
        finally:
            browser.close()
    assert "Traceback" not in log.read_text()
