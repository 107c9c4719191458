"""Predictions tables of real data for the calibration-family tests: the full demo's stored predictions (read-only),
and real bccd crops classified by a small pixel-feature logistic regression with out-of-fold probabilities (real
images, real class imbalance, probabilities from a model that never saw the image; no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.predictions import PredictionTable, build_prediction_table, load_predictions


def demo_table(demo_root: Path) -> PredictionTable:
    """The demo checkpoint's stored predictions (every split), read straight from its Parquet cache."""
    files = sorted((demo_root / ".taxalens" / "predictions").glob("*.parquet"))
    assert files, f"no stored predictions under {demo_root}"
    return load_predictions(files[0])


def bccd_pixel_table(bccd_root: Path, *, size: int = 12, seed: int = 0) -> PredictionTable:
    """Every bccd crop as one `val` row: features = the crop at `size` x `size` RGB plus channel means and spreads
    (the embeddings), probabilities = out-of-fold logistic regression over 5 specimen-grouped folds."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from core.dataset import load_dataset

    dataset = load_dataset(bccd_root, verify="none")
    samples = dataset.samples
    features = []
    for path in samples["path"]:
        with Image.open(Path(dataset.root) / path) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
        features.append(np.r_[pixels.ravel(), pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))])
    x = np.stack(features)
    classes = tuple(sorted(samples["label"].unique()))
    y = samples["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    folds = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, x, y, groups=samples["specimen_id"].to_numpy(), cv=folds, method="predict_proba")
    return build_prediction_table(samples["sample_id"].tolist(), probs, x, labels=samples["label"].tolist(),
                                  splits=["val"] * len(samples), specimen_ids=samples["specimen_id"].tolist(),
                                  class_names=classes, meta={"checkpoint": "bccd-pixels"})
