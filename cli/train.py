"""`python -m cli train`: train on a dataset or curated export (also under torchrun).

The data checks live in `core.training_data`; the handler imports `models.train` lazily.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from core.dataset import Dataset
from core.train_runs import StatusWriter
from core.training_data import load_workspace_training_dataset

STATUS_NAME = "status.json"  # the run folder's live status, read by the Retrain page

# ---------------------------------------------------------------------------------------------------- the command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a timm classifier (from scratch, ImageNet weights or a checkpoint) into a TaxaLens checkpoint",
        description="Fine-tune a timm model on an ImageFolder, a manifest or a curated export (status=excluded rows "
        "left out, status=disputed rows too unless --include-disputed, relabels applied): AdamW with layer-wise lr "
        "decay, warmup + cosine, label smoothing, class-balanced sampling, light/strong augmentation, early stopping "
        "on val macro-F1, resume. Under "
        "`torchrun --nproc_per_node=N` it trains with DistributedDataParallel and rank 0 writes.",
    )
    parser.add_argument("--data", help="ImageFolder root, manifest CSV or curated export CSV")
    parser.add_argument("--root", help="folder the manifest's paths are relative to (a curated export: the dataset "
                        "root; default: the workspace's dataset root, else the CSV's folder)")
    parser.add_argument("--include-disputed", action="store_true",
                        help="a curated export's status=disputed rows (reviewers disagree, no ruling) train with their "
                        "original label; by default they are left out")
    parser.add_argument("--workspace", help="workspace folder: its dataset (unless --data) and where --add-as goes")
    parser.add_argument("--out", required=True, help="run folder (best.safetensors, run.json, last.pt)")
    parser.add_argument("--arch", default="resnet10t", help="timm architecture (default: resnet10t)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak lr of the head")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--layer-decay", type=float, default=0.8, help="lr factor per stage below the head")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--balance", choices=("sampler", "loss", "none"), default="sampler")
    parser.add_argument("--balance-power", type=float, default=0.5,
                        help="1 = every class equally often, 0.5 = square-root, 0 = natural frequencies")
    parser.add_argument("--rare-threshold", type=int, default=20,
                        help="classes with fewer training images get the strong augmentation")
    parser.add_argument("--patience", type=int, default=5, help="epochs without a better val macro-F1 before stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of specimens held out when no split")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--pretrained", action="store_true", help="ImageNet weights from timm's cache (no download)")
    parser.add_argument("--init-checkpoint", help="start from this checkpoint (any format TaxaLens loads)")
    parser.add_argument("--new-head", action="store_true",
                        help="with --init-checkpoint: a fresh classifier for the data's classes")
    parser.add_argument("--max-minutes", type=float, help="time budget; the schedule is fitted to it")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--add-as", metavar="NAME", help="when done, add the checkpoint to --workspace as NAME")
    parser.add_argument("--status-file", help="keep a JSON status here (default with --add-as: OUT/status.json)")
    parser.add_argument("--write-rank-hashes", action="store_true",
                        help="every rank writes OUT/rank<R>.weights.sha256 (to check DDP ranks agree)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # --pretrained reads timm's cache; a run never downloads
    from models.distributed import init_distributed, shutdown_distributed
    from models.train import TrainConfig, train_model

    context = init_distributed()
    out = Path(args.out)
    status_path = Path(args.status_file) if args.status_file else (out / STATUS_NAME if args.add_as else None)
    status = StatusWriter(status_path if context.is_main else None)
    status.update({"state": "starting", "pid": os.getpid(), "argv": sys.argv, "started_at": time.time()})
    try:
        dataset = _dataset_from_args(args)
        if context.is_main:
            for line in dataset.warnings:
                print(f"warning: {line}", file=sys.stderr)
            train_counts = dataset.split("train")["label"].value_counts()
            print(f"training on {len(dataset.split('train'))} images ({len(train_counts)} classes), "
                  f"validating on {len(dataset.split('val'))}", file=sys.stderr)
        config = TrainConfig(
            arch=args.arch, img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, layer_decay=args.layer_decay, label_smoothing=args.label_smoothing,
            warmup_epochs=args.warmup_epochs, balance=args.balance, balance_power=args.balance_power,
            rare_threshold=args.rare_threshold, patience=args.patience, seed=args.seed, num_workers=args.workers,
            pretrained=args.pretrained, init_checkpoint=args.init_checkpoint, new_head=args.new_head,
            max_minutes=args.max_minutes, amp=not args.no_amp, device=args.device, num_threads=args.threads,
        )
        result = train_model(dataset, config, out, progress=_Reporter(status), resume=args.resume)
        if args.write_rank_hashes:
            (out / f"rank{context.rank}.weights.sha256").write_text(result.weights_sha256 + "\n", encoding="utf-8")
        added = None
        if context.is_main and args.add_as:
            if not args.workspace:
                raise ValueError("--add-as NAME needs --workspace DIR to add the checkpoint to")
            from core.workspace import add_checkpoint

            add_checkpoint(args.workspace, args.add_as, result.checkpoint_path)
            added = args.add_as
        if context.is_main:
            print(f"best val macro-F1 {result.best_macro_f1:.4f} at epoch {result.best_epoch} "
                  f"({result.stop_reason}); wrote {result.checkpoint_path}")
        status.update({"state": "done", "checkpoint": str(result.checkpoint_path), "best_macro_f1":
                       result.best_macro_f1, "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
                       "added_as": added, "finished_at": time.time()})
    except BaseException as exc:  # the status file must say the run ended, whatever ended it; then re-raise
        status.update({"state": "failed", "error": f"{type(exc).__name__}: {exc}", "finished_at": time.time()})
        raise
    finally:
        shutdown_distributed(context)
    return 0


def _dataset_from_args(args: argparse.Namespace) -> Dataset:
    workspace = None
    if args.workspace:
        from core.workspace import load_workspace

        workspace = load_workspace(args.workspace)
    return load_workspace_training_dataset(workspace, args.data, root=args.root, val_fraction=args.val_fraction,
                                           seed=args.seed, include_disputed=args.include_disputed)


class _Reporter:
    """Progress events -> stderr lines and the status file (step events at most every 2 s)."""

    def __init__(self, status: StatusWriter) -> None:
        self.status = status
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        now = time.monotonic()
        if kind == "step" and now - self.last < 2.0 and event.get("step") != event.get("steps"):
            return
        self.last = now
        fields = {k: v for k, v in event.items() if k != "val_per_class_f1"}
        self.status.update({"state": "running", "last_event": fields, "updated_at": time.time(),
                            **({"last_epoch": fields} if kind == "epoch" else {})})
        if kind == "decode":
            print(f"decoded {event['done']}/{event['total']} images", file=sys.stderr, flush=True)
        elif kind == "step":
            print(f"epoch {event['epoch']}/{event['epochs']} step {event['step']}/{event['steps']} "
                  f"loss {event['loss']:.4f} lr {event['lr']:.2e} eta {_fmt_eta(event.get('eta_s'))}",
                  file=sys.stderr, flush=True)
        elif kind == "epoch":
            print(f"epoch {event['epoch']}/{event['epochs']}: train loss {event['train_loss']:.4f}, val loss "
                  f"{event['val_loss']:.4f}, val acc {event['val_accuracy']:.4f}, val macro-F1 "
                  f"{event['val_macro_f1']:.4f} (best {event['best_macro_f1']:.4f} @ {event['best_epoch']}), "
                  f"{event['seconds']:.1f}s, eta {_fmt_eta(event.get('eta_s'))}", file=sys.stderr, flush=True)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
