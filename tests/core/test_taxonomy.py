"""Tests of core.taxonomy and core.taxonomy_metrics on hand-built hierarchies with hand-computed answers, and on the
real bccd crops with their real two-rank taxonomy file."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import metrics
from core import taxonomy_metrics as T
from core.errors import TaxaLensError
from core.predictions import build_prediction_table
from core.queries import filter_predictions
from core.taxonomy import Taxonomy, TaxonomyError, build_taxonomy, read_taxonomy_csv, taxonomy_from_samples

# a1, a2 in genus A; b1 in genus B (same family F1); c1 in family F2 (same order O1); d1 in order O2.
CLASSES = ("a1", "a2", "b1", "c1", "d1")
RANKS = ("genus", "family", "order")
ROWS = [("a1", ("A", "F1", "O1")), ("a2", ("A", "F1", "O1")), ("b1", ("B", "F1", "O1")), ("c1", ("C", "F2", "O1")),
        ("d1", ("D", "F3", "O2"))]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def tree() -> Taxonomy:
    return build_taxonomy(RANKS, ROWS, source="hand-built")


def _table(labels, preds, *, probs=None, class_names=CLASSES, sample_ids=None):
    k = len(class_names)
    index = {c: i for i, c in enumerate(class_names)}
    n = len(labels)
    if probs is None:
        probs = np.full((n, k), 0.1 / (k - 1), dtype=np.float32)
        for row, pred in enumerate(preds):
            probs[row, index[pred]] = 0.9
    return build_prediction_table(sample_ids or [f"s{i}" for i in range(n)], np.asarray(probs, dtype=np.float32),
                                  np.zeros((n, 0)), labels=list(labels), splits=["val"] * n,
                                  specimen_ids=[f"s{i}" for i in range(n)], class_names=class_names)


# --------------------------------------------------------------------------------------------------- the hierarchy


def test_lca_levels_and_distance_hand_computed(tree):
    assert tree.levels == ("class", "genus", "family", "order")
    assert tree.root_level == 4
    assert tree.lca_level("a1", "a1") == 0
    assert tree.lca_level("a1", "a2") == 1 and tree.lca_rank("a1", "a2") == "genus"
    assert tree.lca_level("a1", "b1") == 2 and tree.lca_rank("a1", "b1") == "family"
    assert tree.lca_level("a2", "c1") == 3 and tree.lca_rank("a2", "c1") == "order"
    assert tree.lca_level("c1", "d1") == 4 and tree.lca_rank("c1", "d1") == "root"
    matrix = tree.lca_levels(CLASSES)
    for (i, a), (j, b) in itertools.product(enumerate(CLASSES), repeat=2):
        assert matrix[i, j] == tree.lca_level(a, b)
    assert (matrix == matrix.T).all()


def test_groups_in_taxonomic_order_and_parent_blocks(tree):
    codes, names = tree.groups(("d1", "c1", "b1", "a2", "a1"), "genus")
    assert names == ("A", "B", "C", "D")  # order O1 first (F1: A, B; then F2: C), then O2
    assert codes.tolist() == [3, 2, 1, 0, 0]
    assert tree.parent_blocks(names, "genus") == [("F1", 0, 2), ("F2", 2, 3), ("F3", 3, 4)]
    assert tree.parent_blocks(("F1", "F2", "F3"), "family") == [("O1", 0, 2), ("O2", 2, 3)]
    assert tree.parent_blocks(("O1", "O2"), "order") == []


def test_blank_top_ranks_are_their_own_groups():
    taxonomy = build_taxonomy(RANKS, [*ROWS, ("e1", ("E", "", "")), ("e2", ("E", "", "")), ("f1", ("G", "F9", ""))])
    assert taxonomy.group_of("e1", "family") == "E (no family)"
    assert taxonomy.group_of("e1", "order") == "E (no order)"
    assert taxonomy.group_of("f1", "order") == "F9 (no order)"
    assert taxonomy.lca_level("e1", "e2") == 1
    assert taxonomy.lca_level("e1", "a1") == 4  # unknown order is not shared with anyone
    assert taxonomy.lca_level("e1", "f1") == 4


def test_validation_names_the_class_and_the_rank(tmp_path):
    with pytest.raises(TaxonomyError, match=r"class 'a1' has two parents at rank 'family'.*'F1' and 'F2'"):
        build_taxonomy(RANKS, [*ROWS, ("a1", ("A", "F2", "O1"))])
    with pytest.raises(TaxonomyError, match=r"genus 'A' has 2 parents at rank 'family'.*'F1'.*'a1'.*'F7'.*'a9'"):
        build_taxonomy(RANKS, [*ROWS, ("a9", ("A", "F7", "O1"))])
    with pytest.raises(TaxonomyError, match=r"class 'x' .*has order 'O1' but no family; .*only at the top"):
        build_taxonomy(RANKS, [*ROWS, ("x", ("X", "", "O1"))])
    tree = build_taxonomy(RANKS, ROWS, source="t.csv")
    with pytest.raises(TaxonomyError, match=r"does not place 2 of the model's classes: 'zz', 'yy'"):
        tree.require_classes(["a1", "zz", "yy"])
    assert issubclass(TaxonomyError, TaxaLensError)


def test_read_taxonomy_csv_any_rank_names(tmp_path):
    path = tmp_path / "taxonomy.csv"
    path.write_text("species,genus,tribe\nx1,X,T1\nx2,X,T1\ny1,Y,\n\n", encoding="utf-8")
    taxonomy = read_taxonomy_csv(path)
    assert taxonomy.ranks == ("genus", "tribe")
    assert taxonomy.lca_rank("x1", "x2") == "genus"
    assert taxonomy.lca_rank("x1", "y1") == "root"
    path.write_text("class,genus,family\nx1,X,F1\nx2,X,F2\n", encoding="utf-8")
    with pytest.raises(TaxonomyError, match=r"genus 'X' has 2 parents at rank 'family'"):
        read_taxonomy_csv(path)
    with pytest.raises(TaxonomyError, match="not found"):
        read_taxonomy_csv(tmp_path / "nope.csv")


def test_taxonomy_from_manifest_columns_broadest_first():
    samples = pd.DataFrame({"label": ["a1", "a1", "c1"], "order": ["O1", "O1", "O1"], "family": ["F1", "F1", "F2"]})
    taxonomy = taxonomy_from_samples(samples, ["order", "family"])
    assert taxonomy.ranks == ("family", "order")
    assert taxonomy.lca_rank("a1", "c1") == "order"
    bad = pd.concat([samples, pd.DataFrame({"label": ["a1"], "order": ["O1"], "family": ["F5"]})])
    with pytest.raises(TaxonomyError, match=r"class 'a1' has two parents at rank 'family'.*'F1' \(2 rows\).*'F5'"):
        taxonomy_from_samples(bad, ["order", "family"])


# ------------------------------------------------------------------------------------------------ rolled-up metrics


def test_rollup_sum_and_argmax_differ_where_they_should(tree):
    # Row 0: a1 .3, a2 .3, c1 .4 -> argmax c1 (genus C), summed genus A .6.
    probs = np.array([[0.3, 0.3, 0.0, 0.4, 0.0], [0.0, 0.0, 0.1, 0.0, 0.9]], dtype=np.float32)
    table = _table(["a2", "c1"], None, probs=probs)
    summed = T.rollup_table(table, tree, "genus", rule="sum")
    argmax = T.rollup_table(table, tree, "genus", rule="argmax")
    assert summed.class_names == ("A", "B", "C", "D")
    assert summed.frame["label"].tolist() == ["A", "C"]
    assert summed.frame["pred"].tolist() == ["A", "D"]
    assert argmax.frame["pred"].tolist() == ["C", "D"]
    assert summed.frame["confidence"].tolist() == pytest.approx([0.6, 0.9])
    assert argmax.frame["confidence"].tolist() == pytest.approx([0.4, 0.9])
    np.testing.assert_allclose(summed.pred_probs[0], [0.6, 0.0, 0.4, 0.0], atol=1e-6)
    order = T.rollup_table(table, tree, "order")
    assert order.frame["pred"].tolist() == ["O1", "O2"]
    assert order.frame["label"].tolist() == ["O1", "O1"]


def test_metrics_by_rank_are_core_metrics_of_the_rolled_table(tree):
    labels = ["a1", "a1", "a1", "b1", "c1", "d1"]
    preds = ["a1", "a2", "b1", "c1", "d1", "d1"]
    table = _table(labels, preds)
    results = T.metrics_by_rank(table, tree, n_boot=200)
    frame = T.rank_metrics_frame(results)
    assert frame["rank"].tolist() == ["class", "genus", "family", "order"]
    # class: 2/6 right; genus: a1->a2 also right (3/6); family: a1->b1 too (4/6); order: b1->c1 too (5/6).
    assert frame["accuracy"].tolist() == pytest.approx([2 / 6, 3 / 6, 4 / 6, 5 / 6])
    assert frame["groups"].tolist() == [5, 4, 3, 2]
    assert (frame["accuracy_low"] <= frame["accuracy"]).all() and (frame["accuracy"] <= frame["accuracy_high"]).all()
    rolled = T.rollup_table(table, tree, "family")
    direct = metrics.compute_headline_metrics(rolled, n_boot=200)
    assert results[2].headline["macro_f1"].value == pytest.approx(direct["macro_f1"].value)
    assert results[2].headline.caption == ("95% CI (Bayesian bootstrap, Jeffreys prior per class), "
        "200 image resamples, stratified by class")
    lines = T.breakdown_lines(frame)
    assert lines[0].startswith("order (2 groups): accuracy 83.3%")
    assert [line.split(" ")[0] for line in lines] == ["order", "family", "genus", "class"]
    assert "16.7% lost from order" in lines[1]
    assert sum("breaks down most here" in line for line in lines) == 1
    bottom = T.bottom_by_rank(table, tree, n=2)
    assert list(bottom) == ["class", "genus", "family", "order"]
    assert len(bottom["order"]) == 2


def test_mistake_severity_hand_computed(tree):
    labels = ["a1", "a1", "a1", "b1", "c1", "d1"]
    preds = ["a1", "a2", "b1", "c1", "d1", "d1"]  # error LCA levels 1, 2, 3, 4
    table = _table(labels, preds)
    assert T.error_levels(table, tree).tolist() == [0, 1, 2, 3, 4, 0]
    result = T.mistake_severity(table, tree, n_boot=300)
    assert result.n_errors == 4 and result.n_evaluated == 6
    assert result.mistake_severity.value == pytest.approx(2.5)
    assert result.mean_distance.value == pytest.approx(10 / 6)
    assert result.histogram["lca_rank"].tolist() == ["genus", "family", "order", "root"]
    assert result.histogram["errors"].tolist() == [1, 1, 1, 1]
    assert result.histogram["within"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [line.split(" [")[0] for line in result.within_lines()] == [
        "25.0% of errors stay within the same genus", "50.0% of errors stay within the same family",
        "75.0% of errors stay within the same order"]
    histogram = result.histogram
    assert (histogram["within_low"] <= histogram["within"]).all()
    assert (histogram["within"] <= histogram["within_high"]).all()
    assert result.caption == ("95% CI (Bayesian bootstrap, Jeffreys prior per class), "
        "300 image resamples, stratified by class")
    assert result.mistake_severity.low <= 2.5 <= result.mistake_severity.high
    assert result.mistake_severity.low >= 1.0 and result.mistake_severity.high <= 4.0
    per_class = T.severity_per_class(table, tree)
    assert per_class["class"].tolist()[:2] == ["c1", "b1"]  # wildest first: c1's one error goes to the root
    a1 = per_class.set_index("class").loc["a1"]
    assert a1["errors"] == 2 and a1["mistake_severity"] == pytest.approx(1.5)
    assert a1["beyond_genus"] == pytest.approx(0.5) and a1["beyond_family"] == 0.0
    assert per_class.set_index("class").loc["c1", "worst_error"] == "d1 (LCA root, 1×)"


def test_rows_beyond_rank_and_folded_cells(tree):
    table = _table(["a1", "a1", "a1", "b1", "c1", "d1"], ["a1", "a2", "b1", "c1", "d1", "d1"])
    rows = filter_predictions(table)
    levels = T.error_levels(table, tree)
    across_family = T.rows_beyond_rank(rows, levels, tree.level_of("family"))
    assert sorted(across_family["sample_id"]) == ["s3", "s4"]
    folded = T.fold_confusion(table, tree, "family")
    assert folded.group_names == ("F1", "F2", "F3")
    assert folded.counts.tolist() == [[3, 1, 0], [0, 0, 1], [0, 0, 1]]
    assert folded.blocks == (("O1", 0, 2), ("O2", 2, 3))
    cell = T.folded_cell_rows(table, tree, "family", "F1", "F1")
    assert sorted(cell["sample_id"]) == ["s0", "s1", "s2"]
    assert set(cell["label"]) == {"a1"}  # class-level rows, so the gallery shows the classes
    assert sorted(cell["row"]) == [0, 1, 2]


def test_risk_decision_matches_brute_force_expected_cost(tree):
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(5, 0.4), size=200).astype(np.float32)
    cost = tree.lca_levels(CLASSES).astype(np.float64)
    expected = probs.astype(np.float64) @ cost  # (N, K): expected LCA height of choosing each class
    chosen = T.risk_decisions(probs, tree, CLASSES)
    best = expected.min(axis=1)
    np.testing.assert_allclose(expected[np.arange(200), chosen], best, atol=1e-5)
    # Hand case: a1 .3, a2 .3, c1 .4: argmax c1 costs 1.8, a1 costs 1.5 -> the rule picks a1 (tie a2: lower index).
    assert T.risk_decisions(np.array([[0.3, 0.3, 0.0, 0.4, 0.0]]), tree, CLASSES).tolist() == [0]


def test_decision_rule_effect_before_after(tree):
    probs = np.array([[0.3, 0.3, 0.0, 0.4, 0.0],    # label a2: argmax c1 (LCA order) -> rule a1 (LCA genus)
                      [0.0, 0.0, 0.05, 0.0, 0.95]], dtype=np.float32)  # label d1: right either way
    table = _table(["a2", "d1"], None, probs=probs)
    effect = T.decision_rule_effect(table, tree, n_boot=50)
    assert effect.n_changed == 1
    per_rank = effect.per_rank.set_index("rank")
    assert per_rank.loc["class", "accuracy_before"] == 0.5 and per_rank.loc["class", "accuracy_after"] == 0.5
    assert per_rank.loc["genus", "accuracy_before"] == 0.5 and per_rank.loc["genus", "accuracy_after"] == 1.0
    severity = effect.severity.set_index("measure")
    assert severity.loc["mistake_severity", "before"] == 3 and severity.loc["mistake_severity", "after"] == 1
    assert effect.histogram["errors_before"].tolist() == [0, 0, 1, 0]
    assert effect.histogram["errors_after"].tolist() == [1, 0, 0, 0]


def test_compare_severity_and_by_rank_paired(tree):
    labels = ["a1", "a1", "b1", "c1", "d1", "d1"]
    table_a = _table(labels, ["d1", "c1", "d1", "d1", "d1", "d1"])  # errors at LCA 4, 3, 4, 4
    table_b = _table(labels, ["a2", "a1", "a1", "a1", "d1", "d1"])  # errors at LCA 1, 2, 3
    result = T.compare_severity(table_a, table_b, tree, n_boot=300).set_index("measure")
    assert result.loc["mistake_severity", "a"] == pytest.approx(15 / 4)
    assert result.loc["mistake_severity", "b"] == pytest.approx(2.0)
    assert result.loc["mean_distance", "delta"] == pytest.approx(6 / 6 - 15 / 6)
    assert result.loc["mean_distance", "delta_high"] < 0  # B is better in every resample where both err
    by_rank = T.compare_by_rank(table_a, table_b, tree, n_boot=100)
    accuracy = by_rank[by_rank["metric"] == "accuracy"].set_index("rank")
    assert accuracy.loc["class", "a"] == pytest.approx(2 / 6) and accuracy.loc["class", "b"] == pytest.approx(3 / 6)
    assert accuracy.loc["order", "a"] == pytest.approx(3 / 6) and accuracy.loc["order", "b"] == pytest.approx(6 / 6)


# ------------------------------------------------------------------------------------------------ real data: bccd


def test_bccd_taxonomy_file_on_the_real_dataset(bccd_root, tmp_path):
    from core.dataset import load_dataset

    taxonomy = read_taxonomy_csv(SHARED / "bccd-taxonomy.csv")
    assert taxonomy.ranks == ("group", "lineage")
    dataset = load_dataset(bccd_root)
    taxonomy.require_classes(dataset.class_names)
    assert taxonomy.lca_rank("Basophil", "Eosinophil") == "group"
    assert taxonomy.lca_rank("Basophil", "Monocyte") == "lineage"
    assert taxonomy.lca_rank("Neutrophil", "Lymphocyte") == "root"
    samples = dataset.samples
    classes = dataset.class_names
    # A "model" that always says Neutrophil: right at lineage level for every myeloid cell.
    probs = np.full((len(samples), len(classes)), 0.01, dtype=np.float32)
    probs[:, classes.index("Neutrophil")] = 0.96
    table = build_prediction_table(samples["sample_id"].tolist(), probs, np.zeros((len(samples), 0)),
                                   labels=samples["label"].tolist(), splits=samples["split"].tolist(),
                                   specimen_ids=samples["specimen_id"].tolist(), class_names=classes)
    frame = T.rank_metrics_frame(T.metrics_by_rank(table, taxonomy, n_boot=100))
    counts = samples["label"].value_counts()
    myeloid = counts[["Basophil", "Eosinophil", "Neutrophil", "Monocyte"]].sum()
    granulocyte = counts[["Basophil", "Eosinophil", "Neutrophil"]].sum()
    assert frame["accuracy"].tolist() == pytest.approx([counts["Neutrophil"] / len(samples),
                                                        granulocyte / len(samples), myeloid / len(samples)])
    severity = T.mistake_severity(table, taxonomy, n_boot=100)
    assert severity.histogram["errors"].tolist() == [counts[["Basophil", "Eosinophil"]].sum(), counts["Monocyte"],
                                                     counts["Lymphocyte"]]


def test_shared_inputs_give_the_same_results(tree):
    table = _table(["a1", "a1", "a1", "b1", "c1", "d1"], ["a1", "a2", "b1", "c1", "d1", "d1"])
    plain = T.metrics_by_rank(table, tree, n_boot=100)
    class_level = metrics.compute_headline_metrics(table, n_boot=100)
    shared = T.metrics_by_rank(table, tree, n_boot=100, class_level=class_level, rolled=T.rollup_all(table, tree))
    assert T.rank_metrics_frame(plain).equals(T.rank_metrics_frame(shared))
    before = T.metrics_by_rank(table, tree, rule="argmax", n_boot=100)
    effect = T.decision_rule_effect(table, tree, n_boot=100, before=before)
    assert effect.per_rank.equals(T.decision_rule_effect(table, tree, n_boot=100).per_rank)
    folded = T.fold_confusion(table, tree, "genus", rolled=T.rollup_table(table, tree, "genus"))
    assert folded.counts.tolist() == T.fold_confusion(table, tree, "genus").counts.tolist()


def test_demo_taxonomy_has_four_ranks_with_shared_groups(tmp_path):
    from core.dataset import load_dataset
    from core.demo import generate_demo_dataset

    generate_demo_dataset(tmp_path, scale=0.02)
    dataset = load_dataset(tmp_path / "manifest.csv", taxonomy=["kingdom", "phylum", "order", "family"])
    taxonomy = taxonomy_from_samples(dataset.samples, dataset.taxonomy_columns)
    assert taxonomy.ranks == ("family", "order", "phylum", "kingdom")
    taxonomy.require_classes(dataset.class_names)
    assert taxonomy.lca_rank("Daphnia", "Calanus") == "phylum"  # both Arthropoda
    assert taxonomy.lca_rank("Navicula", "Paramecium") == "kingdom"  # both Chromista
    assert taxonomy.lca_rank("Volvox", "Daphnia") == "root"


def test_workspace_taxonomy_setting(tmp_path, bccd_root):
    import shutil

    from core.taxonomy import load_taxonomy
    from core.workspace import WorkspaceError, load_workspace

    shutil.copyfile(SHARED / "bccd-taxonomy.csv", tmp_path / "tax.csv")
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\ntaxonomy = "tax.csv"\n')
    workspace = load_workspace(tmp_path)
    assert workspace.taxonomy_file == tmp_path / "tax.csv" and workspace.taxonomy == ()
    assert load_taxonomy(workspace, workspace.load_dataset()).ranks == ("group", "lineage")
    for bad in ("3", '"phylum"'):  # a number; a column name given as text instead of a list
        (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\ntaxonomy = {bad}\n')
        with pytest.raises(WorkspaceError, match=r"`taxonomy` in \[dataset\] must be a list of manifest columns.*CSV"):
            load_workspace(tmp_path)


# ------------------------------------------------------------------------- one bootstrap for every rank and severity


def _random_table(tree, class_names, n, *, seed, specimens=None):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(class_names), 0.5), size=n).astype(np.float32)
    labels = [class_names[i] for i in rng.integers(0, len(class_names), n)]
    ids = [f"s{i}" for i in range(n)]
    return build_prediction_table(ids, probs, np.zeros((n, 0)), labels=labels, splits=["val"] * n,
                                  specimen_ids=specimens or ids, class_names=class_names)


@pytest.mark.parametrize("rule", ["sum", "argmax"])
def test_rank_scores_equal_sklearn_on_the_rolled_labels(tree, rule):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    table = _random_table(tree, CLASSES, 80, seed=1)
    ranks = T.rank_bootstrap(table, tree, rule=rule, n_boot=0).ranks
    for level, result in enumerate(ranks):
        rolled = T.rollup_table(table, tree, level, rule=rule)
        y, p = rolled.frame["label_idx"].to_numpy(), rolled.frame["pred_idx"].to_numpy()
        assert result.headline["accuracy"].value == pytest.approx(accuracy_score(y, p))
        assert result.headline["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, p))
        assert result.headline["macro_f1"].value == pytest.approx(f1_score(y, p, average="macro",
                                                                           labels=np.unique(y), zero_division=0))
        assert result.headline["weighted_f1"].value is None  # not computed per rank, and says so
    if rule == "sum":  # the sum rule's groups differ from the argmax rule's somewhere in this table
        argmax = T.rank_bootstrap(table, tree, rule="argmax", n_boot=0).ranks
        assert [r.headline["accuracy"].value for r in ranks] != [r.headline["accuracy"].value for r in argmax]


def test_severity_intervals_resample_within_each_class(tree):
    # Every image of a class has the same outcome, so a class-stratified resample always holds the same counts and
    # the intervals collapse onto the values; an unstratified image bootstrap would leave them wide. (The classical
    # resample: the product's Bayesian draws add each class's Jeffreys prior, which opens them on purpose.)
    labels = ["a1"] * 4 + ["b1"] * 4 + ["c1"] * 4
    preds = ["a2"] * 4 + ["b1"] * 4 + ["d1"] * 4  # LCA genus, right, root
    result = T.mistake_severity(_table(labels, preds), tree, n_boot=200, method="percentile")
    assert result.mistake_severity.value == pytest.approx((4 * 1 + 4 * 4) / 8)
    for estimate in (result.mistake_severity, result.mean_distance):
        assert estimate.low == pytest.approx(estimate.value) and estimate.high == pytest.approx(estimate.value)
    genus = result.histogram.set_index("lca_rank").loc["genus"]
    assert genus["within"] == 0.5 and genus["within_low"] == pytest.approx(0.5)
    assert genus["within_high"] == pytest.approx(0.5)


def test_severity_resamples_whole_specimens(tree):
    # One class, 10 specimens of 4 images: 5 specimens all right, 5 all wrong across the whole tree. Resampling
    # specimens (the unit) must give a wider interval than pretending the 40 images were independent.
    n = 40
    preds = ["a1" if i < 20 else "d1" for i in range(n)]
    probs = np.array([[0.9, 0.025, 0.025, 0.025, 0.025] if p == "a1" else [0.1, 0.0, 0.0, 0.0, 0.9] for p in preds],
                     dtype=np.float32)

    def build(specimens):
        return build_prediction_table([f"i{i}" for i in range(n)], probs, np.zeros((n, 0)), labels=["a1"] * n,
                                      splits=["val"] * n, specimen_ids=specimens, class_names=CLASSES)

    clustered = T.mistake_severity(build([f"sp{i // 4}" for i in range(n)]), tree, n_boot=400)
    images = T.mistake_severity(build([f"sp{i}" for i in range(n)]), tree, n_boot=400)
    assert clustered.caption == ("95% CI (Bayesian bootstrap, Jeffreys prior per class), "
        "400 specimen resamples, stratified by class")
    assert images.caption == ("95% CI (Bayesian bootstrap, Jeffreys prior per class), "
        "400 image resamples, stratified by class")
    assert clustered.mean_distance.value == images.mean_distance.value == pytest.approx(2.0)
    width = {name: r.mean_distance.high - r.mean_distance.low for name, r in (("sp", clustered), ("im", images))}
    assert width["sp"] > 1.5 * width["im"] > 0


def test_many_ranks_split_into_plans_that_fit_the_packed_code():
    # 300 classes under 6 ranks: label + 7 level columns would need 8 x log2(300) > 62 bits (one plan's packed
    # codes would wrap and merge distinct rows), so the levels are scored from two plans; every level's values
    # still equal the rolled tables'.
    k, ranks = 300, ("r1", "r2", "r3", "r4", "r5", "r6")
    names = tuple(f"c{i:03d}" for i in range(k))
    rows = [(name, tuple(f"{rank}_{i // 2 ** (j + 1)}" for j, rank in enumerate(ranks)))
            for i, name in enumerate(names)]
    taxonomy = build_taxonomy(ranks, rows)
    table = _random_table(taxonomy, names, 600, seed=2)
    result = T.rank_bootstrap(table, taxonomy, n_boot=50)
    for level, rank in enumerate(result.ranks):
        rolled = T.rollup_table(table, taxonomy, level)
        right = rolled.frame["label_idx"].to_numpy() == rolled.frame["pred_idx"].to_numpy()
        assert rank.headline["accuracy"].value == pytest.approx(right.mean())
        assert rank.headline["accuracy"].low <= right.mean() <= rank.headline["accuracy"].high
    assert result.severity.mean_distance.low is not None


def test_compare_taxonomy_of_a_table_with_itself_is_zero(tree):
    table = _random_table(tree, CLASSES, 60, seed=3, specimens=[f"sp{i // 2}" for i in range(60)])
    result = T.compare_taxonomy(table, table, tree, n_boot=100)
    assert result.caption == ("95% CI (Bayesian bootstrap, Jeffreys prior per class), "
        "100 specimen resamples, stratified by class")
    for frame in (result.by_rank, result.severity):
        assert (frame["delta"] == 0).all() and (frame["delta_low"] == 0).all() and (frame["delta_high"] == 0).all()
        assert (frame["share_b_better"] == 0).all()
    assert result.n == 60


def test_group_sums_equal_the_one_hot_product(tree):
    layout = T.level_layout(tree, CLASSES)
    values = np.random.default_rng(4).random((7, len(CLASSES)))
    for level in range(len(tree.levels)):
        codes = layout.codes[level]
        onehot = np.zeros((len(CLASSES), codes.max() + 1))
        onehot[np.arange(len(CLASSES)), codes] = 1
        np.testing.assert_allclose(T.group_sums(values, layout, level), values @ onehot)
