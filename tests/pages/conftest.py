"""Fixtures for the page tests: workspaces (demo drawing, real bccd) and an AppTest opened on a page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pages.eval_workspaces import build_bccd_workspace, build_demo_workspace

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory) -> Path:
    return build_demo_workspace(tmp_path_factory.mktemp("pages") / "demo")


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
