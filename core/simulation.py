"""Synthetic evaluation sets drawn from a known population, for measuring the coverage of `core.scores` intervals.

A `Population` is an imbalanced set of classes whose specimens are photographed several times. Each class has a
mean confusion row (where its images are predicted); each specimen draws its own row around that mean from a
Dirichlet distribution, and its images draw their predictions from the specimen's row, so images of one specimen
tend to succeed or fail together (the lower `concentration`, the more). An evaluation set holds a fixed number of
specimens per class (as a curated split does) and 2-5 images per specimen.

The estimand ("true value") of a metric is its value on the population's expected confusion matrix at the
evaluation set's class mix: `E[C][c] = specimens_c x mean images per specimen x mean row_c`. It is the value that a
very large evaluation set with the same class proportions converges to (every score here is a ratio of counts), so
it is what an interval around a finite set's score should cover. It is not the expected score of a finite set:
macro-F1 and a rare class's F1 are biased on small sets, which is part of what coverage measures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from core.scores import ClassCounts, class_scores, headline_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Population:
    """A known population of specimens, images and predictions (see the module docstring)."""

    specimens_per_class: tuple[int, ...] = (40, 24, 14, 8, 5, 4)  # specimens of each class in one evaluation set
    recall: tuple[float, ...] = (0.92, 0.85, 0.8, 0.7, 0.6, 0.5)  # mean share of a class's images predicted right
    images_per_specimen: tuple[int, int] = (2, 5)  # inclusive range, drawn uniformly per specimen
    fixed_images: dict[int, int] = field(default_factory=dict)  # class -> exact images per specimen (else drawn)
    concentration: float = 1.5  # Dirichlet concentration of a specimen's row: lower = images agree more
    rare_class: int = 5  # the class whose F1 the coverage table reports

    def __post_init__(self) -> None:
        if len(self.specimens_per_class) != len(self.recall):
            raise ValueError(f"{len(self.specimens_per_class)} class sizes for {len(self.recall)} recalls")

    @property
    def k(self) -> int:
        return len(self.recall)

    def mean_rows(self) -> np.ndarray:
        """`(K, K)` mean confusion rows: `recall[c]` on the diagonal, the rest spread mostly to the next class."""
        k = self.k
        rows = np.zeros((k, k))
        for c, right in enumerate(self.recall):
            wrong = 1.0 - right
            rows[c, c] = right
            others = [o for o in range(k) if o != c]
            rows[c, (c + 1) % k] += 0.6 * wrong
            rows[c, others] += 0.4 * wrong / len(others)
        return rows

    def mean_images(self, c: int) -> float:
        if c in self.fixed_images:
            return float(self.fixed_images[c])
        low, high = self.images_per_specimen
        return (low + high) / 2.0

    def true_values(self) -> dict[str, float]:
        """The estimand of each reported metric (accuracy, balanced accuracy, macro-F1, weighted-F1, rare F1)."""
        weights = np.array([m * self.mean_images(c) for c, m in enumerate(self.specimens_per_class)])
        counts = ClassCounts.from_confusion(weights[:, None] * self.mean_rows())
        values = {name: float(v) for name, v in headline_scores(counts).items()}
        values["rare_f1"] = float(class_scores(counts)["f1"][self.rare_class])
        return values

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One evaluation set: `(y_true, y_pred, specimen)` integer arrays of shape `(N,)`."""
        rows = self.mean_rows()
        labels, preds, specimens = [], [], []
        specimen = 0
        for c, m in enumerate(self.specimens_per_class):
            for _ in range(m):
                if c in self.fixed_images:
                    size = self.fixed_images[c]
                else:
                    size = int(rng.integers(self.images_per_specimen[0], self.images_per_specimen[1] + 1))
                row = rng.dirichlet(np.maximum(rows[c] * self.concentration, 1e-3))
                preds.append(rng.choice(self.k, size=size, p=row))
                labels.append(np.full(size, c))
                specimens.append(np.full(size, specimen))
                specimen += 1
        return np.concatenate(labels), np.concatenate(preds), np.concatenate(specimens)


COVERAGE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "rare_f1")


@dataclass(frozen=True)
class Coverage:
    """Empirical coverage of one interval recipe over many simulated evaluation sets."""

    unit: str  # "image" or "specimen": what the bootstrap resampled
    method: str  # "bayes", "bca" or "percentile" (`core.scores.INTERVAL_METHODS`)
    n_sets: int  # evaluation sets drawn
    covered: dict[str, float]  # metric -> share of sets whose interval holds the true value
    width: dict[str, float]  # metric -> mean interval width
    true_values: dict[str, float]  # metric -> the estimand


def measure_coverage(population: Population, *, unit: str, method: str, n_sets: int, n_boot: int,
                     confidence_level: float = 0.95, seed: int = 0) -> Coverage:
    """Draw `n_sets` evaluation sets, compute each metric's interval as the product does (headline metrics:
    `core.scores.bootstrap`; the rare class's F1: `core.scores.class_interval_bounds`), and count how often it
    holds the population value. `unit="image"` resamples images (stratified by class) even though specimens
    repeat, the mistake the specimen bootstrap corrects."""
    from core.scores import BootstrapConfig, ResamplingPlan, bootstrap, class_interval_bounds

    truth = population.true_values()
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(COVERAGE_METRICS, 0)
    widths = dict.fromkeys(COVERAGE_METRICS, 0.0)
    names = COVERAGE_METRICS[:-1]
    for _ in range(n_sets):
        y, p, specimens = population.draw(rng)
        plan = ResamplingPlan(y, {"pred": p}, k=population.k, groups=specimens if unit == "specimen" else None)
        config = BootstrapConfig(n_boot=n_boot, confidence_level=confidence_level,
                                 seed=int(rng.integers(2**31)), method=method)
        result = bootstrap(plan, lambda tally: headline_scores(tally.counts("pred"), names), config)
        bounds = {name: (float(result.low[name]), float(result.high[name])) for name in names}
        per_class = class_interval_bounds(plan, config)
        rare = population.rare_class
        bounds["rare_f1"] = (float(per_class["f1_low"][rare]), float(per_class["f1_high"][rare]))
        for name, (low, high) in bounds.items():
            hits[name] += int(low <= truth[name] <= high)
            widths[name] += high - low
    return Coverage(unit=unit, method=method, n_sets=n_sets,
                    covered={name: hits[name] / n_sets for name in COVERAGE_METRICS},
                    width={name: widths[name] / n_sets for name in COVERAGE_METRICS},
                    true_values={name: truth[name] for name in COVERAGE_METRICS})
