"""Curated labels: disputes (disagreement, no ruling) are exported as status=disputed with the original label, left
out of training unless asked for, and shown apart on the evaluation pages; relabels and exclusions change the
scored table; the store's last event id moves with every write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.agreement import DISPUTED_STATUS, list_disagreements
from core.curation import apply_curated_labels, curated_labels
from core.dataset import load_dataset
from core.export import build_curated_manifest, export_curated_labels
from core.labelstore import LabelStore
from core.metrics import compute_headline_metrics
from core.predictions import build_prediction_table
from core.training_data import load_training_dataset


def _table(labels: list[str], preds: list[int]):
    classes = ("Daphnia", "Volvox", "Hydra")
    probs = np.full((len(labels), 3), 0.1, dtype=np.float32)
    probs[np.arange(len(labels)), preds] = 0.8
    ids = [f"s{i}.png" for i in range(len(labels))]
    return build_prediction_table(ids, probs, np.zeros((len(labels), 0)), labels=labels, splits=["val"] * len(labels),
                                  specimen_ids=ids, class_names=classes)


def test_curated_table_applies_relabels_removes_exclusions_and_sets_disputes_apart(store_url: str) -> None:
    # given labels: s0 Daphnia (model says Volvox), s1 Volvox (Volvox), s2 Hydra (Hydra), s3 Daphnia (Daphnia)
    table = _table(["Daphnia", "Volvox", "Hydra", "Daphnia"], [1, 1, 2, 0])
    with LabelStore(store_url) as store:
        assert store.last_event_id() == 0
        store.record("s0.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
        first = store.last_event_id()
        store.record("s2.png", "exclude", reviewer="ann", given_label="Hydra")
        store.record("s3.png", "confirm", reviewer="ann", given_label="Daphnia")
        store.record("s3.png", "relabel", reviewer="bob", label="Hydra", given_label="Daphnia")
        assert store.last_event_id() > first
        curated = curated_labels(store.states())

    assert curated.disputed == {"s3.png"} and curated.excluded == {"s2.png"}
    result = apply_curated_labels(table, curated)
    frame = result.table.frame
    assert frame["sample_id"].tolist() == ["s0.png", "s1.png"]
    assert frame["label"].tolist() == ["Volvox", "Volvox"] and frame["label_idx"].tolist() == [1, 1]
    assert (result.n_relabeled, result.n_excluded) == (1, 1)
    assert result.disputed.frame["sample_id"].tolist() == ["s3.png"]
    assert result.disputed.frame["label"].tolist() == ["Daphnia"]  # shown with its given label
    # as given, s0 is an error; as curated, every scored row is right
    assert compute_headline_metrics(table, n_boot=0)["accuracy"].value == pytest.approx(0.75)
    assert compute_headline_metrics(result.table, n_boot=0)["accuracy"].value == 1.0


def test_disputes_are_exported_with_the_original_label_and_left_out_of_training(bccd_root: Path,
                                                                                tmp_path: Path) -> None:
    dataset = load_dataset(bccd_root)
    samples = dataset.samples.set_index("sample_id")
    lymph = [s for s in samples.index if samples.at[s, "label"] == "Lymphocyte"][:3]
    disputed, ruled, agreed = lymph
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        for sample_id in (disputed, ruled):
            store.record(sample_id, "relabel", reviewer="ann", label="Monocyte", given_label="Lymphocyte")
            store.record(sample_id, "confirm", reviewer="bob", label="Lymphocyte", given_label="Lymphocyte")
        store.record(ruled, "relabel", reviewer="lead", label="Monocyte", given_label="Lymphocyte",
                     adjudication=True)
        store.record(agreed, "relabel", reviewer="ann", label="Monocyte", given_label="Lymphocyte")
        curated, _ = build_curated_manifest(dataset, store)
        listed = list_disagreements(store.states())
        summary = export_curated_labels(dataset, store, tmp_path / "curated.csv")

    rows = curated.set_index("path")
    assert rows.loc[disputed, ["label", "original_label", "status"]].tolist() == [
        "Lymphocyte", "Lymphocyte", DISPUTED_STATUS]
    assert rows.loc[ruled, ["label", "status"]].tolist() == ["Monocyte", "relabeled"]
    assert rows.loc[agreed, ["label", "status"]].tolist() == ["Monocyte", "relabeled"]
    assert summary.status_counts[DISPUTED_STATUS] == 1
    # the adjudication page's list: the dispute first, marked disputed with no winning label
    assert listed["sample_id"].tolist() == [disputed, ruled]
    assert listed.loc[0, "status"] == DISPUTED_STATUS and pd.isna(listed.loc[0, "label"])

    default = load_training_dataset(summary.manifest_path, root=summary.dataset_root)
    assert disputed not in set(default.samples["sample_id"]) and len(default) == len(dataset) - 1
    assert default.skipped.set_index("sample_id").at[disputed, "reason"] == DISPUTED_STATUS
    assert any("status=disputed left out" in w for w in default.warnings)
    included = load_training_dataset(summary.manifest_path, root=summary.dataset_root, include_disputed=True)
    assert len(included) == len(dataset)
    assert included.samples.set_index("sample_id").at[disputed, "label"] == "Lymphocyte"
