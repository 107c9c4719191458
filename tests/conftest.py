"""Shared fixtures: the real test data in ../shared/data (or $TAXALENS_TEST_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
