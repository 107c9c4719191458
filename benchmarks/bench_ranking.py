"""Queue ranking: time to rank N samples x K classes (cleanlab), and precision@k on the demo's flipped labels.

Usage: python benchmarks/bench_ranking.py [--n 100000] [--k 300] [--demo DIR]

`--demo DIR`: a demo workspace (`python -m core demo --out DIR`); precision@k is measured on its validation split,
k = the number of flipped labels there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.predictions import build_prediction_table  # noqa: E402
from core.ranking import QueueSpec, build_queue, precision_at_k, rank_label_issues  # noqa: E402


def synthetic_table(n: int, k: int, *, seed: int = 0, flip_fraction: float = 0.05):
    """A ~85%-accurate model on n samples of k classes (Zipf-like sizes), ~5% flipped labels."""
    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, k + 1) ** 0.8
    true = rng.choice(k, size=n, p=sizes / sizes.sum())
    logits = rng.normal(0.0, 1.0, (n, k)).astype(np.float32)
    logits[np.arange(n), true] += 4.5
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    given = true.copy()
    flip = rng.random(n) < flip_fraction
    given[flip] = (true[flip] + rng.integers(1, k, flip.sum())) % k
    names = tuple(f"class{c:03d}" for c in range(k))
    ids = [f"img{i:07d}.png" for i in range(n)]
    table = build_prediction_table(ids, probs, np.zeros((n, 0)), labels=[names[g] for g in given],
                                   splits=["val"] * n, specimen_ids=ids, class_names=names)
    return table, {ids[i] for i in np.flatnonzero(flip)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", help="demo workspace folder for precision@k on its flipped labels")
    args = parser.parse_args()

    table, flips = synthetic_table(args.n, args.k)
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        ranking = rank_label_issues(table)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    build_queue(ranking, QueueSpec("confusion_cell", true_label="class000", pred_label="class001"))
    queue_s = time.perf_counter() - began
    print(f"ranking {args.n} samples x {args.k} classes (synthetic, 5% flipped), best of {args.repeats}")
    print("samples | classes | rank s (best) | rank s (median) | flagged | precision@k | queue filter ms")
    print("--- | --- | --- | --- | --- | --- | ---")
    print(f"{args.n} | {args.k} | {min(times):.2f} | {float(np.median(times)):.2f} | "
          f"{int(ranking.frame['is_label_issue'].sum())} | {precision_at_k(ranking, flips):.3f} | {queue_s * 1000:.1f}")

    if args.demo:
        import pandas as pd

        from core.workspace import load_workspace
        from models.inference import predict_workspace

        workspace = load_workspace(args.demo)
        print("\ndemo workspace: precision@k on the flipped labels (k = flips in the split)")
        print("checkpoint | split | method | samples | flips (k) | found in top k | precision@k | rank s")
        print("--- | --- | --- | --- | --- | --- | --- | ---")
        flipped = pd.read_csv(Path(args.demo) / workspace.extras["demo"]["flipped_labels"], dtype=str)
        for spec in workspace.checkpoints:
            demo = predict_workspace(workspace, spec.name)
            for split in ("val", "test"):
                part = demo.for_split(split)
                truth = set(flipped["sample_id"]) & set(part.frame["sample_id"])
                if not truth:
                    continue
                for knn_weight in (0.5, 0.0, 1.0):
                    for method in ("normalized_margin", "self_confidence", "confidence_weighted_entropy"):
                        began = time.perf_counter()
                        ranking = rank_label_issues(part, reference=demo.for_split("train"), method=method,
                                                    knn_weight=knn_weight)
                        elapsed = time.perf_counter() - began
                        found = len(set(ranking.frame["sample_id"].iloc[: len(truth)]) & truth)
                        print(f"{spec.name} | {split} | {method}, knn_weight {knn_weight} | {len(part)} | "
                              f"{len(truth)} | {found} | {precision_at_k(ranking, truth):.3f} | {elapsed:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
