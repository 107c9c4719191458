"""URL state (AppTest through app.py): a link's query string seeds the sidebar once per session, the current view is
written back, and a workspace is named relative to the server's own."""

from __future__ import annotations

from pathlib import Path

from pages._links import workspace_from_link, workspace_link

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_a_link_restores_split_label_mode_and_checkpoints_and_the_url_follows(drawn_workspace, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TAXALENS_WORKSPACE", str(drawn_workspace))
    app = AppTest.from_file(APP, default_timeout=180)
    app.query_params["split"] = "train"
    app.query_params["labels"] = "curated"
    app.query_params["ckpt"] = ["nope", "tiny"]  # an unknown name drops out
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["tl_split"] == "train" and app.session_state["tl_label_mode"] == "curated"
    assert app.session_state["tl_checkpoints"] == ["tiny"]
    assert app.sidebar.radio[0].value == "curated"
    assert app.query_params["ckpt"] == "tiny" and app.query_params["split"] == "train"
    assert "ws" not in app.query_params  # the server's own workspace needs no name

    from streamlit.runtime.pages_manager import PagesManager  # later runs through app.py, as open_app explains

    original = PagesManager.__init__

    def served_init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", served_init)

    app.sidebar.selectbox[0].set_value("val").run()  # a later change is written back, not overridden by the link
    assert app.session_state["tl_split"] == "val" and app.query_params["split"] == "val"


def test_workspace_links_are_relative_to_the_servers_workspace(tmp_path, monkeypatch):
    server, other = tmp_path / "served" / "demo", tmp_path / "team" / "plankton"
    server.mkdir(parents=True)
    other.mkdir(parents=True)
    monkeypatch.setenv("TAXALENS_WORKSPACE", str(server))
    assert workspace_link(str(server)) is None
    link = workspace_link(str(other))
    assert link == "../../team/plankton"
    assert workspace_from_link(link) == str(other.resolve())
