"""Cross-validation in core: specimen-grouped folds with rare classes, the linear probe's out-of-fold probabilities,
and the cache beside the predictions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.crossval import (
    NOT_HELD_OUT,
    CrossvalError,
    ProbeConfig,
    crossval_folds,
    crossval_path,
    find_crossval,
    labels_digest,
    probe_crossval,
)
from core.predictions import build_prediction_table
from core.ranking import precision_at_k, rank_label_issues

CLASSES = ("Baetidae", "Calanus", "Ceratium", "Daphnia", "Navicula")
SPECIMENS = {"Baetidae": 12, "Calanus": 30, "Ceratium": 3, "Daphnia": 60, "Navicula": 40}


def _frame(specimens: dict[str, int] = SPECIMENS, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for name, n in specimens.items():
        for s in range(n):
            for view in range(int(rng.integers(1, 4))):
                rows.append((f"{name}-{s}-{view}", name, f"{name}-{s}"))
    return pd.DataFrame(rows, columns=["sample_id", "label", "specimen_id"]).assign(split="train")


def _embedded_table(*, seed: int = 0, flip_share: float = 0.06, noise: float = 1.2):
    """Embeddings clustered by true class (a specimen's views close together); ~6% of training specimens and of
    validation specimens carry another class's label. Returns the table and the flipped sample ids."""
    rng = np.random.default_rng(seed)
    train = _frame(seed=seed)
    val = _frame({name: max(2, n // 4) for name, n in SPECIMENS.items()}, seed=seed + 1).assign(split="val")
    val["sample_id"] = "val-" + val["sample_id"]
    val["specimen_id"] = "val-" + val["specimen_id"]
    frame = pd.concat([train, val], ignore_index=True)
    centres = rng.normal(0, 1, (len(CLASSES), 16)) * 2.0
    truth = frame["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    specimen_offset = {s: rng.normal(0, 0.5, 16) for s in frame["specimen_id"].unique()}
    emb = centres[truth] + np.stack([specimen_offset[s] for s in frame["specimen_id"]]) \
        + rng.normal(0, noise, (len(frame), 16))
    given = frame["label"].copy()
    flippable = [s for s in frame["specimen_id"].unique() if not s.startswith(("Ceratium", "val-Ceratium"))]
    flipped_specimens = set(rng.choice(flippable, size=int(flip_share * len(flippable)), replace=False))
    for specimen in flipped_specimens:
        rows = frame.index[frame["specimen_id"] == specimen]
        true = frame.at[rows[0], "label"]
        given[rows] = rng.choice([c for c in CLASSES if c not in (true, "Ceratium")])
    flipped = set(frame.loc[frame["specimen_id"].isin(flipped_specimens), "sample_id"])
    # the checkpoint's own probabilities: memorised (given label) for training rows, honest for validation rows
    probs = np.full((len(frame), len(CLASSES)), 0.02)
    label_idx = given.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probs[np.arange(len(frame)), np.where(frame["split"] == "train", label_idx, truth)] = 0.92
    table = build_prediction_table(frame["sample_id"].tolist(), probs, emb, labels=given.tolist(),
                                   splits=frame["split"].tolist(), specimen_ids=frame["specimen_id"].tolist(),
                                   class_names=CLASSES, meta={"checkpoint": "synthetic"})
    return table, flipped


def test_folds_keep_specimens_whole_and_hold_out_rare_classes_where_they_can() -> None:
    frame = _frame({**SPECIMENS, "Ceratium": 2, "Volvox": 1})
    assignment = crossval_folds(frame, n_folds=5, seed=3)
    folds = assignment.folds
    assert frame.assign(fold=folds).groupby("specimen_id")["fold"].nunique().max() == 1
    volvox = (frame["label"] == "Volvox").to_numpy()
    assert (folds[volvox] == NOT_HELD_OUT).all()  # one specimen: its fold would train without the class
    assert any("Volvox" in m and "single specimen" in m for m in assignment.messages)
    ceratium = (frame["label"] == "Ceratium").to_numpy()
    assert (folds[ceratium] != NOT_HELD_OUT).all(), "two specimens, five folds: still held out"
    for fold in range(5):
        trained = set(frame.loc[folds != fold, "label"])
        assert set(frame.loc[folds == fold, "label"]) <= trained
    assert (folds[~volvox] >= 0).all() and set(folds[~volvox]) == set(range(5))


def test_folds_refuse_bad_requests_with_the_fix() -> None:
    with pytest.raises(CrossvalError, match="at least 2 folds"):
        crossval_folds(_frame(), n_folds=1)
    with pytest.raises(CrossvalError, match="Use fewer folds"):
        crossval_folds(_frame({"A": 2, "B": 2}), n_folds=5)


def test_probe_finds_training_flips_that_in_sample_probabilities_hide() -> None:
    table, flipped = _embedded_table()
    cv = probe_crossval(table, n_folds=5, seed=0)
    train = table.for_split("train")
    assert set(cv.for_split("train").frame["sample_id"]) == set(train.frame["sample_id"])
    assert set(cv.for_split("val").frame["sample_id"]) == set(table.for_split("val").frame["sample_id"])
    assert np.allclose(cv.pred_probs.sum(axis=1), 1.0, atol=1e-4)
    assert cv.meta["C"] in ProbeConfig().c_grid and cv.meta["mode"] == "probe"
    as_holdout = build_prediction_table(train.frame["sample_id"].tolist(), train.pred_probs, train.embeddings,
                                        labels=train.frame["label"].tolist(), splits=["val"] * len(train),
                                        specimen_ids=train.frame["specimen_id"].tolist(), class_names=CLASSES)
    in_sample = precision_at_k(rank_label_issues(as_holdout, knn_weight=0), flipped)
    out_of_fold = precision_at_k(rank_label_issues(train, cv_table=cv), flipped)
    assert out_of_fold >= 0.7 > in_sample, (out_of_fold, in_sample)


def test_a_training_rows_probabilities_never_depend_on_its_own_label() -> None:
    table, _ = _embedded_table(seed=1)
    config = ProbeConfig(c_grid=(0.1,))  # one C: the choice of C may look at every label, the fit must not
    folds = crossval_folds(table.for_split("train").frame, n_folds=5)  # fixed: the stratification reads labels
    before = probe_crossval(table, config=config, folds=folds)
    row = int(np.flatnonzero(table.frame["split"] == "train")[5])
    sample_id = table.frame["sample_id"].iloc[row]
    specimen = table.frame["specimen_id"].iloc[row]
    other = next(c for c in CLASSES if c not in (table.frame["label"].iloc[row], "Ceratium"))
    same_specimen = (table.frame["specimen_id"] == specimen).to_numpy()
    labels = table.frame["label"].where(~same_specimen, other).tolist()
    relabelled = build_prediction_table(table.frame["sample_id"].tolist(), table.pred_probs, table.embeddings,
                                        labels=labels, splits=table.frame["split"].tolist(),
                                        specimen_ids=table.frame["specimen_id"].tolist(), class_names=CLASSES)
    after = probe_crossval(relabelled, config=config, folds=folds)
    first, second = (int(np.flatnonzero(t.frame["sample_id"] == sample_id)[0]) for t in (before, after))
    assert np.allclose(before.pred_probs[first], after.pred_probs[second], atol=1e-6)
    others = before.frame["split"].eq("train") & ~before.frame["specimen_id"].eq(specimen)
    ids = before.frame.loc[others, "sample_id"]
    position = dict(zip(after.frame["sample_id"], range(len(after)), strict=True))
    changed = np.abs(before.pred_probs[others.to_numpy()] - after.pred_probs[[position[s] for s in ids]]).max()
    assert changed > 1e-4, "the other folds' probes did train on the changed label"


def test_probe_needs_embeddings() -> None:
    table, _ = _embedded_table()
    bare = build_prediction_table(table.frame["sample_id"].tolist(), table.pred_probs, np.zeros((len(table), 0)),
                                  labels=table.frame["label"].tolist(), splits=table.frame["split"].tolist(),
                                  specimen_ids=table.frame["specimen_id"].tolist(), class_names=CLASSES)
    with pytest.raises(CrossvalError, match="no embeddings.*--mode finetune"):
        probe_crossval(bare)


def test_cache_path_is_keyed_by_mode_folds_and_labels_and_finetune_is_preferred(tmp_path: Path) -> None:
    predictions = tmp_path / "tiny-0123abcd.parquet"
    samples = _frame()
    probe5 = crossval_path(predictions, samples, mode="probe", n_folds=5)
    assert probe5.parent == tmp_path and probe5.name.startswith("tiny-0123abcd.cv-probe-5f-")
    assert crossval_path(predictions, samples, mode="probe", n_folds=3) != probe5
    relabelled = samples.assign(label=samples["label"].where(samples.index != 0, "Navicula"))
    assert crossval_path(predictions, relabelled, mode="probe", n_folds=5) != probe5
    assert find_crossval(predictions, samples) is None
    probe5.write_bytes(b"")
    assert find_crossval(predictions, samples) == probe5
    assert find_crossval(predictions, relabelled) is None, "a table for other labels is not used"
    finetune = crossval_path(predictions, samples, mode="finetune", n_folds=2)
    finetune.write_bytes(b"")
    os.utime(finetune, ns=(1, 1))  # older than the probe table, still preferred
    assert find_crossval(predictions, samples) == finetune
    assert find_crossval(predictions, samples, mode="probe") == probe5
    with pytest.raises(CrossvalError, match="unknown"):
        crossval_path(predictions, samples, mode="knn", n_folds=5)


def test_labels_digest_is_still_the_one_cached_tables_are_named_by() -> None:
    """The faster digest (sample ids hashed without factorising them) names the same files as before: the value
    below is what `labels_digest` returned when the tables were cached (pandas' default `categorize=True`), for
    Python strings and Arrow strings alike; any changed column changes it."""
    samples = _frame()
    assert labels_digest(samples) == "cbd879f6e3e5"
    assert labels_digest(samples.astype({"sample_id": object, "label": object})) == "cbd879f6e3e5"
    assert labels_digest(samples.astype("string[pyarrow]")) == "cbd879f6e3e5"
    for column in ("sample_id", "label", "split", "specimen_id"):
        changed = samples.copy()
        changed.loc[3, column] = "val" if column == "split" else "Zygnema-0"
        assert labels_digest(changed) != "cbd879f6e3e5", column


def test_find_crossval_hashes_no_labels_while_none_is_cached_for_these_predictions(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """A million labels take most of a second to hash: with no cross-validated table beside the predictions (the
    usual first visit) there is nothing to match, so none are hashed; once one is there they are, and it is found."""
    import core.crossval

    predictions = tmp_path / "tiny-0123abcd.parquet"
    samples = _frame()
    other = tmp_path / f"other-99.cv-probe-5f-s0-{labels_digest(samples)}.parquet"  # another checkpoint's table
    other.write_bytes(b"")
    calls = []
    real = core.crossval.labels_digest
    monkeypatch.setattr(core.crossval, "labels_digest", lambda s: calls.append(len(s)) or real(s))
    assert find_crossval(predictions, samples) is None and calls == []
    probe5 = crossval_path(predictions, samples, mode="probe", n_folds=5)
    probe5.write_bytes(b"")
    assert find_crossval(predictions, samples) == probe5 and len(calls) == 2  # the path's digest, then the search's
