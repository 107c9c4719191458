"""Results derived from a predictions table (bootstrap intervals, per-class tables) cached on disk under a content
key, so a restarted server shows a page's intervals without bootstrapping them again.

A key covers what the result depends on: the caller's parts (the table's content token, split, label mode, the
bootstrap configuration, the specimen grouping) and the source of the modules that compute it, so a change to the
interval code never serves an old result. Values are written as JSON (dataclasses) or Parquet (DataFrames), never
pickled: a workspace may be shared, and a cache file must not be able to run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core import metrics, scores, specimens
from core.metrics import HeadlineMetrics, MetricEstimate

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"  # under the workspace's predictions folder
_CODE_MODULES = (metrics, scores, specimens)  # their source is part of every key
T = TypeVar("T")


@dataclass(frozen=True)
class _Codec:
    """How one type of result is written and read back."""

    suffix: str  # file suffix
    write: Callable[[Any, Path], None]
    read: Callable[[Path], Any]


def _write_json(value: Any, path: Path) -> None:
    path.write_text(json.dumps(_encode(value)), encoding="utf-8")


def _encode(value: Any) -> Any:
    if value is None:
        return {"type": "none"}
    if isinstance(value, HeadlineMetrics):
        return {"type": "headline", "value": dataclasses.asdict(value)}
    raise TypeError(f"no JSON codec for {type(value).__name__}")


def _read_json(path: Path) -> Any:
    blob = json.loads(path.read_text(encoding="utf-8"))
    if blob["type"] == "none":
        return None
    fields = blob["value"]
    return HeadlineMetrics(**{**fields, "estimates": tuple(MetricEstimate(**e) for e in fields["estimates"]),
                              "excluded_labels": tuple(fields["excluded_labels"])})


def _write_frame(value: pd.DataFrame, path: Path) -> None:
    value.to_parquet(path)


# Result types and their codecs; a new cached result type is one entry.
CODECS: dict[type, _Codec] = {
    HeadlineMetrics: _Codec(".json", _write_json, _read_json),
    type(None): _Codec(".json", _write_json, _read_json),
    pd.DataFrame: _Codec(".parquet", _write_frame, pd.read_parquet),
}


@cache
def code_version() -> str:
    """sha256 (16 hex) of the source of the modules that compute cached results."""
    digest = hashlib.sha256()
    for module in _CODE_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def grouping_digest(table_frame: pd.DataFrame) -> str:
    """A digest of the table's specimen grouping (which rows share a specimen), which the bootstrap resamples by
    and the content token does not cover."""
    codes = pd.factorize(table_frame["specimen_id"])[0].astype(np.int64)
    return hashlib.blake2b(codes.tobytes(), digest_size=8).hexdigest()


def result_key(kind: str, *parts: object) -> str:
    """The file stem of a result: `kind` and a sha256 over `parts` and `code_version()`."""
    blob = json.dumps([kind, code_version(), *[str(p) for p in parts]])
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def cached_result(folder: Path | None, key: str, compute: Callable[[], T]) -> T:
    """The result stored under `key` in `folder`, else `compute()` (stored when `folder` is writable; a folder that
    is not, or None, only costs the computation)."""
    if folder is not None:
        for codec in {c.suffix: c for c in CODECS.values()}.values():
            path = folder / f"{key}{codec.suffix}"
            if path.is_file():
                try:
                    return codec.read(path)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    logger.warning("ignoring the cached result %s (%s); computing it again", path, exc)
    value = compute()
    if folder is not None:
        _store(folder, key, value)
    return value


def _store(folder: Path, key: str, value: Any) -> None:
    codec = CODECS.get(type(value))
    if codec is None:
        logger.debug("no codec for %s: %s not cached on disk", type(value).__name__, key)
        return
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".result-", suffix=".tmp")
        os.close(fd)
        codec.write(value, Path(tmp))
        os.replace(tmp, folder / f"{key}{codec.suffix}")
        tmp = None
    except OSError as exc:
        logger.warning("could not cache %s in %s (%s)", key, folder, exc)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
