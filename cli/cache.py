"""`python -m cli cache`: what the workspace's prediction cache holds, and (`--prune`) removing its stale part."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="report (and with --prune remove) stale cached predictions of a workspace",
        description="List the prediction tables, side files and per-sample stores under <workspace>/.taxalens/"
        "predictions: current ones, and stale ones (tables of an older dataset or older weights, store rows of "
        "images that left the dataset or changed). --prune removes the stale ones.",
    )
    parser.add_argument("--workspace", required=True, help="the workspace folder (holding taxalens.toml)")
    parser.add_argument("--prune", action="store_true", help="remove the stale tables, files, stores and rows")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from core.workspace import load_workspace
    from models.prediction_cache import cache_report, prune_cache

    workspace = load_workspace(args.workspace)
    dataset = workspace.load_dataset()
    entries = cache_report(workspace, dataset=dataset)
    if not entries:
        print(f"no cached predictions in {workspace.cache_dir / 'predictions'}")
        return 0
    print(f"{'status':<7} {'kind':<9} {'checkpoint':<20} {'rows':>9} {'stale rows':>10} {'MB':>8}  path")
    for entry in entries:
        status = "stale" if entry.stale else "current"
        rows = "" if entry.rows < 0 else f"{entry.rows:,}"
        print(f"{status:<7} {entry.kind:<9} {entry.checkpoint[:20]:<20} {rows:>9} {entry.stale_rows:>10,} "
              f"{entry.size_bytes / 1e6:>8.1f}  {entry.path.relative_to(workspace.root)}")
    stale = [e for e in entries if e.stale]
    freed = sum(e.size_bytes for e in stale if e.kind != "store" or e.stale_rows == e.rows)
    if not args.prune:
        print(f"{len(stale)} stale entr{'y' if len(stale) == 1 else 'ies'}"
              + (f"; remove with: python -m cli cache --workspace {workspace.root} --prune" if stale else ""))
        return 0
    pruned = prune_cache(workspace, dataset=dataset)
    print(f"pruned {len(pruned)} stale entr{'y' if len(pruned) == 1 else 'ies'} (at least {freed / 1e6:.1f} MB)")
    return 0
