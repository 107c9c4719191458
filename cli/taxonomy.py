"""`python -m cli taxonomy`: the taxonomy report of a workspace checkpoint: metrics at every rank with bootstrap
intervals, mistake severity, and what the hierarchy-aware decision rule would change (the Taxonomy page, as text)."""

from __future__ import annotations

import argparse

from core.taxonomy_metrics import ROLLUP_RULES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "taxonomy",
        help="metrics at every taxonomic rank, mistake severity and the hierarchy-aware decision rule",
        description="Report a checkpoint's cached predictions along the workspace taxonomy (the taxonomy CSV or "
        "the manifest columns `[dataset] taxonomy` names). Compute the predictions first (`predict`).",
    )
    parser.add_argument("--workspace", required=True, help="workspace folder (with taxalens.toml)")
    parser.add_argument("--checkpoint", help="checkpoint name (default: the first one listed)")
    parser.add_argument("--split", default="val", help="val, train, test or all (default: val)")
    parser.add_argument("--rule", choices=list(ROLLUP_RULES), default="sum",
                        help="predicted group at a rank: " + "; ".join(f"{k}: {v}" for k, v in ROLLUP_RULES.items()))
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples behind the intervals")
    parser.set_defaults(func=_run)


def _interval(value, low, high, *, percent: bool = False) -> str:
    if value is None or value != value:
        return "—"
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return fmt(value) if low is None or low != low else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def _run(args: argparse.Namespace) -> int:
    from core import taxonomy_metrics as tm
    from core.taxonomy import load_taxonomy
    from core.workspace import WorkspaceError, load_workspace
    from models.inference import cached_predictions

    workspace = load_workspace(args.workspace)
    if not workspace.checkpoints:
        raise WorkspaceError(f"{workspace.root} lists no checkpoint; add one under [[checkpoints]]")
    name = args.checkpoint or workspace.checkpoints[0].name
    workspace.checkpoint(name)  # names the known ones when it is not there
    dataset = workspace.load_dataset()
    taxonomy = load_taxonomy(workspace, dataset)
    if taxonomy is None:
        raise WorkspaceError(f"{workspace.root / 'taxalens.toml'} names no taxonomy; set `taxonomy = \"taxonomy.csv\"`"
                             " (class,<finest rank>,...) or a list of manifest columns under [dataset]")
    full = cached_predictions(workspace, name, dataset=dataset)
    if full is None:
        raise WorkspaceError(f"no predictions of {name!r} for the current data; run `python -m cli predict "
                             f"--workspace {workspace.root} --checkpoint {name}` first")
    table = full.for_split(args.split)
    taxonomy.require_classes(table.class_names)
    n_boot = args.n_boot
    print(f"checkpoint {name} · split {args.split} · {len(table):,} images · ranks {' → '.join(taxonomy.levels)} · "
          f"predicted group = {ROLLUP_RULES[args.rule]} · {n_boot} bootstrap resamples (95% intervals)")

    ranked = tm.rank_bootstrap(table, taxonomy, rule=args.rule, n_boot=n_boot)  # every rank + severity, one resampling
    frame = tm.rank_metrics_frame(ranked.ranks)
    print("\nMetrics at every rank")
    print(f"{'rank':<10} {'groups':>6}  {'accuracy':<26} {'balanced accuracy':<26} {'macro-F1':<26}")
    for row in frame.itertuples():
        print(f"{row.rank:<10} {row.groups:>6}  "
              f"{_interval(row.accuracy, row.accuracy_low, row.accuracy_high, percent=True):<26} "
              f"{_interval(row.balanced_accuracy, row.balanced_accuracy_low, row.balanced_accuracy_high):<26} "
              f"{_interval(row.macro_f1, row.macro_f1_low, row.macro_f1_high):<26}")
    print("\nWhere accuracy breaks down")
    for line in tm.breakdown_lines(frame):
        print(f"  {line}")

    print(f"  intervals: {ranked.ranks[0].headline.caption}")
    severity = ranked.severity
    print(f"\nMistake severity ({severity.n_errors:,} errors of {severity.n_evaluated:,})")
    for row in severity.histogram.itertuples():
        print(f"  LCA {row.lca_rank:<10} {row.errors:>6} errors ({row.share:.1%})")
    for line in severity.within_lines():
        print(f"  {line}")
    for estimate in (severity.mistake_severity, severity.mean_distance):
        print(f"  {tm.SEVERITY_MEASURES[estimate.name]}: {_interval(estimate.value, estimate.low, estimate.high)}")

    effect = tm.decision_rule_effect(table, taxonomy, n_boot=n_boot, severity_before=severity,
                                     before=ranked.ranks if args.rule == "argmax" else None)
    print(f"\nHierarchy-aware decision rule (conditional risk minimisation; changes {effect.n_changed:,} "
          "predictions; groups = ancestors of the predicted class)")
    print(f"{'rank':<10} {'accuracy top-1':<26} {'accuracy rule':<26} {'macro-F1 top-1':<26} {'macro-F1 rule':<26}")
    for row in effect.per_rank.itertuples():
        print(f"{row.rank:<10} "
              f"{_interval(row.accuracy_before, row.accuracy_before_low, row.accuracy_before_high, percent=True):<26} "
              f"{_interval(row.accuracy_after, row.accuracy_after_low, row.accuracy_after_high, percent=True):<26} "
              f"{_interval(row.macro_f1_before, row.macro_f1_before_low, row.macro_f1_before_high):<26} "
              f"{_interval(row.macro_f1_after, row.macro_f1_after_low, row.macro_f1_after_high):<26}")
    for row in effect.severity.itertuples():
        print(f"  {row.label}: top-1 {_interval(row.before, row.before_low, row.before_high)} → rule "
              f"{_interval(row.after, row.after_low, row.after_high)}")
    errors = ", ".join(f"{r.lca_rank} {r.errors_before}→{r.errors_after}" for r in effect.histogram.itertuples())
    print(f"  errors by LCA rank (top-1 → rule): {errors}")
    return 0
