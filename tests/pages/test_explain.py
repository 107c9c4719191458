"""AppTest of the Grad-CAM page: overlays for predicted, true and another class, computed once per batch and cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st

import models.cam
from tests.pages.eval_workspaces import load_table, plain, run_page_script

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "explain.py")


@pytest.fixture
def counted(monkeypatch):
    """Clears the CAM cache and counts (calls, images) of `explain_images`."""
    st.cache_data.clear()
    calls: list[int] = []
    original = models.cam.explain_images

    def spy(model, card, images, *args, **kwargs):
        calls.append(len(images))
        return original(model, card, images, *args, **kwargs)

    monkeypatch.setattr(models.cam, "explain_images", spy)
    return calls


def _open(workspace, **state):
    return run_page_script(PAGE, workspace, **state)


def _captions(app) -> list[str]:
    return [plain(caption) for image in app.image for caption in image.captions]


def test_sample_shows_predicted_true_and_other_class(drawn_workspace, counted):
    table = load_table(drawn_workspace).for_split("val")
    frame = table.frame
    wrong = frame[(frame["label_idx"] >= 0) & (frame["label_idx"] != frame["pred_idx"])].iloc[0]
    app = _open(drawn_workspace, **{"cam-sample": wrong["sample_id"]})
    captions = _captions(app)
    assert len(captions) == 4  # the image, then three overlays
    assert captions[0].startswith(wrong["sample_id"])
    assert captions[1].startswith(f"Predicted: {wrong['pred']} (")
    assert captions[2].startswith(f"True: {wrong['label']} (")
    assert captions[3].startswith("Other: ")
    assert counted == [3]  # the three maps in one batch
    # at 32 px, resnet10t's layer4 is 1x1 and layer3 2x2: the automatic layer is layer1, the deepest at least 7x7
    assert any("Layer layer1 (8×8 map)" in plain(c.value) for c in app.caption)

    app.slider(key="cam-opacity").set_value(0.8).run()  # re-rendering only: no new maps
    assert not app.exception and counted == [3]
    other = app.selectbox(key=f"cam-other-{wrong['sample_id']}")
    fresh = next(c for c in table.class_names if c not in (wrong["pred"], wrong["label"], other.value))
    other.set_value(fresh).run()
    assert counted == [3, 1]  # only the new (sample, class) pair is computed; the others come from the cache
    assert _captions(app)[3].startswith(f"Other: {fresh} (")


def test_method_picker_and_class_agnostic_note(drawn_workspace, counted):
    app = _open(drawn_workspace)
    app.selectbox(key="cam-method").set_value("eigencam").run()
    assert not app.exception
    assert any("does not depend on the class" in i.value for i in app.info)
    app.selectbox(key="cam-method").set_value("scorecam")
    app.run()
    assert any("slow" in w.value for w in app.warning)


def test_layer_override_and_bad_layer(drawn_workspace, counted):
    app = _open(drawn_workspace, **{"cam-layer": "layer3"})
    assert any("Layer layer3 " in plain(c.value) for c in app.caption)
    app.text_input(key="cam-layer").set_value("layer9").run()
    errors = [plain(e.value) for e in app.error]
    assert any("no module named 'layer9'" in e and "layer4" in e for e in errors)


def test_filter_narrows_the_sample_list(drawn_workspace, counted):
    table = load_table(drawn_workspace).for_split("val")
    target = table.frame["sample_id"].iloc[-1]
    app = _open(drawn_workspace)
    app.text_input(key="cam-filter").set_value(target).run()
    assert app.selectbox(key="cam-sample-box").options == [target]
    assert _captions(app)[0].startswith(target)


def test_sample_box_shows_the_explained_sample_when_its_options_change(drawn_workspace, counted):
    frame = load_table(drawn_workspace).for_split("val").frame
    errors = frame[(frame["label_idx"] >= 0) & (frame["label_idx"] != frame["pred_idx"])]["sample_id"].tolist()
    app = _open(drawn_workspace)
    app.selectbox(key="cam-sample-box").set_value(errors[1]).run()
    # "Errors only" keeps the explained error but changes the box's options and label (a new widget for Streamlit):
    # the box must still say which sample the maps are of: its value, sent to the browser as the value to show
    app.toggle(key="cam-errors").set_value(True).run()
    box = app.selectbox(key="cam-sample-box")
    assert _captions(app)[0].startswith(errors[1])
    assert box.value == errors[1] and box.proto.set_value and box.proto.raw_value == errors[1]
    app.text_input(key="cam-filter").set_value(errors[1]).run()
    box = app.selectbox(key="cam-sample-box")
    assert box.options == [errors[1]] and box.value == errors[1] and _captions(app)[0].startswith(errors[1])


def test_gallery_overlay_toggle_computes_a_page_in_one_batch_and_caches_it(drawn_workspace, open_page, counted):
    app = open_page(drawn_workspace, "pages/errors.py")
    shown = [b.help for b in app.button if b.label == "Inspect"]
    assert shown and counted == []  # off by default: no CAM work
    plain = [image.value for image in app.image]
    app.toggle(key="mb-gallery-cam").set_value(True).run()
    assert not app.exception, [e.value for e in app.exception]
    assert counted == [len(shown)]  # the whole page in one call
    overlaid = [image.value for image in app.image]
    assert len(overlaid) == len(plain) and overlaid != plain
    app.radio(key="mb-gallery-cam-target").set_value("true").run()
    assert counted == [len(shown), len(shown)]  # another class: one more batch
    app.radio(key="mb-gallery-cam-target").set_value("pred").run()
    app.slider(key="mb-gallery-cam-opacity").set_value(0.3).run()
    assert counted == [len(shown), len(shown)]  # back to the first class, new opacity: all from the cache


@pytest.fixture(scope="module")
def relabelled_workspace(tmp_path_factory):
    """A private small workspace whose label store relabels one wrongly predicted val sample and excludes another:
    (root, relabelled row, the curated label, excluded sample id)."""
    from core.labelstore import LabelStore
    from core.workspace import load_workspace
    from tests.pages.eval_workspaces import build_drawn_workspace

    root = build_drawn_workspace(tmp_path_factory.mktemp("explain-curated") / "ws")
    frame = load_table(root).for_split("val").frame
    known = frame[frame["label_idx"] >= 0]
    row = known[known["label_idx"] != known["pred_idx"]].iloc[0]
    names = load_table(root).class_names
    curated = next(c for c in names if c not in (row["label"], row["pred"]))
    other = known[known["sample_id"] != row["sample_id"]].iloc[0]
    excluded = str(other["sample_id"])
    with LabelStore(load_workspace(root).label_store_url) as store:
        store.record(row["sample_id"], "relabel", reviewer="ann", label=curated, given_label=row["label"])
        store.record(excluded, "exclude", reviewer="ann", given_label=other["label"])
    return root, row, curated, excluded


def test_true_map_follows_the_curated_label_mode(relabelled_workspace, counted, monkeypatch):
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    root, row, curated, excluded = relabelled_workspace
    as_given = _open(root, **{"cam-sample": row["sample_id"]})
    assert _captions(as_given)[2].startswith(f"True: {row['label']} (")

    as_curated = _open(root, **{"cam-sample": row["sample_id"], "tl_label_mode": "curated"})
    captions = _captions(as_curated)
    assert captions[0] == f"{row['sample_id']} · true {curated}"
    assert captions[1].startswith(f"Predicted: {row['pred']} (")
    assert captions[2].startswith(f"True: {curated} (")  # the reviewer's label, not the dataset's
    box = as_curated.selectbox(key="cam-sample-box")
    assert row["sample_id"] in box.options and excluded not in box.options  # excluded samples leave the list
    assert any("1 relabelled, 1 excluded" in plain(i.value) for i in as_curated.info)
