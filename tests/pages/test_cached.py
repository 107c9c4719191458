"""pages._cached: a warm rerun finds the predictions without re-hashing the dataset (one stat per image)."""

from __future__ import annotations

import os

import pytest
import streamlit as st

import core.dataset
import pages._cached
from tests.pages.eval_workspaces import CHECKPOINT


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """Cold caches; counts the pages' calls of `core.prediction_paths.predictions_path` and of `Dataset.fingerprint`
    (the stat pass)."""
    st.cache_resource.clear()
    calls = {"predictions_path": 0, "fingerprint": 0}
    original_path, original_fingerprint = pages._cached.predictions_path, core.dataset.Dataset.fingerprint

    def predictions_path(*args, **kwargs):
        calls["predictions_path"] += 1
        return original_path(*args, **kwargs)

    def fingerprint(self, **kwargs):
        calls["fingerprint"] += 1
        return original_fingerprint(self, **kwargs)

    monkeypatch.setattr(pages._cached, "predictions_path", predictions_path)
    monkeypatch.setattr(core.dataset.Dataset, "fingerprint", fingerprint)
    return calls


@pytest.mark.parametrize("page", ["pages/home.py", "pages/overview.py", "pages/review.py"])
def test_warm_reruns_do_not_rehash_the_dataset(drawn_workspace, open_page, counted, page):
    app = open_page(drawn_workspace, page)
    cold = dict(counted)
    assert cold["predictions_path"] >= 1 and cold["fingerprint"] >= 1  # the cold run had to find the file
    for _ in range(2):
        app.run()
        assert not app.exception, [e.value for e in app.exception]
    assert counted == cold


def test_new_weights_are_noticed_at_once(drawn_workspace, open_page, counted):
    app = open_page(drawn_workspace, "pages/home.py")
    cold = dict(counted)
    weights = drawn_workspace / "checkpoints" / f"{CHECKPOINT}.safetensors"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "replaced" weights
        app.run()
        assert not app.exception, [e.value for e in app.exception]
        assert counted["predictions_path"] == cold["predictions_path"] + 1
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
