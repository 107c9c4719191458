"""Roles in the UI without sign-in (AppTest): the local role of `[access]` decides which write controls a page shows,
the typed name is normalised (a refused name writes nothing), and app.py refuses a network address without sign-in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from core.labelstore import LabelStore
from core.workspace import load_workspace
from tests.pages.eval_workspaces import build_drawn_workspace, plain, run_page_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def access_workspace(tmp_path_factory) -> Path:
    """A small workspace with one disagreement (so Adjudicate shows its ruling controls to a lead)."""
    root = build_drawn_workspace(tmp_path_factory.mktemp("access") / "ws")
    workspace = load_workspace(root)
    samples = workspace.load_dataset().samples
    sample = samples[samples["split"] == "val"].iloc[0]
    other = next(c for c in workspace.load_dataset().class_names if c != sample["label"])
    with LabelStore(workspace.label_store_url) as store:
        store.record(str(sample["sample_id"]), "relabel", reviewer="ann", label=other, given_label=sample["label"])
        store.record(str(sample["sample_id"]), "confirm", reviewer="bob", label=sample["label"],
                     given_label=sample["label"])
    return root


def _set_local_role(root: Path, role: str) -> None:
    config = root / "taxalens.toml"
    text = config.read_text(encoding="utf-8").split("\n[access]\n")[0]
    config.write_text(f'{text}\n[access]\nlocal = "{role}"\n', encoding="utf-8")


def _keys(app) -> set[str]:
    return {b.key for b in app.button}


def _downloads(app) -> int:
    return len(app.get("download_button"))


def _captions(app) -> str:
    return plain(" ".join(c.value for c in app.caption))


@pytest.mark.parametrize(("role", "record", "rule", "export", "train"), [
    ("viewer", False, False, False, False),
    ("reviewer", True, False, False, False),
    ("lead", True, True, True, True),
])
def test_the_local_role_decides_the_write_controls(access_workspace, role, record, rule, export, train) -> None:
    _set_local_role(access_workspace, role)
    review = run_page_script("pages/review.py", access_workspace, tl_reviewer="Ann")
    assert ({"rv-confirm", "rv-undo", "rv-relabel", "rv-exclude"} <= _keys(review)) is record
    assert ("Review buttons hidden: **ann** is a viewer" in _captions(review)) is (role == "viewer")

    adjudicate = run_page_script("pages/adjudicate.py", access_workspace, tl_reviewer="Ann")
    assert ("adj-rule" in _keys(adjudicate)) is rule
    assert (_downloads(adjudicate) == 2) is export
    assert (_downloads(adjudicate) == 0) is (not export)
    if not rule:
        assert f"Rulings hidden: **ann** is a {role}; this needs the lead role" in _captions(adjudicate)

    retrain = run_page_script("pages/retrain.py", access_workspace, tl_reviewer="Ann")
    assert any(b.label == "Start training" for b in retrain.button) is train
    assert ("Starting a training run hidden" in _captions(retrain)) is (not train)


def test_a_refused_local_name_writes_nothing(access_workspace) -> None:
    _set_local_role(access_workspace, "admin")
    review = run_page_script("pages/review.py", access_workspace, tl_reviewer="a\u200blice")
    assert "rv-confirm" not in _keys(review)
    assert "U+200B" in _captions(review)  # says which invisible character was refused
    nameless = run_page_script("pages/review.py", access_workspace)
    assert "rv-confirm" not in _keys(nameless)
    assert "type your name in the sidebar" in _captions(nameless)


@pytest.fixture
def network_address():
    """Streamlit's server.address set to every interface for one test (restored after)."""
    from streamlit import config

    saved = {name: config.get_option(name) for name in ("server.address", "client.showErrorDetails")}
    config.set_option("server.address", "0.0.0.0")
    yield
    for name, value in saved.items():
        config.set_option(name, value)


def test_a_network_address_without_sign_in_shows_no_page(access_workspace, network_address, open_app) -> None:
    app = open_app(access_workspace)
    assert any("refuses to serve on address '0.0.0.0' without sign-in" in e.value for e in app.error)
    assert not app.title and not app.sidebar.selectbox  # no page, no workspace box
    page = run_page_script("pages/overview.py", access_workspace)  # a page run without app.py refuses too
    assert any("without sign-in" in e.value for e in page.error) and not page.metric


def test_allow_anonymous_serves_with_a_banner(access_workspace, network_address, open_app, monkeypatch) -> None:
    from streamlit import config

    monkeypatch.setattr(sys, "argv", [str(REPO / "app.py"), "--workspace", str(access_workspace),
                                      "--allow-anonymous"])
    app = open_app(access_workspace)
    assert not app.error, [e.value for e in app.error]
    assert app.title[0].value == "TaxaLens"
    assert any("identities are **not verified**" in w.value for w in app.warning)
    assert config.get_option("client.showErrorDetails") == "none"  # no traceback reaches a network user


def test_a_link_opens_no_workspace_outside_the_roots(access_workspace, tmp_path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "taxalens.toml").write_text((access_workspace / "taxalens.toml").read_text(encoding="utf-8"))
    monkeypatch.setenv("TAXALENS_WORKSPACE", str(access_workspace))
    monkeypatch.setenv("TAXALENS_WORKSPACES", str(access_workspace.parent))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    app.query_params["ws"] = os.path.relpath(outside, access_workspace)  # a pasted link naming a folder elsewhere
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["tl_workspace"] == str(access_workspace)  # the link's folder was not opened
