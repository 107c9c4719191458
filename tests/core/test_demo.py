"""The embedded demo workspace: what `python -m core demo` builds and `make run` opens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import f1_score

from core.demo import generate_demo_dataset
from core.workspace import load_workspace
from models.checkpoints import read_model_card
from models.inference import cached_predictions

REPO = Path(__file__).resolve().parents[2]


def test_demo_dataset_has_the_shape_of_the_problem(demo_workspace_readonly: Path) -> None:
    workspace = load_workspace(demo_workspace_readonly)
    dataset = workspace.load_dataset()
    samples = dataset.samples
    counts = samples["label"].value_counts()
    assert len(dataset.class_names) >= 8
    assert counts.max() / counts.min() >= 20, counts.to_dict()
    views = samples.groupby("specimen_id").size()
    assert (views >= 2).mean() > 0.9, "most specimens are photographed several times"
    manifest = pd.read_csv(demo_workspace_readonly / "data" / "manifest.csv")
    assert manifest.groupby("label")["phylum"].nunique().max() == 1, "a class belongs to one higher taxon"
    assert manifest["phylum"].nunique() >= 3
    assert dataset.skipped.empty, dataset.skipped


def test_demo_flipped_labels_are_recorded_and_whole_specimens(demo_workspace_readonly: Path) -> None:
    manifest = pd.read_csv(demo_workspace_readonly / "data" / "manifest.csv")
    flipped = pd.read_csv(demo_workspace_readonly / "data" / "flipped_labels.csv")
    fraction = len(flipped) / len(manifest)
    assert 0.03 <= fraction <= 0.07, fraction
    given = manifest.set_index("path").loc[flipped["sample_id"], "label"].to_numpy()
    assert (given == flipped["given_label"].to_numpy()).all(), "the manifest carries the flipped label"
    assert (flipped["true_label"] != flipped["given_label"]).all()
    flipped_paths = set(flipped["sample_id"])
    manifest["flipped"] = manifest["path"].isin(flipped_paths)
    per_specimen = manifest.groupby("specimen_id")["flipped"].agg(["any", "all"])
    assert (per_specimen["any"] == per_specimen["all"]).all(), "flips take every image of a specimen"


def test_demo_model_reaches_macro_f1_on_validation(demo_workspace_readonly: Path) -> None:
    workspace = load_workspace(demo_workspace_readonly)
    (spec,) = workspace.checkpoints
    card = read_model_card(spec.path)
    assert card is not None and card.source_format == "taxalens"
    dataset = workspace.load_dataset()
    assert set(card.class_names) == set(dataset.class_names)
    table = cached_predictions(workspace, spec.name, dataset=dataset)
    assert table is not None, "the demo ships its predictions (no forward pass when the dashboard opens)"
    assert len(table) == len(dataset.samples)
    val = table.for_split("val").frame
    assert val["label"].nunique() == len(dataset.class_names), "every class, even the rarest, is in validation"
    macro_f1 = f1_score(val["label"], val["pred"], average="macro")
    assert macro_f1 >= 0.7, macro_f1
    train_specimens = set(table.for_split("train").frame["specimen_id"])
    assert not train_specimens & set(val["specimen_id"]), "no specimen on both sides of the split"


def test_demo_drawing_is_deterministic(tmp_path: Path) -> None:
    first = generate_demo_dataset(tmp_path / "a", seed=3, scale=0.1)
    second = generate_demo_dataset(tmp_path / "b", seed=3, scale=0.1)
    assert first == second
    assert (tmp_path / "a" / first[0].path).read_bytes() == (tmp_path / "b" / second[0].path).read_bytes()


def test_demo_cli_leaves_an_existing_workspace_alone(demo_workspace: Path) -> None:
    before = (demo_workspace / "taxalens.toml").read_bytes()
    done = subprocess.run([sys.executable, "-m", "core", "demo", "--out", str(demo_workspace)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "already holds a workspace" in done.stderr
    assert (demo_workspace / "taxalens.toml").read_bytes() == before
