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


def test_calibration_results_come_back_equal_and_are_keyed_by_temperature(table, tmp_path: Path, monkeypatch):
    from core import result_cache
    from core.conformal import ConformalConfig
    from core.predictions import table_token
    from core.thresholds import ThresholdConfig

    token = table_token(table, "val")
    config = BootstrapConfig(n_boot=40)
    report = result_cache.calibration_result(tmp_path, token, table, n_bins=10, strategy="uniform", temperature=1.0,
                                             config=config)
    scaled = result_cache.calibration_result(tmp_path, token, table, n_bins=10, strategy="uniform",
                                             temperature=2.0, config=config)
    thresholds = result_cache.thresholds_result(tmp_path, token, table, config=ThresholdConfig(precision=0.8,
                                                                                                n_boot=40))
    coverage = result_cache.coverage_result(tmp_path, token, table, config=ConformalConfig(), repeats=2)
    assert len(list(tmp_path.glob("*.json"))) == 4
    # a second call reads every result back from disk, equal to what was computed
    for name in ("calibration_report", "auto_accept_thresholds", "evaluate_coverage", "calibrate_table"):
        monkeypatch.setattr(result_cache, name, lambda *a, **k: pytest.fail("computed again"))
    again = result_cache.calibration_result(tmp_path, token, table, n_bins=10, strategy="uniform", temperature=1.0,
                                            config=config)
    for name in ("bins", "metrics", "per_class"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(report, name))
    assert (again.n_rows, again.caption, again.strategy) == (report.n_rows, report.caption, report.strategy)
    # the temperature is part of the key: the scaled report is another entry with other numbers
    scaled_again = result_cache.calibration_result(tmp_path, token, table, n_bins=10, strategy="uniform",
                                                   temperature=2.0, config=config)
    pd.testing.assert_frame_equal(scaled_again.metrics, scaled.metrics)
    assert scaled.metrics["value"].iloc[0] != report.metrics["value"].iloc[0]
    thresholds_again = result_cache.thresholds_result(tmp_path, token, table,
                                                      config=ThresholdConfig(precision=0.8, n_boot=40))
    pd.testing.assert_frame_equal(thresholds_again.frame, thresholds.frame)
    assert thresholds_again.config == thresholds.config and thresholds_again.unreachable == thresholds.unreachable
    coverage_again = result_cache.coverage_result(tmp_path, token, table, config=ConformalConfig(), repeats=2)
    pd.testing.assert_frame_equal(coverage_again.per_class, coverage.per_class)
    assert coverage_again.config == coverage.config


def test_taxonomy_results_come_back_equal_and_warm_once(table, tmp_path: Path, monkeypatch):
    """The Taxonomy page's metrics at every rank (nested records: ranks of headline metrics, the mistake severity
    with its histogram) and per-group tables read back equal from disk without recomputing; `warm_taxonomy_results`
    stores exactly what the page asks for (its keys), once."""
    from core import taxonomy_metrics
    from core.predictions import table_token
    from core.result_cache import rank_bootstrap_result, rank_per_class_result, warm_taxonomy_results
    from core.taxonomy import build_taxonomy

    tree = build_taxonomy(("genus", "family"), [(c, (f"G{i // 2}", f"F{i // 4}")) for i, c in
                                                enumerate(table.class_names)], source="hand-built")
    config = BootstrapConfig(n_boot=40)
    part = table.for_split("val")
    token = table_token(part, "val")
    computed = rank_bootstrap_result(None, token, part, tree, rule="sum", config=config)  # no folder: computed only
    assert warm_taxonomy_results(table, tmp_path, tree, config=config, splits=("val",)) == 1 + len(tree.levels)
    assert warm_taxonomy_results(table, tmp_path, tree, config=config, splits=("val",)) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed although stored")

    expected = metrics.per_class_table(taxonomy_metrics.rollup_all(part, tree, rule="sum")[1])
    with monkeypatch.context() as patch:
        patch.setattr(taxonomy_metrics, "rank_bootstrap", refuse)
        patch.setattr(metrics, "per_class_table", refuse)
        again = rank_bootstrap_result(tmp_path, token, part, tree, rule="sum", config=config)
        per_group = rank_per_class_result(tmp_path, token, part, tree, rank=tree.levels[1], rule="sum",
                                          rolled=refuse)
    assert again.ranks == computed.ranks and len(again.ranks) == len(tree.levels)
    pd.testing.assert_frame_equal(again.severity.histogram, computed.severity.histogram)
    assert again.severity.mistake_severity == computed.severity.mistake_severity
    pd.testing.assert_frame_equal(per_group, expected)
    assert len(per_group) == len({f"G{i // 2}" for i in range(len(table.class_names))})
