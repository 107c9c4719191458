"""The predictions table: derived columns from hand-made probabilities, a Parquet round trip, labels refreshed from
the dataset, and the cache key."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.predictions import (
    build_prediction_table,
    load_predictions,
    prediction_cache_key,
    relabel_table,
    save_predictions,
    table_for_samples,
)

CLASSES = ("ant", "bee", "wasp")
PROBS = np.array([[0.7, 0.2, 0.1],   # a: ant, right
                  [0.1, 0.3, 0.6],   # b: labelled bee, predicted wasp
                  [0.25, 0.5, 0.25],  # c: a label the model does not know
                  [0.05, 0.05, 0.9]], dtype=np.float32)  # d: wasp, right
EMB = np.arange(8, dtype=np.float32).reshape(4, 2)


def _table(meta: dict | None = None):
    return build_prediction_table(["a", "b", "c", "d"], PROBS, EMB, labels=["ant", "bee", "moth", "wasp"],
                                  splits=["train", "val", "val", "test"], specimen_ids=["s1", "s1", "s2", "s3"],
                                  class_names=CLASSES, meta=meta)


def test_derived_columns_follow_the_probabilities():
    frame = _table().frame
    assert frame["pred"].tolist() == ["ant", "wasp", "bee", "wasp"]
    assert frame["pred_idx"].tolist() == [0, 2, 1, 2]
    assert frame["label_idx"].tolist() == [0, 1, -1, 2]  # -1: "moth" is not one of the model's classes
    assert np.allclose(frame["confidence"], [0.7, 0.6, 0.5, 0.9])
    loss = frame["loss"].to_numpy()
    assert np.allclose(loss[[0, 1, 3]], [-math.log(0.7), -math.log(0.3), -math.log(0.9)], atol=1e-6)
    assert math.isnan(loss[2])  # no loss for a label the model cannot predict


def test_a_probability_of_zero_on_the_label_gives_a_finite_loss():
    table = build_prediction_table(["x"], np.array([[1.0, 0.0]]), np.zeros((1, 0)), labels=["b"], splits=["val"],
                                   specimen_ids=["x"], class_names=("a", "b"))
    assert table.frame["loss"].iloc[0] == pytest.approx(-math.log(1e-12), rel=1e-5)
    assert table.embeddings.shape == (1, 0)


def test_class_names_must_match_the_probability_columns():
    with pytest.raises(ValueError, match="pred_probs has 3 columns but 2 class names were given"):
        build_prediction_table(["a"], PROBS[:1], EMB[:1], labels=["ant"], splits=["val"], specimen_ids=["a"],
                               class_names=("ant", "bee"))


def test_subset_and_split_slice_every_array_alike():
    table = _table()
    val = table.for_split("val")
    assert val.frame["sample_id"].tolist() == ["b", "c"]
    assert np.array_equal(val.pred_probs, PROBS[1:3]) and np.array_equal(val.embeddings, EMB[1:3])
    assert table.for_split("all") is table and table.for_split(None) is table
    assert len(table.for_split("holdout")) == 0


@pytest.mark.parametrize("width", [2, 0])
def test_parquet_round_trip_keeps_arrays_classes_and_meta(tmp_path: Path, width: int):
    table = build_prediction_table(["a", "b", "c", "d"], PROBS, EMB[:, :width], labels=["ant", "bee", "moth", "wasp"],
                                   splits=["train", "val", "val", "test"], specimen_ids=["s1", "s1", "s2", "s3"],
                                   class_names=CLASSES, meta={"checkpoint": "tiny", "n_failed": 2})
    path = save_predictions(table, tmp_path / "deep" / "p.parquet")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))  # written atomically, nothing left over
    back = load_predictions(path)
    assert back.class_names == CLASSES and back.meta == {"checkpoint": "tiny", "n_failed": 2}
    assert np.array_equal(back.pred_probs, PROBS) and back.pred_probs.dtype == np.float32
    assert back.embeddings.shape == (4, width) and np.array_equal(back.embeddings, EMB[:, :width])
    pd.testing.assert_frame_equal(back.frame, table.frame, check_dtype=False)


def test_relabel_takes_labels_splits_and_specimens_from_the_dataset_and_drops_gone_samples():
    samples = pd.DataFrame({"sample_id": ["d", "a", "b"], "label": ["wasp", "bee", "bee"],  # a relabelled ant->bee
                            "split": ["val", "train", "test"], "specimen_id": ["s9", "s1", "s1"]})
    table = relabel_table(_table({"checkpoint": "tiny"}), samples)  # c is no longer in the dataset
    frame = table.frame
    assert frame["sample_id"].tolist() == ["a", "b", "d"]  # the table's order, not the dataset's
    assert frame["label"].tolist() == ["bee", "bee", "wasp"]
    assert frame["split"].tolist() == ["train", "test", "val"]
    assert frame["specimen_id"].tolist() == ["s1", "s1", "s9"]
    assert frame["label_idx"].tolist() == [1, 1, 2]
    assert frame["loss"].iloc[0] == pytest.approx(-math.log(0.2))  # the loss follows the new label
    assert np.array_equal(table.pred_probs, PROBS[[0, 1, 3]]) and np.array_equal(table.embeddings, EMB[[0, 1, 3]])
    assert table.meta == {"checkpoint": "tiny"}


def test_table_for_samples_reads_the_dataset_rows_in_order():
    samples = pd.DataFrame({"sample_id": ["p", "q"], "label": ["bee", "ant"], "split": ["val", "val"],
                            "specimen_id": ["x", "y"], "path": ["/p.png", "/q.png"]}, index=[10, 3])
    table = table_for_samples(samples, PROBS[:2], EMB[:2], class_names=CLASSES, meta={"k": 1})
    assert table.frame["sample_id"].tolist() == ["p", "q"] and table.frame["label_idx"].tolist() == [1, 0]
    assert table.frame.index.tolist() == [0, 1] and table.meta == {"k": 1}


def test_cache_key_changes_with_each_part_and_not_with_dict_order():
    key = prediction_cache_key("sha-a", "data-1", {"input_size": [3, 64, 64], "mean": [0.5]})
    assert len(key) == 24 and all(c in "0123456789abcdef" for c in key)
    assert key == prediction_cache_key("sha-a", "data-1", {"mean": [0.5], "input_size": [3, 64, 64]})
    others = {prediction_cache_key("sha-b", "data-1", {"input_size": [3, 64, 64], "mean": [0.5]}),
              prediction_cache_key("sha-a", "data-2", {"input_size": [3, 64, 64], "mean": [0.5]}),
              prediction_cache_key("sha-a", "data-1", {"input_size": [3, 96, 96], "mean": [0.5]})}
    assert key not in others and len(others) == 3


def test_float16_storage_halves_the_probabilities_and_keeps_their_order(tmp_path):
    from core.predictions import load_predictions, save_predictions
    from tests.core.tables import random_table

    table = random_table(n=500, k=40, seed=5)
    small = save_predictions(table, tmp_path / "half.parquet", probs_dtype="float16")
    full = save_predictions(table, tmp_path / "full.parquet")
    back = load_predictions(small)
    assert back.pred_probs.dtype == np.float32 and back.pred_probs.shape == table.pred_probs.shape
    np.testing.assert_allclose(back.pred_probs, table.pred_probs, rtol=1e-3, atol=1e-7)
    top5 = np.argsort(-table.pred_probs, axis=1)[:, :5]
    assert (np.argsort(-back.pred_probs, axis=1)[:, :5] == top5).mean() > 0.99  # ranking survives (ties aside)
    assert back.frame["pred"].tolist() == table.frame["pred"].tolist()
    assert small.stat().st_size < 0.7 * full.stat().st_size
    with pytest.raises(ValueError, match="probs_dtype"):
        save_predictions(table, tmp_path / "x.parquet", probs_dtype="int8")
