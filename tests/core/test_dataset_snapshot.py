"""The dataset snapshot: a large dataset reopens exactly as its last full load found it without touching its files,
only under the settings and manifest it was taken with, and a background check in a child process tells an unchanged
dataset from a changed one (rewriting the snapshot) or says why it could not check."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import core.dataset as dataset_module
from cli.main import main as cli_main
from core.dataset_snapshot import (
    DEFAULT_QUICK_OPEN_MIN_IMAGES,
    QUICK_OPEN_ENV,
    content_digest,
    dataset_fingerprint,
    quick_open_min_images,
    read_snapshot,
    start_check,
)
from core.workspace import load_workspace

PER_CLASS = 3


@pytest.fixture()
def quick_open(monkeypatch) -> None:
    """Snapshots from 5 images on (the default, 50,000, would need a large dataset): in this process and in the
    checks' child processes, which inherit the environment."""
    monkeypatch.setenv(QUICK_OPEN_ENV, "5")


@pytest.fixture()
def manifest_root(bccd_root: Path, tmp_path: Path) -> Path:
    """A workspace over a manifest of 3 real BCCD crops per class (Basophil: 3) with a taxonomy column and an extra
    column, one row naming a missing file and one a file that is not an image (both skipped), one specimen with two
    labels (a warning)."""
    data = tmp_path / "data"
    rows = ["path,label,order,station,specimen_id"]
    for c, class_dir in enumerate(sorted(p for p in bccd_root.iterdir() if p.is_dir())):
        (data / class_dir.name).mkdir(parents=True)
        for i, image in enumerate(sorted(class_dir.iterdir())[:PER_CLASS]):
            shutil.copy2(image, data / class_dir.name / image.name)
            specimen = "shared" if (c, i) in {(0, 0), (1, 0)} else f"{class_dir.name}-{i}"
            rows.append(f"{class_dir.name}/{image.name},{class_dir.name},order_{c % 2},st{i},{specimen}")
    (data / "notes.jpg").write_text("not an image", encoding="utf-8")
    rows += ["gone/missing.jpg,Neutrophil,order_0,st9,m1", "notes.jpg,Neutrophil,order_0,st9,m2"]
    (data / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "taxalens.toml").write_text('[dataset]\nmanifest = "data/manifest.csv"\ntaxonomy = ["order"]\n',
                                            encoding="utf-8")
    return tmp_path


def _bump_mtime(path: Path) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_a_snapshot_reopens_exactly_what_the_full_load_found_without_touching_the_files(manifest_root, quick_open,
                                                                                        monkeypatch):
    workspace = load_workspace(manifest_root)
    full = workspace.load_dataset()
    assert len(full.skipped) == 2 and full.warnings and full.extra_columns == ("station",)
    assert workspace.dataset_snapshot_path.is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("a snapshot read must not stat or open the images")

    monkeypatch.setattr(dataset_module, "_lstat_all", refuse)
    monkeypatch.setattr(dataset_module, "_check_image", refuse)
    snapshot = workspace.quick_dataset()
    assert snapshot is not None
    quick = snapshot.dataset
    pd.testing.assert_frame_equal(quick.samples, full.samples)
    pd.testing.assert_frame_equal(quick.skipped, full.skipped)
    assert (quick.root, quick.source, quick.class_names) == (full.root, full.source, full.class_names)
    assert (quick.taxonomy_columns, quick.extra_columns, quick.warnings) == \
        (full.taxonomy_columns, full.extra_columns, full.warnings)
    assert quick.fingerprint() == full.fingerprint()  # from the stored stamps: no stat
    assert dataset_fingerprint(quick) == full.fingerprint() == quick.file_stamps.fingerprint  # stored, not hashed
    relabelled = dataclasses.replace(quick, samples=quick.samples.iloc[::-1].reset_index(drop=True))
    assert dataset_fingerprint(relabelled) == relabelled.fingerprint() != full.fingerprint()  # other rows: hashed
    assert snapshot.digest == content_digest(full)


def test_no_snapshot_below_the_quick_open_size_and_a_shrunk_dataset_removes_it(manifest_root, monkeypatch):
    workspace = load_workspace(manifest_root)
    monkeypatch.delenv(QUICK_OPEN_ENV, raising=False)
    assert quick_open_min_images() == DEFAULT_QUICK_OPEN_MIN_IMAGES
    workspace.load_dataset()
    assert not workspace.dataset_snapshot_path.exists() and workspace.quick_dataset() is None

    monkeypatch.setenv(QUICK_OPEN_ENV, "5")
    n = len(workspace.load_dataset())
    assert workspace.dataset_snapshot_path.is_file()
    monkeypatch.setenv(QUICK_OPEN_ENV, str(n + 1))  # the dataset is now below the size: the snapshot is not used
    assert workspace.quick_dataset() is None
    workspace.load_dataset()
    assert not workspace.dataset_snapshot_path.exists()

    for raw, expected in (("0", None), ("many", DEFAULT_QUICK_OPEN_MIN_IMAGES), ("1_000", 1000)):
        monkeypatch.setenv(QUICK_OPEN_ENV, raw)
        value = quick_open_min_images()
        assert value == expected if expected is not None else value > 10**12  # 0: never


def test_a_snapshot_serves_only_its_settings_and_manifest_and_a_damaged_one_is_ignored(manifest_root, quick_open,
                                                                                       caplog):
    workspace = load_workspace(manifest_root)
    workspace.load_dataset()
    assert workspace.quick_dataset() is not None
    assert workspace.quick_dataset(verify="full") is None  # checked at another level
    manifest = manifest_root / "data" / "manifest.csv"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace("order_1", "order_9"), encoding="utf-8")
    _bump_mtime(manifest)
    assert workspace.quick_dataset() is None  # labels and rows are never trusted from a snapshot
    relabelled = workspace.load_dataset()
    assert "order_9" in set(workspace.quick_dataset().dataset.samples["order"]) == set(relabelled.samples["order"])

    workspace.dataset_snapshot_path.write_bytes(b"ARROW1 but not really")
    assert workspace.quick_dataset() is None
    assert "cannot be read" in caplog.text
    assert len(workspace.load_dataset()) == len(relabelled)  # a full load writes a good one again
    assert workspace.quick_dataset() is not None


def test_the_background_check_tells_unchanged_from_changed_and_says_why_it_failed(manifest_root, quick_open):
    workspace = load_workspace(manifest_root)
    workspace.load_dataset()
    snapshot = workspace.quick_dataset()
    seen = []

    check = start_check(manifest_root, snapshot, on_done=seen.append)
    assert check.wait(300) and check.state == "unchanged", check.detail
    assert seen == [check] and check.checked_images == len(snapshot.dataset) and check.finished_at

    edited = Path(snapshot.dataset.samples["path"].iloc[0])
    _bump_mtime(edited)
    check = start_check(manifest_root, snapshot, on_done=seen.append)
    assert check.wait(300) and check.state == "changed", check.detail
    renewed = workspace.quick_dataset()  # the child process rewrote the snapshot
    assert renewed.digest == check.found_digest != snapshot.digest
    row = renewed.dataset.samples["path"].tolist().index(str(edited))
    assert renewed.dataset.file_stamps.mtimes[row] == edited.stat().st_mtime_ns

    (manifest_root / "data" / "manifest.csv").unlink()
    check = start_check(manifest_root, renewed)
    assert check.wait(300) and check.state == "failed"
    assert "manifest.csv" in check.detail  # the child's error names what is wrong


def test_the_index_command_reports_what_it_checked(manifest_root, quick_open, capsys):
    assert cli_main(["index", "--workspace", str(manifest_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    workspace = load_workspace(manifest_root)
    dataset = workspace.load_dataset()
    assert report["images"] == len(dataset) and report["skipped"] == 2
    assert report["digest"] == content_digest(dataset) == read_snapshot(
        workspace.dataset_snapshot_path, workspace.snapshot_key()).digest
    assert cli_main(["index", "--workspace", str(manifest_root)]) == 0
    out = capsys.readouterr().out
    assert f"{len(dataset):,} usable images, 2 skipped" in out and "dataset-snapshot.arrow" in out
