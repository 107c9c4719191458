"""Datasets: an ImageFolder tree or a CSV manifest, validated, with stable sample ids and a specimen-safe split."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import operator
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.dataset_index import (
    VERIFY_LEVELS,
    empty_index,
    known_results,
    manifest_cache_key,
    read_index,
    read_manifest_cache,
    same_ids,
    write_index,
    write_manifest_cache,
)
from core.errors import TaxaLensError
from core.images import IMAGE_SUFFIXES, ImageError, load_image_rgb

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test"}
RESERVED_COLUMNS = ("sample_id", "path", "label", "split", "specimen_id")
# A text cell starting with one of these runs as a formula in a spreadsheet; exports write it behind a `'`.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# The mark an export writes before a text cell that must be read back verbatim (`cell_needs_guard`).
CELL_GUARD = "'"
EXCLUDED_STATUS = "excluded"  # a curated export's `status` for samples a reviewer took out of the data
# Columns only a curated export (core.export) writes: a manifest with them has paths relative to the dataset root.
CURATED_MARKERS = ("original_label", "status")
# Other delimiters people's spreadsheets save "CSV" with; a header split on one of them names path and label.
_FOREIGN_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
Verify = Literal["none", "header", "full"]
_DRIVE = re.compile(r"[A-Za-z]:/")  # `C:/...` (or `C:\...`) is a Windows absolute path; `C:x.png` is a file name
_SIZE, _MTIME = "__file_size", "__file_mtime_ns"  # columns carrying each row's file stamp until the load ends
# A relative path of plain segments (no empty, `.` or `..` segment): PurePosixPath would leave it as it is.
_SIMPLE_PATH = re.compile(r"(?!\.\.?(?:/|$))[^/]+(?:/(?!\.\.?(?:/|$))[^/]+)*")
POOL_ID_PREFIX = "pool:"  # sample ids of unlabelled-pool images: `pool:<pool name>/<path relative to the pool root>`
POOL_COLUMN = "pool"  # a curated export's column naming the pool a row's image comes from ("" for the dataset)


class DatasetError(TaxaLensError, ValueError):
    """A dataset that cannot be used as given; the message names the rows or files and the fix."""


@dataclass(frozen=True)
class FileStamps:
    """The file stamps a dataset load took (one stat per image), kept so the fingerprint needs no second pass."""

    sample_ids: pa.Array | pa.ChunkedArray  # (N,) Arrow strings, the samples they belong to, in order
    sizes: np.ndarray  # (N,) int64 file sizes
    mtimes: np.ndarray  # (N,) int64 modification times (ns)
    taken_at: float  # time.monotonic() when the files were stat-ed

    def matches(self, sample_ids: pd.Series) -> bool:
        """True when these stamps are of exactly `sample_ids`, in that order."""
        return same_ids(self.sample_ids, sample_ids)


@dataclass(frozen=True)
class Dataset:
    """A validated dataset. `samples` has one row per usable image."""

    root: Path  # folder every sample path is relative to
    samples: pd.DataFrame  # sample_id, path (absolute), label, split, specimen_id, taxonomy and extra columns
    class_names: tuple[str, ...]  # sorted labels with at least one usable sample
    taxonomy_columns: tuple[str, ...] = ()  # higher-taxon columns, broadest first (e.g. phylum, order)
    extra_columns: tuple[str, ...] = ()  # other manifest columns, carried through exports untouched
    skipped: pd.DataFrame = field(default_factory=lambda: _skip_frame([]))  # sample_id, reason, detail
    warnings: tuple[str, ...] = ()  # human-readable notes (empty classes, filled specimen ids, ...)
    source: str = "imagefolder"  # "imagefolder" or the manifest's path
    file_stamps: FileStamps | None = field(default=None, repr=False, compare=False)  # taken by the load

    def __len__(self) -> int:
        return len(self.samples)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split (`train`, `val`, `test`)."""
        return self.samples[self.samples["split"] == name]

    def stamps(self, *, max_age_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sizes, mtime_ns) of each sample's file, int64 arrays in `samples` order: the stamps taken when the
        dataset was loaded (its checks describe the files as they were then), or the files stat-ed again when there
        are none for these samples or they are older than `max_age_s` seconds. Raises `FileNotFoundError` when a
        file stat-ed again is gone."""
        recorded = self.file_stamps
        if recorded is not None and (max_age_s is None or time.monotonic() - recorded.taken_at <= max_age_s) \
                and recorded.matches(self.samples["sample_id"]):
            return recorded.sizes, recorded.mtimes
        infos = list(map(os.stat, self.samples["path"].tolist()))
        return (np.fromiter(map(_ST_SIZE, infos), np.int64, len(infos)),
                np.fromiter(map(_ST_MTIME, infos), np.int64, len(infos)))

    def fingerprint(self, *, max_age_s: float | None = None) -> str:
        """sha256 over what the images are (ids, sizes, modification times); labels may change without it. The
        stamps are `stamps(max_age_s=...)`: those of the load unless older than `max_age_s` (None: any age)."""
        sizes, mtimes = self.stamps(max_age_s=max_age_s)
        return stamp_digest(self.samples["sample_id"], sizes, mtimes)


def stamp_digest(sample_ids: pd.Series | list[str], sizes: np.ndarray, mtimes: np.ndarray) -> str:
    """sha256 (hex) of the text `<sample id>\\0<size>\\0<mtime_ns>\\n` per sample, in order: `Dataset.fingerprint`.
    Built as whole Arrow string arrays (a million lines: 0.3 s, where the Python loop took 2.7 s), falling back to that
    loop, which gives the same digest, for ids Arrow cannot hold."""
    try:
        ids = pa.array(sample_ids, type=pa.large_string())
    except (pa.ArrowException, UnicodeEncodeError):
        ids = None
    if ids is None or ids.null_count:
        text = "".join(f"{sample_id}\0{size}\0{mtime}\n" for sample_id, size, mtime
                       in zip(list(sample_ids), np.asarray(sizes).tolist(), np.asarray(mtimes).tolist(), strict=True))
        return hashlib.sha256(text.encode()).hexdigest()
    if len(ids) != len(sizes) or len(ids) != len(mtimes):
        raise ValueError(f"{len(ids)} sample ids but {len(sizes)} sizes and {len(mtimes)} mtimes")
    digest = hashlib.sha256()
    if len(ids):
        as_text = [pc.cast(pa.array(np.asarray(values, np.int64)), pa.large_string()) for values in (sizes, mtimes)]
        lines = pc.binary_join_element_wise(ids, *as_text, pa.scalar("\0", pa.large_string()))
        lines = pc.binary_join_element_wise(lines, pa.scalar("", pa.large_string()), pa.scalar("\n", pa.large_string()))
        for chunk in lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]:  # in order: one text
            if len(chunk):
                _, offsets, data = chunk.buffers()
                bounds = np.frombuffer(offsets, np.int64, count=len(chunk) + 1, offset=chunk.offset * 8)
                digest.update(memoryview(data)[int(bounds[0]):int(bounds[-1])])
    return digest.hexdigest()


def pool_sample_id(pool_name: str, relative: str) -> str:
    """The sample id of the pool image `relative` (a POSIX path under the pool's root): `pool:<name>/<relative>`."""
    return f"{POOL_ID_PREFIX}{pool_name}/{relative}"


def split_pool_sample_id(sample_id: str) -> tuple[str, str] | None:
    """(pool name, path relative to the pool root) of a pool image's sample id; None for any other id."""
    if not sample_id.startswith(POOL_ID_PREFIX) or "/" not in sample_id:
        return None
    name, _, relative = sample_id[len(POOL_ID_PREFIX):].partition("/")
    return (name, relative) if name and relative else None


def load_dataset(
    source: str | Path,
    *,
    root: str | Path | None = None,
    taxonomy: tuple[str, ...] | list[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    verify: Verify = "header",
    index: str | Path | None = None,
    pool_roots: dict[str, Path] | None = None,
    manifest_cache: str | Path | None = None,
) -> Dataset:
    """Load an ImageFolder tree (`source` a folder) or a CSV manifest (`source` a `.csv` file).

    A manifest has `path,label` and optionally `split`, `specimen_id` and taxonomy columns; its paths are
    relative to `root` (default: the manifest's folder) and may not escape it. Without a split, a deterministic
    stratified split keeps all images of one specimen on one side. `verify`: `none` checks that files exist,
    `header` also opens each image's header, `full` decodes every image (catches truncation).
    `index`: a dataset index file (`core.dataset_index`, a workspace keeps one in its cache folder): images whose
    size and modification time match their entry are not opened again, and the file is rewritten when that changed.
    `pool_roots`: pool name -> its root, for a curated export holding labelled pool images (rows whose `pool` column
    names a pool: their paths are relative to that pool's root and their sample ids are `pool_sample_id`s).
    `manifest_cache`: a file for the parsed manifest (`core.dataset_index.MANIFEST_CACHE_NAME`): while the manifest's
    size and modification time are unchanged its rows are read from there instead of parsed again (not used with
    `pool_roots`).
    Raises `DatasetError` for a manifest that cannot be read; unusable rows go to `Dataset.skipped`.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"dataset not found: {source}")
    _refuse_unlikely_root(source)
    if root:
        _refuse_unlikely_root(Path(root))
    try:
        return _load_dataset(source, root=root, taxonomy=taxonomy, val_fraction=val_fraction, seed=seed, verify=verify,
                             index=index, pool_roots=pool_roots, manifest_cache=manifest_cache)
    except PermissionError as exc:
        where = exc.filename or source
        raise DatasetError(f"cannot read {where} (permission denied) while loading the dataset {source}; give this "
                           "account read access to it, or point the dataset root elsewhere") from exc


def _load_dataset(source: Path, *, root: str | Path | None, taxonomy: tuple[str, ...] | list[str] | None,
                  val_fraction: float, seed: int, verify: Verify, index: str | Path | None,
                  pool_roots: dict[str, Path] | None = None, manifest_cache: str | Path | None = None) -> Dataset:
    taken_at = time.monotonic()  # the files are stat-ed from here on (the manifest's rows, then the checks)
    if source.is_dir():
        frame, skipped, warnings = _scan_image_folder(source)
        dataset_root, origin = source.resolve(), "imagefolder"
        resolver = _PathResolver(dataset_root)
        taxonomy = tuple(taxonomy or ())
        if taxonomy:
            raise DatasetError("an ImageFolder tree has no taxonomy columns; give a CSV manifest with them")
    else:
        dataset_root = Path(root).resolve() if root else source.resolve().parent
        resolver = _PathResolver(dataset_root, pools={name: _PathResolver(Path(folder).resolve())
                                                      for name, folder in (pool_roots or {}).items()})
        manifest_cache = None if pool_roots else manifest_cache  # pool rows resolve against the pools' roots
        key = manifest_cache_key(source, dataset_root, tuple(taxonomy or ())) if manifest_cache else {}
        cached = read_manifest_cache(manifest_cache, key) if manifest_cache else None
        if cached is not None:  # rows already read, checked as text and normalised: only the files are looked at
            frame, skipped, warnings = cached
            resolver.normalised = True
        else:
            frame, skipped, warnings = _read_manifest(source, dataset_root, tuple(taxonomy or ()), resolver)
            if manifest_cache:
                write_manifest_cache(manifest_cache, key, frame, skipped, warnings)
        origin = str(source)
    try:
        frame, more_skipped, more_warnings = _validate_rows(frame, resolver, verify, index)
    except NoImagesError as exc:
        if origin != "imagefolder" and all(c in frame.columns for c in CURATED_MARKERS):
            raise DatasetError(_curated_root_message(source, dataset_root, frame, root_given=root is not None)) \
                from exc
        raise
    skipped += more_skipped
    warnings += more_warnings
    frame = _fill_specimen_ids(frame, warnings)
    frame = _assign_split(frame, val_fraction=val_fraction, seed=seed)
    stamps = FileStamps(pa.array(frame["sample_id"], type=pa.large_string()), frame.pop(_SIZE).to_numpy(np.int64),
                        frame.pop(_MTIME).to_numpy(np.int64), taken_at)
    class_names = tuple(sorted(frame["label"].unique()))
    logger.debug("loaded %s: %d samples in %d classes, %d skipped, %d warnings", origin, len(frame), len(class_names),
                 len(skipped), len(warnings))
    extra = tuple(c for c in frame.columns if c not in RESERVED_COLUMNS and c not in (taxonomy or ()))
    return Dataset(
        root=dataset_root,
        samples=frame.reset_index(drop=True),
        class_names=class_names,
        taxonomy_columns=tuple(taxonomy or ()),
        extra_columns=extra,
        skipped=_skip_frame(skipped),
        warnings=tuple(warnings),
        source=origin,
        file_stamps=stamps,
    )


def cell_needs_guard(text: str) -> bool:
    """True for text an export writes behind CELL_GUARD: it starts with a formula trigger or with the guard itself,
    or has whitespace at either end (which reading a hand-written manifest would otherwise strip)."""
    return text.startswith((*FORMULA_TRIGGERS, CELL_GUARD)) or text[:1].isspace() or text[-1:].isspace()


def read_cell(raw: str) -> str:
    """A manifest text cell as its writer meant it.

    A cell that is CELL_GUARD followed by text that needs the guard (`cell_needs_guard`) is that text, verbatim
    (`'=x` -> `=x`, `''a` -> `'a`, `' a ` -> ` a `): exactly what an export wrote. Any other cell is stripped of
    surrounding whitespace, so a hand-written `path, label` reads as meant, and `'quoted` stays `'quoted`.
    """
    cell = raw.lstrip()
    if cell.startswith(CELL_GUARD) and cell_needs_guard(cell[1:]):
        return cell[1:]
    return cell.strip()


def unneutralise_cell(value: object) -> object:
    """`read_cell` for text (drops the `'` an export put before a guarded cell); other values pass through."""
    return read_cell(value) if isinstance(value, str) else value


def read_manifest_table(path: str | Path) -> pd.DataFrame:
    """A manifest or curated export as strings: strict CSV (every row as wide as the header), header and text cells
    through `read_cell`, `path` cells stripped (their guard is a `./` prefix, normalised by `load_dataset`).

    Raises DatasetError for a file that is not such a CSV.
    """
    frame = _read_csv_strict(Path(path))
    text_columns = [c for c in frame.columns if c != "path"]
    frame[text_columns] = frame[text_columns].map(read_cell)  # all cells are str
    if "path" in frame.columns:
        frame["path"] = frame["path"].str.strip()
    return frame


def resolve_sample_path(root: Path, relative: str) -> Path:
    """Join `relative` to `root`, refusing absolute paths and any path that escapes the root.

    `relative` is used as given (a manifest's cells are stripped when read): a file name may begin or end with a space.
    """
    text = str(relative).replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or _DRIVE.match(text):  # "  " is a name (a POSIX file may be all spaces)
        raise DatasetError(f"path {relative!r} is absolute; manifest paths must be relative to {root}")
    if ".." in pure.parts:
        raise DatasetError(f"path {relative!r} escapes the dataset root {root}")
    joined = (root / pure).resolve()
    if not joined.is_relative_to(root):  # a symlink pointing outside
        raise DatasetError(f"path {relative!r} resolves to {joined}, outside the dataset root {root}")
    return joined


class _PathResolver:
    """`resolve_sample_path` for many paths under one root: each folder is resolved once, and a file is resolved on
    its own only when it is a symlink. `escapes` checks a path list without stat-ing a file (one `os.scandir` per
    folder finds the symlinks); `stat_all` stats each file once (`lstat`), as whole arrays."""

    def __init__(self, root: Path, *, pools: dict[str, _PathResolver] | None = None) -> None:
        self.root = root
        self.pools = pools or {}  # pool name -> the resolver of its root (pool images' ids: `pool_sample_id`)
        self._folders: dict[str, str] = {}  # relative folder -> resolved absolute folder (inside the root)
        # True when every relative path given is one `_read_manifest` already checked and normalised (plain
        # segments joined by `/`), so it is split as text without checking it again
        self.normalised = False

    def locate(self, relative: str) -> tuple[str, os.stat_result | None]:
        """(absolute path, stat or None when it is not a file); DatasetError when `relative` escapes the root."""
        pooled = self._pooled(relative)
        if pooled is not None:
            return self.pools[pooled[0]].locate(pooled[1])
        folder_key, name = self._split(relative)
        path = self._join(self._folder(folder_key, relative, name), name)
        try:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                path = str(resolve_sample_path(self.root, relative))  # a link may point anywhere: check its target
                info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            info = None
        if info is not None and not stat.S_ISREG(info.st_mode):
            info = None
        return path, info

    def escapes(self, relatives: list[str]) -> list[tuple[int, str]]:
        """`(position, why)` of each path in `relatives` that is absolute, climbs out with `..` or resolves outside
        the root (through a symlinked folder or file), in order. No file is stat-ed: each folder is resolved once and
        listed once (`os.scandir`, whose entry types name the symlinks), and only symlinked files are resolved."""
        problems: list[tuple[int, str]] = []
        by_folder: dict[str, list[tuple[int, str, str]]] = {}  # folder key -> (position, file name, relative path)
        for position, relative in enumerate(relatives):
            try:
                pooled = self._pooled(relative)
                if pooled is not None:
                    self.pools[pooled[0]].locate(pooled[1])
                    continue
                folder_key, name = self._split(relative)
            except DatasetError as exc:
                problems.append((position, str(exc)))
                continue
            by_folder.setdefault(folder_key, []).append((position, name, relative))
        for folder_key, files in by_folder.items():
            try:
                folder = self._folder(folder_key, files[0][2], files[0][1])
            except DatasetError:  # a symlinked folder leading out: every path in it is named
                for position, name, relative in files:
                    try:
                        self._folder(folder_key, relative, name)
                    except DatasetError as exc:
                        problems.append((position, str(exc)))
                continue
            links = _symlink_names(folder)
            for position, name, relative in files:
                if links is None or name in links:  # a folder that cannot be listed: each file looked at
                    try:
                        self.locate(relative)
                    except DatasetError as exc:
                        problems.append((position, str(exc)))
        return sorted(problems)

    def stat_all(self, relatives: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(paths (N,) object, sizes (N,) int64, mtimes (N,) int64)` of `relatives`, in order: the absolute path and
        the file's size and mtime_ns, -1 for a missing file or anything but a regular file. One `lstat` per file;
        a symlink is resolved on its own (DatasetError when it leads outside the root, as for a symlinked folder)."""
        n = len(relatives)
        paths = np.empty(n, object)
        sizes, mtimes = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        plain = list(range(n)) if self.normalised and not self.pools else \
            [i for i, relative in enumerate(relatives) if self._plain(relative)]
        others = np.ones(n, bool)
        if plain:
            others[plain] = False
            keys = [relatives[i].rpartition("/") for i in plain]
            prefixes: dict[str, str] = {}  # folder key -> the resolved folder and its "/"
            for i, (folder_key, _, name) in zip(plain, keys, strict=True):
                if folder_key not in prefixes:
                    prefixes[folder_key] = self._join(self._folder(folder_key, relatives[i], name), "")
            joined = [prefixes[folder_key] + name for folder_key, _, name in keys]
            infos = _lstat_all(joined)
            modes = np.fromiter((-1 if info is None else info.st_mode for info in infos), np.int64, len(infos)) \
                if None in infos else np.fromiter(map(_ST_MODE, infos), np.int64, len(infos))
            kind = modes & _S_IFMT
            regular = (modes >= 0) & (kind == stat.S_IFREG)
            rows = np.asarray(plain, np.int64)
            paths[rows] = np.fromiter(joined, object, len(joined))
            kept = [info for info, ok in zip(infos, regular.tolist(), strict=True) if ok]
            sizes[rows[regular]] = np.fromiter(map(_ST_SIZE, kept), np.int64, len(kept))
            mtimes[rows[regular]] = np.fromiter(map(_ST_MTIME, kept), np.int64, len(kept))
            others[rows[(modes >= 0) & (kind == stat.S_IFLNK)]] = True  # resolved one by one below
        for i in np.flatnonzero(others).tolist():
            path, info = self.locate(relatives[i])
            paths[i] = path
            if info is not None:
                sizes[i], mtimes[i] = info.st_size, info.st_mtime_ns
        return paths, sizes, mtimes

    def _pooled(self, relative: str) -> tuple[str, str] | None:
        pooled = split_pool_sample_id(relative) if self.pools else None
        return pooled if pooled is not None and pooled[0] in self.pools else None

    def _plain(self, relative: str) -> bool:
        """True for a path `stat_all` may split as text: normalised, or plain segments (`a/b/c.jpg`), no pool id."""
        if self.pools and self._pooled(relative) is not None:
            return False
        return self.normalised or (_SIMPLE_PATH.fullmatch(relative) is not None and not _DRIVE.match(relative))

    def _split(self, relative: str) -> tuple[str, str]:
        """(folder key, file name) of `relative`; DatasetError when it is absolute or climbs out with `..`."""
        text = str(relative).replace("\\", "/")
        if self.normalised or (_SIMPLE_PATH.fullmatch(text) and not _DRIVE.match(text)):  # a/b/c.jpg: split as text
            folder_key, _, name = text.rpartition("/")
            return folder_key, name
        pure = PurePosixPath(text)
        if not text or pure.is_absolute() or _DRIVE.match(text) or ".." in pure.parts or not pure.name:
            resolve_sample_path(self.root, relative)  # raises the error that names the problem
        folder_key = pure.parent.as_posix()
        return ("" if folder_key == "." else folder_key), pure.name

    def _folder(self, folder_key: str, relative: str, name: str) -> str:
        """The resolved absolute folder of `folder_key` (once per folder); DatasetError naming `relative` when it
        resolves outside the root (a symlinked folder pointing out)."""
        folder = self._folders.get(folder_key)
        if folder is None:
            resolved = (self.root / folder_key).resolve()
            if not resolved.is_relative_to(self.root):
                raise DatasetError(f"path {relative!r} resolves to {resolved / name}, outside the dataset root "
                                   f"{self.root}")
            folder = self._folders[folder_key] = str(resolved)
        return folder

    @staticmethod
    def _join(folder: str, name: str) -> str:
        return f"{folder}/{name}" if folder != "/" else f"/{name}"


_ST_MODE, _ST_SIZE, _ST_MTIME = (operator.attrgetter(f) for f in ("st_mode", "st_size", "st_mtime_ns"))
_S_IFMT = 0o170000  # the file-type bits of st_mode (stat.S_IFMT as a mask, for whole arrays)


def _lstat_all(paths: list[str]) -> list[os.stat_result | None]:
    """`os.lstat` of each path, None where there is no such file (the whole list at C speed when every file is
    there, one by one otherwise)."""
    try:
        return list(map(os.lstat, paths))
    except (FileNotFoundError, NotADirectoryError):
        pass
    found = []
    for path in paths:
        try:
            found.append(os.lstat(path))
        except (FileNotFoundError, NotADirectoryError):
            found.append(None)
    return found


def _symlink_names(folder: str) -> set[str] | None:
    """Names of the symlinks directly in `folder` (the directory entries' own types, no stat); empty when there is
    no such folder (its files are missing), None when it cannot be listed (no read permission)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_symlink()}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except PermissionError:
        return None


def list_image_files(folder: str | Path) -> tuple[list[str], pd.DataFrame]:
    """The image files under `folder` (any depth, names not starting with `.`), as sorted POSIX paths relative to it,
    and the other files as skipped rows (`sample_id, reason, detail`, reason `not_image`)."""
    folder = Path(folder)
    _refuse_unlikely_root(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder of images")
    images, skipped = [], []
    with os.scandir(folder) as entries:
        found = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                found += _files_below(Path(entry.path), entry.name)
            elif entry.is_file():
                found.append(entry.name)
    for rel in sorted(found, key=lambda r: r.split("/")):
        suffix = PurePosixPath(rel).suffix
        if suffix.lower() in IMAGE_SUFFIXES:
            images.append(rel)
        else:
            skipped.append((rel, "not_image", f"suffix {suffix or '(none)'} is not an image type"))
    return images, _skip_frame(skipped)


def check_image_files(root: str | Path, relative_paths: list[str], *, verify: Verify = "header",
                      index: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate images named relative to `root` as a dataset's are: paths that escape `root` (absolute, `..`, a
    symlink pointing out) raise DatasetError naming them; missing, unreadable and non-image files are skipped.

    Returns `(usable, skipped)`: `usable` has `sample_id` (the relative POSIX path, first listing kept) and `path`
    (absolute); `skipped` has `sample_id, reason, detail`. `verify` and `index` as for `load_dataset`.
    """
    resolver = _PathResolver(Path(root).resolve())
    _refuse_escapes(resolver, [(f"#{number + 1}", rel) for number, rel in enumerate(relative_paths)],
                    f"path(s) outside {resolver.root}")
    frame = pd.DataFrame({"sample_id": [_posix(p) for p in relative_paths]})
    skipped = [(s, "duplicate", "listed more than once; kept the first") for s in frame.loc[
        frame["sample_id"].duplicated(), "sample_id"]]
    frame = frame.drop_duplicates("sample_id").reset_index(drop=True)
    usable, checked = _check_rows(frame.assign(path=frame["sample_id"]), resolver, verify, index)
    return usable.reset_index(drop=True)[["sample_id", "path"]], _skip_frame(skipped + checked)


class NoImagesError(DatasetError):
    """Not one row of a dataset points at a usable image."""


def _refuse_unlikely_root(path: Path) -> None:
    """A filesystem root or a home folder is never a dataset: scanning it would walk the whole disk (or its
    unreadable system folders) before failing."""
    resolved = path.expanduser().resolve()
    if resolved.is_dir() and (resolved.parent == resolved or resolved == Path.home().resolve()):
        what = "the filesystem root" if resolved.parent == resolved else "your home folder"
        raise DatasetError(f"dataset root {resolved} is {what}, not a dataset; point the dataset (`root` or "
                           "`manifest` under [dataset] in taxalens.toml, or --data/--root) at the folder that holds "
                           "one sub-folder per class, or at a CSV manifest")


def _curated_root_message(source: Path, root: Path, frame: pd.DataFrame, *, root_given: bool) -> str:
    """Why a curated export finds no images under `root`, naming the root that holds them when one is found."""
    found = _find_export_root(source, list(frame["path"][:20]))
    need = (f"its images are under {found}: pass --root {found} (or set `root` under [dataset] in taxalens.toml)"
            if found is not None else
            "pass the `root` of the dataset it was exported from (--root DIR, or `root` under [dataset] in "
            "taxalens.toml; `python -m cli export` prints it)")
    where = f"the root given, {root}" if root_given else f"the CSV's own folder {root}"
    return (f"{source} is a curated export whose paths are relative to the dataset root it was exported from, and "
            f"none of its {len(frame)} images is under {where}; {need}")


def _find_export_root(source: Path, sample_paths: list[str]) -> Path | None:
    """The dataset root of a workspace in the export's folder or above it, when the export's first paths are there."""
    from core.workspace import WorkspaceError, load_workspace  # workspace imports this module

    for folder in list(source.resolve().parents)[:4]:
        if not (folder / "taxalens.toml").is_file():
            continue
        try:
            workspace = load_workspace(folder)
        except WorkspaceError:
            continue
        candidates = [workspace.dataset_root, workspace.dataset_source if workspace.dataset_source.is_dir() else
                      workspace.dataset_source.parent]
        for candidate in candidates:
            if candidate is not None and any((candidate / p).is_file() for p in sample_paths):
                return candidate
    return None


def _skip_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["sample_id", "reason", "detail"])


def _scan_image_folder(root: Path) -> tuple[pd.DataFrame, list, list[str]]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DatasetError(f"{root} has no class folders; expected ROOT/<class>/<image> or a CSV manifest")
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    by_split = len(split_dirs) == len(subdirs)  # ROOT/train/<class>/..., ROOT/val/<class>/...
    layout = [(SPLIT_ALIASES[d.name.lower()], d) for d in split_dirs] if by_split else [("", root)]
    rows, skipped, warnings = [], [], []
    for split, base in layout:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            prefix = class_dir.relative_to(root).as_posix()
            n_images = 0
            for sample_id in sorted(_files_below(class_dir, prefix), key=lambda rel: rel.split("/")):
                suffix = PurePosixPath(sample_id).suffix
                if suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append((sample_id, "not_image", f"suffix {suffix or '(none)'} is not an image type"))
                    continue
                rows.append((sample_id, class_dir.name, split))
                n_images += 1
            if n_images == 0:
                warnings.append(f"class folder {prefix!r} has no images")
    return pd.DataFrame(rows, columns=["path", "label", "split"]), skipped, warnings


def _files_below(folder: Path, prefix: str) -> list[str]:
    """Relative paths (`prefix/...`) of the files under `folder`, not starting with `.`, through `os.scandir` (the
    directory entry's type, no stat per file); symlinked folders are not entered, as `Path.rglob` does not."""
    found, pending = [], [(str(folder), prefix)]
    while pending:
        path, rel = pending.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{rel}/{entry.name}"))
                elif not entry.name.startswith(".") and entry.is_file():
                    found.append(f"{rel}/{entry.name}")
    return found


def _read_manifest(path: Path, root: Path, taxonomy: tuple[str, ...],
                   resolver: _PathResolver) -> tuple[pd.DataFrame, list, list[str]]:
    frame = read_manifest_table(path)
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"manifest {path} lacks column(s) {missing}; found {list(frame.columns)}. "
            "A manifest needs `path,label` and may add `split`, `specimen_id` and taxonomy columns"
        )
    absent = [c for c in taxonomy if c not in frame.columns]
    if absent:
        raise DatasetError(f"taxonomy column(s) {absent} are not in manifest {path}; found {list(frame.columns)}")
    warnings: list[str] = []
    skipped = []
    if "status" in frame.columns:  # a curated export: excluded samples stay in the file but are not data
        excluded = frame["status"].str.lower() == EXCLUDED_STATUS
        for rel, label in zip(frame.loc[excluded, "path"], frame.loc[excluded, "label"], strict=True):
            skipped.append((rel, "excluded", f"status=excluded in the curated manifest (label {label!r})"))
        frame = frame[~excluded]
    if POOL_COLUMN in frame.columns:
        frame = _pool_rows_as_ids(path, frame, resolver)
    blank = frame["label"] == ""
    for row_number, rel in zip(frame.index[blank], frame.loc[blank, "path"], strict=True):
        skipped.append((rel, "missing_label", f"manifest row {row_number + 2} has an empty label"))
    frame = frame[~blank]
    _refuse_escapes(resolver, [(f"row {number + 2}", rel) for number, rel in
                               zip(frame.index.tolist(), frame["path"].tolist(), strict=True)],
                    "path(s) outside the dataset root", prefix=f"manifest {path} has ")
    frame = frame.assign(path=[_posix(p) for p in frame["path"].tolist()])
    if "split" in frame.columns:
        unknown = sorted(set(frame["split"]) - set(SPLIT_ALIASES) - {""})
        if unknown:
            raise DatasetError(f"manifest {path} has unknown split value(s) {unknown}; use train, val or test")
        frame = frame.assign(split=[SPLIT_ALIASES.get(s.lower(), "") for s in frame["split"]])
    else:
        frame = frame.assign(split="")
    return frame.reset_index(drop=True), skipped, warnings


def _pool_rows_as_ids(path: Path, frame: pd.DataFrame, resolver: _PathResolver) -> pd.DataFrame:
    """Rows of a curated export whose `pool` column names a pool: their `path` becomes the pool image's sample id
    (`pool_sample_id`), resolved under that pool's root; DatasetError for a pool the caller gave no root for."""
    pooled = frame[POOL_COLUMN] != ""
    if not pooled.any():
        return frame
    unknown = sorted(set(frame.loc[pooled, POOL_COLUMN]) - set(resolver.pools))
    if unknown:
        raise DatasetError(f"manifest {path} has labelled images of pool(s) {unknown}, whose folders it does not "
                           "know; load it with the workspace whose taxalens.toml lists them as [[pools]] (e.g. "
                           "`python -m cli train --workspace DIR --data EXPORT.csv`), or drop those rows")
    ids = [pool_sample_id(name, _posix(rel)) for name, rel in zip(frame.loc[pooled, POOL_COLUMN],
                                                                   frame.loc[pooled, "path"], strict=True)]
    paths = frame["path"].copy()
    paths.loc[pooled] = ids
    return frame.assign(path=paths)


def _refuse_escapes(resolver: _PathResolver, listed: list[tuple[str, str]], what: str, *,
                    prefix: str = "") -> None:
    """Raise one `DatasetError` naming (up to five of) the `(where, path)` entries that resolve outside the root."""
    escapes = [f"{listed[position][0]}: {why}" for position, why in resolver.escapes([rel for _, rel in listed])]
    if escapes:
        shown = "; ".join(escapes[:5]) + (f"; and {len(escapes) - 5} more" if len(escapes) > 5 else "")
        raise DatasetError(f"{prefix}{len(escapes)} {what}, refused: {shown}")


def _posix(path: str) -> str:
    """A manifest path with `/` separators and no `.` or empty segments (plain paths as they are, quickly)."""
    text = path.replace("\\", "/")
    return text if _SIMPLE_PATH.fullmatch(text) else PurePosixPath(text).as_posix()


def _refuse_foreign_delimiter(path: Path, header: str) -> None:
    """A one-column header such as `path;label`: the file was saved with another delimiter; say which."""
    for delimiter, name in _FOREIGN_DELIMITERS.items():
        cells = [c.strip().lower() for c in header.split(delimiter)]
        if "path" in cells and "label" in cells:
            raise DatasetError(
                f"manifest {path} is {name}-separated (header {header[:80]!r}); TaxaLens reads comma-separated CSV: "
                "save it again as CSV with commas (in a spreadsheet: CSV UTF-8, comma delimited), or replace each "
                f"{name} between cells with a comma"
            )


def _read_csv_strict(path: Path) -> pd.DataFrame:
    """All cells as strings; a row whose cell count differs from the header's is an error naming the row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, strict=True))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"manifest {path} is not a readable CSV (UTF-8, comma-separated): {exc}") from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"manifest {path} is empty; expected a header `path,label`")
    header = [read_cell(cell) for cell in rows[0]]
    if len(header) == 1:  # before counting cells: a `1,5` in a semicolon file would be blamed on the commas
        _refuse_foreign_delimiter(path, header[0])
    bad = [i + 1 for i, row in enumerate(rows[1:], start=1) if len(row) != len(header)]
    if bad:
        raise DatasetError(f"manifest {path} is not a readable CSV: row(s) {bad[:5]} have a different number of "
                           f"cells than the header's {len(header)} ({header}); quote cells that contain commas")
    if len(set(header)) != len(header):
        raise DatasetError(f"manifest {path} repeats column names in its header {header}")
    return pd.DataFrame(rows[1:], columns=header, dtype=str)


def _validate_rows(frame: pd.DataFrame, resolver: _PathResolver, verify: Verify,
                   index: str | Path | None) -> tuple[pd.DataFrame, list, list[str]]:
    root = resolver.root
    skipped, warnings = [], []
    frame = frame.assign(sample_id=frame["path"])
    duplicated = frame.duplicated("sample_id", keep=False)
    if duplicated.any():
        keep = []
        for sample_id, group in frame[duplicated].groupby("sample_id", sort=False):
            if group["label"].nunique() > 1:
                labels = sorted(group["label"].unique())
                skipped.append((sample_id, "conflicting_labels", f"listed {len(group)} times with labels {labels}"))
            else:
                keep.append(group.index[0])
                skipped.append((sample_id, "duplicate", f"listed {len(group)} times; kept the first row"))
        frame = frame[~duplicated | frame.index.isin(keep)]
    frame, checked = _check_rows(frame, resolver, verify, index)
    skipped += checked
    if frame.empty:
        reasons = pd.Series([reason for _, reason, _ in skipped]).value_counts().to_dict() if skipped else {}
        raise NoImagesError(f"no usable images under {root} ({len(skipped)} skipped: {reasons})")
    return frame, skipped, warnings


def _check_rows(frame: pd.DataFrame, resolver: _PathResolver, verify: Verify,
                index: str | Path | None) -> tuple[pd.DataFrame, list]:
    """The rows whose image is usable (`path` made absolute), and (sample_id, reason, detail) for the others.

    Every file is stat-ed; an image is opened only when `index` holds no result for its current stamp (and the
    index file is rewritten when a result was added or a sample left)."""
    sample_ids = frame["sample_id"]
    paths, sizes, mtimes = resolver.stat_all(sample_ids.tolist())
    level = VERIFY_LEVELS[verify]
    use_index = index is not None and level > 0
    known = read_index(index) if use_index else empty_index()
    hit, reasons, details, levels = known_results(known, sample_ids, sizes, mtimes, level)
    for i in np.flatnonzero(~hit).tolist():
        problem = ("missing", "file not found") if sizes[i] < 0 else _check_image(Path(paths[i]), verify)
        reasons[i], details[i] = problem if problem else ("", "")
    usable = reasons == ""
    skipped = list(zip(sample_ids.to_numpy()[~usable], reasons[~usable], details[~usable], strict=True))
    present = sizes >= 0
    if use_index and ((~hit & present).any() or int(present.sum()) != len(known)):
        write_index(index, pd.DataFrame({"sample_id": sample_ids.to_numpy()[present], "size": sizes[present],
                                         "mtime_ns": mtimes[present], "level": levels[present],
                                         "reason": reasons[present], "detail": details[present]}))
    if use_index:
        logger.debug("dataset index: %d of %d images checked again", int((~hit).sum()), len(hit))
    return frame.loc[usable].assign(path=paths[usable], **{_SIZE: sizes[usable], _MTIME: mtimes[usable]}), skipped


def _check_image(path: Path, verify: Verify) -> tuple[str, str] | None:
    if verify == "none":
        return None
    if verify == "full":
        try:
            load_image_rgb(path)
        except ImageError as exc:
            return (exc.reason, exc.detail)
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError as exc:
        return ("decompression_bomb", f"refused as a possible decompression bomb ({exc})")
    except UnidentifiedImageError:
        return ("not_image", "not an image file PIL can identify")
    except (OSError, SyntaxError, ValueError) as exc:
        return ("corrupt", f"corrupt image data ({exc})")
    return None


def _fill_specimen_ids(frame: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    if "specimen_id" not in frame.columns:
        return frame.assign(specimen_id=frame["sample_id"])
    gaps = frame["specimen_id"] == ""
    if gaps.any():
        warnings.append(
            f"{int(gaps.sum())} row(s) have no specimen_id; each is treated as its own specimen "
            "(fill the column so images of one individual stay on one side of the split)"
        )
        frame = frame.assign(specimen_id=frame["specimen_id"].where(~gaps, frame["sample_id"]))
    mixed = frame.groupby("specimen_id")["label"].nunique()
    if (mixed > 1).any():
        example = mixed[mixed > 1].index[0]
        warnings.append(f"{int((mixed > 1).sum())} specimen(s) carry more than one label, e.g. {example!r}")
    return frame


def _assign_split(frame: pd.DataFrame, *, val_fraction: float, seed: int) -> pd.DataFrame:
    """Fill empty `split` cells: per class, a hash-ordered share of its specimens goes to `val`.

    Hashing the specimen id (not shuffling) keeps the assignment stable when samples are added.
    """
    todo = frame["split"] == ""
    if not todo.any():
        return frame
    pending = frame[todo]
    # A specimen's class for stratification is its most common label.
    specimen_label = pending.groupby("specimen_id")["label"].agg(lambda s: s.value_counts().index[0])
    val_specimens: set[str] = set()
    for _, specimens in specimen_label.groupby(specimen_label):
        ordered = sorted(specimens.index, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        n_val = math.floor(len(ordered) * val_fraction + 0.5) if len(ordered) > 1 else 0
        n_val = max(n_val, 1) if len(ordered) >= 2 else n_val
        val_specimens.update(ordered[:n_val])
    assigned = ["val" if s in val_specimens else "train" for s in pending["specimen_id"]]
    split = frame["split"].copy()
    split.loc[todo] = assigned
    return frame.assign(split=split)
