"""Taxonomy views at scale: the time of each view's computation (core.taxonomy_metrics and its figures) on a
synthetic predictions table, warm (imports done and one untimed run first), on the CPU.

Usage: python benchmarks/bench_taxonomy.py [--samples 100000] [--classes 300] [--repeats 3] [--threads 1]

The table: `--samples` images over `--classes` classes (Zipf-like sizes), under a 4-rank taxonomy (genus of 3
classes, family of 3 genera, order of 4 families, phylum of 3 orders); each prediction is right about 75% of the
time, else mostly a sibling in the same genus or family, 12% a random class. Target: every view <= 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

TARGET_S = 1.5


def build_taxonomy(k: int):
    from core.taxonomy import build_taxonomy as build

    rows = []
    for i in range(k):
        genus = i // 3
        family = genus // 3
        order = family // 4
        rows.append((f"taxon_{i:03d}", (f"G{genus:03d}", f"F{family:02d}", f"O{order:02d}", f"P{order // 3}")))
    return build(("genus", "family", "order", "phylum"), rows, source="synthetic")


def build_table(n: int, k: int, *, seed: int = 0, name: str = "a", better: float = 0.0):
    from core.predictions import build_prediction_table

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, k + 1) ** 0.8
    truth = rng.choice(k, size=n, p=weights / weights.sum())
    roll = rng.random(n)
    pred = truth.copy()
    sibling = (truth // 3) * 3 + rng.integers(0, 3, n)  # same genus
    cousin = (truth // 9) * 9 + rng.integers(0, 9, n)  # same family
    pred = np.where(roll < 0.75 + better, truth, np.where(roll < 0.85, sibling, np.where(roll < 0.88, cousin,
                                                                                       rng.integers(0, k, n))))
    pred = np.clip(pred, 0, k - 1)
    logits = rng.normal(0, 1, (n, k)).astype(np.float32)
    logits[np.arange(n), pred] += 4.0
    logits[np.arange(n), truth] += 2.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    names = [f"taxon_{i:03d}" for i in range(k)]
    return build_prediction_table(
        [f"s{i}" for i in range(n)], probs, np.zeros((n, 0)), labels=[names[t] for t in truth],
        splits=["val"] * n, specimen_ids=[f"sp{i // 3}" for i in range(n)], class_names=names, meta={"name": name})


def views(table, table_b, taxonomy) -> dict:
    """Name -> a zero-argument function computing what one view needs, sharing what the page's caches share (as
    `pages/_taxonomy_support.py` does): the tables rolled up to every rank, the class-level headline metrics (the
    Overview's cached result) and the argmax-rule rank metrics (the decision rule's "before"). The shared pieces are
    computed once here, untimed, and timed as their own lines."""
    from core import metrics
    from core import taxonomy_metrics as tm
    from core.queries import filter_predictions
    from core.taxonomy_figures import (
        build_decision_rule_figure,
        build_folded_confusion_figure,
        build_rank_metrics_figure,
        build_severity_figure,
    )

    shared = {
        "rolled": {rule: tm.rollup_all(table, taxonomy, rule=rule) for rule in ("sum", "argmax")},
        "class_level": metrics.compute_headline_metrics(table),
    }
    shared["argmax_ranks"] = tm.metrics_by_rank(table, taxonomy, rule="argmax", class_level=shared["class_level"],
                                                rolled=shared["rolled"]["argmax"])

    def rank_table(rule):
        return lambda: build_rank_metrics_figure(tm.rank_metrics_frame(tm.metrics_by_rank(
            table, taxonomy, rule=rule, class_level=shared["class_level"], rolled=shared["rolled"][rule])))

    def per_rank(rank):
        def run():
            per_class = metrics.per_class_table(shared["rolled"]["sum"][taxonomy.level_of(rank)])
            return metrics.bottom_classes(per_class, n=10)
        return run

    def fold(rank):
        return lambda: build_folded_confusion_figure(tm.fold_confusion(
            table, taxonomy, rank, rolled=shared["rolled"]["sum"][taxonomy.level_of(rank)]))

    def severity():
        result = tm.mistake_severity(table, taxonomy)
        return build_severity_figure(result.histogram), tm.severity_per_class(table, taxonomy)

    def cell():
        rolled = shared["rolled"]["sum"][taxonomy.level_of("family")]
        folded = tm.fold_confusion(table, taxonomy, "family", rolled=rolled)
        off = folded.counts.copy()
        np.fill_diagonal(off, 0)
        t, p = np.unravel_index(off.argmax(), off.shape)
        return tm.folded_cell_rows(table, taxonomy, "family", folded.group_names[t], folded.group_names[p],
                                   rolled=rolled)

    def severity_filter():
        rows = filter_predictions(table)
        return tm.rows_beyond_rank(rows, tm.error_levels(table, taxonomy), taxonomy.level_of("order"))

    def decision():
        effect = tm.decision_rule_effect(table, taxonomy, before=shared["argmax_ranks"])
        return build_decision_rule_figure(effect.per_rank)

    out = {
        "(shared) roll-up to every rank": lambda: tm.rollup_all(table, taxonomy),
        "(shared) class-level headline": lambda: metrics.compute_headline_metrics(table),
        "per-rank table (sum rule)": rank_table("sum"),
        "per-rank table (argmax rule)": rank_table("argmax"),
    }
    out.update({f"per-class + bottom-10 at {rank}": per_rank(rank) for rank in ("genus", "phylum")})
    out["mistake severity + per class"] = severity
    out.update({f"folded confusion at {rank}": fold(rank) for rank in taxonomy.levels})
    out["folded cell -> rows"] = cell
    out["errors across order (filter)"] = severity_filter
    out["decision rule before/after"] = decision
    out["compare A/B: severity (paired)"] = lambda: tm.compare_severity(table, table_b, taxonomy)
    out["compare A/B: per rank (paired)"] = lambda: tm.compare_by_rank(table, table_b, taxonomy)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    args = parser.parse_args()
    taxonomy = build_taxonomy(args.classes)
    table = build_table(args.samples, args.classes)
    table_b = build_table(args.samples, args.classes, name="b", better=0.03)
    print(f"{args.samples:,} samples x {args.classes} classes, ranks {', '.join(taxonomy.ranks)} "
          f"({', '.join(str(len(taxonomy.groups(table.class_names, r)[1])) for r in taxonomy.ranks)} groups); "
          f"{os.environ.get('OMP_NUM_THREADS', '?')} BLAS thread(s); target <= {TARGET_S} s warm")
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'view':<36} {'median s':>9} {'max s':>7}  ok")
    worst = 0.0
    for name, run in views(table, table_b, taxonomy).items():
        run()  # warm: lazy imports, first-touch allocations
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        worst = max(worst, statistics.median(times))
        print(f"{name:<36} {statistics.median(times):>9.3f} {max(times):>7.3f}  "
              f"{'yes' if statistics.median(times) <= TARGET_S else 'NO'}")
    print(f"slowest view: {worst:.3f} s (target {TARGET_S} s)")
    return 0


if __name__ == "__main__":
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    sys.exit(main())
