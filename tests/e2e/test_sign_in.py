"""Real browser, real OpenID Connect: Streamlit's st.login against an oauth2-mock-server provider on loopback
(tests/e2e/oidc, installed by `make test`). Roles come from the workspace's [access]: a viewer cannot record, a
reviewer can (the store records the signed-in e-mail), a lead adjudicates, an account with no role sees nothing."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from core.labelstore import LabelStore
from core.workspace import load_workspace
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, REPO, free_port, serve_app, sync_playwright_or_skip
from tests.pages.eval_workspaces import build_drawn_workspace

pytestmark = pytest.mark.e2e

OIDC_DIR = REPO / "tests" / "e2e" / "oidc"
ACCESS = """
[access]
viewer = ["viewer@lab.org"]
reviewer = ["reviewer@lab.org"]
lead = ["lead@lab.org"]
default = "none"
"""


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """`node tests/e2e/oidc/server.js PORT`: yields the issuer URL."""
    node = shutil.which("node")
    if node is None or not (OIDC_DIR / "node_modules" / "oauth2-mock-server").is_dir():
        message = "the OIDC provider is not installed: run `make tests/e2e/oidc/node_modules` (npm ci)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("oidc") / "oidc.log"
    port = free_port()
    with log.open("w") as err:
        process = subprocess.Popen([node, str(OIDC_DIR / "server.js"), str(port)], stdout=subprocess.PIPE,
                                   stderr=err, text=True)
        try:
            line = process.stdout.readline()
            assert line.startswith("ready "), f"the OIDC provider did not start: {line!r} {log.read_text()}"
            yield line.split()[1]
        finally:
            process.terminate()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def served(tmp_path_factory, provider):
    """`streamlit run app.py` with [auth] in its secrets: (url, issuer, workspace root, disputed sample id, the
    ruling to give)."""
    base = tmp_path_factory.mktemp("signin")
    root = build_drawn_workspace(base / "ws")
    with (root / "taxalens.toml").open("a", encoding="utf-8") as config:
        config.write(ACCESS)
    workspace = load_workspace(root)
    sample = workspace.load_dataset().samples.query("split == 'val'").iloc[0]
    disputed, given = str(sample["sample_id"]), str(sample["label"])
    other = next(c for c in workspace.load_dataset().class_names if c != given)
    with LabelStore(workspace.label_store_url) as store:  # a disagreement for the lead to resolve
        store.record(disputed, "relabel", reviewer="ann@lab.org", label=other, given_label=given)
        store.record(disputed, "confirm", reviewer="bob@lab.org", label=given, given_label=given)
    port = free_port()
    run_dir = base / "run"
    (run_dir / ".streamlit").mkdir(parents=True)
    (run_dir / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "taxalens-test"\n'
        'client_secret = "taxalens-test-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n', encoding="utf-8")
    with serve_app(root, base / "streamlit.log", port=port, cwd=run_dir) as url:
        yield url, provider, root, disputed, other


def _sign_in(browser, url: str, issuer: str, email: str):
    """A fresh browser context signed in as `email` (picked at the provider first, as a user picks an account)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    context.set_default_timeout(90_000)  # two cores shared with a Streamlit server and a model: be patient
    page = context.new_page()
    page.goto(f"{issuer}/select-account?email={urllib.parse.quote(email)}")
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Sign in").click(timeout=90_000)
    page.get_by_text(f"Signed in as {email}").wait_for(timeout=90_000)
    return context, page


def _events(root: Path):
    with LabelStore(load_workspace(root).label_store_url) as store:
        return store.events()


def test_roles_follow_the_signed_in_account(served) -> None:
    sync_api = sync_playwright_or_skip()
    expect = sync_api.expect
    expect.set_options(timeout=90_000)  # two shared cores: a rerun can take tens of seconds
    url, issuer, root, disputed, ruling = served
    before = len(_events(root))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

        # Not signed in: the sign-in button and nothing else.
        page = browser.new_page()
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=90_000)
        assert page.get_by_role("link", name="Review queue").count() == 0
        page.close()

        # A viewer reads the queue but has no review buttons, no ruling and no export.
        context, page = _sign_in(browser, url, issuer, "viewer@lab.org")
        expect(page.get_by_text("Acting as viewer@lab.org · viewer")).to_be_visible()
        page.get_by_role("link", name="Review queue").click()
        expect(page.get_by_text("Review buttons hidden")).to_be_visible(timeout=90_000)
        page.get_by_text("(given)").first.wait_for(timeout=90_000)  # drawn below where the buttons would be
        assert page.locator(".st-key-rv-confirm").count() == 0
        assert page.get_by_role("button", name="Undo my last (z)").count() == 0
        page.get_by_role("link", name="Adjudicate & export").click()
        expect(page.get_by_text("Rulings hidden")).to_be_visible(timeout=90_000)
        expect(page.get_by_text("Downloads hidden")).to_be_visible(timeout=90_000)  # the end of the page
        assert page.get_by_role("button", name="Record ruling").count() == 0
        assert page.get_by_text("Curated label manifest (CSV)").count() == 0
        context.close()
        assert len(_events(root)) == before

        # A reviewer records: the event carries the signed-in address, never a typed name.
        context, page = _sign_in(browser, url, issuer, "Reviewer@Lab.org")
        expect(page.get_by_text("Acting as reviewer@lab.org · reviewer")).to_be_visible()
        assert page.get_by_label("Your name", exact=True).count() == 0  # nothing to type: the identity is the account
        page.get_by_role("link", name="Review queue").click()
        confirm = page.locator(".st-key-rv-confirm button")
        confirm.wait_for(timeout=90_000)
        confirm.click()
        deadline = time.monotonic() + 60
        while len(_events(root)) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        recorded = _events(root)[before:]
        assert [(e.action, e.reviewer) for e in recorded] == [("confirm", "reviewer@lab.org")]
        page.get_by_role("link", name="Adjudicate & export").click()
        expect(page.get_by_text("Rulings hidden")).to_be_visible(timeout=90_000)
        context.close()

        # A lead adjudicates the disagreement and may export.
        context, page = _sign_in(browser, url, issuer, "lead@lab.org")
        page.get_by_role("link", name="Adjudicate & export").click()
        rule = page.get_by_role("button", name="Record ruling")
        rule.wait_for(timeout=90_000)
        expect(page.get_by_text("Curated label manifest (CSV)")).to_be_visible(timeout=90_000)
        page.get_by_label("Ruling", exact=True).click()
        page.get_by_role("option", name=ruling, exact=True).click()
        rule.click()
        deadline = time.monotonic() + 60
        while len(_events(root)) == before + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        ruled = _events(root)[before + 1:]
        assert [(e.sample_id, e.reviewer, e.new_label, e.adjudication) for e in ruled] == [
            (disputed, "lead@lab.org", ruling, True)]
        context.close()

        # An account the [access] table does not name (default = "none") sees no page.
        context, page = _sign_in(browser, url, issuer, "stranger@elsewhere.org")
        expect(page.get_by_text("has no role in this workspace").first).to_be_visible(timeout=90_000)
        assert page.get_by_role("link", name="Review queue").count() == 0
        context.close()
        browser.close()
