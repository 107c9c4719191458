"""The dataset index: a reopened workspace opens only new or changed images, keeps known-bad ones skipped, and
still opens when its index cannot be read or written."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import core.dataset as dataset_module
from core.dataset_index import INDEX_COLUMNS, read_index
from core.workspace import load_workspace

PER_CLASS = 4  # images copied per class (Basophil has only 3)
N_IMAGES = 4 * PER_CLASS + 3


@pytest.fixture()
def workspace_root(bccd_root: Path, tmp_path: Path) -> Path:
    """A workspace over an ImageFolder copy of up to 4 real BCCD crops per class (19 images)."""
    data = tmp_path / "data"
    for class_dir in sorted(p for p in bccd_root.iterdir() if p.is_dir()):
        (data / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:PER_CLASS]:
            shutil.copy2(image, data / class_dir.name / image.name)
    (tmp_path / "taxalens.toml").write_text('[dataset]\nroot = "data"\n', encoding="utf-8")
    return tmp_path


@pytest.fixture()
def opened(monkeypatch) -> list[str]:
    """Paths of the images opened by the header check, in order."""
    calls: list[str] = []
    check = dataset_module._check_image

    def counting(path: Path, verify: str):
        calls.append(Path(path).name)
        return check(path, verify)

    monkeypatch.setattr(dataset_module, "_check_image", counting)
    return calls


def _bump_mtime(path: Path) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_reopen_checks_only_new_and_changed_images(workspace_root: Path, opened: list[str]):
    workspace = load_workspace(workspace_root)
    first = workspace.load_dataset()
    assert len(first) == N_IMAGES and len(opened) == N_IMAGES
    assert workspace.dataset_index_path.is_file()
    opened.clear()

    again = workspace.load_dataset()
    assert opened == []  # stat only: nothing decoded
    pd.testing.assert_frame_equal(again.samples, first.samples)

    lymph = sorted((workspace_root / "data" / "Lymphocyte").iterdir())
    _bump_mtime(lymph[0])  # touched: same bytes, new stamp
    added = workspace_root / "data" / "Lymphocyte" / "new.jpg"
    shutil.copy(lymph[1], added)
    third = workspace.load_dataset()
    assert sorted(opened) == sorted([lymph[0].name, "new.jpg"])
    assert len(third) == N_IMAGES + 1
    index = read_index(workspace.dataset_index_path)
    assert tuple(index.columns) == INDEX_COLUMNS and len(index) == len(third)


def test_a_corrupt_image_stays_skipped_without_being_opened_again(workspace_root: Path, opened: list[str]):
    workspace = load_workspace(workspace_root)
    victim = sorted((workspace_root / "data" / "Monocyte").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated JPEG header
    first = workspace.load_dataset()
    assert victim.name in opened
    bad = first.skipped.set_index("sample_id").loc[f"Monocyte/{victim.name}"]
    assert bad["reason"] in ("corrupt", "not_image")
    opened.clear()

    second = workspace.load_dataset()
    assert opened == []
    pd.testing.assert_frame_equal(second.skipped, first.skipped)

    shutil.copy(sorted((workspace_root / "data" / "Monocyte").iterdir())[1], victim)  # repaired: new size
    third = workspace.load_dataset()
    assert opened == [victim.name]
    assert f"Monocyte/{victim.name}" in set(third.samples["sample_id"]) and third.skipped.empty


def test_removed_images_leave_the_index_and_a_full_check_reopens_header_checked_ones(workspace_root: Path,
                                                                                        opened: list[str]):
    workspace = load_workspace(workspace_root)
    workspace.load_dataset()
    gone = sorted((workspace_root / "data" / "Basophil").iterdir())[0]
    gone.unlink()
    opened.clear()
    workspace.load_dataset()
    assert opened == []
    assert f"Basophil/{gone.name}" not in set(read_index(workspace.dataset_index_path)["sample_id"])
    workspace.load_dataset(verify="full")  # a stricter check than the index holds: every image decoded once
    assert len(opened) == N_IMAGES - 1
    opened.clear()
    workspace.load_dataset(verify="header")  # the full results serve a header request
    assert opened == []


def test_a_damaged_or_unwritable_index_costs_only_a_recheck(workspace_root: Path, opened: list[str], caplog):
    workspace = load_workspace(workspace_root)
    workspace.dataset_index_path.parent.mkdir()
    workspace.dataset_index_path.write_bytes(b"not parquet")
    dataset = workspace.load_dataset()
    assert len(dataset) == N_IMAGES and len(opened) == N_IMAGES
    assert "cannot be read" in caplog.text
    assert len(read_index(workspace.dataset_index_path)) == N_IMAGES  # rewritten

    workspace.dataset_index_path.unlink()
    workspace.dataset_index_path.mkdir()  # a folder where the file goes: cannot be written (even as root)
    opened.clear()
    assert len(workspace.load_dataset()) == N_IMAGES
    assert len(opened) == N_IMAGES
    assert "could not write the dataset index" in caplog.text


@pytest.fixture()
def manifest_root(workspace_root: Path) -> Path:
    """The same 19 images through a manifest with a taxonomy column, paths written three ways (plain, `./`, `//`)."""
    rows = ["path,label,order"]
    for i, image in enumerate(sorted((workspace_root / "data").rglob("*.jpg"))):
        rel = image.relative_to(workspace_root / "data").as_posix()
        rel = f"./{rel}" if i % 3 == 1 else rel.replace("/", "//") if i % 3 == 2 else rel
        rows.append(f"{rel},{image.parent.name},order_{len(image.parent.name) % 2}")
    (workspace_root / "data" / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (workspace_root / "taxalens.toml").write_text('[dataset]\nmanifest = "data/manifest.csv"\ntaxonomy = ["order"]\n',
                                                  encoding="utf-8")
    return workspace_root


@pytest.fixture()
def parsed(monkeypatch) -> list[str]:
    """Manifests `core.dataset` parsed (rather than read from the manifest cache), in order."""
    calls: list[str] = []
    parse = dataset_module._read_manifest

    def counting(path: Path, *args):
        calls.append(Path(path).name)
        return parse(path, *args)

    monkeypatch.setattr(dataset_module, "_read_manifest", counting)
    return calls


def test_an_unchanged_manifest_is_read_from_its_parsed_copy(manifest_root: Path, parsed: list[str]):
    workspace = load_workspace(manifest_root)
    first = workspace.load_dataset()
    assert parsed == ["manifest.csv"] and workspace.manifest_cache_path.is_file()
    assert set(first.samples["sample_id"]) == {p.relative_to(manifest_root / "data").as_posix()
                                               for p in (manifest_root / "data").rglob("*.jpg")}  # normalised

    again = workspace.load_dataset()
    assert parsed == ["manifest.csv"]  # not parsed again
    pd.testing.assert_frame_equal(again.samples, first.samples)
    pd.testing.assert_frame_equal(again.skipped, first.skipped)
    assert again.warnings == first.warnings and again.class_names == first.class_names

    manifest = manifest_root / "data" / "manifest.csv"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace(",order_", ",Relabelled,order_", 1).replace(",Basophil,", ",")  # a new label
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    third = workspace.load_dataset()
    assert parsed == ["manifest.csv", "manifest.csv"]  # its stamp changed: parsed again
    assert "Relabelled" in third.class_names
    assert workspace.load_dataset(manifest_cache=None).class_names == third.class_names


def test_a_manifest_cache_of_another_manifest_or_damaged_is_not_used(manifest_root: Path, parsed: list[str],
                                                                     caplog):
    workspace = load_workspace(manifest_root)
    workspace.load_dataset()
    other = manifest_root / "data" / "other.csv"
    shutil.copy2(manifest_root / "data" / "manifest.csv", other)  # same size and mtime, another file
    dataset_module.load_dataset(other, manifest_cache=workspace.manifest_cache_path)
    assert parsed == ["manifest.csv", "other.csv"]
    workspace.manifest_cache_path.write_bytes(b"not parquet")
    assert len(workspace.load_dataset()) == N_IMAGES
    assert parsed[-1] == "manifest.csv" and "cannot be read" in caplog.text


def test_the_fingerprint_reuses_the_load_stamps_until_they_are_too_old(manifest_root: Path, monkeypatch):
    dataset = load_workspace(manifest_root).load_dataset()
    recorded = dataset.fingerprint()
    stats: list[str] = []
    stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: stats.append(path) or stat(path, *a, **k))
    assert dataset.fingerprint() == recorded and stats == []  # the load's stamps: no second pass over the files
    assert dataset.fingerprint(max_age_s=0) == recorded and len(stats) == N_IMAGES  # re-stat-ed: nothing changed
    monkeypatch.setattr(os, "stat", stat)

    _bump_mtime(Path(dataset.samples["path"].iloc[0]))
    assert dataset.fingerprint() == recorded  # the dataset as loaded
    assert dataset.fingerprint(max_age_s=0) != recorded  # the files as they are now
    assert load_workspace(manifest_root).load_dataset().fingerprint() == dataset.fingerprint(max_age_s=0)
    subset = dataclasses.replace(dataset, samples=dataset.samples.iloc[1:])  # other samples: stamps not theirs
    assert subset.fingerprint() != dataset.fingerprint(max_age_s=0)
