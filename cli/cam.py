"""`python -m core cam`: Grad-CAM overlay PNGs for one sample or a confusion cell of a workspace checkpoint."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_CELL_LIMIT = 24  # one gallery page


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cam",
        help="write Grad-CAM overlays for a sample or a confusion cell",
        description="Explain a workspace checkpoint's predictions with a CAM method and write overlay PNGs (the "
        "model's preprocessed view of each image under a heat map) plus cam_index.csv to --out.",
    )
    parser.add_argument("--workspace", required=True, help="workspace folder (holds taxalens.toml)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint name in the workspace")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sample", action="append", metavar="ID", help="sample id (repeatable)")
    which.add_argument("--cell", metavar="TRUE,PRED", help="every sample labelled TRUE and predicted PRED")
    parser.add_argument("--split", default="all", help="with --cell: only this split (default: all)")
    parser.add_argument("--limit", type=int, default=DEFAULT_CELL_LIMIT,
                        help=f"with --cell: at most this many samples, lowest confidence in TRUE first "
                        f"(default {DEFAULT_CELL_LIMIT})")
    parser.add_argument("--method", default="gradcam",
                        help="gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, finercam, scorecam (slow)")
    parser.add_argument("--target", action="append", metavar="pred|true|CLASS",
                        help="class to explain: pred, true, a class name or index (repeatable; default pred)")
    parser.add_argument("--layer", help="module name to explain instead of the automatic layer (e.g. layer3)")
    parser.add_argument("--opacity", type=float, default=0.5, help="heat-map opacity in [0, 1] (default 0.5)")
    parser.add_argument("--size", type=int, default=256, help="side of the written PNGs in pixels (default 256)")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--out", required=True, help="folder for the PNGs and cam_index.csv")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from PIL import Image

    from core.images import load_image_rgb
    from core.workspace import load_workspace
    from models.cam import explain_images, get_cam_method, render_overlay, resolve_class_index
    from models.inference import load_workspace_model, safe_file_name

    method = get_cam_method(args.method)
    if not 0.0 <= args.opacity <= 1.0:
        raise ValueError(f"--opacity must be in [0, 1], got {args.opacity}")
    if args.size < 0:
        raise ValueError(f"--size must be >= 0 (0 keeps the model's input size), got {args.size}")
    workspace = load_workspace(args.workspace)
    dataset = workspace.load_dataset()
    samples = _select_samples(args, workspace, dataset)
    model, card = load_workspace_model(workspace, args.checkpoint, dataset=dataset, device=args.device)
    if method.slow:
        print(f"note: {method.label} is slow ({method.note})", file=sys.stderr)
    images = [load_image_rgb(path) for path in samples["path"]]
    index = {name: i for i, name in enumerate(card.class_names)}
    rows, classes = [], []  # one batch row per (sample, target); None = the predicted class
    for i, label in enumerate(samples["label"]):
        for target in args.target or ["pred"]:
            rows.append(i)
            classes.append(None if target == "pred" else resolve_class_index(
                target, class_names=card.class_names, label_idx=index.get(label, -1)))
    explanation = explain_images(model, card, [images[i] for i in rows], classes, method=method.name,
                                 layer=args.layer, batch_size=args.batch_size)
    result = explanation.result
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for j, i in enumerate(rows):
        overlay = render_overlay(explanation.views[j], result.cams[j], opacity=args.opacity,
                                 display_size=args.size or None)
        sample_id = samples["sample_id"].iloc[i]
        class_name = card.class_names[result.class_indices[j]]
        name = f"{safe_file_name(sample_id)}__{method.name}__{safe_file_name(class_name)}.png"
        Image.fromarray(overlay).save(out / name)
        pred = int(result.pred_indices[j])
        records.append({"file": name, "sample_id": sample_id, "label": samples["label"].iloc[i],
                        "pred": card.class_names[pred], "confidence": f"{result.pred_probs[j, pred]:.4f}",
                        "explained_class": class_name,
                        "explained_prob": f"{result.pred_probs[j, result.class_indices[j]]:.4f}",
                        "method": method.name, "layer": result.layer})
    index_path = out / "cam_index.csv"
    written = {r["file"] for r in records}
    if index_path.is_file():  # an --out reused across runs keeps one row per PNG in it, newest last
        with open(index_path, newline="", encoding="utf-8") as handle:
            records = [r for r in csv.DictReader(handle) if r.get("file") not in written] + records
    with open(index_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[-1]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    print(f"wrote {len(written)} overlay(s) ({method.label}, layer {result.layer}, a {result.grid[0]}x{result.grid[1]} "
          f"map) to {out}")
    return 0


def _select_samples(args: argparse.Namespace, workspace, dataset):  # noqa: ANN001, ANN202 - lazily imported types
    frame = dataset.samples
    if args.sample:
        known = set(frame["sample_id"])
        missing = [s for s in args.sample if s not in known]
        if missing:
            examples = frame["sample_id"].head(3).tolist()
            raise ValueError(f"sample id(s) {missing} are not in the workspace dataset ({len(frame)} samples, "
                             f"e.g. {examples}); ids are paths relative to the dataset root")
        return frame.set_index("sample_id").loc[args.sample].reset_index()
    true, pred = _parse_cell(args.cell)
    from models.inference import predict_workspace

    table = predict_workspace(workspace, args.checkpoint, dataset=dataset, device=args.device).for_split(args.split)
    classes = list(table.class_names)
    for name in (true, pred):
        if name not in classes and name not in set(table.frame["label"]):
            raise ValueError(f"class {name!r} of --cell {args.cell!r} is neither a model class nor a dataset label; "
                             f"classes: {classes}")
    cell = table.frame[(table.frame["label"] == true) & (table.frame["pred"] == pred)]
    if cell.empty:
        raise ValueError(f"no sample in split {args.split!r} is labelled {true!r} and predicted {pred!r}; "
                         f"pick a non-empty cell of the confusion matrix")
    if true in classes:  # least confident in the given label first: the likeliest label errors or model errors
        cell = cell.assign(_given=table.pred_probs[cell.index.to_numpy(), classes.index(true)])
        cell = cell.sort_values("_given", kind="stable")
    cell = cell.head(max(args.limit, 1))
    return frame.set_index("sample_id").loc[cell["sample_id"].tolist()].reset_index()


def _parse_cell(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--cell takes TRUE,PRED (two class names separated by a comma), got {text!r}")
    return parts[0], parts[1]
