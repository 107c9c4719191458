"""Prediction throughput: end to end (JPEG decode + preprocessing + model) against the bare forward (the ceiling).

Usage: python benchmarks/bench_predict.py [--data ../shared/data/bccd] [--archs resnet50,convnext_tiny,...]
                                          [--batch-size 32] [--repeats 2] [--workers N]

The bccd crops (150-300 px) are re-encoded as 224 x 224 JPEGs (quality 95) in a temporary folder, so every image
is decoded from JPEG and preprocessed by the model's timm eval transform, as `python -m core predict` does. Models
are random-initialised timm architectures at 224 px (no download; speed does not depend on the weights).

- end to end: `models.inference.run_inference` over the files (DataLoader with the default workers, softmax,
  penultimate embeddings, everything the predictions table needs);
- ceiling: the same forward (features + pre-logits + head, softmax) on one batch of the same size, already decoded
  and preprocessed in memory, repeated to cover the dataset.

Each measure runs --repeats times, interleaved, and the best run counts (other load on the machine only slows a
run down). Ratio = end-to-end images/s / ceiling images/s, both measured in this run. Target on CPU: >= 0.85.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import timm  # noqa: E402
import timm.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from core.dataset import load_dataset  # noqa: E402
from core.images import load_image_rgb  # noqa: E402
from models.checkpoints import ModelCard  # noqa: E402
from models.inference import (  # noqa: E402
    build_eval_transform,
    default_num_workers,
    forward_with_embeddings,
    run_inference,
)

TARGET = 0.85
SIZE = 224


def default_data() -> Path:
    root = os.environ.get("TAXALENS_TEST_DATA")
    return Path(root) / "bccd" if root else REPO.parent / "shared" / "data" / "bccd"


def upscaled_copy(source: Path, out: Path) -> pd.DataFrame:
    """Every image of the dataset at `source` as a 224 x 224 JPEG under `out`; returns sample_id/path/label."""
    dataset = load_dataset(source)
    rows = []
    for sample_id, path, label in dataset.samples[["sample_id", "path", "label"]].itertuples(index=False):
        target = (out / sample_id).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        load_image_rgb(path).resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(target, quality=95)
        rows.append((sample_id, str(target), label))
    return pd.DataFrame(rows, columns=["sample_id", "path", "label"])


def ceiling(model, card, samples: pd.DataFrame, batch_size: int) -> float:
    """Images/s of the bare forward: one batch of real preprocessed images, forwarded as often as the data needs."""
    transform = build_eval_transform(card)
    batch = torch.stack([transform(load_image_rgb(p)) for p in samples["path"].head(batch_size)])
    passes = max(1, round(len(samples) / batch_size))
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(passes):
            logits, embedding = forward_with_embeddings(model, batch)
            torch.softmax(logits.float(), dim=1).numpy()
            embedding.numpy()
    return passes * len(batch) / (time.perf_counter() - start)


def end_to_end(model, card, samples: pd.DataFrame, batch_size: int, workers: int | None) -> float:
    start = time.perf_counter()
    result = run_inference(model, card, samples, batch_size=batch_size, num_workers=workers)
    elapsed = time.perf_counter() - start
    assert len(result.rows) == len(samples), result.failed
    return len(samples) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--archs", default="resnet50,convnext_tiny,efficientnet_b0,resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measure (the best is reported)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the app's)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"bccd not found at {args.data} (set TAXALENS_TEST_DATA)", file=sys.stderr)
        return 2

    workers = default_num_workers() if args.workers is None else args.workers
    print(f"device cpu, {torch.get_num_threads()} torch threads, {workers} decode workers, "
          f"batch {args.batch_size}, torch {torch.__version__}, timm {timm.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        samples = upscaled_copy(args.data, Path(tmp))
        classes = sorted(samples["label"].unique())
        print(f"{len(samples)} bccd images re-encoded as {SIZE} x {SIZE} JPEG, {len(classes)} classes\n")
        header = f"{'arch':<18}{'ceiling img/s':>15}{'end-to-end img/s':>18}{'ratio':>8}  target >= {TARGET}"
        print(header)
        print("-" * len(header))
        ratios = []
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False, num_classes=len(classes)).eval()
            config = timm.data.resolve_model_data_config(model)
            card = ModelCard(arch, tuple(classes), input_size=tuple(config["input_size"]), mean=tuple(config["mean"]),
                             std=tuple(config["std"]), interpolation=config["interpolation"],
                             crop_pct=config["crop_pct"], crop_mode=config["crop_mode"])
            ceiling(model, card, samples.head(args.batch_size), args.batch_size)  # warm-up
            runs_ceiling, runs_e2e = [], []
            for _ in range(args.repeats):  # interleaved so drifting machine load hits both alike
                runs_ceiling.append(ceiling(model, card, samples, args.batch_size))
                runs_e2e.append(end_to_end(model, card, samples, args.batch_size, workers))
            best_c, best_e = max(runs_ceiling), max(runs_e2e)
            ratios.append(best_e / best_c)
            verdict = "ok" if best_e / best_c >= TARGET else "BELOW"
            print(f"{arch:<18}{best_c:>15.1f}{best_e:>18.1f}{best_e / best_c:>8.2f}  {verdict}")
        print(f"\nmedian ratio {statistics.median(ratios):.2f} over {len(ratios)} architectures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
