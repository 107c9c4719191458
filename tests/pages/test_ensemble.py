"""Ensembles in the sidebar (AppTest through app.py): picked like a checkpoint, every evaluation page shows the
combined predictions, a member without predictions is named (and its button computes it), Grad-CAM says it needs
a single checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from core.ensemble import EnsembleSpec, add_ensemble, ensemble_tables
from tests.pages.eval_workspaces import CHECKPOINT, add_checkpoint_copy, build_drawn_workspace, load_table, plain

SECOND = "tiny2"
PAIR = "pair"  # mean of tiny and tiny2
WEIGHTED = "pair-f1"  # F1-weighted on val


@pytest.fixture(scope="module")
def ensemble_workspace(tmp_path_factory) -> Path:
    root = build_drawn_workspace(tmp_path_factory.mktemp("ensemble") / "demo")
    add_checkpoint_copy(root, SECOND)
    add_ensemble(root, EnsembleSpec(PAIR, (CHECKPOINT, SECOND), "mean"))
    add_ensemble(root, EnsembleSpec(WEIGHTED, (CHECKPOINT, SECOND), "f1_weighted"))
    return root


def _select(app, *names: str):
    app.sidebar.multiselect(key="tl_checkpoints-widget").set_value(list(names)).run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["tl_checkpoints"] == list(names)
    return app


def _goto(app, page: str):
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _expected(root: Path, method: str = "mean", split: str = "val"):
    members = [load_table(root, CHECKPOINT), load_table(root, SECOND)]
    table = ensemble_tables(members, method=method, member_names=(CHECKPOINT, SECOND)).for_split(split)
    frame = table.frame[table.frame["label_idx"] >= 0]
    return table, frame["label_idx"].to_numpy(), frame["pred_idx"].to_numpy()


def test_sidebar_lists_ensembles_with_a_marker(ensemble_workspace, open_app):
    app = open_app(ensemble_workspace)
    box = app.sidebar.multiselect(key="tl_checkpoints-widget")
    assert box.options == [CHECKPOINT, SECOND, f"{PAIR} (ensemble of tiny + tiny2)",
                           f"{WEIGHTED} (ensemble of tiny + tiny2)"]
    assert box.value == [CHECKPOINT]


def test_overview_and_confusion_show_the_ensemble(ensemble_workspace, open_app):
    table, y, p = _expected(ensemble_workspace)
    single = load_table(ensemble_workspace).for_split("val").frame
    single = single[single["label_idx"] >= 0]
    # The ensemble must differ from its first member, or showing the member by mistake would pass.
    assert not np.array_equal(p, single["pred_idx"].to_numpy())

    app = _select(open_app(ensemble_workspace), PAIR)
    _goto(app, "pages/overview.py")
    assert any(f"Checkpoint **{PAIR}**" in c.value for c in app.caption)
    shown = {m.label: m.value for m in app.metric}
    assert float(shown["Accuracy"]) == pytest.approx(accuracy_score(y, p), abs=5e-4)
    assert float(shown["Macro-F1"]) == pytest.approx(f1_score(y, p, labels=np.unique(y), average="macro",
                                                             zero_division=0), abs=5e-4)
    assert not any("optimistic" in w.value for w in app.warning)  # a mean ensemble learns nothing on val

    _goto(app, "pages/confusion.py")
    assert any(f"Checkpoint **{PAIR}**" in c.value and f"{len(table):,} images" in c.value for c in app.caption)
    assert len(app.get("plotly_chart")) >= 1
    assert app.session_state["tl_checkpoints"] == [PAIR]  # the selection survived both page switches


@pytest.mark.parametrize("page", ["pages/classes.py", "pages/errors.py", "pages/review.py", "pages/compare.py",
                                  "pages/home.py"])
def test_other_pages_run_with_an_ensemble(ensemble_workspace, open_app, page):
    app = _goto(_select(open_app(ensemble_workspace), PAIR, CHECKPOINT), page)
    assert not app.error, [e.value for e in app.error]
    if page == "pages/compare.py":
        assert app.selectbox(key="cmp-a").value == PAIR
        assert app.selectbox(key="cmp-b").value == CHECKPOINT
    if page == "pages/home.py":
        ensembles = next(d.value for d in app.dataframe if "members" in d.value.columns)
        assert ensembles.set_index("name").loc[PAIR, "predictions"] == "ready"
    if page == "pages/errors.py":  # the gallery's Grad-CAM overlay explains why it is off
        app.toggle(key="mb-gallery-cam").set_value(True).run()
        assert not app.exception, [e.value for e in app.exception]
        assert any("needs a single checkpoint" in i.value for i in app.info)


def test_f1_weighted_ensemble_warns_on_its_weights_split(ensemble_workspace, open_app):
    app = _goto(_select(open_app(ensemble_workspace), WEIGHTED), "pages/overview.py")
    _, y, p = _expected(ensemble_workspace, "f1_weighted")
    assert float({m.label: m.value for m in app.metric}["Accuracy"]) == pytest.approx(accuracy_score(y, p), abs=5e-4)
    assert any("optimistic" in w.value and "**val**" in w.value for w in app.warning)


def test_grad_cam_asks_for_a_single_checkpoint(ensemble_workspace, open_app):
    app = _goto(_select(open_app(ensemble_workspace), PAIR), "pages/explain.py")
    message = " ".join(i.value for i in app.info)
    assert "Grad-CAM needs a single checkpoint" in message and f"**{PAIR}**" in message
    assert "**tiny**" in message and "**tiny2**" in message
    assert not app.image  # no map was attempted
    app.button(key=f"single-{SECOND}").click().run()  # "Use tiny2": the member becomes the primary selection
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["tl_checkpoints"] == [SECOND, PAIR]
    assert app.sidebar.multiselect(key="tl_checkpoints-widget").value == [SECOND, PAIR]
    assert any(f"Checkpoint **{SECOND}**" in c.value for c in app.caption)


def test_member_without_predictions_is_named_and_computed(tmp_path, open_app):
    root = build_drawn_workspace(tmp_path / "demo")
    add_checkpoint_copy(root, "fresh", fix_fraction=None)  # listed, never predicted
    add_ensemble(root, EnsembleSpec("with-fresh", (CHECKPOINT, "fresh")))
    app = _goto(_select(open_app(root), "with-fresh"), "pages/overview.py")
    message = " ".join(i.value for i in app.info)
    assert "no predictions for member **fresh**" in message and "**tiny**, **fresh**" in message
    assert [b.label for b in app.button] == ["Compute predictions with fresh"]
    assert not app.metric

    app.button(key="compute-fresh").click().run()  # the tiny model predicts the demo's images on the CPU
    assert not app.exception, [e.value for e in app.exception]
    assert load_table(root, "fresh") is not None
    assert any("Checkpoint **with-fresh**" in plain(c.value) for c in app.caption)
    assert {m.label for m in app.metric} >= {"Accuracy", "Macro-F1"}
