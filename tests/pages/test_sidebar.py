"""The shared sidebar (AppTest through app.py): its values survive page switches, from the very first run of a
freshly started server on (reported bug: the workspace folder box emptied after navigating)."""

from __future__ import annotations

from pages._text import md


def _box(app):
    return app.sidebar.selectbox(key="tl_workspace-widget")


def test_workspace_box_survives_page_switches(drawn_workspace, open_app, monkeypatch, tmp_path):
    missing = tmp_path / "not-a-workspace"
    monkeypatch.setenv("TAXALENS_WORKSPACE", str(missing))
    monkeypatch.setenv("TAXALENS_WORKSPACES", str(drawn_workspace.parent))
    app = open_app(None)  # like a freshly started server: the default folder is not a workspace
    assert _box(app).label == "Workspace"
    assert _box(app).value == str(missing)
    assert app.sidebar.error
    # Workspaces are chosen by name under the configured root; no path can be typed.
    assert [o for o in _box(app).options if o != str(missing)] == ["demo"]

    _box(app).set_value(str(drawn_workspace)).run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["tl_workspace"] == str(drawn_workspace)
    assert _box(app).value == str(drawn_workspace)

    for page, caption in (("pages/overview.py", "Checkpoint **tiny**"), ("pages/confusion.py", "Checkpoint **tiny**"),
                          ("pages/home.py", f"Workspace {md(drawn_workspace)}")):
        app.switch_page(page).run()
        assert not app.exception, [e.value for e in app.exception]
        assert _box(app).value == str(drawn_workspace), page
        assert app.session_state["tl_workspace"] == str(drawn_workspace), page
        assert not app.sidebar.error, page
        assert any(caption in c.value for c in app.caption), page


def test_split_and_checkpoints_survive_page_switches(drawn_workspace, open_app):
    app = open_app(drawn_workspace)
    app.sidebar.selectbox(key="tl_split-widget").set_value("train").run()
    for page in ("pages/overview.py", "pages/classes.py", "pages/home.py"):
        app.switch_page(page).run()
        assert not app.exception, [e.value for e in app.exception]
        assert app.sidebar.selectbox(key="tl_split-widget").value == "train", page
        assert app.session_state["tl_split"] == "train", page
        assert app.sidebar.multiselect[0].value == ["tiny"], page
    app.switch_page("pages/overview.py").run()
    assert any("split **train**" in c.value for c in app.caption)
