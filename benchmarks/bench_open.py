"""Cold start: reopening a large workspace (server restart) with and without the dataset index.

Usage: python benchmarks/bench_open.py [--workdir DIR] [--samples 100000] [--classes 300]

Builds (once) the synthetic workspace of `benchmarks/bench_pages.py` (small JPEGs hard-linked under distinct paths,
a manifest, a tiny checkpoint, a predictions table). Each measurement runs in a fresh Python process, as a server
restart does: `load_dataset` with no index (every header opened), the same with the index written by the first
run, and the landing page (app.py's home page through AppTest: dataset, class counts, checkpoint rows). Target:
landing page <= 2 s with the index.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_LANDING_S = 2.0


def _child(mode: str, root: str) -> dict:
    """One measurement in this (fresh) process."""
    started = time.perf_counter()
    if mode == "landing":
        from streamlit.testing.v1 import AppTest

        imported, cpu_imported = time.perf_counter(), time.process_time()
        app = AppTest.from_file(str(REPO / "app.py"), default_timeout=900)
        app.session_state["tl_workspace"] = root
        app.run(timeout=900)
        if app.exception:
            raise RuntimeError(f"home page raised: {[e.value for e in app.exception]}")
        return {"seconds": time.perf_counter() - imported, "cpu": time.process_time() - cpu_imported,
                "imports": imported - started}
    from core.workspace import load_workspace

    workspace = load_workspace(root)
    imported, cpu_imported = time.perf_counter(), time.process_time()
    index = workspace.dataset_index_path if mode == "index" else None
    dataset = workspace.load_dataset(index=index)
    return {"seconds": time.perf_counter() - imported, "cpu": time.process_time() - cpu_imported,
            "samples": len(dataset)}


def _measure(mode: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_child", mode, "--workdir", str(root)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/taxalens_bench_open")
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--reopen-only", action="store_true",
                        help="keep the index a previous run wrote; measure only the reopen and the landing page")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(_child(args._child, args.workdir)))
        return 0

    from benchmarks.bench_pages import build_workspace

    root = Path(args.workdir)
    started = time.perf_counter()
    build_workspace(root, n=args.samples, k=args.classes)
    print(f"workspace {root} ready in {time.perf_counter() - started:.1f}s")
    index = root / ".taxalens" / "dataset-index.parquet"
    rows = []
    if not args.reopen_only or not index.is_file():
        index.unlink(missing_ok=True)
        rows.append(("load_dataset, no index (every header opened)", _measure("plain", root), None))
        rows.append(("load_dataset, first run (writes the index)", _measure("index", root), None))
    rows.append(("load_dataset, reopen with the index", _measure("index", root), None))
    rows.append(("landing page after a restart, with the index", _measure("landing", root), TARGET_LANDING_S))
    print()
    print(f"{args.samples:,} images x {args.classes} classes; each row a fresh process (imports not counted); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("seconds: wall clock; CPU s: the process's CPU seconds, all threads (about the wall clock when idle)")
    print(f"{'measurement':<48} {'seconds':>8} {'CPU s':>7} {'target':>7}  ok (by CPU s)")
    for title, result, target in rows:
        verdict = "" if target is None else ("yes" if result["cpu"] <= target else "NO")
        shown = "" if target is None else f"{target:.1f}"
        print(f"{title:<48} {result['seconds']:>8.2f} {result['cpu']:>7.2f} {shown:>7}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
