"""What a training run learns from: an ImageFolder, a manifest or a curated export, with the checks it needs.

Curated exports: `status == "excluded"` rows are skipped by `load_dataset`, `status == "disputed"` rows (reviewers
disagree, no ruling) are left out unless `include_disputed`, relabels are already the `label` column; specimen-id
gaps, classes emptied by exclusions, classes with a single image and split leaks are refused before training starts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from core.agreement import DISPUTED_STATUS
from core.dataset import (
    EXCLUDED_STATUS,
    Dataset,
    DatasetError,
    load_dataset,
    read_manifest_table,
    resolve_sample_path,
)
from core.pools import NEW_STATUS
from core.workspace import Workspace

MIN_IMAGES_PER_CLASS = 2  # one to learn from and one more: a lone image gives a batch of one, which BatchNorm refuses


def load_training_dataset(
    source: str | Path,
    *,
    root: str | Path | None = None,
    taxonomy: tuple[str, ...] | list[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    verify: str = "header",
    include_disputed: bool = False,
    pool_roots: dict[str, Path] | None = None,
) -> Dataset:
    """Load what a training run learns from: an ImageFolder, a manifest or a curated export (`core.export`).

    A curated export's rows with `status == "excluded"` are dropped (its `label` column already holds relabels), and
    so are `status == "disputed"` rows (reviewers disagree, no ruling) unless `include_disputed` (they then train
    with their original label). Labelled pool images (`status=new`, a `pool` column) train like any row; their
    paths are relative to their pool's root in `pool_roots` (pool name -> folder; `core.pools.pool_roots`).
    Raises `DatasetError` for: a `specimen_id` column with empty cells (the split could put one individual on both
    sides), one specimen on both sides of a given split, and a class that has no samples left after exclusions.
    """
    source = Path(source)
    left_out = (EXCLUDED_STATUS,) if include_disputed else (EXCLUDED_STATUS, DISPUTED_STATUS)
    if source.is_file():
        _check_manifest_rows(source, left_out=left_out)
    dataset = load_dataset(source, root=root, taxonomy=taxonomy, val_fraction=val_fraction, seed=seed,
                           verify=verify, pool_roots=pool_roots)  # type: ignore[arg-type]
    samples, notes = dataset.samples, list(dataset.warnings)
    excluded = int((dataset.skipped["reason"] == "excluded").sum())
    if excluded:
        notes.append(f"{excluded} sample(s) with status=excluded left out")
    if "status" in samples.columns:
        disputed = samples["status"].str.strip().str.lower() == DISPUTED_STATUS
        if disputed.any() and not include_disputed:
            skipped = pd.DataFrame({"sample_id": samples.loc[disputed, "sample_id"], "reason": DISPUTED_STATUS,
                                    "detail": "status=disputed in the curated manifest (reviewers disagree, no "
                                              "ruling); include with --include-disputed"})
            dataset = replace(dataset, samples=samples[~disputed].reset_index(drop=True),
                              skipped=pd.concat([dataset.skipped, skipped[list(dataset.skipped.columns)]],
                                                ignore_index=True))
            samples = dataset.samples
            notes.append(f"{int(disputed.sum())} sample(s) with status=disputed left out (reviewers disagree and no "
                         "lead has ruled; --include-disputed trains on them with their original label)")
        elif disputed.any():
            notes.append(f"{int(disputed.sum())} disputed sample(s) included with their original label")
    _check_split_leaks(samples, source)
    return replace(dataset, warnings=tuple(notes))


def load_workspace_training_dataset(
    workspace: Workspace | None,
    data: str | Path | None = None,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    verify: str = "header",
    include_disputed: bool = False,
) -> Dataset:
    """What `python -m cli train` learns from: `data` (a folder, manifest or curated export) or else the workspace's
    dataset. With a workspace, its taxonomy and `val_fraction` apply and a manifest's paths are relative to its
    dataset root unless `root` is given (a curated export is written relative to that root); `seed` seeds the split;
    `include_disputed` as in `load_training_dataset`. Besides `load_training_dataset`'s checks, refuses a class with
    fewer than `MIN_IMAGES_PER_CLASS` images: a run could neither validate it nor take a batch of it alone."""
    source, taxonomy, roots = data, None, None
    if workspace is not None:
        roots = {spec.name: spec.root for spec in workspace.pools}
        taxonomy, val_fraction = workspace.taxonomy, workspace.val_fraction
        if source is None:
            source, root = workspace.dataset_source, workspace.dataset_root
        elif root is None:
            root = workspace.dataset_root or (workspace.dataset_source.parent if workspace.dataset_source.is_file()
                                              else workspace.dataset_source)
    if source is None:
        raise DatasetError("give --data DIR_OR_CSV (or --workspace DIR to train on its dataset)")
    if taxonomy:
        header = _header(Path(source))
        taxonomy = tuple(c for c in taxonomy if c in header) if header is not None else ()
    dataset = load_training_dataset(source, root=root, taxonomy=taxonomy, val_fraction=val_fraction, seed=seed,
                                    verify=verify, include_disputed=include_disputed, pool_roots=roots)
    _check_class_sizes(dataset.samples, Path(source))
    return dataset


def _header(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        return [c.strip() for c in pd.read_csv(path, nrows=0, dtype=str).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None  # load_dataset reports unreadable manifests with its own message


def _check_class_sizes(samples: pd.DataFrame, source: Path) -> None:
    counts = samples["label"].value_counts()
    small = counts[counts < MIN_IMAGES_PER_CLASS].sort_index()
    if len(small):
        shown = ", ".join(f"{name!r} ({int(n)} image)" for name, n in list(small.items())[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        raise DatasetError(
            f"class(es) {shown}{more} in {source} have fewer than {MIN_IMAGES_PER_CLASS} images, too few to train "
            "on (nothing is left to validate it, and a batch of one image breaks BatchNorm); add images of it, "
            "relabel them into another class, or exclude them (status=excluded in a curated export)"
        )


def _check_manifest_rows(path: Path, *, left_out: tuple[str, ...] = (EXCLUDED_STATUS,)) -> None:
    """Refuse a `specimen_id` column with gaps and a class that exclusions (rows whose status is in `left_out`)
    empty, before any image is opened."""
    try:
        frame = read_manifest_table(path)  # the same reading as load_dataset's
    except DatasetError:
        return  # load_dataset reports unreadable manifests with its own message
    kept = pd.Series(True, index=frame.index)
    if "status" in frame.columns:
        kept = ~frame["status"].str.strip().str.lower().isin(left_out)
    if "label" in frame.columns:
        labels = frame["label"]
        before, after = labels.value_counts(), labels[kept].value_counts()
        emptied = sorted(set(before.index) - set(after.index) - {""})
        if emptied:
            detail = ", ".join(f"{name!r} ({int(before[name])} excluded)" for name in emptied[:10])
            raise DatasetError(
                f"class(es) with no samples left after exclusions in {path}: {detail}. Un-exclude some of their "
                "samples, relabel them into another class, or remove the class from the data on purpose by "
                "relabelling every sample before exporting"
            )
    if "specimen_id" not in frame.columns:
        return
    gaps = (frame["specimen_id"].str.strip() == "") & kept
    if gaps.any():
        rows = [int(i) + 2 for i in frame.index[gaps][:8]]  # +2: header line and 1-based numbering
        more = f" and {int(gaps.sum()) - len(rows)} more" if gaps.sum() > len(rows) else ""
        raise DatasetError(
            f"manifest {path} has a specimen_id column with {int(gaps.sum())} empty cell(s) (line(s) {rows}{more}); "
            "a split could then put images of one individual on both sides. Fill them (an image of an individual "
            "seen once can use its own path as its id) or drop the column to treat every image as its own specimen"
        )


def _check_split_leaks(samples: pd.DataFrame, source: Path) -> None:
    sides = samples[samples["split"].isin(["train", "val"])].groupby("specimen_id")["split"].nunique()
    leaked = sides[sides > 1]
    if len(leaked):
        shown = ", ".join(repr(s) for s in leaked.index[:5])
        raise DatasetError(
            f"{source}: {len(leaked)} specimen(s) have images in both train and val (e.g. {shown}), so validation "
            "would measure memory of individuals; give all images of a specimen one split, or leave the split "
            "column empty to let TaxaLens assign a specimen-safe one"
        )


def count_new_images(manifest: str | Path) -> int:
    """How many labelled pool images (`status=new`) a curated export adds to a training run; 0 for a manifest
    without them or one that cannot be read (loading it reports that)."""
    try:
        frame = read_manifest_table(manifest)
    except (DatasetError, OSError):
        return 0
    if "status" not in frame.columns:
        return 0
    return int((frame["status"].str.strip().str.lower() == NEW_STATUS).sum())


def image_root_problem(manifest: str | Path, root: str | Path, *, probe: int = 20) -> str | None:
    """Why the image paths of CSV `manifest` do not resolve under `root` (None when the first `probe` paths do).

    A curated export's paths are relative to the dataset root it was exported from, wherever the CSV itself lies;
    this names the root to pass (`--root`, the Retrain page's "Image root") before a run starts and fails.
    """
    manifest, root = Path(manifest), Path(root).expanduser()
    try:
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True, nrows=probe)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return f"cannot read {manifest} as a CSV manifest: {exc}"
    frame.columns = [str(c).strip() for c in frame.columns]
    if "path" not in frame.columns or "label" not in frame.columns:
        return (f"{manifest} has no `path` and `label` columns (found {list(frame.columns)}); export curated labels "
                "with `python -m cli export` or the Adjudicate page")
    if not root.is_dir():
        return f"image root {root} is not a folder; give the folder the CSV's image paths are relative to"
    missing = []
    for relative in frame["path"].str.strip():
        try:
            if not resolve_sample_path(root.resolve(), relative.removeprefix("./")).is_file():
                missing.append(relative)
        except DatasetError:
            missing.append(relative)
    if len(missing) == len(frame) and len(frame):
        return (f"none of the first {len(frame)} image paths of {manifest} (e.g. {missing[0]!r}) is a file under "
                f"{root}; set the image root to the folder they are relative to (a curated export's paths are "
                "relative to the dataset root it was exported from)")
    return None
