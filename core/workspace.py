"""Workspace configuration: `taxalens.toml` naming the dataset, the checkpoints and the label store.

Every change to `taxalens.toml` goes through `update_workspace_config`: under a file lock, the edited text is written
to a temporary file beside it, re-read and validated as a workspace, then moved over the old file (`os.replace`), so
concurrent writers lose nothing and a reader never sees a half-written or invalid file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from core.dataset import Dataset, load_dataset
from core.dataset_index import INDEX_NAME, MANIFEST_CACHE_NAME
from core.dataset_snapshot import SNAPSHOT_NAME, Snapshot, read_snapshot, snapshot_key, write_snapshot
from core.errors import TaxaLensError

if TYPE_CHECKING:
    from core.access import Actor

logger = logging.getLogger(__name__)

CONFIG_NAME = "taxalens.toml"
CACHE_DIR = ".taxalens"
LOCK_NAME = "taxalens.toml.lock"  # in CACHE_DIR: held while taxalens.toml is rewritten
MAX_ENTRY_NAME_LENGTH = 100  # characters of a checkpoint or ensemble name
# Letters and digits of any script, then also spaces and . _ ( ) + -: no quotes, brackets, `=`, `#`, backslashes,
# newlines or other control characters, so a name is never TOML (or Markdown link) syntax.
_ENTRY_NAME = re.compile(r"[^\W_][\w .()+-]*")
_UNSAFE_RUN = re.compile(r"[^\w.()+-]+")


class WorkspaceError(TaxaLensError, ValueError):
    """A workspace folder or `taxalens.toml` that cannot be used."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint listed in the workspace."""

    name: str  # short name shown in the UI and used on the command line
    path: Path  # absolute path of the weights file
    arch: str | None = None  # timm architecture, when the file does not carry it
    classes: Path | None = None  # text file of class names (one per line), when the file does not carry them
    trust: bool = False  # allow loading a pickled object or TorchScript (code) from this file (explicit opt-in)


@dataclass(frozen=True)
class PoolSpec:
    """One unlabelled pool listed in the workspace (`[[pools]]`): new images to label, no labels."""

    name: str  # short name shown in the UI; part of each image's sample id (`pool:<name>/<path>`)
    source: Path  # a folder of images (any depth) or a CSV with a `path` column
    root: Path  # the folder the images' paths are relative to (the folder itself, or the CSV's `root`/its folder)

    @property
    def is_manifest(self) -> bool:
        return self.source.suffix.lower() == ".csv" and not self.source.is_dir()


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
    pools: tuple[PoolSpec, ...] = ()  # unlabelled pools of new images ([[pools]]), in the order listed

    @property
    def cache_dir(self) -> Path:
        return self.root / CACHE_DIR

    def checkpoint(self, name: str) -> CheckpointSpec:
        for spec in self.checkpoints:
            if spec.name == name:
                return spec
        raise WorkspaceError(f"no checkpoint named {name!r} in {self.root / CONFIG_NAME}; "
                             f"known: {[c.name for c in self.checkpoints]}")

    def pool(self, name: str) -> PoolSpec:
        for spec in self.pools:
            if spec.name == name:
                return spec
        raise WorkspaceError(f"no pool named {name!r} in {self.root / CONFIG_NAME}; known: "
                             f"{[p.name for p in self.pools]} (add a [[pools]] table with name and root or manifest)")

    def pool_index_path(self, name: str) -> Path:
        """The image-check index (`core.dataset_index`) of pool `name`."""
        return self.cache_dir / f"pool-{_UNSAFE_RUN.sub('_', name)}-{INDEX_NAME}"

    @property
    def dataset_index_path(self) -> Path:
        """The dataset index (`core.dataset_index`): each image's check result under its size and mtime."""
        return self.cache_dir / INDEX_NAME

    @property
    def manifest_cache_path(self) -> Path:
        """The parsed manifest (`core.dataset_index.read_manifest_cache`), under the manifest's size and mtime."""
        return self.cache_dir / MANIFEST_CACHE_NAME

    @property
    def dataset_snapshot_path(self) -> Path:
        """The dataset snapshot (`core.dataset_snapshot`): a large dataset's last full load, for a quick reopen."""
        return self.cache_dir / SNAPSHOT_NAME

    def load_dataset(self, **kwargs) -> Dataset:
        """The workspace dataset (`core.dataset.load_dataset` keyword arguments); images are checked through the
        workspace's dataset index, so a reopen opens only the new or changed ones, and an unchanged manifest is read
        from its parsed copy in the cache folder. A load with the workspace's own settings (`verify` aside) also
        keeps the dataset snapshot of a large dataset up to date (`core.dataset_snapshot.write_snapshot`)."""
        own = set(kwargs) <= {"verify"}
        kwargs.setdefault("index", self.dataset_index_path)
        kwargs.setdefault("manifest_cache", self.manifest_cache_path)
        dataset = load_dataset(self.dataset_source, root=self.dataset_root, taxonomy=self.taxonomy,
                               val_fraction=self.val_fraction, seed=self.seed, **kwargs)
        if own:
            try:
                key = self.snapshot_key(verify=kwargs.get("verify", "header"))
            except OSError:  # the manifest went away since the load read it: the next load says so
                return dataset
            write_snapshot(self.dataset_snapshot_path, key, dataset)
        return dataset

    def snapshot_key(self, *, verify: str = "header") -> dict:
        """What this workspace's dataset snapshot is valid for (`core.dataset_snapshot.snapshot_key`)."""
        return snapshot_key(self.dataset_source, self.dataset_root or self.dataset_source,
                            taxonomy=tuple(self.taxonomy or ()), val_fraction=self.val_fraction, seed=self.seed,
                            verify=verify)

    def quick_dataset(self, *, verify: str = "header") -> Snapshot | None:
        """The dataset as the last full load left it (`core.dataset_snapshot.read_snapshot`), its files not looked
        at: None when there is no snapshot for the current settings and manifest (or the dataset is below the
        quick-open size). Check it against the files (`core.dataset_snapshot.start_check`) before trusting it."""
        try:
            key = self.snapshot_key(verify=verify)
        except OSError:
            return None
        return read_snapshot(self.dataset_snapshot_path, key)


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
    dataset = _table(config, "dataset", config_path)
    source = _text(dataset, "manifest", "dataset", config_path) or _text(dataset, "root", "dataset", config_path)
    if not source:
        raise WorkspaceError(f"{config_path} needs [dataset] with `root` (an ImageFolder) or `manifest` (a CSV)")
    checkpoints = []
    entries = config.get("checkpoints") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise WorkspaceError(f"{config_path}: `checkpoints` must be a list of [[checkpoints]] tables (name = ..., "
                             f"path = ...), got {_shown(entries)}")
    for i, entry in enumerate(entries):
        where = f"checkpoints[{i}]"
        ckpt_source = _text(entry, "path", where, config_path)
        if not ckpt_source:
            raise WorkspaceError(f"{config_path}: checkpoints[{i}] has no `path`")
        ckpt_path = _resolve(root, ckpt_source)
        classes = _text(entry, "classes", where, config_path)
        trust = entry.get("trust", False)
        if not isinstance(trust, bool):
            raise WorkspaceError(f"{config_path}: `trust` in {where} must be true or false, got {_shown(trust)}")
        checkpoints.append(CheckpointSpec(
            name=_text(entry, "name", where, config_path) or ckpt_path.stem,
            path=ckpt_path,
            arch=_text(entry, "arch", where, config_path),
            classes=_resolve(root, classes) if classes else None,
            trust=trust,
        ))
    names = [c.name for c in checkpoints]
    if len(set(names)) != len(names):
        raise WorkspaceError(f"{config_path}: checkpoint names must be unique, got {names}")
    labels = _table(config, "labels", config_path)
    url = (os.environ.get("TAXALENS_LABEL_STORE_URL") or _text(labels, "url", "labels", config_path)
           or f"sqlite:///{root / 'labels.db'}")
    taxonomy_columns, taxonomy_file = _taxonomy_setting(config_path, root, dataset.get("taxonomy"))
    val_fraction = dataset.get("val_fraction", 0.2)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise WorkspaceError(f"{config_path}: `val_fraction` in [dataset] must be a number from 0 to below 1 (the "
                             f"share of specimens held out, e.g. val_fraction = 0.2), got {_shown(val_fraction)}")
    seed = dataset.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WorkspaceError(f"{config_path}: `seed` in [dataset] must be a whole number (seed = 0), got "
                             f"{_shown(seed)}")
    dataset_root = _text(dataset, "root", "dataset", config_path)
    if not dataset.get("manifest") and dataset_root:
        folder = _resolve(root, dataset_root)
        if folder.is_file() and folder.suffix.lower() != ".csv":
            raise WorkspaceError(f"{config_path}: `root` in [dataset] is {folder}, a file, not a folder; set `root` "
                                 "to the folder that holds one sub-folder per class (or `manifest` to a CSV)")
    pools = _pool_specs(config, config_path, root)
    known = {"dataset", "checkpoints", "labels", "pools"}
    return Workspace(
        root=root,
        dataset_source=_resolve(root, source),
        dataset_root=_resolve(root, dataset_root) if dataset.get("manifest") and dataset_root else None,
        taxonomy=taxonomy_columns,
        taxonomy_file=taxonomy_file,
        checkpoints=tuple(checkpoints),
        label_store_url=url,
        val_fraction=float(val_fraction),
        seed=seed,
        extras={k: v for k, v in config.items() if k not in known},
        pools=pools,
    )


def _pool_specs(config: dict, config_path: Path, root: Path) -> tuple[PoolSpec, ...]:
    """`[[pools]]`: each a name and `root` (a folder of images) or `manifest` (a CSV of paths, relative to `root`
    when given, else to the CSV's folder)."""
    entries = config.get("pools") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise WorkspaceError(f"{config_path}: `pools` must be a list of [[pools]] tables (name = ..., root = ... or "
                             f"manifest = ...), got {_shown(entries)}")
    pools = []
    for i, entry in enumerate(entries):
        where = f"pools[{i}]"
        name = _text(entry, "name", where, config_path)
        if not name:
            raise WorkspaceError(f'{config_path}: {where} has no `name` (name = "spring-2027")')
        try:
            validate_entry_name(name, kind="pool")
        except WorkspaceError as exc:
            raise WorkspaceError(f"{config_path}: {where}: {exc}") from exc
        manifest = _text(entry, "manifest", where, config_path)
        folder = _text(entry, "root", where, config_path)
        if not manifest and not folder:
            raise WorkspaceError(f'{config_path}: {where} ({name!r}) needs `root` (a folder of images) or `manifest` '
                                 '(a CSV with a `path` column), e.g. root = "incoming/2027"')
        source = _resolve(root, manifest or folder)
        if manifest and source.suffix.lower() != ".csv":
            raise WorkspaceError(f"{config_path}: `manifest` in {where} ({name!r}) is {source}, not a .csv file; "
                                 "use `root` for a folder of images")
        if not manifest and source.is_file():
            raise WorkspaceError(f"{config_path}: `root` in {where} ({name!r}) is {source}, a file, not a folder; "
                                 "use `manifest` for a CSV of paths")
        pool_root = _resolve(root, folder) if manifest and folder else (source.parent if manifest else source)
        pools.append(PoolSpec(name=name, source=source, root=pool_root))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise WorkspaceError(f"{config_path}: pool names must be unique, got {names}")
    return tuple(pools)


def _taxonomy_setting(config_path: Path, root: Path, value: object) -> tuple[tuple[str, ...], Path | None]:
    """`[dataset] taxonomy`: a list of manifest columns (broadest first) or the path of a taxonomy CSV (`.csv`)."""
    if value is None:
        return (), None
    if isinstance(value, str) and value.strip().lower().endswith(".csv"):  # "phylum" is a column named wrongly
        return (), _resolve(root, value.strip())
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(value), None
    raise WorkspaceError(f"{config_path}: `taxonomy` in [dataset] must be a list of manifest columns, broadest first "
                         f'(taxonomy = ["phylum", "order"]), or a taxonomy CSV file (taxonomy = "taxonomy.csv"), got '
                         f"{_shown(value)}")


def _table(config: dict, key: str, config_path: Path) -> dict:
    """`config[key]` as a table (empty when absent); a workspace error naming the key when it is something else."""
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WorkspaceError(f"{config_path}: `{key}` must be a table ([{key}] on a line of its own, followed by "
                             f"key = value lines), got {_shown(value)}")
    return value


def _text(table: dict, key: str, where: str, config_path: Path) -> str | None:
    """A text setting of `table` (None when absent or empty); a workspace error naming `where`.`key` otherwise."""
    value = table.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WorkspaceError(f'{config_path}: `{key}` in {_section(where)} must be text in quotes ({key} = "..."), '
                             f"got {_shown(value)}")
    return value


def _section(where: str) -> str:
    return where if "[" in where else f"[{where}]"


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def validate_entry_name(name: object, *, kind: str = "checkpoint") -> str:
    """Return `name` when it may name a checkpoint or ensemble, else raise WorkspaceError saying why.

    Allowed: 1 to MAX_ENTRY_NAME_LENGTH letters or digits (any script), spaces and `. _ ( ) + -`, starting with a
    letter or digit and not ending with a space.
    """
    if not isinstance(name, str) or not name:
        raise WorkspaceError(f"a {kind} name is required, got {name!r}")
    if len(name) > MAX_ENTRY_NAME_LENGTH:
        raise WorkspaceError(f"{kind} name {name[:40]!r}... is {len(name)} characters long; use at most "
                             f"{MAX_ENTRY_NAME_LENGTH}")
    if not _ENTRY_NAME.fullmatch(name) or name != name.rstrip():
        suggestion = _UNSAFE_RUN.sub("-", name).strip("-_ .") or kind
        raise WorkspaceError(f"{kind} name {name!r} may use only letters, digits, spaces and . _ ( ) + - (starting "
                             f"with a letter or digit, no trailing space); rename it, e.g. {suggestion!r}")
    return name


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (quotes, backslashes and every control character escaped)."""
    escaped = []
    for ch in text:
        if ch in ('"', "\\"):
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04X}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def update_workspace_config(workspace_root: str | Path, edit: Callable[[str, Workspace], str], *,
                            check: Callable[[Workspace], object] | None = None,
                            lock_timeout_s: float = 60.0) -> Workspace:
    """Change `taxalens.toml` atomically; returns the workspace as written.

    Under a file lock (`.taxalens/taxalens.toml.lock`), `edit(current text, current workspace)` returns the new text;
    it is written to a temporary file beside the config, re-read as a workspace (and passed to `check`, which raises
    to refuse it), then `os.replace`d over the config. Anything `edit` or the checks raise leaves the file as it was.
    """
    root = Path(workspace_root).expanduser().resolve()
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise WorkspaceError(f"{root} is not a TaxaLens workspace: {CONFIG_NAME} not found")
    (root / CACHE_DIR).mkdir(exist_ok=True)
    try:
        with FileLock(str(root / CACHE_DIR / LOCK_NAME), timeout=lock_timeout_s):
            current = load_workspace(root)
            text = edit(config_path.read_text(encoding="utf-8"), current)
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{CONFIG_NAME}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, config_path.stat().st_mode & 0o7777)
                try:
                    written = load_workspace(tmp)
                except WorkspaceError as exc:
                    raise WorkspaceError(f"refused to change {config_path}: the result would not be a valid "
                                         f"workspace ({exc}); the file is unchanged") from exc
                if check is not None:
                    check(written)
                os.replace(tmp, config_path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except Timeout as exc:
        raise WorkspaceError(f"{config_path} is being changed by another process (lock {exc.lock_file} held for "
                             f"{lock_timeout_s:.0f} s); try again, or remove the lock file if no TaxaLens process "
                             "is running") from exc
    logger.info("updated %s", config_path)
    return load_workspace(root)


def add_checkpoint(workspace_root: str | Path, name: str, path: str | Path, *, actor: Actor | None = None) -> None:
    """Append a checkpoint entry to the workspace's `taxalens.toml` (used when a training run finishes).

    `actor`: who asks (needs the `edit_workspace` permission); None for a trusted caller (the command line, tests).
    """
    if actor is not None:
        actor.require("edit_workspace")
    name = validate_entry_name(name, kind="checkpoint")
    try:
        rel = Path(path).resolve().relative_to(Path(workspace_root).resolve()).as_posix()
    except ValueError:
        rel = str(Path(path).resolve())

    def _append(text: str, current: Workspace) -> str:
        if name in {c.name for c in current.checkpoints}:
            raise WorkspaceError(f"the workspace already has a checkpoint named {name!r}; choose another name")
        entry = f"\n[[checkpoints]]\nname = {toml_string(name)}\npath = {toml_string(rel)}\n"
        return text.rstrip("\n") + "\n" + entry

    update_workspace_config(workspace_root, _append)


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()
