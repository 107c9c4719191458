"""Calibration, thresholds, prediction sets and novelty at scale, and (with --report) the closing figures.

Usage:
  python benchmarks/bench_calibration.py [--samples 100000] [--classes 300] [--repeats 3]
  python benchmarks/bench_calibration.py --report [--demo DIR] [--bccd-workdir DIR]

Timing: a synthetic table of `--samples` rows over `--classes` classes (two images per specimen, over-confident
probabilities: softmax of 2x the logits the labels are drawn from), each computation the Calibration page runs timed
after one warm-up call (median of `--repeats`): the calibration report with 1,000 BCa specimen resamples, the
auto-accept thresholds (Wilson scan + held-out folds + one 1,000-resample bootstrap), the temperature fit, the
prediction-set coverage over 10 splits. Target: calibration page and thresholds <= 1.5 s each. (On the page these
run once per table and settings; reruns read Streamlit's cache.)

Report: for the demo (its stored predictions, read-only) and for bccd (a workspace built in `--bccd-workdir`: the
real crops, a resnet10t trained from scratch at 64 px for a few epochs with `python -m cli train`, predictions with
`python -m cli predict`), ECE before/after temperature scaling (out-of-fold), the auto-accept table at precision
0.95, and the leave-one-class-out AUROC table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.calibration import calibration_report, fit_temperature  # noqa: E402
from core.conformal import ConformalConfig, evaluate_coverage  # noqa: E402
from core.novelty import leave_one_class_out  # noqa: E402
from core.predictions import PredictionTable, build_prediction_table, load_predictions  # noqa: E402
from core.thresholds import ThresholdConfig, auto_accept_thresholds  # noqa: E402

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)


def synthetic_table(n: int, k: int, *, seed: int = 0) -> PredictionTable:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)).astype(np.float32)
    y = rng.integers(0, k, n)
    z[np.arange(n), y] += 3.0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)  # labels drawn from p: p is calibrated
    shown = np.exp(2 * (z - z.max(axis=1, keepdims=True)))
    shown /= shown.sum(axis=1, keepdims=True)
    names = [f"class{i:03d}" for i in range(k)]
    return build_prediction_table([f"s{i}" for i in range(n)], shown, np.zeros((n, 0)),
                                  labels=[names[c] for c in labels], splits=["val"] * n,
                                  specimen_ids=[f"sp{i // 2}" for i in range(n)], class_names=names)


def _time(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up (imports, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def run_timing(n: int, k: int, repeats: int) -> None:
    table = synthetic_table(n, k)
    steps = {
        "calibration report (1,000 BCa resamples)": lambda: calibration_report(table),
        "auto-accept thresholds (precision 0.95)": lambda: auto_accept_thresholds(table, ThresholdConfig()),
        "temperature fit (5 grouped folds)": lambda: fit_temperature(table, checkpoint="bench"),
        "prediction-set coverage (10 splits)": lambda: evaluate_coverage(table, ConformalConfig(), repeats=10),
    }
    print(f"{n:,} rows x {k} classes, {n // 2:,} specimens; median / max of {repeats} warm runs, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'step':<45} {'median s':>9} {'max s':>7}  target")
    for name, function in steps.items():
        median, worst = _time(function, repeats)
        target = "<= 1.5 s" if name.startswith(("calibration", "auto-accept")) else ""
        print(f"{name:<45} {median:>9.2f} {worst:>7.2f}  {target}")


def _figures(name: str, table: PredictionTable) -> None:
    val = table.for_split("val")
    fit = fit_temperature(val, checkpoint=name)
    print(f"\n=== {name}: {len(table):,} images, {len(table.class_names)} classes; val {len(val):,} images, "
          f"{val.frame['specimen_id'].nunique():,} specimens ===")
    print(f"temperature {fit.temperature:.3f} ({fit.n_folds} specimen-grouped folds on val; after = out of fold)")
    print(f"ECE (15 equal-width bins)  before {fit.ece_before:.4f}  after {fit.ece_after:.4f}")
    print(f"NLL                        before {fit.nll_before:.4f}  after {fit.nll_after:.4f}")
    result = auto_accept_thresholds(val, ThresholdConfig(precision=0.95))
    print(f"\nauto-accept at precision 0.95 (95% lower bound) on val: {result.accepted_share:.1%} accepted unreviewed, "
          f"held-out precision {result.heldout_precision:.3f}; unreachable: {', '.join(result.unreachable) or 'none'}")
    print(result.frame.round(3).to_string(index=False))
    loco = leave_one_class_out(table)
    print("\nleave-one-class-out AUROC (probe on the stored embeddings, all labelled images, specimen halves):")
    print(loco.round(3).to_string(index=False))
    print("mean AUROC: " + ", ".join(f"{c[6:]} {loco[c].mean():.3f}" for c in loco.columns if c.startswith("auroc")))


def bccd_table(workdir: Path) -> PredictionTable:
    """The bccd workspace of the module docstring (built once in `workdir`)."""
    from core.workspace import load_workspace
    from models.inference import cached_predictions

    bccd = REPO.parent / "shared" / "data" / "bccd"
    if not bccd.is_dir():
        bccd = Path(os.environ.get("TAXALENS_TEST_DATA", "/work/shared/data")) / "bccd"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "taxalens.toml"
    if not config.exists():
        config.write_text(f'[dataset]\nroot = "{bccd}"\n', encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not (workdir / "run" / "best.safetensors").exists():
        subprocess.run([sys.executable, "-m", "cli", "train", "--workspace", str(workdir),
                        "--out", str(workdir / "run"), "--arch", "resnet10t", "--img-size", "64", "--epochs", "12",
                        "--batch-size", "32",
                        "--threads", "1", "--device", "cpu", "--add-as", "tiny"], cwd=REPO, env=env, check=True)
    workspace = load_workspace(workdir)
    table = cached_predictions(workspace, "tiny", dataset=workspace.load_dataset())
    if table is None:
        subprocess.run([sys.executable, "-m", "cli", "predict", "--workspace", str(workdir), "--checkpoint", "tiny"],
                       cwd=REPO, env=env, check=True)
        table = cached_predictions(workspace, "tiny", dataset=workspace.load_dataset())
    return table


def run_report(demo: Path | None, bccd_workdir: Path) -> None:
    if demo is None:
        found = sorted(p for p in (REPO / ".pytest_cache").glob("demo-*") if p.is_dir())
        demo = found[-1] if found else None
    if demo is not None:
        files = sorted((demo / ".taxalens" / "predictions").glob("*.parquet"))
        _figures(f"demo ({demo.name})", load_predictions(files[0]))  # read-only: nothing is written there
    _figures("bccd (resnet10t, 64 px, trained from scratch)", bccd_table(bccd_workdir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="print the demo and bccd figures instead of timings")
    parser.add_argument("--demo", type=Path, help="demo workspace (default: the newest .pytest_cache/demo-*)")
    parser.add_argument("--bccd-workdir", type=Path, default=Path("/tmp/taxalens_bench_calibration_bccd"))
    args = parser.parse_args(argv)
    if args.report:
        run_report(args.demo, args.bccd_workdir)
    else:
        run_timing(args.samples, args.classes, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
