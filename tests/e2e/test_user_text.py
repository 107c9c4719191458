"""Real browser: user text is text. A workspace whose class is a Markdown image pointing at a local HTTP server, whose
notes and reviewer names are Markdown and HTML, is visited page by page (a confusion cell, the gallery, the review
queue included): the server receives no request and the class name shows literally."""

from __future__ import annotations

import csv
import http.server
import threading
from pathlib import Path

import pytest

from core.labelstore import LabelStore
from core.workspace import load_workspace
from tests.e2e.streamlit_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    choose_option,
    free_port,
    serve_app,
    sync_playwright_or_skip,
)
from tests.pages.eval_workspaces import add_checkpoint_copy, write_synthetic_predictions, write_workspace

pytestmark = pytest.mark.e2e

VICTIM = "Volvox"  # the demo class renamed to the hostile text


class _Counter(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        return


@pytest.fixture(scope="module")
def trap():
    """A local HTTP server counting every request it gets; yields (port, list of requested paths)."""
    handler = type("Trap", (_Counter,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler.requests
    server.shutdown()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, trap):
    """(url, workspace root, hostile class, note, reviewer) served by `streamlit run app.py`."""
    from core.demo import generate_demo_dataset

    port, _ = trap
    hostile_class = f"![t](http://127.0.0.1:{port}/p.png)"
    note = "**x**"
    reviewer = f"<img src=http://127.0.0.1:{port}/r.png>"
    root = tmp_path_factory.mktemp("e2e-text") / "ws"
    generate_demo_dataset(root / "data", seed=0, scale=0.15)
    manifest = root / "data" / "manifest.csv"
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["label"] == VICTIM:
            row["label"] = hostile_class
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_workspace(root, dataset="data/manifest.csv", taxonomy=("phylum", "order"))
    write_synthetic_predictions(root)
    add_checkpoint_copy(root, "tiny2")
    workspace = load_workspace(root)
    samples = workspace.load_dataset().samples
    target = samples[(samples["label"] == hostile_class) & (samples["split"] == "val")].iloc[0]
    with LabelStore(workspace.label_store_url) as store:  # a disagreement, so Adjudicate shows votes and notes
        store.record(str(target["sample_id"]), "confirm", reviewer=reviewer, label=hostile_class,
                     given_label=hostile_class, note=note)
        store.record(str(target["sample_id"]), "relabel", reviewer="bob", label="Daphnia", given_label=hostile_class,
                     note=note)
    with serve_app(root) as url:
        yield url, root, hostile_class, note, reviewer


def test_user_text_renders_literally_and_fetches_nothing(hostile, trap, tmp_path: Path) -> None:
    sync_api = sync_playwright_or_skip()
    expect = sync_api.expect
    expect.set_options(timeout=90_000)  # two shared cores: a rerun can take tens of seconds
    url, root, hostile_class, note, reviewer = hostile
    _, requests = trap
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.set_default_timeout(90_000)

        fetched_by: dict[str, int] = {}  # page -> requests the trap had seen when the page was done (for the message)

        def visit(link: str, ready: str) -> None:
            page.get_by_role("link", name=link, exact=True).click(timeout=90_000)
            page.get_by_text(ready, exact=False).first.wait_for(timeout=90_000)
            fetched_by[link] = len(requests)

        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("Checkpoints").first.wait_for(timeout=90_000)
        name_box = page.get_by_label("Your name", exact=True)
        name_box.fill("tester")
        name_box.press("Enter")
        page.get_by_text("Acting as").wait_for(timeout=60_000)

        visit("Overview", "Headline metrics")
        visit("Confusion matrix", "Most confused pairs")
        page.get_by_text("Open a cell by name").click()
        for box in ("True class", "Predicted class"):  # the diagonal cell of the hostile class: never empty
            choose_option(page, box, hostile_class)
        page.get_by_role("button", name="Open cell").click()
        expect(page.get_by_role("heading", name=f"true {hostile_class} → predicted {hostile_class}")).to_be_visible()
        captions = page.locator('[data-testid="stImageCaption"]').filter(has_text=f"{hostile_class} → {hostile_class}")
        expect(captions.first).to_be_visible()  # the gallery's captions

        visit("Weakest classes", "weakest classes by")
        visit("Misclassifications", "Sort the gallery")
        visit("Calibration", "Reliability diagram")
        visit("Grad-CAM", "The maps show where")
        visit("Embedding map", "No selection yet.")
        visit("Review queue", "Queue")
        page.get_by_label("Queue", exact=True).click()
        page.get_by_role("option", name="One class").click()
        choose_option(page, "Class", hostile_class)
        expect(page.get_by_role("button", name=f"Confirm {hostile_class} Shortcut K")).to_be_visible(timeout=90_000)
        expect(page.get_by_text(f"Given label: {hostile_class}")).to_be_visible()

        visit("Adjudicate & export", "Disputes")
        # the votes line (exact: the Disputes grid's hidden cell holds the same text)
        expect(page.get_by_text(f"{reviewer}: {hostile_class}", exact=True)).to_be_visible(timeout=90_000)
        visit("Data quality", "Near-duplicates & leaks")
        visit("Retrain", "Train a new checkpoint")
        visit("Compare", "Scores with paired bootstrap intervals")
        page.screenshot(path=str(tmp_path / "user_text.png"), full_page=True)
        # No element anywhere was made from the notes' or names' Markdown/HTML.
        for selector in ("strong:text-is('x')", f"img[src*='{trap[0]}']"):
            assert page.locator(selector).count() == 0, selector
        browser.close()
    assert requests == [], f"the browser fetched {requests} from the trap server (count after each page: {fetched_by})"
