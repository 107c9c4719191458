"""Workspace configuration: `taxalens.toml` naming the dataset, the checkpoints and the label store."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from core.dataset import Dataset, load_dataset
from core.errors import TaxaLensError

CONFIG_NAME = "taxalens.toml"
CACHE_DIR = ".taxalens"


class WorkspaceError(TaxaLensError, ValueError):
    """A workspace folder or `taxalens.toml` that cannot be used."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint listed in the workspace."""

    name: str  # short name shown in the UI and used on the command line
    path: Path  # absolute path of the weights file
    arch: str | None = None  # timm architecture, when the file does not carry it
    classes: Path | None = None  # text file of class names (one per line), when the file does not carry them
    trust: bool = False  # allow unsafe pickle loading for this file (explicit opt-in)


@dataclass(frozen=True)
class Workspace:
    """An opened workspace; paths are absolute."""

    root: Path  # the workspace folder
    dataset_source: Path  # dataset folder or manifest CSV
    dataset_root: Path | None = None  # root that manifest paths are relative to (default: the manifest's folder)
    taxonomy: tuple[str, ...] = ()  # taxonomy columns of the manifest, broadest first
    taxonomy_file: Path | None = None  # a taxonomy CSV (`class,<finest rank>,...`), instead of manifest columns
    checkpoints: tuple[CheckpointSpec, ...] = ()  # in the order listed
    label_store_url: str = ""  # SQLAlchemy URL; default sqlite file in the workspace
    val_fraction: float = 0.2  # share of specimens held out when the dataset has no split
    seed: int = 0  # seed of the deterministic split
    extras: dict = field(default_factory=dict)  # other tables of the toml (e.g. [demo]) kept for their owners

    @property
    def cache_dir(self) -> Path:
        return self.root / CACHE_DIR

    def checkpoint(self, name: str) -> CheckpointSpec:
        for spec in self.checkpoints:
            if spec.name == name:
                return spec
        raise WorkspaceError(f"no checkpoint named {name!r} in {self.root / CONFIG_NAME}; "
                             f"known: {[c.name for c in self.checkpoints]}")

    def load_dataset(self, **kwargs) -> Dataset:
        return load_dataset(self.dataset_source, root=self.dataset_root, taxonomy=self.taxonomy,
                            val_fraction=self.val_fraction, seed=self.seed, **kwargs)


def load_workspace(path: str | Path) -> Workspace:
    """Open the workspace folder `path` (or the `taxalens.toml` inside it)."""
    path = Path(path).expanduser().resolve()
    config_path = path if path.is_file() else path / CONFIG_NAME
    root = config_path.parent
    if not config_path.is_file():
        raise WorkspaceError(f"{root} is not a TaxaLens workspace: {CONFIG_NAME} not found "
                             "(build the demo with `python -m core demo --out DIR`)")
    try:
        config = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WorkspaceError(f"{config_path} is not valid TOML: {exc}") from exc
    dataset = config.get("dataset") or {}
    source = dataset.get("manifest") or dataset.get("root")
    if not source:
        raise WorkspaceError(f"{config_path} needs [dataset] with `root` (an ImageFolder) or `manifest` (a CSV)")
    checkpoints = []
    for i, entry in enumerate(config.get("checkpoints") or []):
        if "path" not in entry:
            raise WorkspaceError(f"{config_path}: checkpoints[{i}] has no `path`")
        ckpt_path = _resolve(root, entry["path"])
        checkpoints.append(CheckpointSpec(
            name=str(entry.get("name") or ckpt_path.stem),
            path=ckpt_path,
            arch=entry.get("arch"),
            classes=_resolve(root, entry["classes"]) if entry.get("classes") else None,
            trust=bool(entry.get("trust", False)),
        ))
    names = [c.name for c in checkpoints]
    if len(set(names)) != len(names):
        raise WorkspaceError(f"{config_path}: checkpoint names must be unique, got {names}")
    taxonomy_columns, taxonomy_file = _taxonomy_setting(config_path, root, dataset.get("taxonomy"))
    labels = config.get("labels") or {}
    url = os.environ.get("TAXALENS_LABEL_STORE_URL") or labels.get("url") or f"sqlite:///{root / 'labels.db'}"
    known = {"dataset", "checkpoints", "labels"}
    return Workspace(
        root=root,
        dataset_source=_resolve(root, source),
        dataset_root=_resolve(root, dataset["root"]) if dataset.get("manifest") and dataset.get("root") else None,
        taxonomy=taxonomy_columns,
        taxonomy_file=taxonomy_file,
        checkpoints=tuple(checkpoints),
        label_store_url=url,
        val_fraction=float(dataset.get("val_fraction", 0.2)),
        seed=int(dataset.get("seed", 0)),
        extras={k: v for k, v in config.items() if k not in known},
    )


def _taxonomy_setting(config_path: Path, root: Path, value: object) -> tuple[tuple[str, ...], Path | None]:
    """`[dataset] taxonomy`: a list of manifest columns (broadest first) or the path of a taxonomy CSV."""
    if value is None:
        return (), None
    if isinstance(value, str):
        return (), _resolve(root, value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value), None
    raise WorkspaceError(f"{config_path}: [dataset] taxonomy must be a list of manifest columns (broadest first, e.g. "
                         f'["order", "family"]) or a taxonomy CSV file (e.g. "taxonomy.csv"), got {value!r}')


def add_checkpoint(workspace_root: str | Path, name: str, path: str | Path) -> None:
    """Append a checkpoint entry to the workspace's `taxalens.toml` (used when a training run finishes)."""
    config_path = Path(workspace_root) / CONFIG_NAME
    text = config_path.read_text(encoding="utf-8")
    try:
        rel = Path(path).resolve().relative_to(Path(workspace_root).resolve()).as_posix()
    except ValueError:
        rel = str(Path(path).resolve())
    entry = f'\n[[checkpoints]]\nname = "{_toml_escape(name)}"\npath = "{_toml_escape(rel)}"\n'
    config_path.write_text(text.rstrip("\n") + "\n" + entry, encoding="utf-8")
    load_workspace(workspace_root)  # fail loudly if the result does not parse


def _toml_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()
