"""`python -m cli crossval`: out-of-sample probabilities for the training split of a workspace checkpoint.

The probe mode runs in `core.crossval` (no torch beyond the predictions it may need); the finetune mode imports
`models.crossval` lazily and also runs under torchrun (the folds are split across the ranks; rank 0 writes the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from core.crossval import CROSSVAL_MODES, DEFAULT_FOLDS, crossval_path, validate_crossval_request
from core.train_runs import StatusWriter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crossval",
        help="cross-validated (out-of-fold) probabilities, so the review queue can rank the training split",
        description="Split the training rows into specimen-grouped, class-stratified folds and give each row the "
        "probabilities of a model that never saw it: --mode probe fits a class-balanced logistic regression on the "
        "checkpoint's stored embeddings per fold (seconds, CPU); --mode finetune retrains the checkpoint's recipe "
        "per fold (hours on a GPU; under `torchrun --nproc_per_node=N` fold i trains on process i mod N). The table "
        "is cached beside the predictions and the review queue ranks the training rows from it.",
    )
    parser.add_argument("--workspace", required=True, help="workspace folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint name in the workspace")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"number of folds (default {DEFAULT_FOLDS})")
    parser.add_argument("--mode", choices=CROSSVAL_MODES, default="probe", help="probe (default) or finetune")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fold assignment (and finetune's training)")
    parser.add_argument("--force", action="store_true", help="recompute even when a cached table exists")
    parser.add_argument("--epochs", type=int, help="finetune: epochs per fold (default: the checkpoint's recipe)")
    parser.add_argument("--max-minutes", type=float, help="finetune: time budget per fold")
    parser.add_argument("--batch-size", type=int, help="finetune: images per step (default: the recipe's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--out", help="finetune: folder for the fold runs (default: a temporary folder)")
    parser.add_argument("--status-file", help="keep a JSON status here (background runs started by the pages)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a recipe with pretrained weights reads timm's cache only
    from core.workspace import load_workspace

    validate_crossval_request(args.mode, args.folds)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports and writes
    status = StatusWriter(Path(args.status_file) if args.status_file and main_rank else None)
    status.update({"state": "starting", "pid": os.getpid(), "argv": sys.argv, "started_at": time.time(),
                   "checkpoint": args.checkpoint, "mode": args.mode, "folds": args.folds})
    try:
        workspace = load_workspace(args.workspace)
        workspace.checkpoint(args.checkpoint)  # a clear error naming the known checkpoints
        dataset = workspace.load_dataset()
        path = _cache_path(workspace, args, dataset)
        if path.is_file() and not args.force:
            print(f"cross-validated probabilities already cached: {path} (pass --force to recompute)")
            status.update({"state": "done", "path": str(path), "cached": True, "finished_at": time.time()})
            return 0
        reporter = _Reporter(status)
        if args.mode == "probe":
            table = _probe(workspace, args, dataset, reporter)
        else:
            table = _finetune(workspace, args, dataset, reporter)
        if table is None:  # a torchrun rank other than 0
            return 0
        from core.predictions import save_predictions

        save_predictions(table, path)
        for message in table.meta.get("messages", []):
            print(f"warning: {message}", file=sys.stderr)
        counts = table.frame["split"].value_counts().to_dict()
        print(f"{args.mode}, {args.folds} folds: out-of-fold probabilities for {counts.get('train', 0)} training "
              f"row(s) (+ {len(table) - counts.get('train', 0)} val/test); wrote {path}")
        status.update({"state": "done", "path": str(path), "rows": len(table), "finished_at": time.time()})
    except BaseException as exc:  # the status file must say the run ended, whatever ended it; then re-raise
        status.update({"state": "failed", "error": f"{type(exc).__name__}: {exc}", "finished_at": time.time()})
        raise
    return 0


def _cache_path(workspace, args: argparse.Namespace, dataset) -> Path:
    from models.inference import predictions_path

    return crossval_path(predictions_path(workspace, args.checkpoint, dataset=dataset), dataset.samples,
                         mode=args.mode, n_folds=args.folds, seed=args.seed)


def _probe(workspace, args: argparse.Namespace, dataset, reporter: _Reporter):
    from core.crossval import probe_crossval
    from models.inference import predict_workspace

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # the stored embeddings; computed first (a forward pass over the dataset) when the predictions are not cached
    table = predict_workspace(workspace, args.checkpoint, dataset=dataset, device=args.device)
    if table is None:  # under torchrun the ranks shared the prediction; rank 0 probes (seconds)
        return None
    return probe_crossval(table, n_folds=args.folds, seed=args.seed, progress=reporter)


def _finetune(workspace, args: argparse.Namespace, dataset, reporter: _Reporter):
    from models.checkpoints import read_model_card
    from models.crossval import cross_validated_predictions, recipe_config

    spec = workspace.checkpoint(args.checkpoint)
    config = recipe_config(read_model_card(spec.path), arch=spec.arch, epochs=args.epochs,
                           max_minutes=args.max_minutes, batch_size=args.batch_size, num_threads=args.threads,
                           device=args.device, seed=args.seed)
    print(f"fine-tuning {args.folds} folds of {config.arch} at {config.img_size} px, up to {config.epochs} epochs"
          + (f" or {config.max_minutes} min" if config.max_minutes else "") + " each", file=sys.stderr)
    from models.distributed import init_distributed, shutdown_distributed

    context = init_distributed()
    try:
        with tempfile.TemporaryDirectory(prefix="taxalens-crossval-") as tmp:
            table, _ = cross_validated_predictions(dataset, config, Path(args.out or tmp), n_folds=args.folds,
                                                   seed=args.seed, progress=reporter)
    finally:
        shutdown_distributed(context)
    return table


class _Reporter:
    """Progress events -> stderr lines and the status file (step events at most every 2 s)."""

    def __init__(self, status: StatusWriter) -> None:
        self.status = status
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        now = time.monotonic()
        kind = event.get("event")
        if kind == "step" and now - self.last < 2.0 and event.get("step") != event.get("steps"):
            return
        self.last = now
        fields = {k: v for k, v in event.items() if k != "val_per_class_f1"}
        self.status.update({"state": "running", "last_event": fields, "updated_at": time.time()})
        if kind == "fold" and "C" in event:
            print(f"probe C={event['C']:g}: fold {event['fold']}/{event['folds']}", file=sys.stderr, flush=True)
        elif kind == "epoch":
            print(f"fold {event.get('fold')}/{event.get('folds')} epoch {event['epoch']}/{event['epochs']}: val "
                  f"macro-F1 {event['val_macro_f1']:.4f}", file=sys.stderr, flush=True)
