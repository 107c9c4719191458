"""Tests for core.acquisition: every order ranks all pool images, the uncertainty orders match hand-computed ones,
k-center covers planted clusters before repeating one, rare-first and unknown-first put the right image first,
bad inputs raise an AcquisitionError naming the order or input."""

from __future__ import annotations

import numpy as np
import pytest

from core import acquisition
from core.acquisition import ORDERS, AcquisitionError, PoolView, available_orders, rank_pool
from core.errors import TaxaLensError

PROBS = np.array([
    [0.50, 0.45, 0.05],  # margin 0.05, entropy 0.8639
    [0.90, 0.05, 0.05],  # margin 0.85, entropy 0.3944
    [0.34, 0.33, 0.33],  # margin 0.01, entropy 1.0985 (most uncertain both ways)
    [0.60, 0.20, 0.20],  # margin 0.40, entropy 0.9503 (more entropy than row 0, larger margin)
    [0.70, 0.30, 0.00],  # margin 0.40, entropy 0.6109
])


def _clusters(sizes: tuple[int, ...], *, dim: int = 16, spread: float = 0.02, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters around orthogonal directions (far apart after L2 normalisation); returns (x, cluster id)."""
    rng = np.random.default_rng(seed)
    rows, ids = [], []
    for c, size in enumerate(sizes):
        centre = np.zeros(dim)
        centre[c] = 1.0
        rows.append(centre + spread * rng.normal(size=(size, dim)))
        ids.append(np.full(size, c))
    order = rng.permutation(sum(sizes))
    return np.vstack(rows)[order].astype(np.float32), np.concatenate(ids)[order]


def _view(probs: np.ndarray = PROBS, **kwargs) -> PoolView:
    fields = {"embeddings": None, "labelled_counts": np.ones(probs.shape[-1], dtype=int), "novelty": None}
    fields.update(kwargs)
    return PoolView(probs=probs, **fields)


def test_margin_and_entropy_match_hand_computed_orders() -> None:
    margins = PROBS.max(axis=1) - np.sort(PROBS, axis=1)[:, -2]
    np.testing.assert_allclose(acquisition.margin_scores(PROBS), margins)
    entropy = [-sum(p * np.log(p) for p in row if p > 0) for row in PROBS]
    np.testing.assert_allclose(acquisition.entropy_scores(PROBS), entropy)
    assert rank_pool("entropy", _view()).tolist() == [2, 3, 0, 4, 1]
    margin_order = rank_pool("margin", _view()).tolist()
    assert margin_order[:2] == [2, 0] and margin_order[-1] == 1 and set(margin_order[2:4]) == {3, 4}


def test_every_order_ranks_every_image_once_and_a_seed_fixes_the_order() -> None:
    x, _ = _clusters((30, 20, 10))
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=len(x))
    view = PoolView(probs, x, np.array([5, 1, 0, 9]), rng.random(len(x)), x[:4])
    for name in ORDERS:
        ranked = rank_pool(name, view, seed=7, batch=10)
        assert ranked.dtype == np.int64 and sorted(ranked.tolist()) == list(range(len(x))), name
        assert ranked.tolist() == rank_pool(name, view, seed=7, batch=10).tolist(), name
    assert rank_pool("random", view, seed=1).tolist() != rank_pool("random", view, seed=2).tolist()


def test_k_center_picks_one_per_planted_cluster_before_a_second_from_any() -> None:
    sizes = (60, 25, 8, 4, 2, 1)
    x, cluster = _clusters(sizes)
    view = _view(np.full((len(x), 2), 0.5), embeddings=x)
    for seed in range(3):
        first = cluster[rank_pool("diversity", view, seed=seed, batch=10)[:len(sizes)]]
        assert sorted(first.tolist()) == list(range(len(sizes))), (seed, first)
    # Random order almost never does this with a 60:1 cluster imbalance: the test can tell the two apart.
    random_first = cluster[rank_pool("random", view, seed=0)[:len(sizes)]]
    assert len(set(random_first.tolist())) < len(sizes)


def test_k_center_starts_from_the_labelled_embeddings() -> None:
    x, cluster = _clusters((40, 30, 5, 3))
    labelled = x[cluster <= 1][:10]
    view = _view(np.full((len(x), 2), 0.5), embeddings=x, labelled_embeddings=labelled)
    first = cluster[rank_pool("diversity", view, batch=5)[:2]]
    assert sorted(first.tolist()) == [2, 3]


def test_k_center_in_principal_components_still_covers_the_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = (200, 50, 10, 3)
    x, cluster = _clusters(sizes, dim=64)
    monkeypatch.setattr(acquisition, "EXACT_BUDGET", 0)  # force the projected path on a small pool
    ranked = acquisition.k_center_greedy(x, batch=20, rng=np.random.default_rng(0))
    assert sorted(cluster[ranked[:4]].tolist()) == [0, 1, 2, 3]
    assert sorted(ranked.tolist()) == list(range(len(x)))


def test_diverse_uncertain_prefers_the_uncertain_of_two_equally_new_clusters() -> None:
    x, cluster = _clusters((20, 20, 20))
    probs = np.where(cluster[:, None] == 1, [0.5, 0.5], [0.99, 0.01])  # cluster 1 uncertain, 2 confident
    labelled = x[cluster == 0]
    view = _view(probs, embeddings=x, labelled_embeddings=labelled)
    assert cluster[rank_pool("diverse_uncertain", view, batch=5)[0]] == 1
    assert cluster[rank_pool("diversity", view, batch=5)[:2]].tolist() in ([1, 2], [2, 1])


def test_rare_first_puts_the_predicted_rare_class_first_and_breaks_ties_by_margin() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.1, 0.55, 0.35], [0.9, 0.05, 0.05]])
    counts = np.array([100, 3, 40])  # class 1 rare, class 0 common
    ranked = rank_pool("rare_first", _view(probs, labelled_counts=counts)).tolist()
    assert ranked == [3, 2, 1, 0, 4]  # class 1 (margin 0.2 before 0.5), class 2, class 0 (margin 0.7 before 0.85)


def test_unknown_first_follows_the_novelty_score_or_the_knn_distance() -> None:
    novelty = np.array([0.1, 0.9, 0.3, 0.2, 0.5])
    assert rank_pool("unknown_first", _view(novelty=novelty)).tolist() == [1, 4, 2, 3, 0]
    x, cluster = _clusters((20, 1))  # one image of a direction no labelled image has
    view = _view(np.full((len(x), 2), 0.5), embeddings=x, labelled_embeddings=x[cluster == 0][:10])
    assert cluster[rank_pool("unknown_first", view)[0]] == 1


def test_orders_needing_embeddings_are_unavailable_without_them() -> None:
    assert set(available_orders(_view())) == set(ORDERS) - {"diversity", "diverse_uncertain"}
    with pytest.raises(AcquisitionError, match="'diversity' order needs embeddings") as caught:
        rank_pool("diversity", _view())
    assert isinstance(caught.value, TaxaLensError)


@pytest.mark.parametrize(("kwargs", "order", "match"), [
    ({}, "most_useful", "unknown acquisition order 'most_useful'.*margin"),
    ({"labelled_counts": np.array([1, 2])}, "margin", r"labelled_counts must be \(3,\)"),
    ({"probs": np.array([[0.5, np.nan, 0.5]])}, "entropy", "NaN"),
    ({"probs": np.array([0.2, 0.8]), "labelled_counts": np.ones(2)}, "margin", r"\(n, k\) array"),
    ({"embeddings": np.zeros((2, 4))}, "diversity", r"embeddings must be \(5, d\)"),
    ({"novelty": np.zeros(4)}, "unknown_first", r"novelty must be \(5,\)"),
    ({"embeddings": np.zeros((5, 4)), "labelled_embeddings": np.zeros((3, 6))}, "diversity",
     r"labelled_embeddings must be \(m, 4\)"),
])
def test_bad_inputs_raise_an_error_naming_them(kwargs: dict, order: str, match: str) -> None:
    probs = kwargs.pop("probs", PROBS)
    with pytest.raises(AcquisitionError, match=match):
        rank_pool(order, _view(probs, **kwargs))


def test_a_batch_below_one_is_refused() -> None:
    with pytest.raises(AcquisitionError, match="batch=0"):
        rank_pool("margin", _view(), batch=0)


def test_pool_view_takes_counts_and_embeddings_of_the_labelled_training_rows() -> None:
    from core.predictions import build_prediction_table

    table = build_prediction_table(
        [f"s{i}" for i in range(6)], np.full((6, 3), 1 / 3), np.arange(18, dtype=float).reshape(6, 3),
        labels=["a", "a", "b", "c", "zzz", "a"], splits=["train", "train", "train", "val", "train", "val"],
        specimen_ids=[f"p{i}" for i in range(6)], class_names=("a", "b", "c"))
    probs = np.full((4, 3), 1 / 3)
    view = acquisition.pool_view(probs, np.ones((4, 3)), table)
    assert view.labelled_counts.tolist() == [2, 1, 0]  # train rows with a known label only
    assert view.labelled_embeddings.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    every_split = acquisition.pool_view(probs, np.ones((4, 3)), table, split=None)
    assert every_split.labelled_counts.tolist() == [3, 1, 1]
    narrower = acquisition.pool_view(probs, np.ones((4, 2)), table)  # other weights: no labelled embeddings
    assert narrower.labelled_embeddings is None and narrower.has("embeddings")
    assert acquisition.pool_view(probs, np.zeros((4, 0)), table).embeddings is None


def test_a_large_labelled_set_is_sampled_and_still_steers_diversity_and_novelty(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    x, cluster = _clusters((50, 40, 3, 1), dim=48)
    labelled = x[cluster <= 1]  # 90 labelled images of the two big clusters
    monkeypatch.setattr(acquisition, "MAX_REFERENCE", 12)
    monkeypatch.setattr(acquisition, "EXACT_BUDGET", 0)  # and the projected path for both
    view = _view(np.full((len(x), 2), 0.5), embeddings=x, labelled_embeddings=labelled)
    assert sorted(cluster[rank_pool("diversity", view, batch=4)[:2]].tolist()) == [2, 3]
    assert set(cluster[rank_pool("unknown_first", view)[:4]].tolist()) == {2, 3}
