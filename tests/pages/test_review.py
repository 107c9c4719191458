"""AppTest round trip: relabel, exclude and undo through the review page -> export -> load the export as a dataset ->
labels and counts are exactly what the events say; the adjudication page lists and resolves a disagreement."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from core.dataset import load_dataset
from core.export import export_curated_labels
from core.labelstore import LabelStore
from core.workspace import load_workspace
from pages._review_support import SHORTCUTS, STREAMLIT_KEYS
from tests.pages.eval_workspaces import build_drawn_workspace, plain, run_page_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def review_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private small demo workspace (its own labels.db), so writing labels touches no other test."""
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    return build_drawn_workspace(tmp_path / "ws")


_open = run_page_script


def _current(app) -> str:
    return app.session_state["rv-current"]


def _click(app, key: str):
    app.button(key=key).click().run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_review_round_trip_through_the_ui(review_workspace: Path) -> None:
    app = _open("pages/review.py", review_workspace)
    assert not [b for b in app.button if b.key == "rv-confirm"]  # no identity, no review buttons
    app.session_state["tl_reviewer"] = "Ann"  # the local name typed in the sidebar (normalised: case-folded)
    app.run()
    assert not app.button(key="rv-confirm").disabled

    first = _current(app)
    names = app.selectbox(key="rv-pick").options
    given_first = load_workspace(review_workspace).load_dataset().samples.set_index("sample_id").at[first, "label"]
    target = next(n for n in names if n != given_first)
    app.selectbox(key="rv-pick").set_value(target)
    app.text_input(key="rv-note").set_value("<b>antennae</b> =1+1")
    _click(app, "rv-relabel")
    second = _current(app)
    assert second != first and app.text_input(key="rv-note").value == ""
    _click(app, "rv-exclude")
    third = _current(app)
    _click(app, "rv-exclude")
    _click(app, "rv-undo")  # undoes the exclusion of `third` and goes back to it
    assert _current(app) == third
    _click(app, "rv-confirm")

    workspace = load_workspace(review_workspace)
    with LabelStore(workspace.label_store_url) as store:
        events = store.events()
        assert [(e.sample_id, e.action) for e in events] == [
            (first, "relabel"), (second, "exclude"), (third, "exclude"), (third, "undo"), (third, "confirm")]
        assert events[0].note == "<b>antennae</b> =1+1" and events[0].new_label == target
        assert {e.reviewer for e in events} == {"ann"} and events[0].checkpoint == "tiny"
        dataset = workspace.load_dataset()
        summary = export_curated_labels(dataset, store, review_workspace / "curated.csv")

    loaded = load_dataset(summary.manifest_path, root=summary.dataset_root, taxonomy=workspace.taxonomy)
    marked = set(loaded.samples.loc[loaded.samples["status"] == "excluded", "sample_id"])
    skipped = set(loaded.skipped.loc[loaded.skipped["reason"] == "excluded", "sample_id"])
    assert marked | skipped == {second}
    expected = dict(zip(dataset.samples["sample_id"], dataset.samples["label"], strict=True))
    expected[first] = target
    del expected[second]
    kept = loaded.samples[~loaded.samples["sample_id"].isin({second})]
    assert dict(zip(kept["sample_id"], kept["label"], strict=True)) == expected
    assert Counter(kept["label"]) == Counter(expected.values())
    status = loaded.samples.set_index("sample_id")["status"]
    assert (status[first], status[third]) == ("relabeled", "confirmed")
    assert (status.drop([first, second, third], errors="ignore") == "unreviewed").all()


def test_adjudication_page_resolves_a_disagreement(review_workspace: Path) -> None:
    workspace = load_workspace(review_workspace)
    dataset = workspace.load_dataset()
    sample = dataset.samples[dataset.samples["split"] == "val"].iloc[0]
    sample_id, given = str(sample["sample_id"]), str(sample["label"])
    other = next(c for c in dataset.class_names if c != given)
    with LabelStore(workspace.label_store_url) as store:
        store.record(sample_id, "relabel", reviewer="ann", label=other, given_label=given)
        store.record(sample_id, "confirm", reviewer="bob", label=given, given_label=given)

    # the review page's "Now:" line says disputed, with both votes, and that the given label stands
    review = _open("pages/review.py", review_workspace, tl_reviewer="cid", **{"rv-current": sample_id})
    assert _current(review) == sample_id
    assert _now(review) == f"**Now:** disputed · {given} stands until a lead rules · votes: ann: {other}; bob: {given}"

    app = _open("pages/adjudicate.py", review_workspace, tl_reviewer="lead")
    disagreements = next(d.value for d in app.dataframe if "votes" in d.value.columns)
    assert disagreements["sample_id"].tolist() == [sample_id]
    assert disagreements.loc[0, "votes"] == f"ann: {other}; bob: {given}"
    assert disagreements.loc[0, "status"] == "disputed"  # no ruling yet: neither vote wins
    assert any("1 dispute(s)" in c.value for c in app.caption)
    pairs = next(d.value for d in app.dataframe if "cohen_kappa" in d.value.columns and "reviewer_a" in d.value)
    assert pairs[["reviewer_a", "reviewer_b", "n_samples", "percent_agreement"]].values.tolist() == [
        ["ann", "bob", 1, 0.0]]
    app.selectbox(key="adj-decision").set_value(other)
    app.button(key="adj-rule").click().run()
    assert not app.exception
    with LabelStore(workspace.label_store_url) as store:
        state = store.state(sample_id)
        assert (state.label, state.adjudicated, state.decided_by) == (other, True, "lead")
    assert any("No disagreements left" in c.value for c in app.caption)
    review.run()  # after the ruling: the lead's label, no dispute
    assert _now(review) == f"**Now:** relabeled · {other} · 2 review(s), agreement 50%"


def _now(app) -> str:
    return plain(next(m.value for m in app.markdown if m.value.startswith("**Now:**")))


def _suggested(app) -> str:
    caption = next(m.value for m in app.markdown if "**Suggested:**" in m.value)
    return caption.split("**Suggested:** ", 1)[1].split(" (", 1)[0]


def test_picker_starts_on_each_samples_suggestion_and_a_new_queue_at_rank_one(review_workspace: Path) -> None:
    app = _open("pages/review.py", review_workspace, tl_reviewer="ann")
    first = _current(app)
    suggested_first = _suggested(app)
    assert app.selectbox(key="rv-pick").value == suggested_first
    other = next(n for n in app.selectbox(key="rv-pick").options if n != suggested_first)
    app.selectbox(key="rv-pick").set_value(other)
    _click(app, "rv-relabel")
    second = _current(app)
    assert second != first
    # the picker follows the new sample's suggestion, not the class picked for the last one
    assert app.selectbox(key="rv-pick").value == _suggested(app)
    with LabelStore(load_workspace(review_workspace).label_store_url) as store:
        assert [(e.sample_id, e.new_label) for e in store.events()] == [(first, other)]

    _click(app, "rv-next")
    _click(app, "rv-next")
    assert any(c.value.startswith("Sample 4 of") for c in app.caption)
    app.selectbox(key="rv-kind").set_value("low_confidence").run()
    assert any(c.value.startswith("Sample 1 of") for c in app.caption), [c.value for c in app.caption]


def test_review_buttons_carry_shortcuts_that_streamlit_does_not_bind(review_workspace: Path) -> None:
    assert not set(SHORTCUTS.values()) & STREAMLIT_KEYS
    assert len(set(SHORTCUTS.values())) == len(SHORTCUTS)
    app = _open("pages/review.py", review_workspace, tl_reviewer="ann")
    for key, shortcut in SHORTCUTS.items():
        proto = app.button(key=key).proto
        assert proto.shortcut == shortcut, key
    for key in ("rv-confirm", "rv-unsure", "rv-exclude", "rv-undo"):
        assert app.button(key=key).proto.wrap  # a long label wraps instead of being cut


def test_the_next_samples_grad_cam_is_computed_in_the_background(review_workspace: Path, monkeypatch) -> None:
    """Grad-CAM maps are computed on the prefetch thread, never in the page's script run, which does not wait for
    them either: the panel says they are being computed and shows them on a later run (in the browser, its polling
    fragment's); a move to the next sample finds its maps there already."""
    import threading

    import streamlit as st

    import models.cam
    from pages._cam import cam_prefetcher

    st.cache_data.clear()
    calls: list[tuple[str, int]] = []  # (thread name, images) per explain_images call
    original = models.cam.explain_images

    def spy(model, card, images, *args, **kwargs):
        calls.append((threading.current_thread().name, len(images)))
        return original(model, card, images, *args, **kwargs)

    monkeypatch.setattr(models.cam, "explain_images", spy)
    app = _open("pages/review.py", review_workspace, tl_reviewer="ann")
    assert "Computing Grad-CAM…" in [c.value for c in app.caption]  # the run ended without the maps
    assert not [c for image in app.image for c in image.captions if c.startswith("Grad-CAM")]
    _settle(cam_prefetcher())
    # this sample's maps and the next one's, both on the prefetch thread (the page waits for neither)
    assert [(name.split("_")[0], images) for name, images in calls] == [("taxalens-cam-prefetch", 2)] * 2, calls
    app.run()  # what the pending panel's fragment does once they are ready: the maps are shown, nothing is computed
    assert [c for image in app.image for c in image.captions if c.startswith("Grad-CAM")]
    assert "Computing Grad-CAM…" not in [c.value for c in app.caption]
    seen = len(calls)
    _click(app, "rv-next")  # its maps are ready: the one new batch is the sample after it, in the background
    _settle(cam_prefetcher())
    assert [(name.split("_")[0], images) for name, images in calls[seen:]] == [("taxalens-cam-prefetch", 2)], calls
    overlays = [c for image in app.image for c in image.captions if c.startswith("Grad-CAM")]
    assert len(overlays) >= 1  # the prefetched maps are shown


def _settle(prefetcher) -> None:
    deadline = time.monotonic() + 120
    while prefetcher.pending() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_first_grad_cam_import_runs_on_its_own_thread_while_the_page_waits(monkeypatch) -> None:
    """A server's first Grad-CAM imports torch (seconds): `await_cam_module` runs that import on a background thread
    and waits for it by touching the page every poll (so a key press reruns at once), once per server."""
    import threading
    from types import SimpleNamespace

    import pages._cam as cam

    release = threading.Event()
    imported: list[tuple[str, str]] = []  # (module, thread name) per import

    def slow_import(name: str):
        imported.append((name, threading.current_thread().name))
        release.wait(10)

    monkeypatch.setattr(cam.importlib, "import_module", slow_import)
    cam._cam_module_import.clear()
    polls: list[float] = []
    def poll(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            release.set()

    monkeypatch.setattr(cam, "time", SimpleNamespace(sleep=poll))  # this module's clock only
    try:
        cam.await_cam_module(poll_s=0.01)
        assert imported == [("models.cam", "taxalens-cam-import")]  # on its own thread, not the script's
        assert len(polls) >= 3  # the page was touched while the import ran
        assert not cam._cam_module_import().is_alive()
        cam.await_cam_module(poll_s=0.01)  # the server's next first visit: no second import, no wait
        assert len(imported) == 1
    finally:
        release.set()
        cam._cam_module_import.clear()


def test_the_shown_samples_given_label_and_path_come_from_a_cached_lookup_of_those_ids(bccd_root, monkeypatch):
    """The review page looks up the label and path of the samples it shows (`given_label`, `review_paths`) instead
    of a dict and an index of every id (1.3 s at a million images): the same answers, one lookup per dataset load
    and ids (a rerun on the same sample looks nothing up), a new one for a reloaded (e.g. relabelled) dataset."""
    from types import SimpleNamespace

    import pages._review_support as support
    from pages._gallery import sample_paths

    lookups: list[tuple[str, ...]] = []
    real = support.rows_of_samples
    monkeypatch.setattr(support, "rows_of_samples", lambda frame, ids, **kw: lookups.append(tuple(ids)) or
                        real(frame, ids, **kw))
    dataset = load_dataset(bccd_root, verify="none")
    ctx = SimpleNamespace(dataset=dataset)
    ids = dataset.samples["sample_id"].astype(str).tolist()
    shown = [ids[5], ids[-1], "gone/never.jpg", ids[0]]
    everyone = support.given_labels(ctx)
    assert [support.given_label(ctx, s) for s in shown] == [everyone.get(s) for s in shown]
    assert support.given_label(ctx, "gone/never.jpg") is None
    assert support.review_paths(ctx, shown) == sample_paths(ctx, shown)
    assert support.review_paths(ctx, shown)[2] is None
    seen = len(lookups)
    assert support.given_label(ctx, ids[5]) == everyone[ids[5]] and len(lookups) == seen  # cached: no new lookup
    relabelled = load_dataset(bccd_root, verify="none")
    relabelled.samples.loc[5, "label"] = "relabelled-class"
    assert support.given_label(SimpleNamespace(dataset=relabelled), ids[5]) == "relabelled-class"
    assert len(lookups) == seen + 1  # another dataset load: looked up again


def test_cam_work_pending_sees_the_import_and_the_prefetch_without_starting_either(monkeypatch) -> None:
    """What the scale benchmark waits for before its warm reruns: the first import's thread and queued maps; asking
    must not start the import (a page that never shows Grad-CAM would pay torch's import for it)."""
    import threading

    import pages._cam as cam

    monkeypatch.setattr(cam, "_cam_module_import", lambda: pytest.fail("asking started the import"))
    prefetcher = cam.cam_prefetcher()
    _settle(prefetcher)
    assert not cam.cam_work_pending()
    release = threading.Event()
    importing = threading.Thread(target=release.wait, args=(10,), name=cam.CAM_IMPORT_THREAD, daemon=True)
    importing.start()
    try:
        assert cam.cam_work_pending()
    finally:
        release.set()
        importing.join()
    assert not cam.cam_work_pending()
    queued = threading.Event()
    prefetcher.submit([("sha", "pending-sample", "", 0, "gradcam", 0, "")], lambda: [queued.wait(10) and "done"])
    try:
        assert cam.cam_work_pending()
    finally:
        queued.set()
        _settle(prefetcher)
    assert not cam.cam_work_pending()
