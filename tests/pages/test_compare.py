"""Compare page (AppTest): paired-bootstrap scores equal core.compare's, flips listed and opened, ensembles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pages.eval_workspaces import CHECKPOINT, add_checkpoint_copy, build_bccd_workspace

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "compare.py")
SECOND = "tiny2"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, bccd_root: Path) -> Path:
    root = build_bccd_workspace(tmp_path_factory.mktemp("compare") / "ws", bccd_root)
    add_checkpoint_copy(root, SECOND)
    return root


def _frame(app, column: str):
    """The first dataframe on the page with `column` (AppTest does not expose dataframe keys)."""
    return next(d.value for d in app.dataframe if column in d.value.columns)


def _open(root: Path, **state):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(PAGE, default_timeout=180)
    app.session_state["tl_workspace"] = str(root)
    app.session_state["tl_split"] = "val"
    app.session_state["tl_checkpoints"] = [CHECKPOINT, SECOND]
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_scores_and_flips_match_core_compare(two_checkpoints: Path):
    from core.compare import compare_predictions
    from core.workspace import load_workspace
    from models.inference import cached_predictions

    app = _open(two_checkpoints)
    workspace = load_workspace(two_checkpoints)
    dataset = workspace.load_dataset()
    a = cached_predictions(workspace, CHECKPOINT, dataset=dataset).for_split("val")
    b = cached_predictions(workspace, SECOND, dataset=dataset).for_split("val")
    expected = compare_predictions(a, b, n_boot=1000)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Macro-F1 (B)"] == f"{expected.metric('macro_f1')['b']:.3f}"
    assert metrics["Accuracy (B)"] == f"{expected.metric('accuracy')['b']:.3f}"
    shown = _frame(app, "share_b_better")
    assert shown["delta_low"].tolist() == pytest.approx(expected.metrics["delta_low"].tolist())
    flips = _frame(app, "pred_a")
    counts = expected.flip_counts()
    assert len(flips) == counts["right_to_wrong"]
    assert counts["wrong_to_right"] > counts["right_to_wrong"]  # B fixed samples
    app.radio(key="cmp-direction").set_value("wrong_to_right").run()
    assert not app.exception
    flips = _frame(app, "pred_a")
    assert len(flips) == counts["wrong_to_right"]
    assert set(flips["sample_id"]) == set(expected.flips.loc[expected.flips["direction"] == "wrong_to_right",
                                                                "sample_id"])


def test_a_flipped_sample_opens_in_the_gallery(two_checkpoints: Path):
    app = _open(two_checkpoints, **{"cmp-direction": "wrong_to_right"})
    flips = _frame(app, "pred_a").set_index("sample_id")
    buttons = [b for b in app.button if b.label == "Inspect"]
    assert buttons, "the gallery shows the flipped samples"
    opened = buttons[0].help
    assert opened in flips.index
    buttons[0].click().run()
    assert not app.exception, [e.value for e in app.exception]
    view = next(m.value for m in app.markdown if "B's view" in m.value)
    assert f"predicted **{flips.loc[opened, 'pred_a']}**" in view  # A was wrong on it
    assert f"predicted **{flips.loc[opened, 'pred_b']}**" in view
    assert flips.loc[opened, "pred_b"] == flips.loc[opened, "label"]  # B is right: wrong -> right
    assert any(f"**Specimen:** {flips.loc[opened, 'specimen_id']}" in m.value for m in app.markdown)


def test_ensemble_of_the_others_is_compared_like_a_checkpoint(two_checkpoints: Path):
    app = _open(two_checkpoints, **{"cmp-b": "(ensemble of all checkpoints)", "cmp-boot": 200})
    captions = " ".join(c.value for c in app.caption)
    assert "ensemble (mean) of tiny, tiny2" in captions
    assert _frame(app, "share_b_better")["b"].notna().all()


def test_changing_checkpoint_b_keeps_the_direction_selected(two_checkpoints: Path) -> None:
    app = _open(two_checkpoints)
    app.radio(key="cmp-direction").set_value("wrong_to_right").run()
    before = app.radio(key="cmp-direction")
    app.selectbox(key="cmp-b").set_value(app.selectbox(key="cmp-b").options[-1]).run()  # the all-checkpoint ensemble
    assert not app.exception, [e.value for e in app.exception]
    after = app.radio(key="cmp-direction")
    # the same widget (the browser keeps its selection) still on the chosen direction, and the flips follow it
    assert after.proto.id == before.proto.id
    assert after.value == "wrong_to_right" and list(after.options) == ["right → wrong", "wrong → right"]
    assert any(c.value.startswith("right → wrong: ") for c in app.caption)
