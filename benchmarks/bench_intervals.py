"""Cost of the intervals at scale: building the resampling plan and bootstrapping the headline and per-class scores.

Usage: python benchmarks/bench_intervals.py [--samples 100000] [--classes 300] [--boot 1000] [--repeats 3]
    [--memory] [--methods bayes,...]

A synthetic table like `bench_pages.py`'s (Zipf-like class sizes, about 3 images per specimen, 75% right, errors to
near classes and 12% to a random class, top-3 / top-5 hit flags as the Overview has), resampled by specimen. Prints
the median seconds of each step per interval method; the pages cache these results, so they are the cost of a cold
page, not of a warm rerun.

`--memory`: instead, one cold run per method of what the Overview and the per-class table compute (the resampling
plan with the top-k flags, the headline intervals, the per-class intervals), with the CPU seconds of each step
(`time.process_time`) and the peak resident memory above the table itself (Linux: the peak is reset through
/proc/self/clear_refs before each method). E.g. `--samples 1000000 --classes 1000 --memory --methods bayes`.
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


def synthetic_flags(y: np.ndarray, p: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    """Top-3 and top-5 hits: every right prediction, and some of the wrong ones."""
    rng = np.random.default_rng(seed)
    top3 = (y == p) | (rng.random(len(y)) < 0.5)
    return {"top3": top3, "top5": top3 | (rng.random(len(y)) < 0.3)}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_run(y: np.ndarray, p: np.ndarray, specimen: np.ndarray, k: int, *, n_boot: int, methods: list[str]
               ) -> None:
    """The `--memory` mode (module docstring): CPU seconds per step and peak extra resident memory per method."""
    import gc

    flags = synthetic_flags(y, p)
    print(f"{len(y):,} images x {k} classes, {n_boot:,} draws; CPU seconds (process_time) and peak RSS")
    print(f"{'method':<12}{'plan (s)':>10}{'headline (s)':>14}{'per-class (s)':>15}{'total (s)':>11}"
          f"{'peak extra (GiB)':>18}{'peak RSS (GiB)':>16}")
    for method in methods:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        base = _rss_kib("VmRSS")
        started = time.process_time()
        plan = ResamplingPlan(y, {"pred": p}, k=k, flags=flags, groups=specimen)
        plan_s = time.process_time() - started
        config = BootstrapConfig(n_boot=n_boot, method=method)

        def headline(tally):
            out = headline_scores(tally.counts("pred"))
            out.update({f"{name}_accuracy": tally.rate(name) for name in tally.flags})
            return out

        started = time.process_time()
        bootstrap(plan, headline, config)
        headline_s = time.process_time() - started
        started = time.process_time()
        class_interval_bounds(plan, config)
        per_class_s = time.process_time() - started
        peak = _rss_kib("VmHWM")
        total = plan_s + headline_s + per_class_s
        print(f"{method:<12}{plan_s:>10.1f}{headline_s:>14.1f}{per_class_s:>15.1f}{total:>11.1f}"
              f"{(peak - base) / 2**20:>18.2f}{peak / 2**20:>16.2f}", flush=True)
        del plan


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
    parser.add_argument("--memory", action="store_true", help="one cold run per method: CPU seconds and peak RSS")
    parser.add_argument("--methods", default=",".join(INTERVAL_METHODS), help="comma-separated interval methods")
    args = parser.parse_args(argv)

    y, p, specimen = synthetic_table(args.samples, args.classes)
    methods = args.methods.split(",")
    if args.memory:
        memory_run(y, p, specimen, args.classes, n_boot=args.boot, methods=methods)
        return 0
    plan_s = _median_seconds(lambda: ResamplingPlan(y, {"pred": p}, k=args.classes, groups=specimen), args.repeats)
    plan = ResamplingPlan(y, {"pred": p}, k=args.classes, groups=specimen)
    print(f"{args.samples:,} images x {args.classes} classes, {plan.n_units:,} {plan.unit}s in {plan.n_types:,} "
          f"types, {args.boot:,} draws; median of {args.repeats}")
    print(f"resampling plan: {plan_s:.2f} s")
    print(f"{'method':<12}{'headline (s)':>14}{'per-class (s)':>15}")
    for method in methods:
        config = BootstrapConfig(n_boot=args.boot, method=method)
        headline_s = _median_seconds(
            lambda c=config: bootstrap(plan, lambda t: headline_scores(t.counts("pred")), c), args.repeats)
        per_class_s = _median_seconds(lambda c=config: class_interval_bounds(plan, c), args.repeats)
        print(f"{method:<12}{headline_s:>14.2f}{per_class_s:>15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
