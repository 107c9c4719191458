"""`python -m core demo`: build the offline demo workspace (drawn specimens, a trained tiny model, its predictions)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from core.demo import generate_demo_dataset

logger = logging.getLogger(__name__)

DEMO_ARCH = "resnet10t"
DEMO_IMG_SIZE = 112  # resnet10t's layer3 is a 7x7 map here: Grad-CAM resolves the organism (at 64 px, layer4 is 2x2)
DEMO_EPOCHS = 4  # a fixed count, not a time budget: a busy CPU delays the demo but does not make it worse
DEMO_CHECKPOINT = "demo-resnet10t"
_TOML = """# TaxaLens workspace (built by `python -m core demo`)
[dataset]
manifest = "data/manifest.csv"
taxonomy = ["kingdom", "phylum", "order", "family"]

[[checkpoints]]
name = "{name}"
path = "checkpoints/{name}.safetensors"

[demo]
# the deliberately flipped labels: sample_id,true_label,given_label
flipped_labels = "data/flipped_labels.csv"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the offline demo workspace",
        description="Draw a plankton/invertebrate specimen dataset (9 classes under family, order, phylum and "
        "kingdom; ~5%% flipped labels), "
        "train a small timm model on it on the CPU and predict it. Downloads nothing.",
    )
    parser.add_argument("--out", required=True, help="workspace folder to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every class's image count")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--minutes", type=float, default=None,
                        help="optional training time budget (the default trains a fixed number of epochs, so the "
                        "demo is the same on a busy machine, only later)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder holds a workspace")
    parser.set_defaults(func=_run)


def build_demo_workspace(out: str | Path, *, seed: int = 0, scale: float = 1.0, epochs: int = DEMO_EPOCHS,
                         minutes: float | None = None) -> Path:
    """Create the demo workspace in `out` and return its folder (progress goes to this module's logger); see
    `python -m core demo --help`."""
    from core.workspace import load_workspace
    from models.inference import predict_workspace
    from models.train import TrainConfig, train_model

    final = Path(out).resolve()
    out = final.with_name(final.name + ".partial")  # renamed into place when complete: no half-built workspace
    shutil.rmtree(out, ignore_errors=True)
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty; pass --force to replace it")
    started = time.monotonic()
    data = out / "data"
    samples = generate_demo_dataset(data, seed=seed, scale=scale)
    logger.info("drew %d images in %.0fs", len(samples), time.monotonic() - started)
    (out / "taxalens.toml").write_text(_TOML.format(name=DEMO_CHECKPOINT), encoding="utf-8")
    workspace = load_workspace(out)
    dataset = workspace.load_dataset()
    config = TrainConfig(arch=DEMO_ARCH, img_size=DEMO_IMG_SIZE, epochs=epochs, batch_size=64, lr=3e-3,
                         weight_decay=0.02, warmup_epochs=0.5, patience=epochs, seed=seed, max_minutes=minutes,
                         num_threads=1)

    def progress(event: dict) -> None:
        if event.get("event") == "epoch":
            logger.info("epoch %s: val macro-F1 %.3f", event.get("epoch"), event.get("val_macro_f1", float("nan")))

    result = train_model(dataset, config, out / "runs" / "demo", progress=progress)
    checkpoint = out / "checkpoints" / f"{DEMO_CHECKPOINT}.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.checkpoint_path, checkpoint)
    logger.info("trained %s: best val macro-F1 %.3f at epoch %s", DEMO_ARCH, result.best_macro_f1, result.best_epoch)
    table = predict_workspace(workspace, DEMO_CHECKPOINT, dataset=dataset)
    if final.exists():
        final.rmdir()
    out.rename(final)
    logger.info("predicted %d images; workspace ready in %.0fs: %s", len(table), time.monotonic() - started, final)
    return final


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "taxalens.toml").exists() and not args.force:
        print(f"{out} already holds a workspace; pass --force to rebuild it", file=sys.stderr)
        return 0
    if args.force and out.exists():
        shutil.rmtree(out)
    build_demo_workspace(out, seed=args.seed, scale=args.scale, epochs=args.epochs, minutes=args.minutes)
    return 0
