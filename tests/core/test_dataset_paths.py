"""The dataset's path checks and stat pass as whole lists (`core.dataset`): escapes named by row as one error, the
same bad rows skipped, symlinks refused on a reopen from the cached manifest, file stamps and the fingerprint equal to
their one-file-at-a-time definitions."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from core.dataset import DatasetError, check_image_files, load_dataset, resolve_sample_path, stamp_digest


def _reference_digest(sample_ids: list[str], sizes: list[int], mtimes: list[int]) -> str:
    """`Dataset.fingerprint`'s definition, one line at a time."""
    text = "".join(f"{s}\0{size}\0{mtime}\n" for s, size, mtime in zip(sample_ids, sizes, mtimes, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.fixture(scope="module")
def crops(bccd_root: Path) -> list[Path]:
    """Six real bccd crops of three classes."""
    return [path for name in ("Basophil", "Monocyte", "Lymphocyte")
            for path in sorted((bccd_root / name).iterdir())[:2]]


def _write_manifest(root: Path, paths: list[str]) -> Path:
    manifest = root / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.split('/')[0] or 'x'}\n" for p in paths), encoding="utf-8")
    return manifest


def test_escapes_are_named_by_row_in_one_error(tmp_path, crops):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _copy(crops[0], root / "a" / "x.jpg")
    _copy(crops[1], root / "b" / "y.jpg")
    _copy(crops[2], outside / "secret.jpg")
    (root / "a" / "out.jpg").symlink_to(outside / "secret.jpg")  # a file leading out
    (root / "a" / "in.jpg").symlink_to(root / "b" / "y.jpg")  # a file leading elsewhere inside: allowed
    (root / "c").symlink_to(outside, target_is_directory=True)  # a folder leading out
    paths = ["a/x.jpg", "../outside/secret.jpg", "a/in.jpg", "/etc/passwd", "c/secret.jpg", "a/out.jpg", "b/y.jpg",
             "b/../../outside/secret.jpg", "b\\y.jpg"]
    manifest = _write_manifest(root, paths)
    refused = []  # the definition: each row on its own through resolve_sample_path
    for number, rel in enumerate(paths, start=2):
        try:
            resolve_sample_path(root.resolve(), rel)
        except DatasetError:
            refused.append(number)
    assert refused == [3, 5, 6, 7, 9]

    with pytest.raises(DatasetError) as caught:
        load_dataset(manifest)
    message = str(caught.value)
    assert f"{len(refused)} path(s) outside the dataset root" in message
    assert [int(n) for n in re.findall(r"row (\d+):", message)] == refused
    assert "'c/secret.jpg' resolves to" in message and "'a/out.jpg' resolves to" in message
    assert "a/in.jpg" not in message and "'a/x.jpg'" not in message


def test_more_than_five_escapes_are_counted(tmp_path, crops):
    root = tmp_path / "root"
    _copy(crops[0], root / "a" / "x.jpg")
    manifest = _write_manifest(root, ["a/x.jpg"] + [f"../up{i}.jpg" for i in range(7)])
    with pytest.raises(DatasetError, match=r"has 7 path\(s\) outside the dataset root, refused: row 3: .*; and 2 more"):
        load_dataset(manifest)
    with pytest.raises(DatasetError, match=r"7 path\(s\) outside .*#2: .*; and 2 more"):
        check_image_files(root, ["a/x.jpg"] + [f"../up{i}.jpg" for i in range(7)])


def test_a_reopen_from_the_cached_manifest_refuses_a_file_turned_into_an_escaping_symlink(tmp_path, crops):
    root, cache = tmp_path / "root", tmp_path / "cache"
    for i, crop in enumerate(crops):
        _copy(crop, root / crop.parent.name / f"{i}.jpg")
    manifest = _write_manifest(root, [f"{crop.parent.name}/{i}.jpg" for i, crop in enumerate(crops)])
    caches = {"index": cache / "index.parquet", "manifest_cache": cache / "manifest.parquet"}
    first = load_dataset(manifest, **caches)
    assert len(first) == 6 and (cache / "manifest.parquet").is_file()

    _copy(crops[0], tmp_path / "outside" / "secret.jpg")
    victim = root / crops[3].parent.name / "3.jpg"
    victim.unlink()
    victim.symlink_to(tmp_path / "outside" / "secret.jpg")
    with pytest.raises(DatasetError, match=r"'Monocyte/3.jpg' resolves to .*outside the dataset root"):
        load_dataset(manifest, **caches)

    victim.unlink()
    victim.symlink_to(root / "Basophil" / "0.jpg")  # now inside: allowed, stamped as its target
    again = load_dataset(manifest, **caches)
    row = again.samples.index[again.samples["sample_id"] == "Monocyte/3.jpg"][0]
    target = os.stat(root / "Basophil" / "0.jpg")
    assert again.samples.loc[row, "path"] == str((root / "Basophil" / "0.jpg").resolve())
    assert (again.file_stamps.sizes[row], again.file_stamps.mtimes[row]) == (target.st_size, target.st_mtime_ns)


@pytest.mark.parametrize("cached", [False, True], ids=["parsed", "from the manifest cache"])
def test_the_stat_pass_skips_the_same_rows_and_stamps_each_file(tmp_path, crops, cached):
    root = tmp_path / "root"
    for i, crop in enumerate(crops):
        _copy(crop, root / crop.parent.name / f"{i}.jpg")
    (root / "Basophil" / "folder.jpg").mkdir()  # a folder named like an image: not a file
    (root / "Basophil" / "notes.jpg").write_text("not an image", encoding="utf-8")
    listed = [f"{crop.parent.name}/{i}.jpg" for i, crop in enumerate(crops)]
    listed += ["Basophil/folder.jpg", "Basophil/notes.jpg", "Basophil/gone.jpg", "Nowhere/gone.jpg"]
    manifest = _write_manifest(root, listed)
    caches = {"index": tmp_path / "index.parquet", "manifest_cache": tmp_path / "manifest.parquet"}
    if cached:
        load_dataset(manifest, **caches)
    dataset = load_dataset(manifest, **caches)

    skipped = dict(zip(dataset.skipped["sample_id"], dataset.skipped["reason"], strict=True))
    assert skipped == {"Basophil/folder.jpg": "missing", "Basophil/notes.jpg": "not_image",
                       "Basophil/gone.jpg": "missing", "Nowhere/gone.jpg": "missing"}
    assert dataset.samples["sample_id"].tolist() == listed[:6]
    infos = [os.stat(root / rel) for rel in listed[:6]]
    assert dataset.samples["path"].tolist() == [str((root / rel).resolve()) for rel in listed[:6]]
    assert dataset.file_stamps.sizes.tolist() == [i.st_size for i in infos]
    assert dataset.file_stamps.mtimes.tolist() == [i.st_mtime_ns for i in infos]
    usable, also_skipped = check_image_files(root, listed)
    assert usable["sample_id"].tolist() == listed[:6]
    assert dict(zip(also_skipped["sample_id"], also_skipped["reason"], strict=True)) == skipped


def test_the_fingerprint_is_the_digest_of_its_lines(tmp_path, crops):
    root = tmp_path / "root"
    names = ["Ünïcode 漢字.jpg", "plain.jpg", "with space .jpg"]
    for crop, name in zip(crops, names, strict=False):
        _copy(crop, root / "cls" / name)
    dataset = load_dataset(root)  # an ImageFolder: ids are the relative paths
    infos = [os.stat(p) for p in dataset.samples["path"]]
    ids = dataset.samples["sample_id"].tolist()
    assert sorted(ids) == sorted(f"cls/{n}" for n in names)
    assert dataset.fingerprint() == _reference_digest(ids, [i.st_size for i in infos], [i.st_mtime_ns for i in infos])
    assert dataset.fingerprint(max_age_s=0) == dataset.fingerprint()  # stat-ed again: nothing changed


def test_stamp_digest_takes_lists_series_and_chunked_arrow_strings():
    ids, sizes, mtimes = ["a/1.jpg", "b/é.jpg", "c/3.jpg"], np.array([10, -1, 3_000_000_000_000]), np.array([5, 6, -7])
    expected = _reference_digest(ids, sizes.tolist(), mtimes.tolist())
    chunked = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([ids[:1], [], ids[1:]], pa.large_string())))
    assert stamp_digest(ids, sizes, mtimes) == stamp_digest(pd.Series(ids), sizes, mtimes) == expected
    assert stamp_digest(chunked, sizes, mtimes) == expected
    assert stamp_digest([], np.zeros(0, np.int64), np.zeros(0, np.int64)) == hashlib.sha256(b"").hexdigest()
    assert stamp_digest(ids, sizes[::-1], mtimes) != expected
    with pytest.raises(ValueError, match="3 sample ids but 2 sizes"):
        stamp_digest(ids, sizes[:2], mtimes)


def test_index_answers_the_same_whether_its_rows_are_in_the_datasets_order_or_not():
    from core.dataset_index import known_results

    ids = pd.Series([f"c/{i}.jpg" for i in range(6)])
    sizes, mtimes = np.arange(6, dtype=np.int64) + 100, np.arange(6, dtype=np.int64) + 7
    index = pd.DataFrame({"sample_id": ids.tolist(), "size": sizes, "mtime_ns": mtimes,
                          "level": np.array([1, 1, 2, 0, 1, 1], np.int8),
                          "reason": ["", "corrupt", "", "", "", ""], "detail": ["", "bad", "", "", "", ""]})
    current_sizes = sizes.copy()
    current_sizes[4] += 1  # changed since it was checked
    in_order = known_results(index, ids, current_sizes, mtimes, 1)
    shuffled = known_results(index.iloc[[5, 2, 0, 4, 1, 3]].reset_index(drop=True), ids, current_sizes, mtimes, 1)
    assert in_order[0].tolist() == [True, True, True, False, False, True]  # level 0 (index 3) and the changed one
    for ours, theirs in zip(in_order, shuffled, strict=True):
        assert ours.tolist() == theirs.tolist()
    assert in_order[1].tolist() == ["", "corrupt", "", "", "", ""]
