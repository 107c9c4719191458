"""Tests for core.active_learning: the seed set, the specimen split, the curve bookkeeping, the labels-to-reach
summary on hand-made curves, and a cheap fixed-seed simulation on the demo's stored embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.active_learning import (
    SimulationConfig,
    SimulationData,
    SimulationError,
    build_learning_curve_figure,
    curve_table,
    labels_to_reach,
    seed_set,
    simulate,
    simulation_data,
)
from core.predictions import build_prediction_table, load_predictions


def _blobs(n_per_class: tuple[int, ...], *, dim: int = 12, seed: int = 0, spread: float = 0.8
           ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(len(n_per_class), dim))
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def _data(seed: int = 0) -> SimulationData:
    pool_x, pool_y = _blobs((60, 30, 10, 6), seed=seed)
    eval_x, eval_y = _blobs((20, 10, 5, 3), seed=seed + 100)
    return SimulationData(pool_x, pool_y, np.arange(len(pool_y)) // 2, eval_x, eval_y, ("a", "b", "c", "d"))


def test_seed_set_takes_per_class_images_from_distinct_specimens() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    groups = np.array(["s1", "s1", "s1", "s2", "s3", "s3", "s4", "s5"])
    for seed in range(5):
        chosen = seed_set(y, groups, 2, np.random.default_rng(seed))
        assert np.bincount(y[chosen]).tolist() == [2, 2, 1]
        for c in (0, 1):  # two specimens available: one image of each
            assert len(set(groups[chosen][y[chosen] == c])) == 2


def test_simulation_data_drops_validation_images_of_training_specimens() -> None:
    splits = ["train", "train", "train", "val", "val", "val", "train"]
    specimens = ["s1", "s1", "s2", "s2", "s3", "s4", "s5"]
    labels = ["a", "b", "a", "a", "b", "a", "zzz"]  # the last label is not a model class: never in the pool
    table = build_prediction_table([f"i{j}" for j in range(7)], np.full((7, 2), 0.5), np.eye(7, 3),
                                   labels=labels, splits=splits, specimen_ids=specimens, class_names=("a", "b"))
    data = simulation_data(table)
    assert len(data.pool_y) == 3 and data.pool_groups.tolist() == ["s1", "s1", "s2"]
    assert len(data.eval_y) == 2 and data.eval_y.tolist() == [1, 0]  # i3 (s2, also in train) dropped
    no_embeddings = build_prediction_table(["x", "y"], np.full((2, 2), 0.5), np.zeros((2, 0)), labels=["a", "b"],
                                           splits=["train", "val"], specimen_ids=["1", "2"], class_names=("a", "b"))
    with pytest.raises(SimulationError, match="no embeddings"):
        simulation_data(no_embeddings)


def test_simulate_spends_the_batch_each_round_and_is_reproducible() -> None:
    config = SimulationConfig(orders=("margin", "diversity", "random"), seed_per_class=2, batch=5, rounds=2,
                              seeds=(0, 1), probe_dims=0)
    calls: list[tuple[int, int]] = []
    curve = simulate(_data(), config, progress=lambda done, total: calls.append((done, total)))
    assert len(curve) == 3 * 2 * 3 and calls[-1] == (18, 18) == (config.steps, config.steps)
    assert sorted(curve["labels"].unique().tolist()) == [8, 13, 18]  # 2 per class x 4 classes, then +5
    first = curve[curve["round"] == 0].groupby("seed")["macro_f1"].nunique()
    assert (first == 1).all()  # every order starts from the same seed set and probe
    assert ((curve["macro_f1"] >= 0) & (curve["macro_f1"] <= 1)).all()
    pd.testing.assert_frame_equal(curve, simulate(_data(), config))
    table = curve_table(curve)
    assert table.columns.tolist() == ["round", "labels", "margin", "diversity", "random"]


def test_labels_to_reach_on_hand_made_curves() -> None:
    rows = []
    values = {"random": [0.2, 0.5, 0.6, 0.8], "margin": [0.2, 0.7, 0.8, 0.9], "bad": [0.2, 0.3, 0.4, 0.5]}
    for order, curve in values.items():
        for seed, shift in ((0, -0.05), (1, 0.05)):  # means are the values above
            rows += [(order, seed, r, 10 + 10 * r, v + shift) for r, v in enumerate(curve)]
    curve = pd.DataFrame(rows, columns=["order", "seed", "round", "labels", "macro_f1"])
    summary = labels_to_reach(curve).set_index("order")
    assert summary.attrs["target"] == pytest.approx(0.8) and summary.attrs["baseline_labels"] == 40
    assert summary.loc["margin", "labels_to_reach"] == 30 and summary.loc["margin", "share_of_random"] == 0.75
    assert summary.loc["random", "share_of_random"] == 1.0
    assert summary.loc["margin", "mean_macro_f1"] == pytest.approx(0.65)
    assert np.isnan(summary.loc["bad", "labels_to_reach"])
    assert summary.index.tolist() == ["margin", "random", "bad"]
    with pytest.raises(SimulationError, match="no 'random' order"):
        labels_to_reach(curve[curve["order"] != "random"])
    figure = build_learning_curve_figure(curve)
    assert [trace.name for trace in figure.data] == ["Random", "Uncertain (margin)", "bad"]
    assert list(figure.data[1].y) == pytest.approx(values["margin"])


@pytest.mark.parametrize(("change", "match"), [
    ({"orders": ("margin", "best")}, "orders=.*use one or more of"),
    ({"batch": 0}, "batch=0"),
    ({"seeds": ()}, "seeds"),
])
def test_bad_settings_raise_an_error_naming_them(change: dict, match: str) -> None:
    with pytest.raises(SimulationError, match=match):
        simulate(_data(), SimulationConfig(**change))


@pytest.fixture(scope="module")
def demo_data(demo_workspace_readonly: Path) -> SimulationData:
    files = sorted((demo_workspace_readonly / ".taxalens" / "predictions").glob("*.parquet"))
    return simulation_data(load_predictions(files[0]))


def test_on_the_demo_margin_learns_faster_than_random(demo_data: SimulationData) -> None:
    """The demo's stored embeddings, three fixed seeds, four rounds of 20: the margin curve lies above random's on
    average and ends higher, and both improve on the seed set (a broken ranking or probe fails this)."""
    config = SimulationConfig(orders=("margin", "random"), seed_per_class=2, batch=20, rounds=4, seeds=(0, 1, 2))
    curve = simulate(demo_data, config)
    table = curve_table(curve)
    assert (table.iloc[-1][["margin", "random"]] > table.iloc[0][["margin", "random"]]).all()
    assert table["margin"].iloc[1:].mean() > table["random"].iloc[1:].mean()
    assert table["margin"].iloc[-1] > table["random"].iloc[-1]
