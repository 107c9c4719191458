"""Does cross-validation find the training split's label errors? precision@k on the demo's planted flips, k = the
number of flips in the split, for the train and val splits x (in-sample, probe, finetune). Prints a table.

    .venv/bin/python benchmarks/bench_crossval.py --demo DIR [--folds 5] [--finetune-folds 5]
        [--finetune-epochs N] [--finetune-minutes M] [--skip-finetune] [--threads 1] [--finetune-table FILE]

`DIR`: a demo workspace (`python -m core demo --out DIR`, `make demo`); it is copied to a temporary folder first
(timestamps kept, so its cached predictions stay valid), so nothing is written into it.
- in-sample: the checkpoint's own probabilities ranked as if out-of-sample (train: what ranking the training split
  without cross-validation would give; val: the review queue's ranking, blended with embedding neighbours).
- probe: `python -m core crossval --mode probe` (train: out-of-fold; val: mean of the fold probes).
- finetune: `--mode finetune`, the checkpoint's recipe per fold (train: out-of-fold; val: mean of the fold models),
  with the epoch/time overrides given (on a CPU, fewer folds or epochs than the recipe keep it to minutes).
  `--finetune-table FILE` scores a table `python -m cli crossval --mode finetune` already wrote instead (e.g. one
  computed under torchrun, whose folds run in parallel: see the README).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.crossval import load_crossval, probe_crossval  # noqa: E402
from core.predictions import PredictionTable, build_prediction_table  # noqa: E402
from core.ranking import precision_at_k, rank_label_issues  # noqa: E402
from core.workspace import load_workspace  # noqa: E402


def as_holdout(table: PredictionTable) -> PredictionTable:
    """The same rows relabelled `val`, so the ranking takes their probabilities as they are."""
    frame = table.frame
    return build_prediction_table(frame["sample_id"].tolist(), table.pred_probs, table.embeddings,
                                  labels=frame["label"].tolist(), splits=["val"] * len(frame),
                                  specimen_ids=frame["specimen_id"].tolist(), class_names=table.class_names)


def scores(table: PredictionTable, cv: PredictionTable | None, flips: set[str], *, in_sample: bool) -> dict:
    """P@k on train and val for one column: in-sample (the checkpoint's table) or a cross-validated table."""
    train, val = table.for_split("train"), table.for_split("val")
    if in_sample:
        rankings = {"train": rank_label_issues(as_holdout(train), reference=train),
                    "val": rank_label_issues(val, reference=train)}
    else:
        rankings = {"train": rank_label_issues(train, cv_table=cv),
                    "val": rank_label_issues(as_holdout(cv.for_split("val")), knn_weight=0)}
    out = {}
    for split, ranking in rankings.items():
        truth = flips & set(ranking.frame["sample_id"])
        out[split] = (precision_at_k(ranking, truth), len(truth))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(REPO / "demo_workspace"), help="demo workspace folder")
    parser.add_argument("--folds", type=int, default=5, help="probe folds")
    parser.add_argument("--finetune-folds", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, help="epochs per fold (default: the recipe's)")
    parser.add_argument("--finetune-minutes", type=float, help="time budget per fold")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", help="finetune device (default: the best available)")
    parser.add_argument("--finetune-table", help="score this cached finetune table instead of training the folds")
    args = parser.parse_args()

    import torch

    from models.checkpoints import read_model_card
    from models.crossval import cross_validated_predictions, recipe_config
    from models.inference import predict_workspace

    torch.set_num_threads(args.threads)
    source = Path(args.demo)
    if not (source / "taxalens.toml").is_file():
        raise SystemExit(f"{source} is not a workspace; build the demo first (`make demo`)")
    with tempfile.TemporaryDirectory(prefix="bench-crossval-") as tmp:
        root = Path(tmp) / "ws"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("runs", "labels.db"))  # copy2 keeps mtimes
        workspace = load_workspace(root)
        dataset = workspace.load_dataset()
        name = workspace.checkpoints[0].name
        flips = set(pd.read_csv(root / "data" / "flipped_labels.csv")["sample_id"])
        table = predict_workspace(workspace, name, dataset=dataset)
        rows = {"in-sample": (scores(table, None, flips, in_sample=True), 0.0)}

        started = time.monotonic()
        probe = probe_crossval(table, n_folds=args.folds)
        rows[f"probe ({args.folds} folds, C={probe.meta['C']:g})"] = (
            scores(table, probe, flips, in_sample=False), time.monotonic() - started)

        if args.finetune_table:
            finetuned = load_crossval(args.finetune_table, dataset.samples)
            meta = finetuned.meta
            rows[f"finetune ({meta.get('folds')} folds, table of {Path(args.finetune_table).name[:40]}…)"] = (
                scores(table, finetuned, flips, in_sample=False), float("nan"))
            print("finetune fold val macro-F1: " + ", ".join(f"{v:.3f}" for v in meta.get("fold_macro_f1", [])),
                  file=sys.stderr)
        elif not args.skip_finetune:
            card = read_model_card(workspace.checkpoint(name).path)
            config = recipe_config(card, epochs=args.finetune_epochs, max_minutes=args.finetune_minutes,
                                   num_threads=args.threads, device=args.device)
            started = time.monotonic()
            finetuned, results = cross_validated_predictions(dataset, config, Path(tmp) / "folds",
                                                             n_folds=args.finetune_folds)
            label = (f"finetune ({args.finetune_folds} folds, {config.epochs} epochs"
                     + (f", {config.max_minutes:g} min" if config.max_minutes else "") + f", {config.img_size} px)")
            rows[label] = (scores(table, finetuned, flips, in_sample=False), time.monotonic() - started)
            print("finetune fold val macro-F1: " + ", ".join(f"{r.best_macro_f1:.3f}" for r in results),
                  file=sys.stderr)

    k = next(iter(rows.values()))[0]
    print(f"\nprecision@k on the demo's planted flips ({source}); k = flips in the split: "
          f"train k={k['train'][1]}, val k={k['val'][1]}")
    frame = pd.DataFrame([{"method": method, "train P@k": s["train"][0], "val P@k": s["val"][0], "seconds": sec}
                          for method, (s, sec) in rows.items()])
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
