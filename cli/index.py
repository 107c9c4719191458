"""`python -m cli index`: check a workspace's images now (new or changed files opened), refreshing its dataset index
and, for a large dataset, the snapshot a server opens from (`core.dataset_snapshot`); what a server's background
check runs."""

from __future__ import annotations

import argparse
import json
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="check a workspace's images and refresh its dataset index and snapshot",
        description="Load the workspace's dataset fully: every image stat-ed, new or changed ones opened (the "
        "dataset index under .taxalens/ answers for the others), the index rewritten when that changed, and for a "
        "dataset of at least TAXALENS_QUICK_OPEN_MIN_IMAGES images (default 50,000) the snapshot a server opens "
        "from at once. Prints what it found.",
    )
    parser.add_argument("--workspace", required=True, help="the workspace folder (holding taxalens.toml)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line (images, skipped, digest, snapshot, seconds) instead of text")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from core.dataset_snapshot import content_digest
    from core.workspace import load_workspace

    started = time.perf_counter()
    workspace = load_workspace(args.workspace)
    dataset = workspace.load_dataset()
    seconds = time.perf_counter() - started
    snapshot = workspace.dataset_snapshot_path
    report = {"images": len(dataset), "skipped": len(dataset.skipped), "digest": content_digest(dataset),
              "snapshot": str(snapshot) if snapshot.is_file() else None, "seconds": round(seconds, 3)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['images']:,} usable images, {report['skipped']:,} skipped, checked in {seconds:.1f} s")
    print(f"snapshot: {snapshot.relative_to(workspace.root)}" if report["snapshot"] else
          "no snapshot kept (below the quick-open size)")
    return 0
