"""Grad-CAM speed on CPU: seconds per image and per gallery page (24 images) for each method, demo model first.

Usage: python benchmarks/bench_cam.py [--workspace demo_workspace] [--checkpoint NAME] [--threads N]
                                      [--methods gradcam,...] [--extra resnet50:224,vit_small_patch16_224:224]

With a workspace, its checkpoint and dataset images are used (the demo: resnet10t at 64 px). Without one, a
random-initialised resnet10t at 64 px (the demo's arch and size) on generated images stands in. Times include
preprocessing from decoded PIL images, the forward/backward passes and the maps; the first call is a warm-up.
Targets: <= 0.3 s per image and <= 6 s per page on CPU for the demo model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from models.cam import CAM_METHODS, explain_images  # noqa: E402
from models.checkpoints import ModelCard  # noqa: E402

PAGE = 24
TARGET_IMAGE_S, TARGET_PAGE_S = 0.3, 6.0


def _demo_model(workspace: str | None, checkpoint: str | None):
    if workspace and (Path(workspace) / "taxalens.toml").is_file():
        from core.images import load_image_rgb
        from core.workspace import load_workspace
        from models.inference import load_workspace_model

        ws = load_workspace(workspace)
        dataset = ws.load_dataset()
        name = checkpoint or ws.checkpoints[0].name
        model, card = load_workspace_model(ws, name, dataset=dataset, device="cpu")
        images = [load_image_rgb(p) for p in dataset.samples["path"].head(PAGE)]
        return f"{name} ({card.arch} @ {card.input_size[1]} px, workspace)", model, card, images
    return _random_model("resnet10t", 64, label="resnet10t @ 64 px (random init, no demo ws)")


def _random_model(arch: str, size: int, label: str | None = None):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=9).eval()
    card = ModelCard(arch=arch, class_names=tuple(f"class{i}" for i in range(9)), input_size=(3, size, size))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size * 2, size * 2, 3), dtype=np.uint8)) for _ in range(PAGE)]
    return label or f"{arch} @ {size} px (random init)", model, card, images


def _time(model, card, images, method: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        explain_images(model, card, images, method=method, batch_size=PAGE)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=str(REPO / "demo_workspace"))
    parser.add_argument("--checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", default=",".join(CAM_METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", default="", help="comma-separated ARCH:SIZE models to time as well")
    parser.add_argument("--skip-slow-pages", action="store_true", help="time ScoreCAM per image only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [_demo_model(args.workspace, args.checkpoint)]
    for item in filter(None, args.extra.split(",")):
        arch, size = item.split(":")
        models.append(_random_model(arch, int(size)))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); page = {PAGE} images; "
          f"median of {args.repeats}")
    print(f"{'model':<44} {'method':<10} {'s/image':>8} {'s/page':>8} {'s/img in page':>14}  target")
    failed = False
    for label, model, card, images in models:
        model = model.to("cpu").eval()
        explain_images(model, card, images[:2], method="gradcam")  # warm-up (allocator, layer lookup)
        for method in args.methods.split(","):
            slow = CAM_METHODS[method].slow
            per_image = _time(model, card, images[:1], method, 1 if slow else args.repeats)
            if slow and args.skip_slow_pages:
                per_page = float("nan")
            else:
                per_page = _time(model, card, images, method, 1 if slow else args.repeats)
            ok = per_image <= TARGET_IMAGE_S and (per_page != per_page or per_page <= TARGET_PAGE_S)
            is_demo = label is models[0][0]
            verdict = ("ok" if ok else "MISSED") if is_demo and not slow else ("slow method" if slow else "-")
            failed |= is_demo and not slow and not ok
            print(f"{label:<44} {method:<10} {per_image:>8.3f} {per_page:>8.2f} {per_page / PAGE:>14.3f}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
