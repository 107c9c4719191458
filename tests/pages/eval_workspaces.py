"""Workspaces for the evaluation-page tests: a small drawn demo dataset or bccd, a tiny timm checkpoint, and
(optionally) precomputed predictions with a known, structured confusion written where the app's cache looks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

CHECKPOINT = "tiny"


def write_workspace(
    root: Path,
    *,
    dataset: str,
    taxonomy: tuple[str, ...] | str = (),
    class_names: tuple[str, ...] | None = None,
) -> Path:
    """`root/taxalens.toml` pointing at `dataset` (a manifest CSV or an ImageFolder) and a tiny random-weight
    resnet10t checkpoint (32 px) over `class_names` (default: the dataset's classes). `taxonomy`: manifest columns
    (broadest first) or the name of a taxonomy CSV in `root`."""
    import timm
    import torch

    from core.workspace import load_workspace
    from models.checkpoints import ModelCard, save_taxalens_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    key = "manifest" if dataset.endswith(".csv") else "root"
    toml = f'[dataset]\n{key} = "{dataset}"\n'
    if isinstance(taxonomy, str):
        toml += f'taxonomy = "{taxonomy}"\n'
    elif taxonomy:
        toml += "taxonomy = [" + ", ".join(f'"{t}"' for t in taxonomy) + "]\n"
    toml += f'\n[[checkpoints]]\nname = "{CHECKPOINT}"\npath = "checkpoints/{CHECKPOINT}.safetensors"\n'
    (root / "taxalens.toml").write_text(toml, encoding="utf-8")
    workspace = load_workspace(root)
    classes = tuple(class_names or workspace.load_dataset().class_names)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(classes))
    card = ModelCard(arch="resnet10t", class_names=classes, input_size=(3, 32, 32), crop_pct=1.0)
    save_taxalens_checkpoint(model, card, root / "checkpoints" / f"{CHECKPOINT}.safetensors")
    return root


def write_synthetic_predictions(root: Path, *, seed: int = 0, strength: float = 2.5) -> Path:
    """Predictions with a structured confusion: each class leans towards the next one (in model order), plus noise.

    Returns the Parquet path; the app finds it because it is the cache path `predictions_path` gives.
    """
    from core.predictions import build_prediction_table, save_predictions
    from core.workspace import load_workspace
    from models.checkpoints import read_model_card
    from models.inference import predictions_path

    workspace = load_workspace(root)
    dataset = workspace.load_dataset()
    card = read_model_card(workspace.checkpoint(CHECKPOINT).path)
    classes = card.class_names
    k = len(classes)
    samples = dataset.samples
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index.get(label, int(rng.integers(k))) for label in samples["label"]])
    logits = rng.normal(size=(len(samples), k))
    logits[np.arange(len(samples)), truth] += strength
    logits[np.arange(len(samples)), (truth + 1) % k] += strength * 0.6
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    table = build_prediction_table(
        samples["sample_id"].tolist(), probs.astype(np.float32), rng.normal(size=(len(samples), 8)),
        labels=samples["label"].tolist(), splits=samples["split"].tolist(),
        specimen_ids=samples["specimen_id"].tolist(), class_names=classes,
        meta={"checkpoint": CHECKPOINT, "synthetic": True},
    )
    return save_predictions(table, predictions_path(workspace, CHECKPOINT, dataset=dataset))


def add_checkpoint_copy(root: Path, name: str, *, fix_fraction: float | None = 0.5, seed: int = 7) -> Path:
    """A second workspace checkpoint `name` (the weights file of CHECKPOINT copied) and, unless `fix_fraction` is
    None, its own synthetic predictions: the first checkpoint's, with `fix_fraction` of the samples pushed towards
    their label (so it is better on some samples). Returns the workspace root."""
    import shutil

    from core.predictions import build_prediction_table, save_predictions
    from core.workspace import add_checkpoint, load_workspace
    from models.inference import predictions_path

    target = root / "checkpoints" / f"{name}.safetensors"
    shutil.copyfile(root / "checkpoints" / f"{CHECKPOINT}.safetensors", target)
    add_checkpoint(root, name, target)
    if fix_fraction is None:
        return root
    workspace = load_workspace(root)
    dataset = workspace.load_dataset()
    first = load_table(root)
    rng = np.random.default_rng(seed)
    probs = first.pred_probs.astype(np.float64).copy()
    label_idx = first.frame["label_idx"].to_numpy()
    fix = (rng.random(len(probs)) < fix_fraction) & (label_idx >= 0)
    probs[fix, label_idx[fix]] += 2.0
    probs /= probs.sum(axis=1, keepdims=True)
    table = build_prediction_table(first.frame["sample_id"].tolist(), probs.astype(np.float32), first.embeddings,
                                   labels=first.frame["label"].tolist(), splits=first.frame["split"].tolist(),
                                   specimen_ids=first.frame["specimen_id"].tolist(), class_names=first.class_names,
                                   meta={"checkpoint": name})
    save_predictions(table, predictions_path(workspace, name, dataset=dataset))
    return root


def build_drawn_workspace(root: Path, *, scale: float = 0.15, predictions: bool = True) -> Path:
    """The drawn demo dataset (9 classes, specimens, a kingdom/phylum/order/family taxonomy) at a small scale, with
    synthetic predictions (no model): fast page tests. The full demo with its trained model is `demo_workspace`."""
    from core.demo import generate_demo_dataset

    generate_demo_dataset(root / "data", seed=0, scale=scale)
    write_workspace(root, dataset="data/manifest.csv", taxonomy=("kingdom", "phylum", "order", "family"))
    if predictions:
        write_synthetic_predictions(root)
    return root


def build_bccd_workspace(root: Path, bccd_root: Path, *, class_names: tuple[str, ...] | None = None,
                         predictions: bool = True, taxonomy: bool = True) -> Path:
    """The real bccd crops (ImageFolder); `class_names` gives the checkpoint other classes than the dataset's.
    With `taxonomy`, the real two-rank `bccd-taxonomy.csv` beside the crops is copied in as `taxonomy.csv`."""
    import shutil

    if taxonomy:
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bccd_root.parent / "bccd-taxonomy.csv", root / "taxonomy.csv")
    write_workspace(root, dataset=str(bccd_root), class_names=class_names,
                    taxonomy="taxonomy.csv" if taxonomy else ())
    if predictions:
        write_synthetic_predictions(root)
    return root


def load_table(root: Path, name: str = CHECKPOINT):
    """The predictions table of checkpoint `name` exactly as the app reads it (all splits)."""
    from core.workspace import load_workspace
    from models.inference import cached_predictions

    workspace = load_workspace(root)
    return cached_predictions(workspace, name, dataset=workspace.load_dataset())


def run_page_script(page: str | Path, workspace: Path, **state):
    """Run one page script alone (no app frame) on `workspace`'s val split with extra session `state`."""
    from streamlit.testing.v1 import AppTest

    page = Path(page)
    app = AppTest.from_file(str(page if page.is_absolute() else REPO / page), default_timeout=180)
    app.session_state["tl_workspace"] = str(workspace)
    app.session_state["tl_split"] = "val"
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def plain(markdown: str) -> str:
    """What a reader sees of Markdown source whose user text went through `pages._text.md`: the backslash escapes
    removed (the page's own emphasis markers stay)."""
    return re.sub(r"\\(.)", r"\1", markdown)


POOL = "spring"  # the pool name `add_pool` gives


def add_pool(root: Path, bccd_root: Path, *, n: int = 12, name: str = POOL, folder: str = "incoming") -> Path:
    """Copy `n` real bccd crops (round-robin over the classes, flat file names) into `root/folder` and list that
    folder as the unlabelled pool `name` in the workspace's taxalens.toml. Returns the pool folder."""
    import shutil

    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    classes = sorted(p for p in bccd_root.iterdir() if p.is_dir())
    files = [sorted(c.glob("*.jp*g")) or sorted(c.iterdir()) for c in classes]
    for i in range(n):
        group = files[i % len(files)]
        source = group[(i // len(files)) % len(group)]
        shutil.copyfile(source, target / f"img{i:03d}{source.suffix.lower()}")
    with open(root / "taxalens.toml", "a", encoding="utf-8") as handle:
        handle.write(f'\n[[pools]]\nname = "{name}"\nroot = "{folder}"\n')
    return target
