"""Fixtures for the page tests: workspaces (demo drawing, real bccd) and an AppTest opened on a page (`open_page`:
the page script alone after the first run; `open_app`: app.py around every page, as `streamlit run` serves it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pages.eval_workspaces import build_bccd_workspace, build_drawn_workspace

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")


@pytest.fixture(scope="session")
def drawn_workspace(tmp_path_factory) -> Path:
    return build_drawn_workspace(tmp_path_factory.mktemp("pages") / "demo")


@pytest.fixture(scope="session")
def bccd_workspace(tmp_path_factory, bccd_root) -> Path:
    return build_bccd_workspace(tmp_path_factory.mktemp("pages") / "bccd", bccd_root)


@pytest.fixture
def open_page():
    """`open_page(workspace, "pages/overview.py", split="val", state={...})` -> the AppTest after the page ran."""
    from streamlit.testing.v1 import AppTest

    def _open(workspace: Path, page: str, *, split: str = "val", state: dict | None = None) -> AppTest:
        app = AppTest.from_file(APP, default_timeout=180)
        app.session_state["tl_workspace"] = str(workspace)
        app.session_state["tl_split"] = split
        app.run()
        assert not app.exception, [e.value for e in app.exception]
        for key, value in (state or {}).items():
            app.session_state[key] = value
        app.switch_page(page).run()
        assert not app.exception, [e.value for e in app.exception]
        return app

    return _open


@pytest.fixture
def open_app(monkeypatch):
    """`open_app(workspace, split="val")` -> an AppTest of app.py after its first run, whose later runs (widget
    changes, `switch_page`) all go through app.py, so the sidebar is rendered on every page.

    Why this is needed: with a `pages/` folder next to app.py, Streamlit runs a session's script through its
    pages-folder fallback until `st.navigation` has been called once in the process; `streamlit run` does so on
    its first run and never again, but AppTest resets that flag before every run, so without this fixture every run
    after the first executes the page file alone. The first run here keeps the fallback, like a freshly started
    server's first session (its sidebar widgets get other element ids than in later runs).
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    def _open(workspace: Path | None, *, split: str = "val") -> AppTest:
        app = AppTest.from_file(APP, default_timeout=180)
        if workspace is not None:
            app.session_state["tl_workspace"] = str(workspace)
        app.session_state["tl_split"] = split
        app.run()
        assert not app.exception, [e.value for e in app.exception]
        original = PagesManager.__init__

        def served_init(self, *args, **kwargs) -> None:
            original(self, *args, **kwargs)
            PagesManager.uses_pages_directory = False  # what st.navigation's first call leaves in a served process

        monkeypatch.setattr(PagesManager, "__init__", served_init)
        return app

    return _open
