"""AppTest of the taxonomy views: the Taxonomy page (per-rank table, severity, decision rule), the Confusion page folded
to a rank, the Misclassifications severity filter and the Compare page's per-rank deltas, each against a direct
computation on the same predictions; on the drawn demo (manifest columns) and on bccd (its real taxonomy file)."""

from __future__ import annotations

import numpy as np
import pytest

from core import taxonomy_metrics as T
from core.taxonomy import load_taxonomy, read_taxonomy_csv
from core.workspace import load_workspace
from tests.pages.eval_workspaces import CHECKPOINT, add_checkpoint_copy, build_bccd_workspace, load_table, plain

PAGE = "pages/taxonomy.py"


def _taxonomy(root):
    workspace = load_workspace(root)
    return load_taxonomy(workspace, workspace.load_dataset())


def _frame(app, *columns):
    """The first dataframe on the page holding all `columns` (AppTest does not expose dataframe keys)."""
    return next(d.value for d in app.dataframe if set(columns) <= set(d.value.columns))


def _count(app) -> int:
    heading = next(h.value for h in app.subheader if "samples" in h.value)
    return int(heading.split(" ")[0].replace(",", ""))


def test_taxonomy_page_on_demo_columns(drawn_workspace, open_page):
    taxonomy = _taxonomy(drawn_workspace)
    assert taxonomy.ranks == ("family", "order", "phylum", "kingdom")
    table = load_table(drawn_workspace).for_split("val")
    app = open_page(drawn_workspace, PAGE)
    expected = T.rank_metrics_frame(T.metrics_by_rank(table, taxonomy, n_boot=1000))
    shown = _frame(app, "rank", "macro_f1_low")
    assert shown["rank"].tolist() == ["class", "family", "order", "phylum", "kingdom"]
    np.testing.assert_allclose(shown["accuracy"], expected["accuracy"])
    np.testing.assert_allclose(shown["macro_f1_low"], expected["macro_f1_low"])
    lines = next(t.value for t in app.text if "groups): accuracy" in t.value).splitlines()
    assert [line.split(" ")[0] for line in lines] == ["kingdom", "phylum", "order", "family", "class"]

    # The severity comes from the resamples of the default (summed-probability) rank table: one resampling.
    severity = T.rank_bootstrap(table, taxonomy, rule="sum", n_boot=1000).severity
    metric = next(m for m in app.metric if m.label == "Mistake severity")
    assert metric.value == f"{severity.mistake_severity.value:.3f}"
    within = next(t.value for t in app.text if "of errors stay within" in t.value)
    assert within.splitlines() == severity.within_lines()
    assert " [" in within.splitlines()[0]  # with its interval
    assert any(f"Intervals: {severity.caption} (the same resamples" in c.value for c in app.caption)
    assert severity.caption.endswith("resamples, stratified by class")
    assert any(c.value.startswith(f"Intervals: {severity.caption}; every rank") for c in app.caption)
    wild = _frame(app, "worst_error")
    assert wild["class"].tolist() == T.severity_per_class(table, taxonomy)["class"].tolist()

    app.selectbox(key="tx-rank").set_value("order").run()
    per_class = _frame(app, "confused_from")
    assert sorted(per_class["class"]) == sorted(set(taxonomy.group_of(c, "order") for c in table.class_names))
    bottom = next(d.value for d in app.dataframe if list(d.value.columns) == ["class", "f1", "support", "confused_as"])
    assert bottom["f1"].is_monotonic_increasing

    assert not any("accuracy_after" in d.value.columns for d in app.dataframe)  # optional view: off by default
    app.toggle(key="tx-decision").set_value(True).run()
    assert not app.exception
    effect = T.decision_rule_effect(table, taxonomy, n_boot=1000)
    assert any(f"changes {effect.n_changed:,} of" in c.value for c in app.caption)
    after = _frame(app, "accuracy_after")
    np.testing.assert_allclose(after["accuracy_after"], effect.per_rank["accuracy_after"])

    app.radio(key="tx-rule").set_value("argmax").run()
    argmax = T.rank_metrics_frame(T.metrics_by_rank(table, taxonomy, rule="argmax", n_boot=1000))
    np.testing.assert_allclose(_frame(app, "rank", "macro_f1_low")["accuracy"], argmax["accuracy"])


def test_taxonomy_page_on_bccd_taxonomy_file(bccd_workspace, open_page):
    taxonomy = _taxonomy(bccd_workspace)
    assert taxonomy.ranks == ("group", "lineage")
    table = load_table(bccd_workspace).for_split("val")
    app = open_page(bccd_workspace, PAGE)
    shown = _frame(app, "rank", "macro_f1_low")
    assert shown["rank"].tolist() == ["class", "group", "lineage"]
    lineage = T.rollup_table(table, taxonomy, "lineage")
    assert shown["accuracy"].iloc[-1] == pytest.approx((lineage.frame["label_idx"] == lineage.frame["pred_idx"]).mean())
    histogram = T.mistake_severity(table, taxonomy, n_boot=10).histogram
    assert histogram["lca_rank"].tolist() == ["group", "lineage", "root"]


def test_a_restarted_server_reads_the_rank_metrics_from_disk(bccd_workspace, open_page, monkeypatch):
    """The metrics at every rank and the per-group table of the first view are kept beside the predictions: after a
    restart (caches dropped) the page shows the same numbers without resampling or rolling up again."""
    import streamlit as st

    from core import metrics

    first = open_page(bccd_workspace, PAGE)
    results = bccd_workspace / ".taxalens" / "predictions" / "results"
    assert list(results.glob("rank-bootstrap-*.json")) and list(results.glob("rank-per-class-*.parquet"))
    st.cache_data.clear()
    st.cache_resource.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("computed again although the result is on disk")

    monkeypatch.setattr(T, "rank_bootstrap", refuse)
    monkeypatch.setattr(T, "rollup_all", refuse)
    monkeypatch.setattr(metrics, "per_class_table", refuse)
    again = open_page(bccd_workspace, PAGE)
    for columns in (("rank", "macro_f1_low"), ("class", "precision", "recall", "f1")):
        assert _frame(again, *columns).equals(_frame(first, *columns))
    assert [m.value for m in again.metric] == [m.value for m in first.metric] and again.metric


def test_confusion_folds_to_a_rank_and_opens_every_image_under_a_cell(drawn_workspace, open_page):
    taxonomy = _taxonomy(drawn_workspace)
    table = load_table(drawn_workspace).for_split("val")
    app = open_page(drawn_workspace, "pages/confusion.py")
    assert app.selectbox(key="cm-rank").options == ["class", "family", "order", "phylum", "kingdom"]
    app.selectbox(key="cm-rank").set_value("phylum").run()
    assert not app.exception
    folded = T.fold_confusion(table, taxonomy, "phylum")
    assert any("groups at rank **phylum**" in c.value for c in app.caption)
    off = folded.counts.copy()
    np.fill_diagonal(off, 0)
    t, p = np.unravel_index(off.argmax(), off.shape)
    true_group, pred_group = folded.group_names[t], folded.group_names[p]
    app.session_state["cm-fold-cell"] = ("phylum", true_group, pred_group)
    app.run()
    assert not app.exception
    heading = next(h.value for h in app.subheader if "predicted phylum" in h.value)
    assert heading.startswith(f"{int(off[t, p])} samples: true phylum {true_group}")
    rows = T.folded_cell_rows(table, taxonomy, "phylum", true_group, pred_group)
    assert len(rows) == off[t, p]
    assert all(taxonomy.group_of(label, "phylum") == true_group for label in rows["label"])


def test_errors_filter_by_severity(drawn_workspace, open_page):
    taxonomy = _taxonomy(drawn_workspace)
    table = load_table(drawn_workspace).for_split("val")
    levels = T.error_levels(table, taxonomy)
    app = open_page(drawn_workspace, "pages/errors.py")
    assert _count(app) == int((levels > 0).sum())
    phylum = taxonomy.level_of("phylum")  # "errors across phylum only": the LCA is the root
    app.selectbox(key="mb-severity").set_value(phylum).run()
    assert _count(app) == int((levels > phylum).sum())
    assert 0 < _count(app) < int((levels > 0).sum())  # the filter removes some errors and keeps others


@pytest.fixture(scope="module")
def compare_workspace(tmp_path_factory, bccd_root):
    root = build_bccd_workspace(tmp_path_factory.mktemp("taxcompare") / "ws", bccd_root)
    return add_checkpoint_copy(root, "better", fix_fraction=0.5)


def test_compare_page_per_rank_and_severity_deltas(compare_workspace, open_page):
    taxonomy = read_taxonomy_csv(compare_workspace / "taxonomy.csv")
    a = load_table(compare_workspace, CHECKPOINT).for_split("val")
    b = load_table(compare_workspace, "better").for_split("val")
    app = open_page(compare_workspace, "pages/compare.py", state={"tl_checkpoints": [CHECKPOINT, "better"]})
    by_rank = _frame(app, "rank", "share_b_better")
    expected = T.compare_by_rank(a, b, taxonomy, n_boot=1000)
    assert by_rank["rank"].tolist() == expected["rank"].tolist()
    np.testing.assert_allclose(by_rank["delta"], expected["delta"])
    severity = _frame(app, "label", "delta_low")
    direct = T.compare_severity(a, b, taxonomy, n_boot=1000)
    np.testing.assert_allclose(severity["b"], direct["b"])
    assert (by_rank[by_rank["metric"] == "Accuracy"]["delta"] > 0).all()  # B was pushed towards the labels


def test_taxonomy_missing_a_model_class_is_named(tmp_path, bccd_root, open_page):
    root = build_bccd_workspace(tmp_path / "ws", bccd_root)
    lines = (root / "taxonomy.csv").read_text(encoding="utf-8").splitlines()
    (root / "taxonomy.csv").write_text("\n".join(line for line in lines if not line.startswith("Monocyte")) + "\n",
                                       encoding="utf-8")
    app = open_page(root, PAGE)
    assert any("'Monocyte'" in plain(e.value) and "add one row per class" in plain(e.value) for e in app.error)
