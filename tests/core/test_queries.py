"""Tests of core.queries: the filters of the misclassification browser, a sample's top classes, class taxa."""

from __future__ import annotations

import pandas as pd
import pytest

from core.queries import class_taxa, filter_predictions, rows_of_samples, top_predictions
from tests.core.tables import hand_table as _table


def test_filter_predictions_and_top_predictions():
    table = _table(
        ["ant", "ant", "bee", "bee", "cricket"], ["bee", "ant", "ant", "cricket", "ant"],
        specimens=["x", "x", "y", "z", "z"],
    )
    errors = filter_predictions(table)
    assert sorted(errors["sample_id"]) == ["s0", "s2", "s3", "s4"]
    only = filter_predictions(table, true_classes=["bee"], pred_classes=["cricket"])
    assert only["sample_id"].tolist() == ["s3"]
    assert filter_predictions(table, specimen_ids=["z"])["sample_id"].tolist() == ["s3", "s4"]
    taxa = {"ant": "Formicidae", "bee": "Apidae", "cricket": "Gryllidae"}
    assert filter_predictions(table, taxa=taxa, taxon_values=["Apidae"])["label"].unique().tolist() == ["bee"]
    assert filter_predictions(table, confidence_range=(0.8, 1.0)).empty
    everything = filter_predictions(table, errors_only=False, sort_by="loss")
    assert len(everything) == 5 and everything["loss"].is_monotonic_decreasing
    top = top_predictions(table, 0, k=2)
    assert top["class"].iloc[0] == "bee" and top["probability"].iloc[0] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="sort_by"):
        filter_predictions(table, sort_by="name")


def test_class_taxa_majority_value():
    samples = pd.DataFrame({"label": ["a", "a", "a", "b"], "order": ["X", "Y", "X", "Z"]})
    assert class_taxa(samples, "order") == {"a": "X", "b": "Z"}
    with pytest.raises(ValueError, match="no taxonomy column 'family'"):
        class_taxa(samples, "family")


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("n", [0, 1, 7, 24, 60, 500])
def test_first_positions_equal_a_stable_sort_with_ties_and_nan_last(ascending, n):
    import numpy as np

    from core.queries import first_positions

    rng = np.random.default_rng(n)
    values = np.round(rng.random(60), 1)  # many ties
    values[[4, 17, 33]] = np.nan
    values[[5, 40]] = np.inf
    frame = pd.DataFrame({"v": values})
    expected = frame.sort_values("v", ascending=ascending, kind="stable", na_position="last").index.to_numpy()[:n]
    got = first_positions(values, n, ascending=ascending)
    assert got.tolist() == expected.tolist()
    assert len(got) == min(n, len(values))


def test_rows_of_samples_are_the_rows_an_id_index_finds(bccd_root):
    """The review page's lookup of the few samples it shows: the same rows and positions as an index of every id
    (what it replaces), for Arrow and Python strings; ids not in the frame left out, an id listed twice once."""
    from core.dataset import load_dataset

    samples = load_dataset(bccd_root, verify="none").samples
    ids = samples["sample_id"].astype(str)
    wanted = [ids.iloc[300], "no/such/image.jpg", ids.iloc[7], ids.iloc[300], ids.iloc[len(ids) - 1]]
    expected = samples.set_index(ids.to_numpy())[["path", "label"]].reindex(wanted).dropna()
    expected = expected[~expected.index.duplicated()]
    for frame in (samples, samples.astype({"sample_id": object, "path": object, "label": object})):
        rows = rows_of_samples(frame, wanted, columns=("path", "label"))
        assert sorted(rows.index) == sorted(expected.index) and len(rows) == 3
        assert rows.loc[expected.index, ["path", "label"]].astype(str).equals(expected.astype(str))
        assert [ids.iloc[p] for p in rows["row"]] == list(rows.index)  # `row`: the position in the frame
    duplicated = pd.concat([samples.iloc[:3], samples.iloc[:1].assign(label="other")], ignore_index=True)
    first = rows_of_samples(duplicated, [duplicated["sample_id"].iloc[0]])
    assert first["label"].tolist() == [samples["label"].iloc[0]] and first["row"].tolist() == [0]
    assert rows_of_samples(samples, []).empty and rows_of_samples(samples, ["missing"]).empty
