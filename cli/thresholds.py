"""`python -m core thresholds`: per-class auto-accept thresholds of a workspace checkpoint, as JSON or CSV."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "thresholds",
        help="per-class confidence thresholds above which predictions can be accepted without review",
        description="For each predicted class, the lowest confidence whose accepted predictions reach --precision "
        "with their lower confidence bound (not the point estimate), checked on held-out specimen-grouped folds; "
        "classes that never reach it get no threshold (always review). Writes JSON (.json) or CSV (other suffix).",
    )
    parser.add_argument("--workspace", required=True, help="workspace folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint name in the workspace")
    parser.add_argument("--precision", type=float, default=0.95, help="target precision (default 0.95)")
    parser.add_argument("--split", default="val", help="the labelled split the thresholds are chosen on (default val)")
    parser.add_argument("--calibrated", action="store_true",
                        help="use the checkpoint's stored temperature (Calibration page) on the confidences")
    parser.add_argument("--out", required=True, help="the file to write (.json or .csv)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from core.calibration import load_temperature
    from core.prediction_paths import stored_predictions
    from core.predictions import table_token
    from core.result_cache import RESULTS_DIR, thresholds_result
    from core.thresholds import ThresholdConfig, write_thresholds
    from core.workspace import load_workspace

    workspace = load_workspace(args.workspace)
    workspace.checkpoint(args.checkpoint)  # a clear error naming the known checkpoints
    config = ThresholdConfig(precision=args.precision)
    dataset = workspace.load_dataset()
    table = stored_predictions(workspace, args.checkpoint, dataset=dataset)  # torch-free: a warm call stays quick
    if table is None:
        print(f"error: no predictions of {args.checkpoint} yet; run `python -m core predict --workspace "
              f"{args.workspace} --checkpoint {args.checkpoint}` first", file=sys.stderr)
        return 2
    temperature = 1.0
    if args.calibrated:
        fit = load_temperature(workspace.cache_dir, args.checkpoint,
                               checkpoint_sha256=table.meta.get("checkpoint_sha256"))
        if fit is None:
            print(f"error: no temperature stored for {args.checkpoint}; fit one on the Calibration page or drop "
                  "--calibrated", file=sys.stderr)
            return 2
        temperature = fit.temperature
    rows = table.for_split(args.split)
    if len(rows) == 0:
        print(f"error: the {args.split!r} split has no rows; pick another with --split", file=sys.stderr)
        return 2
    # cached beside the predictions under the same key as the Calibration page's: a second call reads it
    result = thresholds_result(workspace.cache_dir / "predictions" / RESULTS_DIR, table_token(rows, args.split), rows,
                               config=config, temperature=temperature)
    out = write_thresholds(result, args.out, checkpoint=args.checkpoint, split=args.split, temperature=temperature)
    print(f"{'class':<30} {'threshold':>9} {'coverage':>8} {'precision':>9} {'low':>6} {'held-out':>8}")
    for row in result.frame.itertuples(index=False):
        threshold = "review" if row.threshold != row.threshold else f"{row.threshold:.4f}"
        print(f"{str(row[0])[:30]:<30} {threshold:>9} {row.coverage:>8.1%} {row.precision:>9.3f} "
              f"{row.precision_low:>6.3f} {row.heldout_precision:>8.3f}")
    print(f"accepted without review: {result.accepted_share:.1%} of {result.n_rows:,} images; held-out precision "
          f"{result.heldout_precision:.3f}; unreachable: {', '.join(result.unreachable) or 'none'}")
    print(f"wrote {out}")
    return 0
