"""Small prediction tables for the core tests: hand-made ones whose answers are known, and seeded random ones."""

from __future__ import annotations

import numpy as np

from core.predictions import build_prediction_table

CLASSES = ("ant", "bee", "cricket", "dragonfly")


def hand_table(labels, preds, *, class_names=CLASSES, splits=None, specimens=None, probs=None, confidence=0.7):
    """A table whose argmax is `preds`: the predicted class gets `confidence`, the rest share the remainder."""
    k = len(class_names)
    index = {c: i for i, c in enumerate(class_names)}
    n = len(labels)
    if probs is None:
        probs = np.full((n, k), (1 - confidence) / (k - 1), dtype=np.float32)
        for row, pred in enumerate(preds):
            probs[row, index[pred]] = confidence
    return build_prediction_table(
        [f"s{i}" for i in range(n)],
        probs,
        np.zeros((n, 0)),
        labels=list(labels),
        splits=list(splits or ["val"] * n),
        specimen_ids=list(specimens or [f"s{i}" for i in range(n)]),
        class_names=class_names,
    )


def random_table(n=400, k=7, seed=0, *, ties=False):
    rng = np.random.default_rng(seed)
    names = tuple(f"c{i}" for i in range(k))
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    if ties:
        logits = np.round(logits)  # many exactly equal scores
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return build_prediction_table(
        [str(i) for i in range(n)], probs, np.zeros((n, 0)), labels=[names[i] for i in y],
        splits=["val"] * n, specimen_ids=[str(i // 3) for i in range(n)], class_names=names,
    )
