"""`python -m core predict`: predictions of one checkpoint on a dataset (also under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.predictions import PredictionTable
    from core.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict a dataset with a checkpoint into a Parquet table",
        description="Predict every image of a dataset. Under `torchrun --nproc_per_node=N` the data is sharded "
        "across processes and rank 0 merges the shards into one table. With --workspace only the images the "
        "workspace's prediction store lacks (new or changed files) are predicted; under torchrun each rank adds its "
        "share to the store, so the workspace must be on a filesystem every node shares.",
    )
    parser.add_argument("--data", help="ImageFolder root or CSV manifest (path,label[,split,specimen_id,...])")
    parser.add_argument("--root", help="root that manifest paths are relative to (default: the manifest's folder)")
    parser.add_argument("--workspace", help="a workspace folder: predict its dataset with its checkpoint NAME")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (or a checkpoint name with --workspace)")
    parser.add_argument("--arch", help="timm architecture, for files that do not carry it")
    parser.add_argument("--classes", help="class names file (one per line), for files that do not carry them")
    parser.add_argument("--out", help="output folder for predictions.parquet, skipped.csv, summary.json")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: by cores)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--no-intervals", action="store_true",
                        help="with --workspace: skip bootstrapping the evaluation pages' confidence intervals for "
                        "every split, searching for near-duplicate images (the Overview's leak check) and ranking "
                        "likely label errors (the Review queue) now (by default all are computed once here and "
                        "cached beside the predictions, so no page has to on its first visit)")
    parser.add_argument("--no-pools", action="store_true",
                        help="with --workspace: do not predict the workspace's unlabelled pools ([[pools]]); by "
                        "default each pool's new or changed images are predicted after the dataset")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow loading a pickled Python object or TorchScript; only for files you trust "
                        "(both are code that runs when loaded)")
    parser.set_defaults(func=_run)


def _predict_pools(workspace, args: argparse.Namespace, progress) -> None:
    """Each `[[pools]]` pool's images with the same checkpoint (only those the store lacks)."""
    from tqdm import tqdm

    from core.pools import load_pool
    from models.inference import predict_pool

    dataset = workspace.load_dataset()
    for spec in workspace.pools:
        pool = load_pool(workspace, spec.name)
        if len(pool.skipped):
            print(f"warning: pool {spec.name}: {len(pool.skipped)} file(s) skipped: "
                  f"{pool.skipped['reason'].value_counts().to_dict()}", file=sys.stderr)
        bar = tqdm(unit="img", file=sys.stderr, disable=None, desc=f"pool {spec.name}")

        def pool_progress(done: int, total: int, bar=bar) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        found = predict_pool(workspace, args.checkpoint, pool, dataset=dataset, progress=pool_progress,
                             batch_size=args.batch_size, num_workers=args.workers, device=args.device)
        bar.close()
        print(f"pool {spec.name}: {len(found)} of {len(pool)} images predicted"
              + (f", {len(found.failed)} could not be decoded" if len(found.failed) else ""))


def _warm_taxonomy(workspace: Workspace, table: PredictionTable, folder: Path) -> None:
    """The Taxonomy page's first view for every split (`core.result_cache.warm_taxonomy_results`), when the workspace
    has a taxonomy; a broken one is reported, not raised (the predictions are stored already)."""
    from core.errors import TaxaLensError
    from core.result_cache import PAGE_INTERVALS, warm_taxonomy_results
    from core.taxonomy import load_taxonomy

    try:
        tree = load_taxonomy(workspace, workspace.load_dataset())
    except TaxaLensError as exc:
        print(f"warning: taxonomy results not computed: {exc}", file=sys.stderr)
        return
    if tree is not None:
        computed = warm_taxonomy_results(table, folder, tree, config=PAGE_INTERVALS)
        print(f"{computed} taxonomy result(s) computed for the Taxonomy page in {folder}")


def _warm_review(workspace: Workspace, checkpoint: str, folder: Path) -> None:
    """The Review queue's label-issue ranking of every split and its prediction-set thresholds
    (`core.review_cache.warm_review_results`), on the table opened as the pages open it (a float16 table memory-mapped:
    the keys hash its probabilities as the pages hold them)."""
    from core.prediction_paths import predictions_path
    from core.probs_sidecar import open_table
    from core.review_cache import warm_review_results

    dataset = workspace.load_dataset()
    path = predictions_path(workspace, checkpoint, dataset=dataset)
    ranked = warm_review_results(open_table(path, dataset.samples), folder, predictions_key=str(path),
                                 checkpoint=checkpoint)
    print(f"{ranked} label-issue ranking(s) and the prediction-set thresholds stored for the Review queue in {folder}")


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.dataset import load_dataset
    from core.workspace import load_workspace
    from models.checkpoints import read_class_names
    from models.inference import predict_to_dir, predict_workspace

    bar = tqdm(unit="img", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    if args.workspace:
        workspace = load_workspace(args.workspace)
        table = predict_workspace(workspace, args.checkpoint, progress=progress, batch_size=args.batch_size,
                                  num_workers=args.workers, device=args.device)
        bar.close()
        if table is not None:  # under torchrun, rank 0 assembles the table
            print(f"{len(table)} predictions cached in {workspace.cache_dir / 'predictions'}")
            if not args.no_pools:
                _predict_pools(workspace, args, progress)
            if not args.no_intervals:
                from core.result_cache import PAGE_INTERVALS, RESULTS_DIR, warm_interval_results, warm_near_duplicates

                folder = workspace.cache_dir / "predictions" / RESULTS_DIR
                computed = warm_interval_results(table, folder, config=PAGE_INTERVALS)
                print(f"{computed} interval result(s) computed for the evaluation pages in {folder}")
                if warm_near_duplicates(table, folder, checkpoint=args.checkpoint, cache_dir=workspace.cache_dir):
                    print(f"near-duplicate pairs (the Overview's leak check) computed in {folder}")
                _warm_taxonomy(workspace, table, folder)
                _warm_review(workspace, args.checkpoint, folder)
        return 0
    if not args.data or not args.out:
        raise ValueError("give --data PATH and --out DIR (or --workspace DIR --checkpoint NAME)")
    dataset = load_dataset(args.data, root=args.root)
    for line in dataset.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if len(dataset.skipped):
        print(f"warning: {len(dataset.skipped)} file(s) skipped: "
              f"{dataset.skipped['reason'].value_counts().to_dict()}", file=sys.stderr)
    class_names = read_class_names(args.classes) if args.classes else None
    path = predict_to_dir(dataset, Path(args.checkpoint), Path(args.out), arch=args.arch, class_names=class_names,
                          trust_checkpoint=args.trust_checkpoint, batch_size=args.batch_size,
                          num_workers=args.workers, device=args.device, progress=progress)
    bar.close()
    if path is not None:
        print(f"wrote {path}")
    return 0
