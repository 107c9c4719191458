"""Curated export: events -> manifest CSV -> load_dataset gives exactly the labels and counts the events say."""

from __future__ import annotations

import csv
import io
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main as cli_main
from core.dataset import FORMULA_TRIGGERS, load_dataset, unneutralise_cell
from core.export import (
    CURATED_COLUMNS,
    audit_log_csv,
    build_curated_manifest,
    curated_manifest_csv,
    export_curated_labels,
    neutralise_cell,
)
from core.labelstore import LabelStore


def _rows_excluded(loaded) -> set[str]:
    """Excluded samples of a loaded curated manifest: load_dataset skips them with reason `excluded`, none is data."""
    assert not (loaded.samples["status"] == "excluded").any()
    return set(loaded.skipped.loc[loaded.skipped["reason"] == "excluded", "sample_id"])


def test_events_export_and_reload_round_trip_on_real_images(bccd_root: Path, tmp_path: Path) -> None:
    dataset = load_dataset(bccd_root)
    ids = dataset.samples.set_index("sample_id")
    neutrophils = [s for s in ids.index if ids.at[s, "label"] == "Neutrophil"][:8]
    s1, s2, s3, s4, s5, s6, s7, s8 = neutrophils
    given = "Neutrophil"
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        store.record(s1, "relabel", reviewer="ann", label="Eosinophil", given_label=given)
        store.record(s2, "relabel", reviewer="ann", label="Lymphocyte", given_label=given)
        store.record(s2, "undo", reviewer="ann")
        store.record(s3, "exclude", reviewer="ann", given_label=given, note="out of focus")
        store.record(s4, "exclude", reviewer="bob", given_label=given)
        store.record(s4, "undo", reviewer="bob")
        store.record(s5, "relabel", reviewer="ann", label="Monocyte", given_label=given)
        store.record(s5, "confirm", reviewer="bob", label=given, given_label=given)
        store.record(s6, "relabel", reviewer="ann", label="Basophil", given_label=given)
        store.record(s6, "relabel", reviewer="bob", label="Monocyte", given_label=given)
        store.record(s6, "relabel", reviewer="lead", label="Basophil", given_label=given, adjudication=True)
        store.record(s7, "unsure", reviewer="bob", given_label=given)
        store.record(s8, "relabel", reviewer="ann", label="Eosinophil", given_label=given)
        store.record(s8, "exclude", reviewer="bob", given_label=given)
        summary = export_curated_labels(dataset, store, tmp_path / "out" / "curated.csv",
                                        audit_out=tmp_path / "out" / "audit.csv")
        n_events = store.count_events()

    expected_label = dict(zip(dataset.samples["sample_id"], dataset.samples["label"], strict=True))
    expected_label.update({s1: "Eosinophil", s6: "Basophil"})  # s5, s8: disputed (no ruling), original label
    expected_status = {s1: "relabeled", s3: "excluded", s5: "disputed", s6: "relabeled", s7: "unsure",
                       s8: "disputed", s2: "unreviewed", s4: "unreviewed"}

    loaded = load_dataset(summary.manifest_path, root=summary.dataset_root)
    assert summary.n_rows == len(dataset) and summary.n_events == n_events == 14
    assert summary.status_counts == {"unreviewed": len(dataset) - 6, "relabeled": 2, "excluded": 1,
                                     "disputed": 2, "unsure": 1}
    header = summary.manifest_path.read_text().splitlines()[0].split(",")
    assert tuple(header[:8]) == CURATED_COLUMNS and header[8:10] == ["split", "specimen_id"]

    excluded = _rows_excluded(loaded)
    assert excluded == {s3}
    kept = loaded.samples[~loaded.samples["sample_id"].isin(excluded)]
    assert dict(zip(kept["sample_id"], kept["label"], strict=True)) == {
        s: label for s, label in expected_label.items() if s not in excluded}
    assert Counter(kept["label"]) == Counter(label for s, label in expected_label.items() if s not in excluded)
    assert Counter(kept["label"])["Neutrophil"] == 207 - 3  # s1, s6 relabelled away; s3 excluded
    # everything else the dataset said survives: split, specimen, the original label
    rows = loaded.samples.set_index("sample_id")
    assert set(rows.index) | set(loaded.skipped["sample_id"]) == set(dataset.samples["sample_id"])
    for sample_id in rows.index:
        assert rows.at[sample_id, "split"] == ids.at[sample_id, "split"]
        assert rows.at[sample_id, "original_label"] == ids.at[sample_id, "label"]
    for sample_id, status in expected_status.items():
        if sample_id in rows.index:
            assert rows.at[sample_id, "status"] == status, sample_id
    assert rows.at[s5, "n_reviews"] == "2" and rows.at[s5, "agreement"] == "0.5"
    assert rows.at[s6, "last_reviewer"] == "lead" and rows.at[s6, "updated_at"].endswith("Z")
    assert rows.at[s2, "n_reviews"] == "0" and rows.at[s2, "agreement"] == ""

    audit = pd.read_csv(summary.audit_path, dtype=str, keep_default_na=False)
    assert len(audit) == 14 and audit["action"].tolist().count("undo") == 2
    assert audit.loc[audit["sample_id"] == s3, "note"].tolist() == ["out of focus"]
    assert set(audit["adjudication"]) == {"True", "False"}


def test_formula_cells_are_neutralised_and_paths_still_load(bccd_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    sources = sorted((bccd_root / "Lymphocyte").iterdir())[:4]
    names = ["=cmd.jpg", "-neg.jpg", "@at.jpg", "plain.jpg"]
    for source, name in zip(sources, names, strict=True):
        shutil.copy(source, root / name)
    manifest = root / "manifest.csv"
    manifest.write_text(
        "path,label,lineage,split\n"
        "./=cmd.jpg,Lymphocyte,'+lymphoid,val\n"  # what a previous export would have written
        "./-neg.jpg,Lymphocyte,'+lymphoid,val\n"
        "./@at.jpg,Monocyte,myeloid,val\n"
        "plain.jpg,Monocyte,myeloid,train\n",
        encoding="utf-8",
    )
    dataset = load_dataset(manifest, taxonomy=["lineage"])
    assert sorted(dataset.samples["sample_id"]) == ["-neg.jpg", "=cmd.jpg", "@at.jpg", "plain.jpg"]
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        store.record("=cmd.jpg", "relabel", reviewer="=evil()", label="Monocyte", given_label="Lymphocyte",
                     note='=HYPERLINK("http://x","click")')
        store.record("plain.jpg", "exclude", reviewer="ann", given_label="Monocyte", note="@SUM(1)\n<b>bold</b>")
        manifest_text = curated_manifest_csv(dataset, store).decode()
        audit_text = audit_log_csv(store).decode()
        curated, _ = build_curated_manifest(dataset, store)

    for text in (manifest_text, audit_text):
        for row in csv.reader(io.StringIO(text)):
            for cell in row:
                assert not cell.startswith(FORMULA_TRIGGERS), cell
    assert "'=evil()" in manifest_text and "'=HYPERLINK" in audit_text and "<b>bold</b>" in audit_text
    # relabelled to Monocyte: the taxonomy follows the new class
    assert curated.set_index("path").at["=cmd.jpg", "lineage"] == "myeloid"

    out = root / "curated.csv"
    out.write_text(manifest_text, encoding="utf-8")
    loaded = load_dataset(out, taxonomy=["lineage"])  # inside the dataset root: the default root works
    rows = loaded.samples.set_index("sample_id")
    assert set(rows.index) | _rows_excluded(loaded) == {"-neg.jpg", "=cmd.jpg", "@at.jpg", "plain.jpg"}
    assert _rows_excluded(loaded) == {"plain.jpg"}
    assert rows.at["=cmd.jpg", "label"] == "Monocyte" and rows.at["-neg.jpg", "label"] == "Lymphocyte"
    assert rows.at["-neg.jpg", "lineage"] == "+lymphoid", "load_dataset strips the export's formula guard"
    assert rows.at["=cmd.jpg", "last_reviewer"] == "=evil()"
    assert set(loaded.class_names) == {"Lymphocyte", "Monocyte"}


def test_neutralise_cell_round_trip() -> None:
    for text in ("=1+2", "+x", "-x", "@x", "\tx", "\rx", "'quoted", " x", "x "):
        assert neutralise_cell(text) == "'" + text and unneutralise_cell(neutralise_cell(text)) == text
    for value in ("Daphnia", "", 3, None):
        assert neutralise_cell(value) == value and unneutralise_cell(value) == value
    assert unneutralise_cell("'quoted") == "'quoted"  # a hand-written leading quote is kept


def test_events_on_samples_outside_the_dataset_are_reported(bccd_root: Path, tmp_path: Path) -> None:
    dataset = load_dataset(bccd_root)
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        store.record("Neutrophil/gone.jpg", "exclude", reviewer="ann", given_label="Neutrophil")
        curated, warnings = build_curated_manifest(dataset, store)
    assert len(curated) == len(dataset) and set(curated["status"]) == {"unreviewed"}
    assert any("'Neutrophil/gone.jpg'" in w and "audit log" in w for w in warnings)


def test_export_command(bccd_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n', encoding="utf-8")
    with LabelStore(f"sqlite:///{workspace / 'labels.db'}") as store:
        store.record("Basophil/BloodImage_00008_1.jpg", "relabel", reviewer="ann", label="Eosinophil",
                     given_label="Basophil")
    out, audit = tmp_path / "curated.csv", tmp_path / "audit.csv"
    assert cli_main(["export", "--workspace", str(workspace), "--out", str(out), "--audit", str(audit)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 351 samples" in printed and "relabeled 1" in printed and "1 review events" in printed
    loaded = load_dataset(out, root=bccd_root)
    assert Counter(loaded.samples["label"])["Basophil"] == 2 and Counter(loaded.samples["label"])["Eosinophil"] == 89
    assert cli_main(["export", "--workspace", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_top_k_classes_is_the_stable_full_sort_in_blocks_with_ties(monkeypatch):
    import numpy as np

    import core.export as export

    rng = np.random.default_rng(11)
    probs = rng.dirichlet(np.ones(40), size=500).astype(np.float16)  # float16: many exact ties
    probs[:50] = np.round(probs[:50] * 20) / 20  # coarser still: ties at every rank
    probs[50] = 1 / 40  # a row that is one tie
    monkeypatch.setattr(export, "TOP_K_BLOCK_VALUES", 40 * 37)  # 37 rows a block: a short last block
    for k in (1, 3, 39, 40, 55):
        expected = np.argsort(-probs.astype(np.float32), axis=1, kind="stable")[:, :min(k, 40)]
        np.testing.assert_array_equal(export.top_k_classes(probs, k), expected)
