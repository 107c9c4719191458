"""What to label first: the active-learning simulation (`core.active_learning`) on the demo and on bccd, and the
k-center ranking time at pool scale.

Usage:
  python benchmarks/bench_active.py [--demo DIR] [--bccd-workdir DIR] [--seeds 5] [--skip-scale]

Simulation: the training split's labels are hidden except a stratified seed set; each round every order
(`core.acquisition.ORDERS`) labels the next batch with the hidden truth, a logistic-regression probe on the stored
embeddings is refitted and scored on the validation split (macro-F1; validation specimens never train the probe).
Printed per dataset: the learning curves (mean macro-F1 over seeds per round) and, per order, the labels at which
it first reaches random's final macro-F1, as a share of random's labels (target: best order <= 60%).

- demo: the stored predictions of the newest `.pytest_cache/demo-*` workspace (read-only), batch 20, 12 rounds.
- bccd: a workspace built as `benchmarks/bench_calibration.py` builds it (`bccd_table`: a resnet10t trained from
  scratch on the bccd training split at 64 px, then `python -m cli predict`), in its own `--bccd-workdir`; its
  embeddings come from a backbone that saw the training labels, which makes every probe stronger than a truly new
  batch would allow. Batch 10, 12 rounds; the validation split has 71 images (1 Basophil, 4 Monocytes), so its
  curves are noisy: read the mean macro-F1 over rounds beside the labels-to-reach share.

Scale: `rank_pool` of every order on a synthetic pool of 100,000 x 512 embeddings and 300 classes (batch 1,000
greedy k-center picks), seconds per order.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.acquisition import ORDERS, PoolView, rank_pool  # noqa: E402
from core.active_learning import SimulationConfig, curve_table, labels_to_reach, simulate, simulation_data  # noqa: E402
from core.predictions import PredictionTable, load_predictions  # noqa: E402

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)

DEMO_CONFIG = SimulationConfig(seed_per_class=2, batch=20, rounds=12)
BCCD_CONFIG = SimulationConfig(seed_per_class=1, batch=10, rounds=12)


def report(name: str, table: PredictionTable, config: SimulationConfig) -> None:
    data = simulation_data(table)
    start = time.perf_counter()
    curve = simulate(data, config)
    seconds = time.perf_counter() - start
    print(f"\n=== {name}: pool {len(data.pool_y):,} training images, evaluation {len(data.eval_y):,} validation "
          f"images, {len(data.class_names)} classes ===")
    print(f"seed set {config.seed_per_class}/class, batch {config.batch}, {config.rounds} rounds, seeds "
          f"{list(config.seeds)}, probe C={config.probe_c} on {config.probe_dims} PCs; {seconds:.0f} s "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print("\nlearning curves: mean macro-F1 on validation per round")
    print(curve_table(curve).round(3).to_string(index=False))
    summary = labels_to_reach(curve)
    print(f"\nlabels to reach random's final macro-F1 ({summary.attrs['target']:.3f} at "
          f"{summary.attrs['baseline_labels']:.0f} labels); target: best order <= 60%")
    shown = summary.assign(share_of_random=summary["share_of_random"].map(
        lambda s: "never" if np.isnan(s) else f"{s:.0%}"))
    print(shown.round(3).to_string(index=False))


def scale(n: int = 100_000, d: int = 512, k: int = 300) -> None:
    rng = np.random.default_rng(0)
    view = PoolView(probs=rng.dirichlet(np.full(k, 0.3), size=n).astype(np.float32),
                    embeddings=rng.normal(size=(n, d)).astype(np.float32),
                    labelled_counts=rng.integers(0, 50, k), novelty=None,
                    labelled_embeddings=rng.normal(size=(2_000, d)).astype(np.float32))
    print(f"\nrank_pool on {n:,} x {d} embeddings, {k} classes, 2,000 labelled (batch 1,000):")
    print(f"{'order':<20} {'seconds':>8}")
    for name in ORDERS:
        start = time.perf_counter()
        ranked = rank_pool(name, view, batch=1_000)
        assert len(ranked) == n
        print(f"{name:<20} {time.perf_counter() - start:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="demo workspace (default: the newest .pytest_cache/demo-*)")
    parser.add_argument("--bccd-workdir", type=Path, default=Path("/tmp/taxalens_bench_active_bccd"))
    parser.add_argument("--seeds", type=int, default=5, help="simulation seeds per order (>= 3)")
    parser.add_argument("--skip-scale", action="store_true", help="skip the 100,000 x 512 ranking timings")
    args = parser.parse_args(argv)
    seeds = tuple(range(args.seeds))
    demo = args.demo
    if demo is None:
        found = sorted(p for p in (REPO / ".pytest_cache").glob("demo-*") if p.is_dir())
        demo = found[-1] if found else None
    files = sorted((demo / ".taxalens" / "predictions").glob("*.parquet")) if demo else []
    if files:
        report(f"demo ({demo.name})", load_predictions(files[0]), replace(DEMO_CONFIG, seeds=seeds))
    else:
        print("demo simulation skipped: no demo predictions (run `make demo` or the test suite once)")
    from benchmarks.bench_calibration import bccd_table

    report("bccd (resnet10t, 64 px, trained from scratch on its training split)", bccd_table(args.bccd_workdir),
           replace(BCCD_CONFIG, seeds=seeds))
    if not args.skip_scale:
        scale()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
