"""Coverage of the 95% intervals: image vs specimen-cluster bootstrap; percentile, BCa and the product's Bayesian draws.

Usage: python benchmarks/bench_coverage.py [--sets 1000] [--boot 500] [--seed 0] [--recipes specimen:bayes,...]
    [--scenarios "4 specimens,..."]

Draws `--sets` evaluation sets from known imbalanced populations of specimens photographed 2-5 times
(`core.simulation.Population`: six classes, 40 to 4 specimens each, images of one specimen correlated), computes
each set's intervals exactly as the product does (`core.scores`: stratified by class; per-class F1 with
`class_interval_bounds`), and prints how often they hold the true value, with their mean width, for accuracy,
balanced accuracy, macro-F1 and the rarest class's F1.

The true value (the estimand) of each metric is its population value: the metric of the population's expected
confusion matrix at the evaluation set's class mix, which is what a very large evaluation set with the same class
proportions converges to. For macro-F1 and a rare class's F1 it differs from the mean score of small evaluation
sets (F1 is a biased ratio on few samples); an interval is judged on whether it holds the population value.

Scenarios: "4 specimens": the rarest class has 4 specimens of 2-5 images; "1 specimen x 3": it has one specimen
of 3 images (a 3-image class: the product resamples that class's images, since one specimen cannot be
resampled); "3 specimens x 1": three single-image specimens; "4 sp. rare 0.9": as "4 specimens" but the rare class
is right 90% of the time (far from the 0.5 the Jeffreys prior leans to; its specimens are often all right, so its
design effect often sends it to its images, see `core.scores`). Target for the product's recipe (specimen, bayes):
93-97%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.simulation import COVERAGE_METRICS, Population, measure_coverage  # noqa: E402

SCENARIOS = {
    "4 specimens": Population(specimens_per_class=(40, 24, 14, 8, 5, 4)),
    "1 specimen x 3": Population(specimens_per_class=(40, 24, 14, 8, 5, 1), fixed_images={5: 3}),
    "3 specimens x 1": Population(specimens_per_class=(40, 24, 14, 8, 5, 3), fixed_images={5: 1}),
    "4 sp. rare 0.9": Population(recall=(0.92, 0.85, 0.8, 0.7, 0.6, 0.9)),
}
RECIPES = (("image", "percentile"), ("image", "bayes"), ("specimen", "percentile"), ("specimen", "bca"),
           ("specimen", "bayes"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=1000, help="evaluation sets drawn per scenario and recipe")
    parser.add_argument("--boot", type=int, default=500, help="bootstrap resamples per interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", default=",".join(f"{unit}:{method}" for unit, method in RECIPES),
                        help="comma-separated unit:method pairs (default: all)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated scenario names (default: all)")
    args = parser.parse_args(argv)
    recipes = [tuple(item.split(":")) for item in args.recipes.split(",")]
    unknown = [name for name in args.scenarios.split(",") if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")

    labels = {"accuracy": "accuracy", "balanced_accuracy": "bal. acc.", "macro_f1": "macro-F1", "rare_f1": "rare F1"}
    print(f"{args.sets} evaluation sets per row, {args.boot} resamples per interval, nominal 95%; "
          "cells: coverage (mean width)")
    header = f"{'scenario':<16} {'resample':<9} {'interval':<11}" + "".join(f"{labels[m]:>18}" for m in
                                                                             COVERAGE_METRICS)
    for name in args.scenarios.split(","):
        population = SCENARIOS[name]
        truth = population.true_values()
        print()
        print(f"{name}: images per evaluation set ~{population_images(population):.0f}, true values "
              + ", ".join(f"{labels[m]} {truth[m]:.3f}" for m in COVERAGE_METRICS))
        print(header)
        for unit, method in recipes:
            started = time.perf_counter()
            result = measure_coverage(population, unit=unit, method=method, n_sets=args.sets, n_boot=args.boot,
                                      seed=args.seed)
            cells = "".join(f"{result.covered[m]:>9.1%} ({result.width[m]:.3f})" for m in COVERAGE_METRICS)
            print(f"{name:<16} {unit:<9} {method:<11}{cells}   [{time.perf_counter() - started:.0f}s]", flush=True)
    return 0


def population_images(population: Population) -> float:
    return sum(m * population.mean_images(c) for c, m in enumerate(population.specimens_per_class))


if __name__ == "__main__":
    raise SystemExit(main())
