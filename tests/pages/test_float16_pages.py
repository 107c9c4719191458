"""A workspace whose predictions are stored as float16 (the million-image format): the pages open them memory-mapped
with compact columns (core.probs_sidecar) and must show the numbers the old path gave (the whole matrix read into
float32, the columns derived from it); the review ranking is served from disk after a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.confusion import confusion_counts, rank_confused_pairs
from core.predictions import load_predictions, relabel_table, save_predictions
from core.queries import filter_predictions
from core.ranking import rank_label_issues
from pages._evaluation import cell_heading
from tests.pages.eval_workspaces import CHECKPOINT, build_drawn_workspace, plain


@pytest.fixture(scope="module")
def half_workspace(tmp_path_factory) -> tuple[Path, Path]:
    """(workspace, predictions file): the small drawn workspace with its predictions re-saved as float16."""
    from core.workspace import load_workspace
    from models.inference import predictions_path

    root = build_drawn_workspace(tmp_path_factory.mktemp("half") / "demo", scale=0.12)
    workspace = load_workspace(root)
    path = predictions_path(workspace, CHECKPOINT, dataset=workspace.load_dataset())
    save_predictions(load_predictions(path), path, probs_dtype="float16")
    return root, path


def _before(root: Path, path: Path):
    """The table as the pages read it before: whole matrix as float32, columns derived from it."""
    from core.workspace import load_workspace

    return relabel_table(load_predictions(path), load_workspace(root).load_dataset().samples)


def test_confusion_page_counts_and_cell_equal_the_float32_path(half_workspace, open_page):
    root, path = half_workspace
    table = _before(root, path).for_split("val")
    counts = confusion_counts(table)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = (int(v) for v in np.unravel_index(off.argmax(), off.shape))
    app = open_page(root, "pages/confusion.py", state={"cm-cell": (true_idx, pred_idx)})
    assert path.with_name(path.name.removesuffix(".parquet") + ".probs16.npy").is_file()  # the memory-mapped path
    pairs = next(d.value for d in app.dataframe if "share_of_true" in d.value.columns)
    expected = rank_confused_pairs(counts, table.class_names)
    assert pairs[["true", "pred", "count"]].values.tolist() == expected[["true", "pred", "count"]].values.tolist()
    names = table.class_names
    n = int(counts[true_idx, pred_idx])
    assert cell_heading(n, names[true_idx], names[pred_idx]) in [plain(h.value) for h in app.subheader]
    frame = table.frame
    in_cell = frame[(frame["label_idx"] == true_idx) & (frame["pred_idx"] == pred_idx)]
    first = in_cell.sort_values("confidence", ascending=False, kind="stable")["sample_id"].head(24).tolist()
    assert [b.help for b in app.button if b.label == "Inspect"] == first  # same rows, same order


def test_misclassification_page_count_and_gallery_order_equal_the_float32_path(half_workspace, open_page):
    root, path = half_workspace
    table = _before(root, path).for_split("val")
    rows = filter_predictions(table, errors_only=True, sort_by="confidence", descending=True)
    app = open_page(root, "pages/errors.py")
    assert f"{len(rows):,} misclassified samples" in [plain(h.value) for h in app.subheader]
    assert [b.help for b in app.button if b.label == "Inspect"] == rows["sample_id"].head(24).tolist()
    app.selectbox(key="mb-gallery-sort").set_value("loss ↓").run()  # a partial order by another column
    by_loss = rows.sort_values("loss", ascending=False, kind="stable", na_position="last")
    assert [b.help for b in app.button if b.label == "Inspect"] == by_loss["sample_id"].head(24).tolist()


def test_review_ranking_equals_the_float32_path_and_is_read_from_disk_after_a_restart(half_workspace, open_page,
                                                                                        monkeypatch):
    import streamlit as st

    import core.conformal
    import core.ranking
    from core.conformal import ConformalConfig, calibrate_on_table, set_frame

    root, path = half_workspace
    before = _before(root, path)
    ranking = rank_label_issues(before.for_split("val"), reference=before.for_split("train"))
    first = str(ranking.frame["sample_id"].iloc[0])
    app = open_page(root, "pages/review.py", state={"rv-kind": "likely_errors"})
    captions = [plain(c.value) for c in app.caption]
    assert any(f"queue rank 1 · {first}" in c for c in captions), captions
    stored = list((root / ".taxalens" / "predictions" / "results").glob("label-issues-*.parquet"))
    assert len(stored) == 1
    fit = calibrate_on_table(before.for_split("val"), ConformalConfig())
    members = set_frame(before.for_split("val"), fit).set_index("sample_id").loc[first, "prediction_set"]
    set_line = next(plain(m.value) for m in app.markdown if "Prediction set" in m.value)
    assert set_line.startswith(f"**Prediction set (90%):** {', '.join(members)}"), set_line

    st.cache_resource.clear()  # a restarted server: nothing in memory, the ranking on disk

    def refuse(*args, **kwargs):
        raise AssertionError("ranked again although the ranking is on disk")

    monkeypatch.setattr(core.ranking, "rank_label_issues", refuse)
    monkeypatch.setattr(core.conformal, "calibrate_on_table", refuse)  # the set thresholds are on disk too
    app = open_page(root, "pages/review.py", state={"rv-kind": "likely_errors"})
    assert any(f"queue rank 1 · {first}" in plain(c.value) for c in app.caption)
    assert next(plain(m.value) for m in app.markdown if "Prediction set" in m.value) == set_line


def test_the_cache_command_keeps_the_current_tables_sidecars(half_workspace, open_page):
    from core.probs_sidecar import sidecar_paths
    from core.workspace import load_workspace
    from models.prediction_cache import cache_report, prune_cache

    root, path = half_workspace
    open_page(root, "pages/confusion.py")  # the pages' first open writes them
    sidecars = sidecar_paths(path)
    assert all(p.is_file() for p in sidecars)
    entries = {e.path: e for e in cache_report(load_workspace(root))}
    assert all(not entries[p].stale and entries[p].checkpoint == CHECKPOINT for p in sidecars)
    old = [path.with_name(f"{CHECKPOINT}-{'0' * 24}{p.name.removeprefix(path.name.removesuffix('.parquet'))}")
           for p in sidecars]  # the sidecars of an older table of the same checkpoint
    for stale in old:
        stale.write_bytes(b"old")
    prune_cache(load_workspace(root))
    assert all(p.is_file() for p in sidecars) and not any(p.exists() for p in old)
