"""Taxonomy views at scale, and the numbers of a workspace along its taxonomy.

Timing (default): each taxonomy view computed as its page computes it, through the pages' cached functions
(`pages/_taxonomy_support.py`, `st.cache_data` / `st.cache_resource` outside a running app), on a synthetic
predictions table on the CPU: "first" is the view's first render with cold caches in page order (work shared with an
earlier view is already cached, as on a real first visit), "warm" the median of `--repeats` renders with the same
inputs (a rerun). Target: every view <= 1.5 s warm.

Usage: python benchmarks/bench_taxonomy.py [--samples 100000] [--classes 300] [--repeats 3] [--threads 1]
       python benchmarks/bench_taxonomy.py --report WORKSPACE [--checkpoint NAME] [--split val] [--n-boot 1000]

The table: `--samples` images over `--classes` classes (Zipf-like sizes), three images per specimen, under a 4-rank
taxonomy (genus of 3 classes, family of 3 genera, order of 4 families, phylum of 3 orders); each prediction is right
about 75% of the time, else mostly a sibling in the same genus or family, 12% a random class.

`--report`: per rank accuracy, balanced accuracy and macro-F1 with intervals, the share of errors within each rank,
mistake severity, and top-1 against the hierarchy-aware decision rule, as Markdown tables, for a workspace with a
taxonomy and cached predictions (copied to a temporary folder first, so nothing is written into it).
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


def page_views(table, table_b, taxonomy) -> dict:
    """Name -> a zero-argument function rendering what one view needs, through the pages' cached functions, in the
    order the pages compute them (Taxonomy page top to bottom, then Confusion, Misclassifications, Compare)."""
    from core.queries import filter_predictions
    from core.taxonomy_figures import build_decision_rule_figure, build_severity_figure
    from core.taxonomy_metrics import rows_beyond_rank
    from pages import _taxonomy_support as tx
    from pages._cached import table_token

    token, token_b, tax = table_token(table, "val", "a"), table_token(table_b, "val", "b"), tx.taxonomy_token(taxonomy)

    def rank_table(rule):
        def run():
            frame = tx.rank_table(token, tax, rule, table, taxonomy)
            return frame, tx.rank_figure(token, tax, rule, table, taxonomy)
        return run

    def per_rank(rank):
        return lambda: (tx.per_class_at(token, tax, rank, "sum", table, taxonomy),
                        tx.bottom_at(token, tax, rank, "sum", table, taxonomy))

    def severity():
        return (tx.severity(token, tax, table, taxonomy), tx.severity_figure(token, tax, table, taxonomy),
                tx.severity_classes(token, tax, table, taxonomy))

    def decision():
        effect = tx.decision(token, tax, table, taxonomy)
        histogram = tx.severity(token, tax, table, taxonomy).histogram
        return (build_decision_rule_figure(effect.per_rank),
                build_severity_figure(histogram.assign(errors=effect.histogram["errors_before"].to_numpy()),
                                      after=effect.histogram["errors_after"]))

    def fold(rank):
        return lambda: tx.folded_figure(token, tax, rank, "sum", "none", False, None, table, taxonomy)

    def cell():
        folded = tx.folded(token, tax, "family", "sum", table, taxonomy)
        off = folded.counts.copy()
        np.fill_diagonal(off, 0)
        t, p = np.unravel_index(off.argmax(), off.shape)
        return tx.folded_cell(token, tax, "family", "sum", folded.group_names[t], folded.group_names[p], table,
                              taxonomy)

    def severity_filter():
        rows = filter_predictions(table)
        return rows_beyond_rank(rows, tx.error_levels(token, tax, table, taxonomy), taxonomy.level_of("order"))

    out = {"taxonomy: per-rank table (sum rule)": rank_table("sum")}
    out.update({f"taxonomy: per-class + bottom-10 at {rank}": per_rank(rank) for rank in ("genus", "phylum")})
    out["taxonomy: mistake severity"] = severity
    out["taxonomy: per-rank table (argmax rule)"] = rank_table("argmax")
    out["taxonomy: decision rule before/after"] = decision
    out.update({f"confusion: folded at {rank}": fold(rank) for rank in taxonomy.levels})
    out["confusion: folded cell -> gallery rows"] = cell
    out["errors: across orders only (filter)"] = severity_filter
    out["compare: along the taxonomy (paired)"] = lambda: tx.compare_ranks(token, token_b, tax, "sum", 1000,
                                                                            "specimen", table, table_b, taxonomy)
    return out


def time_views(args: argparse.Namespace) -> int:
    import streamlit as st
    from streamlit import logger as streamlit_logger

    streamlit_logger.set_log_level("error")  # "No runtime found": the caches run bare here, as intended

    taxonomy = build_taxonomy(args.classes)
    table = build_table(args.samples, args.classes)
    table_b = build_table(args.samples, args.classes, name="b", better=0.03)
    print(f"{args.samples:,} samples x {args.classes} classes, ranks {', '.join(taxonomy.ranks)} "
          f"({', '.join(str(len(taxonomy.groups(table.class_names, r)[1])) for r in taxonomy.ranks)} groups); "
          f"{os.environ.get('OMP_NUM_THREADS', '?')} BLAS thread(s); target <= {TARGET_S} s warm")
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    st.cache_data.clear()
    st.cache_resource.clear()
    print(f"{'view':<42} {'first s':>8} {'warm s':>8}  ok")
    worst = 0.0
    for name, run in page_views(table, table_b, taxonomy).items():
        started = time.perf_counter()
        run()
        first = time.perf_counter() - started
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        warm = statistics.median(times)
        worst = max(worst, warm)
        print(f"{name:<42} {first:>8.2f} {warm:>8.3f}  {'yes' if warm <= TARGET_S else 'NO'}", flush=True)
    print(f"slowest warm view: {worst:.3f} s (target {TARGET_S} s); "
          f"load average now {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


def _ci(value, low, high, *, percent: bool = False) -> str:
    if value is None or value != value:
        return "—"
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return fmt(value) if low is None or low != low else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def report(args: argparse.Namespace) -> int:
    """Markdown tables of one workspace along its taxonomy (see the module docstring)."""
    import shutil
    import tempfile

    from core import taxonomy_metrics as tm
    from core.taxonomy import load_taxonomy
    from core.workspace import load_workspace
    from models.inference import cached_predictions

    with tempfile.TemporaryDirectory(prefix="taxonomy-report-") as temp:
        root = Path(temp) / "ws"
        shutil.copytree(args.report, root, symlinks=True)
        workspace = load_workspace(root)
        dataset = workspace.load_dataset()
        taxonomy = load_taxonomy(workspace, dataset)
        if taxonomy is None:
            print(f"{args.report} has no taxonomy", file=sys.stderr)
            return 2
        name = args.checkpoint or workspace.checkpoints[0].name
        full = cached_predictions(workspace, name, dataset=dataset)
        if full is None:
            print(f"{args.report} holds no predictions of {name!r}; run `python -m cli predict` there first",
                  file=sys.stderr)
            return 2
    table = full.for_split(args.split)
    ranked = tm.rank_bootstrap(table, taxonomy, rule="sum", n_boot=args.n_boot)
    severity = ranked.severity
    print(f"### {Path(args.report).name}: checkpoint {name}, split {args.split}, {len(table):,} images, "
          f"{table.frame['specimen_id'].nunique():,} specimens; ranks {' → '.join(taxonomy.levels)}")
    print(f"Intervals: {ranked.ranks[0].headline.caption}; predicted group = {tm.ROLLUP_RULES['sum']}.\n")
    print("| rank | groups | accuracy | balanced accuracy | macro-F1 |\n|---|---:|---|---|---|")
    for r in ranked.ranks:
        h = r.headline
        print(f"| {r.rank} | {r.n_groups} | {_ci(*_e(h['accuracy']), percent=True)} | "
              f"{_ci(*_e(h['balanced_accuracy']), percent=True)} | {_ci(*_e(h['macro_f1']))} |")
    print(f"\nMistake severity (top-1): {severity.n_errors:,} errors of {severity.n_evaluated:,}; mean LCA height "
          f"over errors {_ci(*_e(severity.mistake_severity))}; over all images {_ci(*_e(severity.mean_distance))}."
          "\n")
    print("| LCA rank | errors | share | errors within this rank (cumulative) |\n|---|---:|---:|---|")
    for row in severity.histogram.itertuples():
        within = "—" if row.lca_rank == "root" else _ci(row.within, row.within_low, row.within_high, percent=True)
        print(f"| {row.lca_rank} | {row.errors:,} | {row.share:.1%} | {within} |")
    effect = tm.decision_rule_effect(table, taxonomy, n_boot=args.n_boot, severity_before=severity)
    print(f"\nHierarchy-aware decision rule (Karthik et al. 2021): changes {effect.n_changed:,} of {len(table):,} "
          "predictions; groups are the ancestors of the predicted class under both rules.\n")
    print("| rank | accuracy top-1 | accuracy rule | macro-F1 top-1 | macro-F1 rule |\n|---|---|---|---|---|")
    for row in effect.per_rank.itertuples():
        print(f"| {row.rank} "
              f"| {_ci(row.accuracy_before, row.accuracy_before_low, row.accuracy_before_high, percent=True)} "
              f"| {_ci(row.accuracy_after, row.accuracy_after_low, row.accuracy_after_high, percent=True)} "
              f"| {_ci(row.macro_f1_before, row.macro_f1_before_low, row.macro_f1_before_high)} "
              f"| {_ci(row.macro_f1_after, row.macro_f1_after_low, row.macro_f1_after_high)} |")
    print()
    for row in effect.severity.itertuples():
        print(f"{row.label}: top-1 {_ci(row.before, row.before_low, row.before_high)} → rule "
              f"{_ci(row.after, row.after_low, row.after_high)}")
    errors = ", ".join(f"{r.lca_rank} {r.errors_before}→{r.errors_after}" for r in effect.histogram.itertuples())
    print(f"Errors by LCA rank (top-1 → rule): {errors}")
    return 0


def _e(estimate):
    return estimate.value, estimate.low, estimate.high


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    parser.add_argument("--report", type=Path, help="print the numbers of this workspace instead of timing")
    parser.add_argument("--checkpoint", help="with --report: the checkpoint (default: the first)")
    parser.add_argument("--split", default="val", help="with --report: the split (default: val)")
    parser.add_argument("--n-boot", type=int, default=1000, help="with --report: bootstrap resamples")
    args = parser.parse_args()
    return report(args) if args.report else time_views(args)


if __name__ == "__main__":
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    sys.exit(main())
