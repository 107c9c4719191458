"""Class-balanced sampling: the weights by hand, the shares the sampler really draws, and how both samplers shard one
epoch's order across DDP ranks."""

from __future__ import annotations

import numpy as np
import pytest

from models.sampling import (
    DistributedShuffleSampler,
    DistributedWeightedSampler,
    class_balance_weights,
    class_sampling_shares,
)

# -- weights and shares ---------------------------------------------------------------------------------------------


def test_full_balance_weights_by_hand():
    # counts 4, 1, 0: raw weights 1/4, 1, 0; sum(w * n) = 2 images' worth, scaled to the 5 images -> x 2.5
    assert np.allclose(class_balance_weights([4, 1, 0]), [0.625, 2.5, 0.0])
    # square root: 1/2, 1; sum(w * n) = 3, scaled to 5 -> x 5/3
    assert np.allclose(class_balance_weights([4, 1], power=0.5), [5 / 6, 5 / 3])
    assert np.allclose(class_balance_weights([4, 1], power=0.0), [1.0, 1.0])  # natural frequencies
    assert np.allclose(class_balance_weights([0, 0]), [0.0, 0.0])  # nothing to weight, no division by zero


@pytest.mark.parametrize("counts", [[500, 120, 30, 5], [3, 1], [7, 0, 2]])
@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_count_weighted_mean_weight_is_one(counts: list[int], power: float):
    weights = class_balance_weights(counts, power=power)
    assert (weights * counts).sum() == pytest.approx(sum(counts))  # the loss keeps its scale


def test_shares_sum_to_one_and_an_empty_class_gets_none():
    shares = class_sampling_shares([90, 10, 0], power=1.0)
    assert np.allclose(shares, [0.5, 0.5, 0.0])
    half = class_sampling_shares([90, 10], power=0.5)  # sqrt: 90 * 90^-0.5 : 10 * 10^-0.5 = sqrt(90) : sqrt(10)
    assert np.allclose(half, [0.75, 0.25])


@pytest.mark.parametrize(("counts", "power", "message"), [
    ([3, -1], 1.0, "non-negative counts"),
    ([[1, 2]], 1.0, "1-d list"),
    ([3, 1], 1.5, r"power must lie in \[0, 1\], got 1.5"),
    ([3, 1], -0.1, "power must lie in"),
])
def test_bad_counts_and_powers_are_refused(counts, power: float, message: str):
    with pytest.raises(ValueError, match=message):
        class_balance_weights(counts, power=power)


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_balanced_sampler_draws_match_requested_shares(power: float):
    counts = np.array([500, 120, 30, 5])
    labels = np.repeat(np.arange(4), counts)
    shares = class_sampling_shares(counts, power=power)
    sampler = DistributedWeightedSampler(class_balance_weights(counts, power=power)[labels], num_samples=40_000)
    drawn = np.bincount(labels[list(sampler)], minlength=4) / 40_000
    assert np.allclose(drawn, shares, atol=0.01), (drawn, shares)
    if power == 1.0:
        assert np.allclose(shares, 0.25)
    if power == 0.0:
        assert np.allclose(shares, counts / counts.sum())


# -- the weighted sampler -------------------------------------------------------------------------------------------


def test_distributed_sampler_shards_one_draw_disjointly():
    weights = np.linspace(1, 2, 50)
    whole = list(DistributedWeightedSampler(weights, num_samples=100, seed=3))
    ranks = [DistributedWeightedSampler(weights, num_samples=100, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    rank0, rank1 = list(ranks[0]), list(ranks[1])
    assert len(rank0) == len(rank1) == 50
    assert whole == [i for pair in zip(rank0, rank1, strict=True) for i in pair]
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != rank0  # a new draw every epoch


def test_weighted_sampler_never_draws_a_zero_weight_and_repeats_per_seed_and_epoch():
    weights = [0.0, 1.0, 0.0, 3.0]
    sampler = DistributedWeightedSampler(weights, seed=5)
    assert len(sampler) == 4  # one epoch = as many draws as samples by default
    sampler = DistributedWeightedSampler(weights, num_samples=2_000, seed=5)
    first = list(sampler)
    assert set(first) == {1, 3} and 0.7 < first.count(3) / len(first) < 0.8  # 3 : 1
    assert list(DistributedWeightedSampler(weights, num_samples=2_000, seed=5)) == first  # reproducible
    sampler.set_epoch(2)
    assert list(sampler) != first


@pytest.mark.parametrize("weights", [[], [0.0, 0.0], [1.0, -1.0], [[1.0, 2.0]]])
def test_weighted_sampler_refuses_weights_it_cannot_draw_from(weights):
    with pytest.raises(ValueError, match="non-empty 1-d sequence of non-negative numbers with a positive sum"):
        DistributedWeightedSampler(weights)


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match=r"rank 2 is outside \[0, 2\)"):
        DistributedWeightedSampler([1.0, 1.0], num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"rank -1 is outside"):
        DistributedShuffleSampler(4, num_replicas=2, rank=-1)


# -- the shuffle sampler --------------------------------------------------------------------------------------------


def test_shuffle_is_a_seeded_permutation_that_changes_per_epoch():
    sampler = DistributedShuffleSampler(20, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert list(DistributedShuffleSampler(20, seed=1)) == first
    assert list(DistributedShuffleSampler(20, seed=2)) != first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(20)) and second != first


def test_shuffle_shards_pad_by_repeating_the_start_so_every_rank_gets_as_many():
    whole = list(DistributedShuffleSampler(10, seed=4))
    shards = [list(DistributedShuffleSampler(10, num_replicas=3, rank=r, seed=4)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(10 / 3)
    padded = whole + whole[:2]
    assert shards == [padded[r::3] for r in range(3)]
    assert set().union(*map(set, shards)) == set(range(10))  # every sample is seen by some rank


def test_shuffle_of_nothing_is_refused():
    with pytest.raises(ValueError, match=r"cannot sample from an empty dataset \(size 0\)"):
        DistributedShuffleSampler(0)
