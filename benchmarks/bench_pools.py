"""Pool annotation at scale: the label frame (events + one bulk auto-accept read back), the annotation queue per order
and the auto-accept plan, on a synthetic pool of N images (K classes, D-dim embeddings) in a real SQLite label store.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pools.py --sizes 1000 10000 --classes 50 --dim 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.labelstore import LabelStore, NewEvent
from core.pools import (
    Pool,
    PoolPredictions,
    annotation_queue,
    plan_auto_accept,
    pool_label_frame,
    record_auto_accept,
)
from core.workspace import PoolSpec


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run(n: int, k: int, d: int, folder: Path) -> dict[str, object]:
    rng = np.random.default_rng(0)
    ids = np.array([f"pool:bench/img{i:07d}.jpg" for i in range(n)], dtype=object)
    logits = rng.normal(size=(n, k)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    names = tuple(f"class{j:03d}" for j in range(k))
    predictions = PoolPredictions("bench", ids, ids.copy(), probs, rng.normal(size=(n, d)).astype(np.float32), names)
    pool = Pool(PoolSpec("bench", folder, folder), pd.DataFrame({"sample_id": ids, "path": ids,
                                                                 "relpath": ids, "pool": "bench"}),
                pd.DataFrame(columns=["sample_id", "reason", "detail"]))
    row = {"images": n, "classes": k, "dim": d}
    with LabelStore(f"sqlite:///{folder / f'labels-{n}.db'}") as store:
        labelled = n // 10
        row["record 10% by hand (s)"], _ = _timed(lambda: store.record_many(
            [NewEvent(str(s), "label", "ann", label=names[i % k]) for i, s in enumerate(ids[:labelled])]))
        thresholds = pd.DataFrame({"class": names, "threshold": 0.5})
        labels = pool_label_frame(store, pool)
        row["plan auto-accept (s)"], plan = _timed(lambda: plan_auto_accept(
            predictions, thresholds, labels, checkpoint="bench", target_precision=0.95))
        row["auto-accepted"] = plan.count
        row["record bulk event (s)"], _ = _timed(lambda: record_auto_accept(store, plan, reviewer="lead"))
        row["label frame (s)"], labels = _timed(lambda: pool_label_frame(store, pool))
        for order in ("margin", "diversity", "rare_first"):
            row[f"queue {order} (s)"], _ = _timed(lambda order=order: annotation_queue(predictions, labels,
                                                                                         order=order))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args.classes, args.dim, Path(tmp)) for n in args.sizes]
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
