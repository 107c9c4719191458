"""What a checkpoint file says about itself without torch: its sha256, the TaxaLens metadata in a `.safetensors`
header, its class-list file, and the preprocessing key the prediction caches are filed under.

`models.checkpoints` builds models from the same header (and validates every field); this module only reads it, so
the landing page and the cache lookups (`core.prediction_paths`) never import torch or timm.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.errors import TaxaLensError

METADATA_KEY = "taxalens"  # the `__metadata__` entry of a TaxaLens `.safetensors` header
# The preprocessing a card has when its metadata leaves a field out (`models.checkpoints.ModelCard`'s defaults).
DATA_CONFIG_DEFAULTS = {
    "input_size": (3, 224, 224),  # channels, height, width
    "mean": (0.485, 0.456, 0.406),  # per-channel normalisation mean
    "std": (0.229, 0.224, 0.225),  # per-channel normalisation std
    "interpolation": "bicubic",  # resize interpolation
    "crop_pct": 0.875,  # centre-crop fraction at eval
    "crop_mode": "center",  # timm crop mode
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # what the safetensors library itself accepts


class CheckpointError(TaxaLensError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message says why and what to pass instead."""


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line) or a JSON list."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        names = json.loads(text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise CheckpointError(f"class list {path} must name each class once, one per line; got {len(names)} entries")
    return tuple(str(n) for n in names)


def read_taxalens_metadata(path: str | Path) -> dict | None:
    """The TaxaLens metadata object of a `.safetensors` file's header (read from the first bytes, no tensor loaded);
    None for a file that is not a readable safetensors file or carries no TaxaLens metadata.

    Raises `CheckpointError` when the metadata is there but is not a JSON object."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= _MAX_HEADER_BYTES:
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        return None
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: the `{METADATA_KEY}` metadata in the header is not JSON ({exc}); re-save the checkpoint with "
            "TaxaLens (`python -m cli train` or save_taxalens_checkpoint)"
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the `{METADATA_KEY}` metadata in the header is a JSON {type(meta).__name__}, "
                              "not an object; re-save the checkpoint with TaxaLens")
    return meta


def preprocessing_key(arch: str, class_names: Sequence[str], data_config: Mapping) -> dict:
    """What a prediction cache key must cover besides the weights: arch, class names and the timm data config
    (`input_size`, `mean`, `std`, `interpolation`, `crop_pct`, `crop_mode`)."""
    return {"arch": arch, "classes": list(class_names), **data_config}


def stored_preprocessing_key(path: str | Path) -> dict | None:
    """`preprocessing_key` of a TaxaLens checkpoint from its header alone (the same dict as the loaded card's
    `ModelCard.preprocessing_key()`); None for a checkpoint without TaxaLens metadata. Raises `CheckpointError`
    for metadata that lacks a field or holds one of the wrong type."""
    meta = read_taxalens_metadata(path)
    if meta is None:
        return None
    try:
        config = {
            "input_size": tuple(int(v) for v in meta["input_size"]),
            "mean": tuple(float(v) for v in meta["mean"]),
            "std": tuple(float(v) for v in meta["std"]),
            "interpolation": str(meta.get("interpolation", DATA_CONFIG_DEFAULTS["interpolation"])),
            "crop_pct": float(meta.get("crop_pct", DATA_CONFIG_DEFAULTS["crop_pct"])),
            "crop_mode": str(meta.get("crop_mode", DATA_CONFIG_DEFAULTS["crop_mode"])),
        }
        return preprocessing_key(str(meta["arch"]), [str(n) for n in meta["class_names"]], config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the TaxaLens metadata in the header is incomplete or malformed ({exc!r}); "
                              "re-save the checkpoint with TaxaLens") from exc


def timm_version() -> str:
    """The installed timm's version, from the package metadata (no import of timm or torch)."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
