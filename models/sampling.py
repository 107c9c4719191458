"""Class-balanced sampling for training: per-class weights and a weighted sampler that also shards across DDP ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def class_balance_weights(class_counts: Sequence[int], *, power: float = 1.0) -> np.ndarray:
    """Per-class weights `count ** -power`, scaled so the count-weighted mean is 1.

    `class_counts`: training images per class, length K. `power`: 1 weights every class equally in total
    (full balance), 0.5 is square-root balancing, 0 leaves the natural frequencies. Classes with no images get 0.
    Used as loss weights (`balance="loss"`) and, times the counts, as the sampler's class shares.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class_counts must be a 1-d list of non-negative counts, got {class_counts!r}")
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must lie in [0, 1], got {power}")
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** -power
    total = float((weights * counts).sum())
    return weights * (counts.sum() / total) if total > 0 else weights


def class_sampling_shares(class_counts: Sequence[int], *, power: float = 1.0) -> np.ndarray:
    """The share of draws each class gets under `class_balance_weights(..., power=power)`; sums to 1."""
    counts = np.asarray(class_counts, dtype=np.float64)
    mass = class_balance_weights(counts, power=power) * counts
    return mass / mass.sum()


class _EpochShardedSampler(Sampler[int]):
    """What both samplers share: `num_samples` per rank, a generator seeded by `seed + epoch` (call `set_epoch`)."""

    def __init__(self, total: int, *, num_replicas: int, rank: int, seed: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.num_samples = math.ceil(total / num_replicas)  # per rank
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return generator


class DistributedWeightedSampler(_EpochShardedSampler):
    """Draws `num_samples` indices per epoch with replacement, with probability proportional to `weights`.

    All ranks draw the same global sequence from a generator seeded by `seed + epoch` and each keeps every
    `num_replicas`-th index starting at `rank`, so the ranks see disjoint shares of one weighted draw. With
    `num_replicas=1` it is a plain (seeded, reproducible) weighted random sampler. Call `set_epoch` each epoch.
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray,
        *,
        num_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or float(weights.sum()) <= 0:
            raise ValueError("weights must be a non-empty 1-d sequence of non-negative numbers with a positive sum")
        self.weights = weights
        super().__init__(len(weights) if num_samples is None else int(num_samples), num_replicas=num_replicas,
                         rank=rank, seed=seed)

    def __iter__(self) -> Iterator[int]:
        total = self.num_samples * self.num_replicas
        draws = torch.multinomial(self.weights, total, replacement=True, generator=self._generator())
        return iter(draws[self.rank : total : self.num_replicas].tolist())


class DistributedShuffleSampler(_EpochShardedSampler):
    """A seeded permutation per epoch, padded to a multiple of `num_replicas` and sharded by rank (no weighting)."""

    def __init__(self, size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        self.size = size
        super().__init__(size, num_replicas=num_replicas, rank=rank, seed=seed)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=self._generator()).tolist()
        total = self.num_samples * self.num_replicas
        while len(order) < total:  # pad by repeating the start so every rank gets as many
            order += order[: total - len(order)]
        return iter(order[self.rank : total : self.num_replicas])
