"""Interval results cached on disk: read back equal (JSON / Parquet, no pickle), keyed by content, computed once,
and a damaged or unwritable cache only costs the computation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core import metrics
from core.result_cache import cached_result, code_version, grouping_digest, has_result, result_key
from core.scores import BootstrapConfig
from tests.core.tables import random_table


@pytest.fixture(scope="module")
def table():
    return random_table(n=300, k=5, seed=3)


def _counted(compute):
    calls = []

    def wrapped():
        calls.append(1)
        return compute()

    return wrapped, calls


def test_headline_and_per_class_results_come_back_equal_without_recomputing(table, tmp_path: Path):
    headline = lambda: metrics.compute_headline_metrics(table, n_boot=50, seed=0)  # noqa: E731
    per_class = lambda: metrics.per_class_table(table, intervals=BootstrapConfig(n_boot=50))  # noqa: E731
    for kind, compute in (("headline", headline), ("per-class", per_class)):
        key = result_key(kind, "token", grouping_digest(table.frame))
        counted, calls = _counted(compute)
        first = cached_result(tmp_path, key, counted)
        again = cached_result(tmp_path, key, counted)
        assert len(calls) == 1
        if isinstance(first, pd.DataFrame):
            pd.testing.assert_frame_equal(again, first)
        else:
            assert again == first and again.estimates[0].low is not None
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".parquet"]
    none_key = result_key("specimen-headline", "token")
    assert cached_result(tmp_path, none_key, lambda: None) is None
    assert cached_result(tmp_path, none_key, lambda: pytest.fail("computed again")) is None


def test_keys_change_with_the_parts_the_grouping_and_the_code(table):
    base = result_key("headline", "tok", grouping_digest(table.frame), "cfg")
    assert base == result_key("headline", "tok", grouping_digest(table.frame), "cfg")
    assert base != result_key("headline", "tok|curated@3", grouping_digest(table.frame), "cfg")
    assert base != result_key("per-class", "tok", grouping_digest(table.frame), "cfg")
    regrouped = table.frame.assign(specimen_id=["one"] * 2 + table.frame["specimen_id"].tolist()[2:])
    assert grouping_digest(regrouped) != grouping_digest(table.frame)
    assert len(code_version()) == 16


def test_a_damaged_file_or_an_unwritable_folder_only_costs_the_computation(table, tmp_path: Path, caplog):
    key = result_key("headline", "t")
    (tmp_path / f"{key}.json").write_text("{not json")
    value = cached_result(tmp_path, key, lambda: metrics.compute_headline_metrics(table, n_boot=0))
    assert value.n_boot == 0 and "ignoring the cached result" in caplog.text
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would go")
    assert cached_result(blocked / "sub", key, lambda: None) is None
    assert "could not cache" in caplog.text
    assert cached_result(None, key, lambda: 7) == 7


def test_has_result_says_whether_a_key_is_stored(tmp_path: Path):
    key = result_key("curves", "token")
    assert not has_result(tmp_path, key) and not has_result(None, key)
    cached_result(tmp_path, key, lambda: pd.DataFrame({"x": [1, 2]}))
    assert has_result(tmp_path, key) and not has_result(tmp_path, result_key("curves", "other"))
