"""Shared fixtures: the real test data in ../shared/data (or $TAXALENS_TEST_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# AppTest reads Streamlit's config from the working folder; wherever pytest starts, the app under test is local (app.py
# refuses to show pages on a network address without sign-in).
os.environ.setdefault("STREAMLIT_SERVER_ADDRESS", "127.0.0.1")


def _test_data_dir() -> Path:
    return Path(os.environ.get("TAXALENS_TEST_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The real BCCD white-blood-cell crops; a CI run without them fails instead of skipping."""
    root = _test_data_dir() / "bccd"
    if not root.is_dir():
        message = f"real test data not found at {root}; set TAXALENS_TEST_DATA to the folder holding bccd/"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


# Sources whose change invalidates the cached demo workspace.
_DEMO_SOURCES = ("core/demo.py", "cli/demo.py", "models/train.py", "models/augment.py", "models/sampling.py",
                 "models/checkpoints.py", "models/inference.py", "core/predictions.py", "core/dataset.py")


def _demo_cache_dir() -> Path:
    import hashlib

    digest = hashlib.sha256()
    for name in _DEMO_SOURCES:
        path = REPO / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return REPO / ".pytest_cache" / f"demo-{digest.hexdigest()[:12]}"


def ensure_demo_workspace() -> Path:
    """Build the cached demo workspace for the current sources unless it exists; returns its folder.

    `make test` calls this before pytest (the build trains a small model for a few minutes, which must not count
    against the per-test timeout); the fixture below calls it too, for runs started by hand.
    """
    import fcntl

    target = _demo_cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel pytest runs build it once
        if not (target / "taxalens.toml").is_file():
            import shutil

            from cli.demo import build_demo_workspace

            building = target.with_name(target.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            build_demo_workspace(building)
            building.rename(target)
    return target


@pytest.fixture(scope="session")
def demo_workspace_readonly() -> Path:
    """The full demo workspace (built once per source version, shared; never write into it)."""
    return ensure_demo_workspace()


@pytest.fixture()
def demo_workspace(demo_workspace_readonly: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the demo workspace (label store and caches included)."""
    import shutil

    copy = tmp_path / "demo_ws"
    shutil.copytree(demo_workspace_readonly, copy, symlinks=False)
    return copy
