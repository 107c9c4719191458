"""Processes for the taxalens.toml race test (module-level so `spawn` can import them)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from core.workspace import CONFIG_NAME, WorkspaceError, add_checkpoint, load_workspace


def add_checkpoints(root: str, writer: int, n: int, start: object) -> None:
    """Add checkpoints `w<writer>-<j>` for j < n, as fast as the lock allows."""
    start.wait()
    for j in range(n):
        add_checkpoint(root, f"w{writer}-{j}", Path(root) / "ckpt" / f"w{writer}-{j}.safetensors")


def read_continuously(root: str, stop: object, result_path: str) -> None:
    """Parse taxalens.toml in a loop until `stop` is set; write `<reads> <invalid reads> <first problem>`."""
    reads, invalid, first = 0, 0, ""
    config = Path(root) / CONFIG_NAME
    while not stop.is_set():
        try:
            text = config.read_text(encoding="utf-8")
            if "dataset" not in tomllib.loads(text):
                raise WorkspaceError("[dataset] is missing")
            load_workspace(root)
        except (OSError, tomllib.TOMLDecodeError, WorkspaceError) as exc:
            invalid += 1
            first = first or repr(exc)[:200]
        reads += 1
    Path(result_path).write_text(f"{reads} {invalid} {first}", encoding="utf-8")
