"""Datasets: ImageFolder and manifests, validation with a skip list, and the specimen-safe split."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from core.dataset import DatasetError, load_dataset


def _image(path, colour=(120, 30, 30), size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_bccd_loads_with_stable_ids_and_all_classes(bccd_root):
    dataset = load_dataset(bccd_root, verify="full")
    counts = dataset.samples["label"].value_counts().to_dict()
    assert counts == {"Neutrophil": 207, "Eosinophil": 88, "Lymphocyte": 33, "Monocyte": 20, "Basophil": 3}
    assert dataset.samples["sample_id"].str.match(r"^[A-Za-z]+/BloodImage_\d+_\d+\.jpg$").all()
    assert len(dataset.skipped) == 0
    # every class with at least two specimens is represented on both sides of the split
    both = dataset.samples.groupby("label")["split"].nunique()
    assert (both[both.index != "Basophil"] == 2).all()
    assert 0.15 < (dataset.samples["split"] == "val").mean() < 0.25
    # deterministic: loading again gives the same split
    assert load_dataset(bccd_root).samples["split"].tolist() == dataset.samples["split"].tolist()


def test_split_keeps_specimens_together_and_is_stratified(tmp_path):
    rows = ["path,label,specimen_id"]
    for label, n_specimens in (("Daphnia", 30), ("Volvox", 6)):
        for s in range(n_specimens):
            for view in range(3):
                rel = f"img/{label}/{s}_{view}.png"
                _image(tmp_path / rel, colour=(s, view, 7))
                rows.append(f"{rel},{label},{label}-{s}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    dataset = load_dataset(tmp_path / "m.csv", verify="none")
    sides = dataset.samples.groupby("specimen_id")["split"].nunique()
    assert (sides == 1).all()
    val_specimens = dataset.samples[dataset.samples["split"] == "val"].groupby("label")["specimen_id"].nunique()
    assert val_specimens["Daphnia"] == 6 and val_specimens["Volvox"] == 1


def test_image_folder_reports_non_images_corrupt_files_and_empty_classes(tmp_path):
    _image(tmp_path / "Gammarus" / "a.png")
    _image(tmp_path / "Gammarus" / "b.png")
    (tmp_path / "Gammarus" / "readme.txt").write_text("field notes")
    (tmp_path / "Gammarus" / "broken.jpg").write_bytes(os.urandom(300))
    (tmp_path / "Asellus").mkdir()
    dataset = load_dataset(tmp_path, verify="header")
    assert sorted(dataset.samples["sample_id"]) == ["Gammarus/a.png", "Gammarus/b.png"]
    reasons = dict(zip(dataset.skipped["sample_id"], dataset.skipped["reason"], strict=True))
    assert reasons == {"Gammarus/readme.txt": "not_image", "Gammarus/broken.jpg": "not_image"}
    assert any("Asellus" in w and "no images" in w for w in dataset.warnings)
    assert dataset.class_names == ("Gammarus",)


def test_full_verification_catches_truncated_jpeg(tmp_path):
    import io

    _image(tmp_path / "Hydra" / "ok.png")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "Hydra" / "cut.jpg").write_bytes(buffer.getvalue()[:900])
    dataset = load_dataset(tmp_path, verify="full")
    assert dataset.skipped.set_index("sample_id").loc["Hydra/cut.jpg", "reason"] == "truncated"
    assert dataset.samples["sample_id"].tolist() == ["Hydra/ok.png"]


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/passwd", "a/../../outside.png", "C:/Windows/x.png"])
def test_manifest_paths_escaping_the_root_are_refused(tmp_path, bad_path):
    _image(tmp_path / "outside.png")
    root = tmp_path / "data"
    _image(root / "ok.png")
    (root / "m.csv").write_text(f"path,label\nok.png,Hydra\n{bad_path},Hydra\n")
    with pytest.raises(DatasetError, match="outside the dataset root|absolute"):
        load_dataset(root / "m.csv")


def test_symlink_escaping_the_root_is_refused(tmp_path):
    _image(tmp_path / "secret.png")
    root = tmp_path / "data"
    root.mkdir()
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "m.csv").write_text("path,label\nlink.png,Hydra\n")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        load_dataset(root / "m.csv")


def test_manifest_duplicates_missing_files_and_blank_labels(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _image(tmp_path / name)
    (tmp_path / "m.csv").write_text(
        "path,label,split\n"
        "a.png,Hydra,train\n"
        "a.png,Hydra,train\n"  # exact duplicate: kept once
        "b.png,Hydra,val\n"
        "b.png,Planaria,val\n"  # conflicting labels: neither is trusted
        "c.png,,train\n"  # no label
        "gone.png,Hydra,train\n"  # missing file
    )
    dataset = load_dataset(tmp_path / "m.csv")
    assert dataset.samples["sample_id"].tolist() == ["a.png"]
    reasons = dataset.skipped.groupby("sample_id")["reason"].apply(set).to_dict()
    assert reasons == {"a.png": {"duplicate"}, "b.png": {"conflicting_labels"}, "c.png": {"missing_label"},
                       "gone.png": {"missing"}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("file,class\na.png,Hydra\n", "lacks column"),
        ('path,label\n"a.png,Hydra\n', "not a readable CSV|lacks column|no usable"),
        ("path,label,split\na.png,Hydra,holdout\n", "unknown split"),
        ("path,label\na.png,Hydra,extra,cells\n", "not a readable CSV"),
    ],
)
def test_malformed_manifests_get_clear_errors(tmp_path, content, message):
    _image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "m.csv")


def test_taxonomy_and_specimen_gaps(tmp_path):
    for name in ("a.png", "b.png"):
        _image(tmp_path / name)
    (tmp_path / "m.csv").write_text("path,label,specimen_id,order\na.png,Baetis,S1,Ephemeroptera\n"
                                    "b.png,Baetis,,Ephemeroptera\n")
    dataset = load_dataset(tmp_path / "m.csv", taxonomy=["order"])
    assert dataset.taxonomy_columns == ("order",)
    assert dataset.samples.set_index("sample_id").loc["b.png", "specimen_id"] == "b.png"
    assert any("no specimen_id" in w for w in dataset.warnings)
    with pytest.raises(DatasetError, match="taxonomy column"):
        load_dataset(tmp_path / "m.csv", taxonomy=["family"])


def test_fingerprint_follows_image_content_not_labels(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,Hydra\n")
    first = load_dataset(tmp_path / "m.csv").fingerprint()
    (tmp_path / "m.csv").write_text("path,label\na.png,Planaria\n")
    assert load_dataset(tmp_path / "m.csv").fingerprint() == first
    _image(tmp_path / "a.png", colour=(1, 2, 3), size=(20, 20))
    assert load_dataset(tmp_path / "m.csv").fingerprint() != first


def test_curated_manifest_cells_are_unguarded_and_excluded_rows_skipped(tmp_path):
    for name in ("a.png", "b.png", "c.png", "-d.png"):
        _image(tmp_path / name)
    manifest = tmp_path / "curated.csv"
    manifest.write_text(
        "path,label,status,phylum\n"
        "a.png,'=Weird,relabeled,'+Proto\n"  # an export guards formula-like cells with a leading '
        "b.png,Daphnia,excluded,Arthropoda\n"
        "c.png,Daphnia,confirmed,Arthropoda\n"
        "./-d.png,'quoted,unreviewed,Arthropoda\n",  # a ' before anything else is data
        encoding="utf-8",
    )
    dataset = load_dataset(manifest, taxonomy=["phylum"])
    rows = dataset.samples.set_index("sample_id")
    assert sorted(rows.index) == ["-d.png", "a.png", "c.png"]
    assert rows.at["a.png", "label"] == "=Weird" and rows.at["a.png", "phylum"] == "+Proto"
    assert rows.at["-d.png", "label"] == "'quoted"
    skipped = dataset.skipped.set_index("sample_id")
    assert skipped.at["b.png", "reason"] == "excluded" and "Daphnia" in skipped.at["b.png", "detail"]
    assert dataset.class_names == ("'quoted", "=Weird", "Daphnia")


def test_a_class_folder_starting_with_a_space_loads_and_keeps_its_name(tmp_path):
    for i in range(3):
        _image(tmp_path / " Daphnia" / f"{i}.png", colour=(i, 1, 1))
        _image(tmp_path / "Volvox" / f"{i}.png", colour=(i, 2, 2))
    _image(tmp_path / "Daphnia" / "other.png")  # a different class whose name lacks the space
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == (" Daphnia", "Daphnia", "Volvox")
    assert len(dataset.skipped) == 0
    rows = dataset.samples[dataset.samples["label"] == " Daphnia"]
    assert len(rows) == 3 and all(os.path.basename(os.path.dirname(p)) == " Daphnia" for p in rows["path"])


def test_a_home_folder_is_not_a_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _image(tmp_path / "Daphnia" / "a.png")
    with pytest.raises(DatasetError, match="is your home folder, not a dataset"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="is the filesystem root"):
        load_dataset("/", verify="none")
