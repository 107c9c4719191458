"""AppTest of the overview page: the numbers shown equal scikit-learn's on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from tests.pages.eval_workspaces import load_table

PAGE = "pages/overview.py"


def _expected_headline(table) -> dict[str, float | None]:
    frame = table.frame[table.frame["label_idx"] >= 0]
    y, p = frame["label_idx"].to_numpy(), frame["pred_idx"].to_numpy()
    probs = table.pred_probs[(table.frame["label_idx"] >= 0).to_numpy()]
    k = len(table.class_names)
    present = np.unique(y)
    return {
        "Accuracy": accuracy_score(y, p),
        "Balanced accuracy": balanced_accuracy_score(y, p),
        "Macro-F1": f1_score(y, p, labels=present, average="macro", zero_division=0),
        "Weighted-F1": f1_score(y, p, average="weighted", zero_division=0),
        "Top-3 accuracy": top_k_accuracy_score(y, probs, k=3, labels=range(k)) if k > 3 else None,
        "Top-5 accuracy": top_k_accuracy_score(y, probs, k=5, labels=range(k)) if k > 5 else None,
    }


def _check_page(app, table) -> None:
    shown = {m.label: m.value for m in app.metric}
    for label, expected in _expected_headline(table).items():
        if expected is None:
            assert shown[label] == "—"
        else:
            assert float(shown[label]) == pytest.approx(expected, abs=5e-4), label
    per_class = next(d.value for d in app.dataframe if "precision" in d.value.columns)
    frame = table.frame[table.frame["label_idx"] >= 0]
    k = len(table.class_names)
    p, r, f1, s = precision_recall_fscore_support(frame["label_idx"], frame["pred_idx"], labels=range(k),
                                                  zero_division=0)
    assert per_class["class"].tolist() == list(table.class_names)
    np.testing.assert_allclose(per_class["precision"], p)
    np.testing.assert_allclose(per_class["recall"], r)
    np.testing.assert_allclose(per_class["f1"], f1)
    np.testing.assert_array_equal(per_class["support"], s)
    assert len(app.get("download_button")) == 1  # the per-class CSV


def test_overview_demo_matches_sklearn(drawn_workspace, open_page):
    app = open_page(drawn_workspace, PAGE)
    table = load_table(drawn_workspace).for_split("val")
    _check_page(app, table)
    # The demo has several images per specimen: image- and specimen-level metrics side by side.
    versus = next(d.value for d in app.dataframe if "specimen" in d.value.columns)
    specimens = table.frame.groupby("specimen_id")
    mean_probs = np.stack([table.pred_probs[idx].mean(axis=0) for idx in specimens.indices.values()])
    labels = [table.frame["label_idx"].to_numpy()[idx][0] for idx in specimens.indices.values()]
    expected = accuracy_score(labels, mean_probs.argmax(axis=1))
    assert versus.set_index("metric").loc["Accuracy", "specimen"] == pytest.approx(expected)
    # Imbalance ratio over all splits of the demo, as stated under the distribution chart.
    full = load_table(drawn_workspace)
    counts = full.frame["label"].value_counts()
    caption = " ".join(c.value for c in app.caption)
    assert f"total: {counts.max() / counts.min():,.1f} : 1" in caption
    # Classes whose specimens differ no more than their images are resampled by image, and the page says how many.
    from core.result_cache import resampling_plan_of
    plan = resampling_plan_of(table)
    if plan.n_unclustered_classes:
        assert f"{plan.n_unclustered_classes} class(es) are resampled by image instead" in caption
    else:
        assert "resampled by image instead" not in caption


def test_overview_bccd_matches_sklearn(bccd_workspace, open_page):
    app = open_page(bccd_workspace, PAGE)
    table = load_table(bccd_workspace).for_split("val")
    _check_page(app, table)
    # 5 classes: top-5 is undefined (trivially 1), shown as a dash with the reason.
    assert "only 5 classes" in " ".join(c.value for c in app.caption)


def test_overview_all_splits_and_empty_split(drawn_workspace, open_page):
    app = open_page(drawn_workspace, PAGE, split="all")
    _check_page(app, load_table(drawn_workspace))
    app = open_page(drawn_workspace, PAGE, split="test")  # the demo has no test split
    assert any("has no samples" in w.value for w in app.warning)
    assert not app.metric


def test_a_restarted_server_reads_the_intervals_from_disk(drawn_workspace, open_page, monkeypatch):
    import streamlit as st

    from core import metrics

    first = open_page(drawn_workspace, PAGE)
    results = drawn_workspace / ".taxalens" / "predictions" / "results"
    kinds = {p.name.split("-")[0] for p in results.iterdir()}
    # headline-, near-duplicates- (the leak scan's pairs, groups and leaks), per-class-, specimen-headline-<key>;
    # other pages' results (the Taxonomy page's rank-...) may sit beside them: the workspace is shared by the session
    assert {"headline", "near", "per", "specimen"} <= kinds
    st.cache_data.clear()  # a new server process: nothing in memory
    st.cache_resource.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("bootstrapped again although the result is on disk")

    monkeypatch.setattr(metrics, "compute_headline_metrics", refuse)
    monkeypatch.setattr(metrics, "per_class_table", refuse)
    again = open_page(drawn_workspace, PAGE)
    assert [(m.label, m.value) for m in again.metric] == [(m.label, m.value) for m in first.metric]
    shown = [c.value for c in again.caption if "CI" in c.value]
    assert shown == [c.value for c in first.caption if "CI" in c.value] and shown
    _check_page(again, load_table(drawn_workspace).for_split("val"))


def test_intervals_warmed_by_the_command_line_serve_the_first_visit(bccd_root, tmp_path, open_page, monkeypatch):
    """What `predict --workspace` computes after predicting (`warm_interval_results`) is keyed exactly as the pages
    ask for it: the page's very first visit bootstraps nothing."""
    from core import metrics
    from core.result_cache import PAGE_INTERVALS, warm_interval_results
    from tests.pages.eval_workspaces import build_bccd_workspace

    root = build_bccd_workspace(tmp_path / "bccd", bccd_root)
    table = load_table(root)
    folder = root / ".taxalens" / "predictions" / "results"
    assert warm_interval_results(table, folder, config=PAGE_INTERVALS, splits=("val",)) == 3
    assert warm_interval_results(table, folder, config=PAGE_INTERVALS, splits=("val",)) == 0  # already there

    def refuse(*args, **kwargs):
        raise AssertionError("bootstrapped although the command line computed it")

    monkeypatch.setattr(metrics, "compute_headline_metrics", refuse)
    monkeypatch.setattr(metrics, "per_class_table", refuse)
    _check_page(open_page(root, PAGE), table.for_split("val"))
