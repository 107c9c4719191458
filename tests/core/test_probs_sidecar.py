"""Memory-mapped float16 probabilities and compact columns beside a predictions table (core.probs_sidecar)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from core.predictions import load_predictions, relabel_table, save_predictions
from core.probs_sidecar import compact_columns, load_table, open_table, relabel, sidecar_paths, write_sidecars
from tests.core.tables import random_table


def _as_pages_read_it(path):
    """What the pages read before: the whole matrix as float32, the columns derived from it (`relabel_table`)."""
    table = load_predictions(path)
    return relabel_table(table, table.frame[["sample_id", "label", "split", "specimen_id"]])


def _half_table(tmp_path, *, n=300, k=12, seed=3):
    table = random_table(n=n, k=k, seed=seed, ties=True)  # rounded logits: many tied probabilities
    return table, save_predictions(table, tmp_path / "half.parquet", probs_dtype="float16")


def test_compact_columns_equal_what_the_full_matrix_gives():
    table = random_table(n=257, k=9, seed=1, ties=True)
    labels = table.frame["label_idx"].to_numpy().copy()
    labels[::7] = -1  # a label the model does not know
    compact = compact_columns(table.pred_probs, labels, chunk=50)  # several chunks, the last one short
    probs = table.pred_probs
    assert np.array_equal(compact.pred_idx, probs.argmax(axis=1))  # first of tied maxima, as argmax
    assert np.array_equal(compact.confidence, probs.max(axis=1))
    rows = np.arange(len(probs))
    expected = np.where(labels >= 0, probs[rows, np.clip(labels, 0, None)], np.nan)
    np.testing.assert_array_equal(compact.label_prob, expected.astype(np.float32))
    loss = compact.loss()
    assert np.isnan(loss[labels < 0]).all()
    np.testing.assert_allclose(loss[labels >= 0], -np.log(expected[labels >= 0]), rtol=1e-6)
    with pytest.raises(ValueError, match="label_idx has 3 rows"):
        compact_columns(probs, labels[:3])


def test_float16_table_opens_memory_mapped_with_the_same_frame_as_the_full_load(tmp_path):
    _, path = _half_table(tmp_path)
    before = _as_pages_read_it(path)
    after = load_table(path)
    probs_path, compact_path = sidecar_paths(path)
    assert probs_path.is_file() and compact_path.is_file()
    assert isinstance(after.pred_probs, np.memmap) and after.pred_probs.dtype == np.float16
    assert not after.pred_probs.flags.writeable
    assert np.array_equal(after.pred_probs.astype(np.float32), before.pred_probs)  # float16 -> float32 is exact
    pd.testing.assert_frame_equal(after.frame, before.frame)
    assert after.class_names == before.class_names and after.meta == before.meta
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_sidecars_are_rewritten_when_the_table_changes(tmp_path):
    table, path = _half_table(tmp_path)
    load_table(path)
    other = random_table(n=300, k=12, seed=9)
    save_predictions(other, path, probs_dtype="float16")  # same file name, new content (new size or mtime)
    os.utime(path, ns=(1, 1))  # a different mtime even where the size happens to match
    back = load_table(path)
    assert np.array_equal(back.frame["pred_idx"].to_numpy(), other.frame["pred_idx"].to_numpy())
    np.testing.assert_allclose(back.pred_probs.astype(np.float32), other.pred_probs, rtol=1e-3, atol=1e-7)


def test_float32_table_loads_as_before(tmp_path):
    table = random_table(n=50, k=5, seed=2)
    path = save_predictions(table, tmp_path / "full.parquet")
    back = load_table(path)  # 250 probabilities: far below MEMMAP_MIN_VALUES
    assert back.pred_probs.dtype == np.float32 and not isinstance(back.pred_probs, np.memmap)
    assert not any(p.exists() for p in [*sidecar_paths(path), *sidecar_paths(path, dtype=np.float32)])


def test_large_float32_table_opens_memory_mapped_as_float32_with_the_same_values(tmp_path, monkeypatch):
    import core.probs_sidecar as sidecar

    table = random_table(n=300, k=12, seed=4, ties=True)
    path = save_predictions(table, tmp_path / "full.parquet")
    before = _as_pages_read_it(path)
    monkeypatch.setattr(sidecar, "MEMMAP_MIN_VALUES", 300 * 12)  # this table counts as large
    after = load_table(path)
    probs_path, compact_path = sidecar_paths(path, dtype=np.float32)
    assert probs_path.name == "full.probs32.npy" and probs_path.is_file() and compact_path.is_file()
    assert not sidecar_paths(path)[0].exists()  # no float16 copy
    assert isinstance(after.pred_probs, np.memmap) and after.pred_probs.dtype == np.float32
    assert not after.pred_probs.flags.writeable
    assert np.array_equal(after.pred_probs, before.pred_probs)  # the stored float32 values, bit for bit
    pd.testing.assert_frame_equal(after.frame, before.frame)
    assert after.class_names == before.class_names and after.meta == before.meta
    monkeypatch.setattr(sidecar, "MEMMAP_MIN_VALUES", 300 * 12 + 1)  # one value short: as before
    assert not isinstance(load_table(path).pred_probs, np.memmap)


def test_large_float32_table_in_an_unwritable_folder_loads_as_before(tmp_path, monkeypatch):
    import core.probs_sidecar as sidecar

    table = random_table(n=80, k=6, seed=5)
    path = save_predictions(table, tmp_path / "full.parquet")
    monkeypatch.setattr(sidecar, "MEMMAP_MIN_VALUES", 0)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(sidecar, "write_sidecars", refuse)
    back = load_table(path)
    assert back.pred_probs.dtype == np.float32 and not isinstance(back.pred_probs, np.memmap)
    pd.testing.assert_frame_equal(back.frame, _as_pages_read_it(path).frame)


def test_write_sidecars_refuses_another_probability_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = random_table(n=20, k=4, seed=6)
    path = save_predictions(table, tmp_path / "full.parquet")
    arrow = pq.read_table(path)
    k = len(table.class_names)
    doubles = pa.FixedSizeListArray.from_arrays(pa.array(table.pred_probs.reshape(-1).astype(np.float64)), k)
    odd = arrow.set_column(arrow.schema.get_field_index("probs"), pa.field("probs", doubles.type), doubles)
    pq.write_table(odd.replace_schema_metadata(arrow.schema.metadata), tmp_path / "odd.parquet")
    with pytest.raises(ValueError, match="float16 or float32 tables"):
        write_sidecars(tmp_path / "odd.parquet")


def test_unwritable_folder_falls_back_to_float16_in_memory(tmp_path, monkeypatch):
    import core.probs_sidecar as sidecar

    _, path = _half_table(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(sidecar, "write_sidecars", refuse)
    back = load_table(path)
    assert back.pred_probs.dtype == np.float16 and not isinstance(back.pred_probs, np.memmap)
    pd.testing.assert_frame_equal(back.frame, _as_pages_read_it(path).frame)


@pytest.mark.parametrize("order", ["same", "shuffled"])
def test_relabel_equals_relabel_table_without_reading_the_matrix(tmp_path, order):
    table, path = _half_table(tmp_path, n=120, k=6)
    loaded = load_table(path)
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({"sample_id": loaded.frame["sample_id"], "label": loaded.frame["label"],
                            "split": loaded.frame["split"], "specimen_id": loaded.frame["specimen_id"]})
    samples.loc[3, "label"] = "c5" if samples.loc[3, "label"] != "c5" else "c4"  # relabelled
    samples.loc[7, "label"] = "not-a-class"  # a label the model does not know
    samples.loc[9, "split"] = "test"
    samples = samples.drop(index=[11, 12])  # gone from the dataset
    if order == "shuffled":
        samples = samples.iloc[rng.permutation(len(samples))]
    expected = relabel_table(load_predictions(path), samples)
    got = relabel(loaded, samples)
    pd.testing.assert_frame_equal(got.frame, expected.frame)
    assert np.array_equal(got.pred_probs.astype(np.float32), expected.pred_probs)
    assert got.frame.loc[got.frame["sample_id"] == samples.loc[7, "sample_id"], "label_idx"].item() == -1
    pd.testing.assert_frame_equal(open_table(path, samples).frame, expected.frame)
