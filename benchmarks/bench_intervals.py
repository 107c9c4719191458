"""Cost of the intervals at scale: building the resampling plan and bootstrapping the headline and per-class scores.

Usage: python benchmarks/bench_intervals.py [--samples 100000] [--classes 300] [--boot 1000] [--repeats 3]

A synthetic table like `bench_pages.py`'s (Zipf-like class sizes, about 3 images per specimen, 75% right, errors to
near classes and 12% to a random class), resampled by specimen. Prints the median seconds of each step per interval
method; the pages cache these results, so they are the cost of a cold page, not of a warm rerun.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core.scores import (  # noqa: E402
    INTERVAL_METHODS,
    BootstrapConfig,
    ResamplingPlan,
    bootstrap,
    class_interval_bounds,
    headline_scores,
)


def synthetic_table(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(y_true, y_pred, specimen)` of `n` images over `k` classes."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, k + 1) ** 0.8
    sizes = np.maximum(5, np.floor(weights / weights.sum() * n)).astype(int)
    sizes[0] += n - sizes.sum()
    y = np.repeat(np.arange(k), sizes)
    specimen = np.cumsum(rng.random(len(y)) < 0.33)
    p = np.where(rng.random(len(y)) < 0.75, y, (y + rng.integers(1, 4, len(y))) % k)
    p = np.where(rng.random(len(y)) < 0.12, rng.integers(0, k, len(y)), p)
    return y, p, specimen


def _median_seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    y, p, specimen = synthetic_table(args.samples, args.classes)
    plan_s = _median_seconds(lambda: ResamplingPlan(y, {"pred": p}, k=args.classes, groups=specimen), args.repeats)
    plan = ResamplingPlan(y, {"pred": p}, k=args.classes, groups=specimen)
    print(f"{args.samples:,} images x {args.classes} classes, {plan.n_units:,} {plan.unit}s in {plan.n_types:,} "
          f"types, {args.boot:,} draws; median of {args.repeats}")
    print(f"resampling plan: {plan_s:.2f} s")
    print(f"{'method':<12}{'headline (s)':>14}{'per-class (s)':>15}")
    for method in INTERVAL_METHODS:
        config = BootstrapConfig(n_boot=args.boot, method=method)
        headline_s = _median_seconds(
            lambda c=config: bootstrap(plan, lambda t: headline_scores(t.counts("pred")), c), args.repeats)
        per_class_s = _median_seconds(lambda c=config: class_interval_bounds(plan, c), args.repeats)
        print(f"{method:<12}{headline_s:>14.2f}{per_class_s:>15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
