"""A dataset built from the real bccd crops with planted problems: exact and augmented (flip, crop, colour jitter)
copies of training images in the validation split (split leaks), and blurred / darkened / brightened copies (bad
images); its predictions from a tiny random-weight resnet10t. Shared by the leakage and quality tests and
`benchmarks/bench_map.py`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

AUGMENTS = ("exact", "flip", "crop", "jitter")
DEFECTS = ("blurry", "dark", "bright")


@dataclass(frozen=True)
class PlantedDataset:
    """The manifest's folder and what was planted in it."""

    root: Path  # holds manifest.csv and the images
    manifest: Path
    leaks: dict[str, str]  # planted val sample id -> how it was made (AUGMENTS)
    sources: dict[str, str]  # planted val sample id -> the training sample id it copies
    defects: dict[str, str]  # planted bad sample id -> DEFECTS entry


def _augment(image, how: str, rng: np.random.Generator):
    from PIL import ImageEnhance, ImageOps

    if how == "exact":
        return image
    if how == "flip":
        return ImageOps.mirror(image)
    if how == "crop":
        w, h = image.size
        dx, dy = int(w * rng.uniform(0.04, 0.08)), int(h * rng.uniform(0.04, 0.08))
        return image.crop((dx, dy, w - dx, h - dy)).resize((w, h))
    if how == "jitter":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
        return ImageEnhance.Color(image).enhance(rng.uniform(0.85, 1.15))
    raise ValueError(how)


def _defect(image, how: str):
    from PIL import ImageEnhance, ImageFilter

    if how == "blurry":
        return image.filter(ImageFilter.GaussianBlur(radius=max(image.size) / 25))
    if how == "dark":
        return ImageEnhance.Brightness(image).enhance(0.15)
    if how == "bright":
        return ImageEnhance.Brightness(image).enhance(3.5)
    raise ValueError(how)


def build_planted_dataset(root: Path, bccd_root: Path, *, per_augment: int = 10, per_defect: int = 6,
                          val_fraction: float = 0.3, seed: int = 0) -> PlantedDataset:
    """Copy bccd into `root/images` with a manifest (split by a seeded draw, one specimen per image), then plant
    `per_augment` val copies of distinct training images per augmentation and `per_defect` training copies per
    defect."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "images"
    rows = []
    for path in sorted(bccd_root.rglob("*.jpg")):
        relative = path.relative_to(bccd_root)
        target = images / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        rows.append({"path": f"images/{relative.as_posix()}", "label": relative.parts[0]})
    frame = pd.DataFrame(rows)
    frame["split"] = np.where(rng.random(len(frame)) < val_fraction, "val", "train")
    frame["specimen_id"] = frame["path"]
    train = frame[frame["split"] == "train"]
    chosen = rng.choice(len(train), size=per_augment * len(AUGMENTS) + per_defect * len(DEFECTS), replace=False)
    leaks, sources, defects, extra = {}, {}, {}, []
    for i, position in enumerate(chosen):
        source = train.iloc[int(position)]
        image = Image.open(root / source["path"]).convert("RGB")
        if i < per_augment * len(AUGMENTS):
            how = AUGMENTS[i // per_augment]
            out = _augment(image, how, rng)
            split, kind = "val", how
        else:
            how = DEFECTS[(i - per_augment * len(AUGMENTS)) // per_defect]
            out = _defect(image, how)
            split, kind = "train", how
        name = f"planted/{source['label']}/{kind}_{i:03d}.png"
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        out.save(root / "images" / name)
        sample = f"images/{name}"
        extra.append({"path": sample, "label": source["label"], "split": split, "specimen_id": sample})
        if split == "val":
            leaks[sample], sources[sample] = kind, str(source["path"])
        else:
            defects[sample] = kind
    frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    manifest = root / "manifest.csv"
    frame.to_csv(manifest, index=False)
    return PlantedDataset(root, manifest, leaks, sources, defects)


def planted_predictions(planted: PlantedDataset, *, input_px: int = 64, seed: int = 0):
    """Predictions (with 512-wide embeddings) of a random-weight resnet10t over the planted dataset."""
    import timm
    import torch

    from core.dataset import load_dataset
    from models.checkpoints import ModelCard
    from models.inference import run_inference, table_from_result

    dataset = load_dataset(planted.manifest)
    torch.manual_seed(seed)
    classes = tuple(dataset.class_names)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(classes)).eval()
    card = ModelCard(arch="resnet10t", class_names=classes, input_size=(3, input_px, input_px), crop_pct=1.0)
    result = run_inference(model, card, dataset.samples, batch_size=64, num_workers=0)
    return dataset, table_from_result(result, dataset.samples, card)
