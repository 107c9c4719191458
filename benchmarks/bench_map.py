"""Embedding map and leak scan: projection time for N x D embeddings on the CPU (PCA, UMAP), the figure's build and
JSON size, selection -> gallery rows (target <= 0.5 s), and leak recall/precision on bccd with planted copies.

Usage: python benchmarks/bench_map.py [--n 100000] [--d 512] [--no-umap] [--bccd ../shared/data/bccd]

`--bccd DIR`: build the planted dataset (tests/core/planted_data.py) from the bccd crops in a temp folder, embed it
with a random-weight resnet10t and print recall/precision of the planted leaks per augmentation and per test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import embedding_map as em  # noqa: E402
from core.predictions import build_prediction_table  # noqa: E402


def synthetic_table(n: int, d: int, *, k: int = 50, seed: int = 0):
    """n embeddings of width d in k Gaussian clusters (non-negative, like post-ReLU features)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d)).astype(np.float32) * 2
    emb = np.maximum(centres[labels] + rng.normal(size=(n, d)).astype(np.float32), 0)
    probs = np.full((n, k), 1.0 / k, dtype=np.float32)
    names = tuple(f"class{c:02d}" for c in range(k))
    ids = [f"img{i:07d}.png" for i in range(n)]
    return build_prediction_table(ids, probs, emb, labels=[names[c] for c in labels], splits=["val"] * n,
                                  specimen_ids=ids, class_names=names)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def map_rows(n: int, d: int, umap: bool) -> list[tuple[str, str]]:
    import sklearn.decomposition  # noqa: F401  (imported before timing: a page has it loaded already)

    table, t_build = timed(synthetic_table, n, d)
    rows = [("synthetic table", f"{t_build:.2f} s")]
    coords, t = timed(em.project_embeddings, table.embeddings, method="pca")
    rows.append((f"PCA {n:,} x {d}", f"{t:.2f} s"))
    if umap:
        umap_coords, t = timed(em.project_embeddings, table.embeddings, method="umap")
        rows.append((f"UMAP {n:,} x {d} (PCA-50 first, cosine, 15 neighbours)", f"{t:.1f} s"))
    frame, t_frame = timed(em.map_frame, table, coords)
    values = em.colour_values(frame, "label")
    fig, t_fig = timed(em.build_map_figure, frame, values)
    text, t_json = timed(fig.to_json)
    rows += [("map frame", f"{t_frame:.2f} s"), ("WebGL figure (50 traces)", f"{t_fig:.2f} s"),
             ("figure to JSON", f"{t_json:.2f} s, {len(text) / 1e6:.1f} MB")]
    # A lasso around one cluster-sized region: the polygon test the browser does, then the gallery rows the page
    # builds from the selected points' customdata (what the 0.5 s target is about).
    lo, hi = np.quantile(coords, [0.3, 0.5], axis=0)
    polygon = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
    mask, t_poly = timed(em.points_in_polygon, coords, polygon)
    picked = np.flatnonzero(mask).tolist()
    selected, t_sel = timed(em.selected_rows, table, picked)
    rows += [(f"lasso polygon test ({len(picked):,} points inside)", f"{t_poly * 1000:.0f} ms"),
             ("selection -> gallery rows", f"{t_sel * 1000:.0f} ms (target <= 500 ms)")]
    outliers, t_out = timed(em.knn_outlier_scores, table)
    rows.append(("k-NN outlier scores (k=10, per class)", f"{t_out:.1f} s"))
    return rows


def leak_rows(bccd: Path) -> list[tuple[str, str, str, str]]:
    from core.leakage import DuplicateSettings, image_hashes, leak_recall_precision, scan_leakage
    from tests.core.planted_data import AUGMENTS, build_planted_dataset, planted_predictions

    root = Path(tempfile.mkdtemp(prefix="bench-map-"))
    planted = build_planted_dataset(root, bccd)
    dataset, table = planted_predictions(planted, input_px=32)
    paths = dataset.samples.set_index("sample_id").loc[table.frame["sample_id"], "path"].tolist()
    hashes, readable = image_hashes(paths)
    defaults = DuplicateSettings()
    variants = {
        f"default (similarity >= {defaults.min_similarity}, hash <= {defaults.max_hash_distance})": defaults,
        "embedding only": DuplicateSettings(max_hash_distance=-1),
        "hash only": DuplicateSettings(min_similarity=1.01),
        "hash <= 4": DuplicateSettings(min_similarity=1.01, max_hash_distance=4),
    }
    out = []
    for name, settings in variants.items():
        report = scan_leakage(table, hashes, readable, settings=settings)
        recall, precision = leak_recall_precision(report.leaks, list(planted.leaks))
        per_kind = ", ".join(
            f"{kind} {leak_recall_precision(report.leaks, [s for s, k in planted.leaks.items() if k == kind])[0]:.2f}"
            for kind in AUGMENTS)
        out.append((name, f"{recall:.3f}", f"{precision:.3f}", per_kind))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--no-umap", action="store_true")
    parser.add_argument("--bccd", type=Path, default=None)
    args = parser.parse_args()
    print(f"CPU threads available: {len(os.sched_getaffinity(0))}")
    print(f"\n{'measure':<58} result")
    for name, value in map_rows(args.n, args.d, not args.no_umap and em.PROJECTIONS["umap"].available()):
        print(f"{name:<58} {value}")
    if args.bccd:
        print(f"\n{'leak scan (planted bccd, 40 val copies)':<48} {'recall':>7} {'precision':>9}  recall per kind")
        for name, recall, precision, per_kind in leak_rows(args.bccd):
            print(f"{name:<48} {recall:>7} {precision:>9}  {per_kind}")


if __name__ == "__main__":
    main()
