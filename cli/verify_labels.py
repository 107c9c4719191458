"""`python -m cli verify-labels`: recompute the label log's hash chain and report the first broken link."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify-labels",
        help="check that no recorded review event was changed, removed or inserted (the hash chain)",
        description="Recompute the SHA-256 hash chain of the workspace's label log from its first event and report "
        "the first broken link (event id and what differs); on SQLite also run PRAGMA integrity_check. Exits 0 "
        "when the log is intact, 1 when it is not. Prints the head hash: keep it elsewhere (a lab notebook, a "
        "ticket) to detect later that events were cut off the end.",
    )
    parser.add_argument("--workspace", help="the workspace folder (holds taxalens.toml)")
    parser.add_argument("--url", help="a label store URL instead of a workspace's (sqlite:///FILE or postgresql://...)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from core.labelstore import LabelStore
    from core.workspace import load_workspace

    if bool(args.workspace) == bool(args.url):
        raise ValueError("give either --workspace DIR or --url URL (one of them)")
    url = args.url or load_workspace(args.workspace).label_store_url
    with LabelStore(url, check_on_open=False) as store:
        report = store.verify_chain()
        where = store.safe_url
    if report.ok:
        print(f"label log OK: {report.links_checked} events, every link intact ({where})")
        print(f"head hash: {report.head_hash}")
        return 0
    print(f"label log DAMAGED ({where}): {report.problem}", file=sys.stderr)
    if report.broken is not None:
        print(f"first broken link: event {report.broken.event_id} ({report.links_checked} events before it are "
              "intact)", file=sys.stderr)
    print("the dashboard refuses to record into this store. Keep a copy of it as it is, then restore the label "
          "store from a backup taken before that event (or ask your team lead); events after it can be recorded "
          "again from the audit log", file=sys.stderr)
    return 1
