"""Label-issue ranking and review queues on synthetic out-of-sample predictions with known flipped labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.labelstore import LabelStore
from core.predictions import PredictionTable, build_prediction_table
from core.ranking import (
    QueueSpec,
    build_queue,
    build_review_queue,
    grouped_folds,
    out_of_sample_table,
    precision_at_k,
    rank_label_issues,
)

CLASSES = ("Baetidae", "Calanus", "Ceratium", "Daphnia", "Navicula", "Volvox")
SIZES = {"Baetidae": 60, "Calanus": 120, "Ceratium": 4, "Daphnia": 300, "Navicula": 180, "Volvox": 90}


def _synthetic(seed: int = 0, *, split: str = "val", flip_fraction: float = 0.05, prefix: str = "img"
               ) -> tuple[PredictionTable, set[str]]:
    """A ~85%-accurate model's probabilities; ~5% of specimens carry a wrong given label (returned as a set)."""
    rng = np.random.default_rng(seed)
    true, specimens = [], []
    for c, name in enumerate(CLASSES):
        n_specimens = max(1, SIZES[name] // 2)
        for s in range(n_specimens):
            for _ in range(int(rng.integers(1, 4))):
                true.append(c)
                specimens.append(f"{prefix}-{name}-{s}")
    true = np.array(true)
    n, k = len(true), len(CLASSES)
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = true.copy()
    flip_to = {s: int(rng.integers(1, k)) for s in sorted(set(specimens)) if rng.random() < flip_fraction}
    for i, s in enumerate(specimens):
        if s in flip_to:
            given[i] = (true[i] + flip_to[s]) % k
    sample_ids = [f"{prefix}_{i:05d}.png" for i in range(n)]
    table = build_prediction_table(sample_ids, probs, np.zeros((n, 0)), labels=[CLASSES[g] for g in given],
                                   splits=[split] * n, specimen_ids=specimens, class_names=CLASSES)
    flipped = {sid for sid, g, t in zip(sample_ids, given, true, strict=True) if g != t}
    return table, flipped


def _concat(*tables: PredictionTable) -> PredictionTable:
    return PredictionTable(pd.concat([t.frame for t in tables], ignore_index=True),
                           np.concatenate([t.pred_probs for t in tables]),
                           np.concatenate([t.embeddings for t in tables]), tables[0].class_names, {})


def test_top_k_of_the_ranking_holds_most_flipped_labels() -> None:
    table, flipped = _synthetic()
    assert 15 <= len(flipped) <= 120
    ranking = rank_label_issues(table)
    assert len(ranking) == len(table)
    assert ranking.frame["rank"].tolist() == list(range(1, len(table) + 1))
    assert precision_at_k(ranking, flipped) >= 0.7
    # the order matters: the same samples read bottom-up hold almost none of them
    reversed_ranking = type(ranking)(ranking.frame.iloc[::-1].reset_index(drop=True), CLASSES, {}, ())
    assert precision_at_k(reversed_ranking, flipped) < 0.2
    flagged = ranking.frame[ranking.frame["is_label_issue"]]
    assert len(flagged) and flagged["rank"].max() == len(flagged)  # flagged samples come first
    top = ranking.frame.iloc[0]
    assert top["suggested"] != top["label"] and top["label_quality"] == ranking.frame["label_quality"].min()


def test_training_rows_are_ranked_only_from_cross_validated_probabilities() -> None:
    val, _ = _synthetic(1, split="val", prefix="v")
    honest, train_flips = _synthetic(2, split="train", prefix="t")
    # in-sample probabilities of a model that memorised its training labels: they reveal no flip
    memorised = np.eye(len(CLASSES), dtype=np.float32)[honest.frame["label_idx"].to_numpy()] * 0.99 + 0.01 / 6
    train = PredictionTable(honest.frame, memorised, honest.embeddings, CLASSES, {})
    table = _concat(val, train)
    ranking = rank_label_issues(table)
    assert set(ranking.frame["split"]) == {"val"}
    assert any("in-sample" in m and "grouped_folds" in m for m in ranking.messages)

    cv_table = PredictionTable(honest.frame, honest.pred_probs, honest.embeddings, CLASSES, {"cross_validated": True})
    ranking = rank_label_issues(table, cv_table=cv_table.subset(np.arange(len(honest)) >= 10))
    assert set(ranking.frame["source"]) == {"holdout", "cv"}
    assert len(ranking) == len(table) - 10
    assert any("10 training sample(s) have no cross-validated" in m for m in ranking.messages)
    cv_only = rank_label_issues(train, cv_table=cv_table)
    assert set(cv_only.frame["source"]) == {"cv"}
    assert precision_at_k(cv_only, train_flips) >= 0.7  # found from the out-of-fold probabilities
    by_id = cv_only.frame.set_index("sample_id")["suggested"]
    assert (by_id[honest.frame["sample_id"]].to_numpy() == honest.frame["pred"].to_numpy()).all()

    wrong = PredictionTable(train.frame, train.pred_probs, train.embeddings, tuple(reversed(CLASSES)), {})
    with pytest.raises(ValueError, match="same class list"):
        out_of_sample_table(table, cv_table=wrong)


def test_rare_classes_are_reported_with_their_counts() -> None:
    table, _ = _synthetic()
    is_ceratium = (table.frame["label"] == "Ceratium").to_numpy()
    table = table.subset(~is_ceratium | (np.cumsum(is_ceratium) <= 3))  # keep 3 Ceratium samples
    n_ceratium = int((table.frame["label"] == "Ceratium").sum())
    ranking = rank_label_issues(table)  # default: fewer than 5 samples is rare
    assert "Ceratium" in ranking.rare_classes and ranking.rare_classes["Ceratium"] == n_ceratium < 5
    assert "Daphnia" not in ranking.rare_classes
    assert any("unreliable" in m and f"Ceratium ({n_ceratium})" in m for m in ranking.messages)
    rows = ranking.frame[ranking.frame["label"] == "Ceratium"]
    assert rows["rare_class"].all() and not ranking.frame.loc[ranking.frame["label"] == "Daphnia", "rare_class"].any()


def test_labels_unknown_to_the_model_are_listed_last() -> None:
    table, _ = _synthetic()
    labels = table.frame["label"].tolist()
    labels[0] = "Hydra"
    relabelled = build_prediction_table(table.frame["sample_id"].tolist(), table.pred_probs, table.embeddings,
                                        labels=labels, splits=table.frame["split"].tolist(),
                                        specimen_ids=table.frame["specimen_id"].tolist(), class_names=CLASSES)
    ranking = rank_label_issues(relabelled)
    last = ranking.frame.iloc[-1]
    assert last["label"] == "Hydra" and np.isnan(last["label_quality"]) and not last["is_label_issue"]
    assert any("Hydra" in m for m in ranking.messages)


def test_grouped_folds_keep_a_specimen_together_and_stratify() -> None:
    table, _ = _synthetic()
    frame = table.frame
    folds = grouped_folds(frame, n_splits=5, seed=0)
    assert folds.min() == 0 and folds.max() == 4
    assert frame.assign(fold=folds).groupby("specimen_id")["fold"].nunique().max() == 1
    daphnia_per_fold = np.bincount(folds[frame["label"].to_numpy() == "Daphnia"], minlength=5)
    assert daphnia_per_fold.min() > 0.5 * daphnia_per_fold.mean()
    assert np.array_equal(folds, grouped_folds(frame, n_splits=5, seed=0))
    with pytest.raises(ValueError, match="number of specimens"):
        grouped_folds(frame.iloc[:3], n_splits=5)
    with pytest.raises(ValueError, match="specimen_id"):
        grouped_folds(frame.drop(columns="specimen_id"))


def test_queues_select_and_order_what_they_say() -> None:
    table, _ = _synthetic()
    ranking = rank_label_issues(table)
    frame = ranking.frame

    cell = build_queue(ranking, QueueSpec("confusion_cell", true_label="Daphnia", pred_label="Calanus"))
    expected = frame[(frame["label"] == "Daphnia") & (frame["suggested"] == "Calanus")]
    assert len(cell) and set(cell["sample_id"]) == set(expected["sample_id"])
    assert cell["label_quality"].is_monotonic_increasing

    by_class = build_queue(ranking, QueueSpec("class", class_name="Volvox"))
    assert set(by_class["label"]) == {"Volvox"} and by_class["rank"].is_monotonic_increasing
    assert len(by_class) == int((table.frame["label"] == "Volvox").sum())

    low = build_queue(ranking, QueueSpec("low_confidence"))
    assert low["suggested_prob"].is_monotonic_increasing and len(low) == len(frame)

    flagged = build_queue(ranking, QueueSpec("likely_errors", only_flagged=True))
    assert flagged["is_label_issue"].all() and len(flagged) == int(frame["is_label_issue"].sum())

    mine = set(frame["sample_id"].iloc[:5])
    todo = build_queue(ranking, QueueSpec("not_reviewed_by_me"), reviewed_by_me=mine)
    assert len(todo) == len(frame) - 5 and not set(todo["sample_id"]) & mine
    hidden = build_queue(ranking, QueueSpec("class", class_name="Daphnia", hide_reviewed=True),
                         reviewed_by_me=set(by_class["sample_id"]) | set(frame.loc[frame["label"] == "Daphnia",
                                                                                   "sample_id"].iloc[:3]))
    assert len(hidden) == int((frame["label"] == "Daphnia").sum()) - 3

    with pytest.raises(ValueError, match="confusion page"):
        build_queue(ranking, QueueSpec("confusion_cell", true_label="Daphnia"))
    with pytest.raises(ValueError, match="not one of"):
        build_queue(ranking, QueueSpec("random"))


def test_review_queue_reads_what_the_reviewer_decided_from_the_store(tmp_path: Path) -> None:
    table, _ = _synthetic()
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        ranking = rank_label_issues(table)
        first, second = ranking.frame["sample_id"].iloc[:2]
        store.record(first, "confirm", reviewer="ann", given_label="Daphnia")
        store.record(second, "exclude", reviewer="ann", given_label="Daphnia")
        store.record(second, "undo", reviewer="ann")
        queue, _ = build_review_queue(table, store, QueueSpec("not_reviewed_by_me"), reviewer="ann")
        assert queue["sample_id"].iloc[0] == second and first not in set(queue["sample_id"])
        queue, _ = build_review_queue(table, store, QueueSpec("not_reviewed_by_me"), reviewer="bob")
        assert queue["sample_id"].iloc[0] == first
        with pytest.raises(ValueError, match="reviewer identity"):
            build_review_queue(table, store, QueueSpec("not_reviewed_by_me"))


def test_top_k_holds_most_demo_flips(demo_workspace_readonly: Path) -> None:
    """On the demo workspace: the validation queue's top k (k = flipped labels in val) holds >= 70% of them."""
    from core.workspace import load_workspace
    from models.inference import predict_workspace

    workspace = load_workspace(demo_workspace_readonly)
    table = predict_workspace(workspace, workspace.checkpoints[0].name)  # cached by the demo build
    flips = pd.read_csv(demo_workspace_readonly / workspace.extras["demo"]["flipped_labels"], dtype=str)
    val = table.for_split("val")
    val_flips = set(flips["sample_id"]) & set(val.frame["sample_id"])
    assert len(val_flips) >= 5, "the demo's validation split should hold some flipped labels"
    ranking = rank_label_issues(val, reference=table.for_split("train"))  # kNN neighbours among training rows
    top = set(ranking.frame["sample_id"].iloc[: len(val_flips)])
    assert len(top & val_flips) / len(val_flips) >= 0.7
    assert precision_at_k(ranking, val_flips) == len(top & val_flips) / len(val_flips)


def test_typical_examples_are_confident_correct_predictions_of_the_class() -> None:
    table, _ = _synthetic()
    from core.ranking import typical_examples

    top = typical_examples(table, "Volvox", n=4, exclude=["img_00000.png"])
    frame = table.frame
    correct = frame[(frame["label"] == "Volvox") & (frame["pred"] == "Volvox")]
    assert len(top) == 4 and set(top["label"]) == {"Volvox"} and set(top["pred"]) == {"Volvox"}
    assert top["confidence"].tolist() == sorted(correct["confidence"], reverse=True)[:4]
    assert typical_examples(table, "Hydra").empty


def test_knn_on_embeddings_rescues_a_weak_head() -> None:
    """Embeddings that separate the true classes + a head that barely does: the blend still finds the flips."""
    rng = np.random.default_rng(5)
    honest_val, flips = _synthetic(3, split="val", prefix="v")
    honest_train, _ = _synthetic(4, split="train", prefix="t", flip_fraction=0.0)
    k = len(CLASSES)

    def weak(table: PredictionTable, truth: np.ndarray) -> PredictionTable:
        centres = np.eye(k, 16) * 4.0
        embeddings = centres[truth] + rng.normal(0, 1.0, (len(truth), 16))
        logits = rng.normal(0, 1.0, (len(truth), k))
        logits[np.arange(len(truth)), truth] += 0.3  # a head that learnt almost nothing
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return PredictionTable(table.frame, probs.astype(np.float32), embeddings.astype(np.float32), CLASSES, {})

    val_truth = np.array([CLASSES.index(x) for x in honest_val.frame["label"]])
    for sample_id in flips:  # the true class of a flipped sample is not its given label
        val_truth[honest_val.frame.index[honest_val.frame["sample_id"] == sample_id][0]] = -1
    val_truth = np.where(val_truth >= 0, val_truth, honest_val.pred_probs.argmax(axis=1))
    train_truth = honest_train.frame["label_idx"].to_numpy()
    table = _concat(weak(honest_val, val_truth), weak(honest_train, train_truth))
    model_only = rank_label_issues(table, knn_weight=0.0)
    blended = rank_label_issues(table)
    assert precision_at_k(model_only, flips) < 0.4
    assert precision_at_k(blended, flips) >= 0.7
    assert not any("probabilities alone" in m for m in blended.messages)


def test_knn_never_counts_the_rows_own_specimen() -> None:
    frame = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "split": "train", "label": ["X", "X", "Y", "Y"],
                          "label_idx": [0, 0, 1, 1], "pred": "X", "pred_idx": 0, "confidence": 0.5,
                          "loss": 0.7, "specimen_id": ["s1", "s1", "s2", "s3"]})
    embeddings = np.array([[1, 0], [1, 0.01], [0.9, 0.1], [0, 1]], dtype=np.float32)
    table = PredictionTable(frame, np.full((4, 2), 0.5, np.float32), embeddings, ("X", "Y"), {})
    from core.ranking import knn_pred_probs

    probs = knn_pred_probs(table, table, k=1)
    # `a`'s nearest other row is `b`, but `b` is the same specimen: its neighbour is `c` (label Y)
    assert probs[0].argmax() == 1 and probs[1].argmax() == 1 and probs[2].argmax() == 0 and probs[3].argmax() == 1


def test_a_stored_ranking_reads_back_equal_and_is_not_computed_again(tmp_path: Path, monkeypatch) -> None:
    import core.ranking as ranking_module
    from core.ranking import cached_label_issues, label_issue_key

    table, _ = _synthetic()
    is_ceratium = (table.frame["label"] == "Ceratium").to_numpy()
    table = table.subset(~is_ceratium | (np.cumsum(is_ceratium) <= 3))  # a rare class: messages and rare_classes
    key = label_issue_key("token-a", "reference-a", "")
    assert key != label_issue_key("token-b", "reference-a", "") != label_issue_key("token-a", "reference-a", "cv")
    first = cached_label_issues(tmp_path, key, table)
    expected = rank_label_issues(table)
    pd.testing.assert_frame_equal(first.frame, expected.frame)
    assert list((tmp_path).glob(f"{key}.parquet"))

    def refuse(*args, **kwargs):
        raise AssertionError("ranked again although the ranking is stored")

    monkeypatch.setattr(ranking_module, "rank_label_issues", refuse)
    again = cached_label_issues(tmp_path, key, table)
    pd.testing.assert_frame_equal(again.frame, expected.frame)
    assert again.rare_classes == expected.rare_classes and again.rare_classes
    assert again.messages == expected.messages and again.class_names == expected.class_names
    with pytest.raises(AssertionError, match="ranked again"):  # another key is computed, not served the stored one
        cached_label_issues(tmp_path, label_issue_key("token-b", "reference-a", ""), table)


def _two_splits() -> PredictionTable:
    """Training rows (seed 1) and validation rows (seed 0) of the synthetic model in one table, as a predictions file
    holds them."""
    val, _ = _synthetic(0, split="val")
    train, _ = _synthetic(1, split="train", prefix="tr")
    return PredictionTable(pd.concat([val.frame, train.frame], ignore_index=True),
                           np.concatenate([val.pred_probs, train.pred_probs]),
                           np.concatenate([val.embeddings, train.embeddings]), val.class_names, val.meta)


def test_the_reference_token_changes_with_the_table_and_the_split_and_slices_nothing(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from core.ranking import cached_label_issues, reference_token

    full = _two_splits()
    token = reference_token(full, "train")
    assert reference_token(_two_splits(), "train") == token  # same content, another object: the same key
    assert reference_token(full, "val") != token
    relabelled = full.frame.copy()
    row = int(np.flatnonzero(relabelled["split"] == "train")[0])
    relabelled.loc[row, "label_idx"] = (relabelled.loc[row, "label_idx"] + 1) % len(CLASSES)
    assert reference_token(PredictionTable(relabelled, full.pred_probs, full.embeddings, full.class_names,
                                           full.meta), "train") != token
    moved = full.frame.copy()  # one validation row moved into the training split, nothing else changed
    moved.loc[int(np.flatnonzero(moved["split"] == "val")[0]), "split"] = "train"
    assert reference_token(PredictionTable(moved, full.pred_probs, full.embeddings, full.class_names, full.meta),
                           "train") != token

    sliced: list[str] = []
    original_subset = PredictionTable.subset
    monkeypatch.setattr(PredictionTable, "subset", lambda self, mask: sliced.append("subset")
                        or original_subset(self, mask))
    reference_token(full, "train")
    assert sliced == []  # keyed without slicing the training rows out

    val = full.for_split("val")
    calls: list[int] = []

    def reference() -> PredictionTable:
        calls.append(1)
        return full.for_split("train")

    sliced.clear()
    first = cached_label_issues(tmp_path, "label-issues-x", val, reference=reference)
    pd.testing.assert_frame_equal(first.frame, rank_label_issues(val, reference=full.for_split("train")).frame)
    assert calls == [1]
    again = cached_label_issues(tmp_path, "label-issues-x", val, reference=reference)
    pd.testing.assert_frame_equal(again.frame, first.frame)
    assert calls == [1]  # read back: the reference was never sliced
