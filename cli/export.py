"""`python -m core export`: the curated label manifest (and the audit log) of a workspace, as CSV."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the curated label manifest (and the review audit log) as CSV",
        description="Export the workspace's dataset with the labels the review events say now: "
        "path,label,original_label,status,n_reviews,agreement,last_reviewer,updated_at plus the dataset's own "
        "columns. Excluded samples are kept and marked status=excluded. Labelled images of the workspace's pools "
        "([[pools]]) follow with status=new, split train, their pool in column `pool` (paths relative to that pool's "
        "root) and label_source manual or auto (a bulk auto-accept). The file is a manifest: load it with the "
        "dataset root as its root (paths stay relative to it; train with --workspace so pool rows find their "
        "pool).",
    )
    parser.add_argument("--workspace", required=True, help="the workspace folder (holds taxalens.toml)")
    parser.add_argument("--out", required=True, help="the curated manifest CSV to write")
    parser.add_argument("--audit", help="also write every review event (the audit log) to this CSV")
    parser.add_argument("--verify", choices=("none", "header", "full"), default="header",
                        help="how closely to check the dataset's images while loading it (default: header)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from core.export import export_curated_labels
    from core.labelstore import open_label_store
    from core.pools import load_pools
    from core.workspace import load_workspace

    workspace = load_workspace(args.workspace)
    dataset = workspace.load_dataset(verify=args.verify)
    pools = load_pools(workspace, verify=args.verify)
    with open_label_store(workspace) as store:
        summary = export_curated_labels(dataset, store, args.out, audit_out=args.audit, pools=pools)
    for line in summary.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if len(dataset.skipped):
        print(f"warning: {len(dataset.skipped)} unusable file(s) of the dataset are not in the export "
              "(missing or unreadable images)", file=sys.stderr)
    counts = ", ".join(f"{status} {n}" for status, n in sorted(summary.status_counts.items()))
    print(f"wrote {summary.n_rows} samples ({counts}) to {summary.manifest_path}")
    if summary.audit_path:
        print(f"wrote {summary.n_events} review events to {summary.audit_path}")
    print(f"paths are relative to {summary.dataset_root}: load with "
          f"load_dataset({str(summary.manifest_path)!r}, root={str(summary.dataset_root)!r}), or in taxalens.toml "
          f"[dataset] manifest = \"{summary.manifest_path}\" and root = \"{summary.dataset_root}\"")
    return 0
