"""A million images and 1,000 classes: every page's first visit, warm rerun and the server's peak memory.

Usage: python benchmarks/bench_scale.py [--workdir DIR] [--samples 1000000] [--classes 1000] [--repeats 3]
       [--pages "Confusion matrix,Misclassifications"] [--skip-intervals] [--max-rss-gb 12]

Builds (once; reused when DIR already holds it) a synthetic workspace: `--samples` small JPEGs hard-linked from a
few hundred real files under one folder per class, a manifest with specimens and two taxonomy ranks, a tiny
resnet10t checkpoint for the model card, and a predictions table written in row groups of 50,000 with float16
probabilities (`save_predictions(probs_dtype="float16")`'s format: the full vector kept, half the bytes), stored
where the app's prediction cache looks, and beside it the float16 memory map and compact columns
(`core.probs_sidecar`, written once per table as the app's first open would). The intervals of split "all" are
computed once, as `predict --workspace` does after predicting (timed apart). Then, in this process (the "server":
AppTest runs the app in-process), each page is opened on split "all": first visit, one rerun at once (a key press
while the page's background work, the review page's first Grad-CAM: torch's import, the model, the maps, still runs
in this process and is counted in its CPU time), then, once that work is done, `--repeats` warm reruns (median):
wall and this process's CPU time, and the process's peak RSS so far. Targets: first visit <= 3 s, warm <= 0.5 s,
peak RSS <= 8 GB. Needs about 12 GB of free memory at 1M x 1,000 (check `free -g`); the build takes long
on a busy machine (hard links and 1,000 probabilities per image).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.bench_pages import timed_run  # noqa: E402

# Pages that bootstrap intervals come last: at 1M x 1,000 a bootstrap may need more memory than the guard allows,
# which stops the run after printing the pages measured before it.
PAGES = {
    "Workspace (landing)": "pages/home.py",
    "Confusion matrix": "pages/confusion.py",
    "Misclassifications": "pages/errors.py",
    "Review queue": "pages/review.py",
    "Taxonomy": "pages/taxonomy.py",
    "Overview": "pages/overview.py",
    "Weakest classes": "pages/classes.py",
}
TARGET_FIRST_S, TARGET_WARM_S, TARGET_RSS_GB = 3.0, 0.5, 8.0
CHECKPOINT = "synthetic"
BASE_IMAGES = 500
CHUNK = 50_000


def build_workspace(root: Path, *, n: int, k: int, seed: int = 0) -> Path:
    """The synthetic workspace described in the module docstring (skipped when `root` already has predictions)."""
    predictions = root / ".taxalens" / "predictions"
    if (root / "taxalens.toml").is_file() and predictions.is_dir() and list(predictions.glob("*.parquet")):
        return root
    import pyarrow.parquet as pq
    import timm
    from PIL import Image

    from core.predictions import build_prediction_table, predictions_arrow
    from core.workspace import load_workspace
    from models.checkpoints import ModelCard, save_taxalens_checkpoint
    from models.inference import predictions_path

    rng = np.random.default_rng(seed)
    names = [f"taxon_{i:04d}" for i in range(k)]
    weights = 1.0 / np.arange(1, k + 1) ** 0.8  # Zipf-like class sizes, every class at least 5 images
    sizes = np.maximum(5, np.floor(weights / weights.sum() * n)).astype(int)
    sizes[0] += n - sizes.sum()
    labels = np.repeat(np.arange(k), sizes)
    rng.shuffle(labels)
    base = root / "base"
    base.mkdir(parents=True, exist_ok=True)
    for b in range(BASE_IMAGES):
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(base / f"b{b}.jpg", quality=80)
    for name in names:
        (root / "data" / "images" / name).mkdir(parents=True, exist_ok=True)
    rels = [f"images/{names[label]}/s{i:07d}.jpg" for i, label in enumerate(labels)]
    for i, rel in enumerate(rels):
        target = root / "data" / rel
        if not target.exists():
            os.link(base / f"b{i % BASE_IMAGES}.jpg", target)
    split = np.where(np.arange(n) % 10 < 7, "train", np.where(np.arange(n) % 10 < 9, "val", "test"))
    manifest = pd.DataFrame({"path": rels, "label": np.asarray(names)[labels], "split": split,
                             "specimen_id": [f"spec{i // 3:07d}" for i in range(n)],
                             "phylum": [f"phylum_{v % 9}" for v in labels],
                             "order": [f"order_{v % 61}" for v in labels]})
    manifest.to_csv(root / "data" / "manifest.csv", index=False)
    (root / "taxalens.toml").write_text(
        '[dataset]\nmanifest = "data/manifest.csv"\ntaxonomy = ["phylum", "order"]\n\n'
        f'[[checkpoints]]\nname = "{CHECKPOINT}"\npath = "checkpoints/{CHECKPOINT}.safetensors"\n', encoding="utf-8")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=k)
    card = ModelCard(arch="resnet10t", class_names=tuple(names), input_size=(3, 32, 32))
    save_taxalens_checkpoint(model, card, root / "checkpoints" / f"{CHECKPOINT}.safetensors")
    del model

    workspace = load_workspace(root)
    dataset = workspace.load_dataset(verify="none")
    samples = dataset.samples
    truth_all = samples["label"].map({c: i for i, c in enumerate(names)}).to_numpy()
    path = predictions_path(workspace, CHECKPOINT, dataset=dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, len(samples), CHUNK):
        rows = samples.iloc[start:start + CHUNK]
        truth = truth_all[start:start + CHUNK]
        m = len(rows)
        logits = rng.normal(0.0, 1.0, size=(m, k)).astype(np.float32)
        idx = np.arange(m)
        logits[idx, truth] += 6.0
        for step, boost in ((1, 4.8), (2, 4.0), (5, 3.4)):  # each class's look-alikes
            logits[idx, (truth + step) % k] += boost * rng.random(m).astype(np.float32)
        noisy = rng.random(m) < 0.12
        logits[idx[noisy], rng.integers(0, k, int(noisy.sum()))] += 8.0
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        table = build_prediction_table(rows["sample_id"].tolist(), logits, np.zeros((m, 0), np.float32),
                                       labels=rows["label"].tolist(), splits=rows["split"].tolist(),
                                       specimen_ids=rows["specimen_id"].tolist(), class_names=tuple(names),
                                       meta={"checkpoint": CHECKPOINT, "synthetic": True})
        arrow = predictions_arrow(table, probs_dtype="float16")
        if writer is None:
            writer = pq.ParquetWriter(str(path), arrow.schema)
        writer.write_table(arrow)
    writer.close()
    return root


def prepare_sidecars(root: Path) -> bool:
    """Write the float16 memory map and compact columns beside each predictions table that lacks them (what the
    app does on its first open: done here so that each page's first visit is timed with its results on disk).
    Returns whether anything was written."""
    from core.probs_sidecar import load_table, sidecar_paths, stores_float16

    written = False
    for path in sorted((root / ".taxalens" / "predictions").glob("*.parquet")):
        if stores_float16(path) and not all(p.is_file() for p in sidecar_paths(path)):
            load_table(path)  # writes them (or refreshes stale ones) in this process, not the measured one
            written = True
    return written


def _timed(app, timeout: float) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one AppTest run: on a shared machine the CPU time says what
    the page costs, the wall time what a user waits."""
    cpu = time.process_time()
    wall = timed_run(app, timeout)
    return wall, time.process_time() - cpu


def _settle_background_work(limit_s: float = 600.0) -> None:
    """Wait for the page's background Grad-CAM work (`pages._cam.cam_work_pending`), starting none: the review page's
    first Grad-CAM (torch's import, the model, the maps) runs on after its script run ends."""
    from pages._cam import cam_work_pending

    deadline = time.monotonic() + limit_s
    while cam_work_pending() and time.monotonic() < deadline:
        time.sleep(0.1)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def _current_rss_gb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(row for row in status if row.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024**2


def _guard_memory(limit_gb: float, report: Callable[[str], None]) -> None:
    """Stop this process (after `report`) once its resident memory passes `limit_gb`: the machine is shared, and a
    page that needs more than the target is a result to report, not a reason to push others' work out of memory."""
    def watch() -> None:
        while True:
            rss = _current_rss_gb()
            if rss > limit_gb:
                report(f"stopped: resident memory {rss:.1f} GB passed --max-rss-gb {limit_gb:g}")
                os._exit(3)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True, name="rss-guard").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/taxalens_bench_scale")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="all")
    parser.add_argument("--pages", default="",
                        help="comma-separated page titles to measure after the landing page (default: all)")
    parser.add_argument("--skip-intervals", action="store_true",
                        help="do not compute the split's intervals in a child process first")
    parser.add_argument("--click-at-once", action="store_true",
                        help="open the next page straight after the landing page's first run, while its background "
                        "dataset check (a child process) and the import warm-up still run; by default the landing page "
                        "is rerun and the check waited for, as a reader who spends those seconds on it")
    parser.add_argument("--skip-ranking", action="store_true",
                        help="do not store the review page's label-issue ranking in a child process first")
    parser.add_argument("--max-rss-gb", type=float, default=12.0,
                        help="stop (printing what was measured) when this process's resident memory passes this")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    root = build_workspace(Path(args.workdir), n=args.samples, k=args.classes)
    print(f"workspace {root} ready in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    written = prepare_sidecars(root)
    print(f"memory-mapped probabilities and compact columns beside the table: "
          f"{'written' if written else 'present'} ({time.perf_counter() - started:.1f}s, once per table)", flush=True)
    import subprocess

    if args.skip_intervals:
        print("intervals not computed beforehand (--skip-intervals): pages that show them bootstrap on first visit")
    else:
        warm = subprocess.run([sys.executable, "-c", _WARM, str(root), args.split], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        outcome = warm.stdout.strip() or warm.stderr.strip()[-500:] or f"exit status {warm.returncode}"
        if warm.returncode < 0:
            outcome += f" (killed by signal {-warm.returncode}: out of memory?)"
        print(f"intervals of split '{args.split}' (once per table, as `predict --workspace` does): {outcome}",
              flush=True)

    if args.skip_ranking:
        print("review ranking not stored beforehand (--skip-ranking): the review page ranks on its first visit")
    else:
        warm = subprocess.run([sys.executable, "-c", _WARM_RANKING, str(root), args.split], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        outcome = warm.stdout.strip() or warm.stderr.strip()[-500:] or f"exit status {warm.returncode}"
        if warm.returncode < 0:
            outcome += f" (killed by signal {-warm.returncode}: out of memory?)"
        print(f"review ranking of split '{args.split}' (once per table, stored beside the predictions): {outcome}",
              flush=True)

    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=1800)
    app.session_state["tl_workspace"] = str(root)
    app.session_state["tl_split"] = args.split
    results = []
    _guard_memory(args.max_rss_gb, lambda why: _print_table(args, results, why))
    wanted = {t.strip() for t in args.pages.split(",") if t.strip()}
    unknown = wanted - set(PAGES)
    if unknown:
        parser.error(f"unknown page(s) {sorted(unknown)}; choose from {list(PAGES)}")
    for title, page in PAGES.items():
        if wanted and title not in wanted and page != PAGES["Workspace (landing)"]:
            continue
        if page != PAGES["Workspace (landing)"]:
            app.switch_page(page)
        try:
            first, first_cpu = _timed(app, 1800)
            if args.click_at_once and page == PAGES["Workspace (landing)"]:
                # the next page at once: the dataset check and the import warm-up still run beside it
                results.append((title, first, first_cpu, *[float("nan")] * 4, _rss_gb()))
                print(f"  {title}: first {first:.2f}s ({first_cpu:.2f}s CPU); the next page opened at once", flush=True)
                continue
            at_once, at_once_cpu = _timed(app, 600)  # the page's background work may still run meanwhile
            _settle_background_work()
            warm = [_timed(app, 600) for _ in range(args.repeats)]
            warm_s, warm_cpu = statistics.median(w for w, _ in warm), statistics.median(c for _, c in warm)
            results.append((title, first, first_cpu, at_once, at_once_cpu, warm_s, warm_cpu, _rss_gb()))
            if page == PAGES["Workspace (landing)"]:
                _report_dataset_check(root)
            print(f"  {title}: first {first:.2f}s ({first_cpu:.2f}s CPU), rerun at once {at_once:.2f}s "
                  f"({at_once_cpu:.2f}s CPU), warm {warm_s:.2f}s ({warm_cpu:.2f}s CPU), peak RSS {_rss_gb():.2f} GB, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        except RuntimeError as exc:
            results.append((title, *[float("nan")] * 6, _rss_gb()))
            print(f"{title}: {exc}")

    if args.click_at_once:
        _report_dataset_check(root)
    _print_table(args, results)
    return 0


def _report_dataset_check(root: Path) -> None:
    """The landing page showed a large dataset from its snapshot and started checking its files in a child process
    (`core.dataset_snapshot`): wait for that check, so the next pages are not timed beside it, and say how it ended."""
    from core.workspace import load_workspace
    from pages._cached import dataset_check

    check = dataset_check(load_workspace(root))
    if check is None:
        print("  the dataset was loaded fully (no snapshot): every image stat-ed before the landing page")
        return
    check.wait(1800)
    print(f"  landing page shown from the dataset snapshot; the background check of the files (a child process) "
          f"ended {check.state} after {(check.finished_at or time.time()) - check.started_at:.1f} s", flush=True)


def _print_table(args: argparse.Namespace, results: list, note: str = "") -> None:
    print()
    if note:
        print(note)
    print(f"{args.samples:,} images x {args.classes:,} classes, split '{args.split}', float16 probabilities on disk; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.repeats} warm runs (median)")
    print("rerun at once: the next rerun, while the page's background work (the review page's first Grad-CAM) may "
          "still run in this process; warm: once it is done")
    print(f"{'page':<22} {'first (s)':>10} {'CPU (s)':>8} {'at once (s)':>12} {'CPU (s)':>8} {'warm (s)':>9} "
          f"{'CPU (s)':>8} {'peak RSS (GB)':>14}  ok (<= {TARGET_FIRST_S:g} s, <= {TARGET_WARM_S:g} s, "
          f"<= {TARGET_RSS_GB:g} GB)")
    for title, first, first_cpu, at_once, at_once_cpu, warm_s, warm_cpu, rss in results:
        ok = first <= TARGET_FIRST_S and (warm_s != warm_s or warm_s <= TARGET_WARM_S) and rss <= TARGET_RSS_GB
        print(f"{title:<22} {first:>10.2f} {first_cpu:>8.2f} {at_once:>12.2f} {at_once_cpu:>8.2f} {warm_s:>9.2f} "
              f"{warm_cpu:>8.2f} {rss:>14.2f}  {'yes' if ok else 'NO'}", flush=True)


# Run in a child process so its memory does not count towards the server's peak RSS.
# The table is opened as the pages open it (core.probs_sidecar: float16 memory map), so the keys match theirs.
_WARM = """
import resource, sys, time
from core.prediction_paths import predictions_path
from core.probs_sidecar import open_table
from core.result_cache import PAGE_INTERVALS, RESULTS_DIR, warm_interval_results
from core.workspace import load_workspace
workspace = load_workspace(sys.argv[1])
dataset = workspace.load_dataset()
table = open_table(predictions_path(workspace, "synthetic", dataset=dataset), dataset.samples)
start, cpu = time.perf_counter(), time.process_time()
n = warm_interval_results(table, workspace.cache_dir / "predictions" / RESULTS_DIR, config=PAGE_INTERVALS,
                          splits=(sys.argv[2],))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(f"{n} results in {time.perf_counter() - start:.1f}s ({time.process_time() - cpu:.1f}s CPU), "
      f"peak RSS {peak:.2f} GB")
"""

# The review page's ranking and prediction-set thresholds, stored by the function `predict --workspace` calls
# (core.review_cache.warm_review_results: the keys the page computes), in a child process so that its memory does not
# count towards the server's peak RSS.
_WARM_RANKING = """
import resource, sys, time
from core.prediction_paths import predictions_path
from core.probs_sidecar import open_table
from core.result_cache import RESULTS_DIR
from core.review_cache import warm_review_results
from core.workspace import load_workspace
workspace = load_workspace(sys.argv[1])
dataset = workspace.load_dataset()
path = predictions_path(workspace, "synthetic", dataset=dataset)
start, cpu = time.perf_counter(), time.process_time()
n = warm_review_results(open_table(path, dataset.samples), workspace.cache_dir / "predictions" / RESULTS_DIR,
                        predictions_key=str(path), checkpoint="synthetic", splits=(sys.argv[2],))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(f"{n} ranking(s) and the prediction-set thresholds (as `predict --workspace` stores them) in "
      f"{time.perf_counter() - start:.1f}s ({time.process_time() - cpu:.1f}s CPU); peak RSS {peak:.2f} GB")
"""


if __name__ == "__main__":
    raise SystemExit(main())
