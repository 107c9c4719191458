"""`python -m core train`: curated exports (exclusions, relabels), bad-input messages, the CLI run, torchrun DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from core.dataset import DatasetError, load_dataset
from core.training_data import load_training_dataset

REPO = Path(__file__).resolve().parents[2]
FAST = ["--arch", "resnet10t", "--img-size", "32", "--epochs", "1", "--batch-size", "32", "--threads", "1",
        "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def curated(bccd_root: Path, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A curated-export-shaped manifest of bccd: a split, specimen ids, two exclusions and one relabel."""
    dataset = load_dataset(bccd_root, verify="none")
    frame = dataset.samples[["sample_id", "label", "split", "specimen_id"]].rename(columns={"sample_id": "path"})
    frame.insert(2, "original_label", frame["label"])
    frame.insert(3, "status", "unreviewed")
    neutro = frame.index[frame["label"] == "Neutrophil"]
    frame.loc[neutro[:2], "status"] = "excluded"
    frame.loc[neutro[2], ["label", "status"]] = ["Monocyte", "relabelled"]
    path = tmp_path_factory.mktemp("curated") / "curated.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_curated_export_drops_excluded_and_applies_relabels(curated, bccd_root: Path):
    path, frame = curated
    dataset = load_training_dataset(path, root=bccd_root)
    assert len(dataset) == len(frame) - 2
    excluded = set(frame.loc[frame["status"] == "excluded", "path"])
    assert not excluded & set(dataset.samples["sample_id"])
    relabelled = frame.loc[frame["status"] == "relabelled", "path"].iloc[0]
    assert dataset.samples.set_index("sample_id").loc[relabelled, "label"] == "Monocyte"
    assert any("status=excluded" in w for w in dataset.warnings)


def test_class_emptied_by_exclusions_is_named(curated, bccd_root: Path, tmp_path: Path):
    _, frame = curated
    frame = frame.copy()
    frame.loc[frame["label"] == "Basophil", "status"] = "excluded"
    path = tmp_path / "no_basophil.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"no samples left after exclusions.*'Basophil' \(3 excluded\)"):
        load_training_dataset(path, root=bccd_root)


def test_specimen_id_gaps_are_refused_with_their_lines(curated, bccd_root: Path, tmp_path: Path):
    _, frame = curated
    frame = frame.copy()
    frame.loc[[4, 9], "specimen_id"] = ""
    path = tmp_path / "gaps.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"specimen_id column with 2 empty cell\(s\) \(line\(s\) \[6, 11\]\)"):
        load_training_dataset(path, root=bccd_root)
    frame.loc[[4, 9], "status"] = "excluded"  # gaps on excluded rows do not matter
    frame.to_csv(path, index=False)
    assert len(load_training_dataset(path, root=bccd_root)) == len(frame) - 4


def test_specimen_on_both_sides_of_a_given_split_is_refused(curated, bccd_root: Path, tmp_path: Path):
    _, frame = curated
    frame = frame.copy()
    train, val = frame.index[frame["split"] == "train"][0], frame.index[frame["split"] == "val"][0]
    frame.loc[val, "specimen_id"] = frame.loc[train, "specimen_id"]
    path = tmp_path / "leak.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError, match="both train and val"):
        load_training_dataset(path, root=bccd_root)


def test_cli_trains_a_curated_export_and_reports_unknown_classes(curated, bccd_root: Path, tmp_path: Path, capsys):
    path, frame = curated
    out = tmp_path / "run"
    status = tmp_path / "status.json"
    code = main(["train", "--data", str(path), "--root", str(bccd_root), "--out", str(out), *FAST,
                 "--status-file", str(status)])
    assert code == 0
    assert (out / "best.safetensors").is_file()
    state = json.loads(status.read_text())
    assert state["state"] == "done" and state["checkpoint"] == str(out / "best.safetensors")
    assert "val macro-F1" in capsys.readouterr().err

    renamed = frame.copy()
    renamed.loc[renamed["label"] == "Lymphocyte", "label"] = "Plasmacyte"
    bad = tmp_path / "renamed.csv"
    renamed.to_csv(bad, index=False)
    code = main(["train", "--data", str(bad), "--root", str(bccd_root), "--out", str(tmp_path / "run2"), *FAST,
                 "--init-checkpoint", str(out / "best.safetensors"), "--status-file", str(status)])
    assert code == 2
    err = capsys.readouterr().err
    assert "lacks: ['Plasmacyte']" in err and "--new-head" in err
    assert json.loads(status.read_text())["state"] == "failed"


def test_torchrun_two_gloo_processes_agree_on_the_weights(bccd_root: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "core", "train", "--data", str(bccd_root), "--out", str(out), *FAST, "--write-rank-hashes"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = [(out / f"rank{r}.weights.sha256").read_text().strip() for r in (0, 1)]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert run["n_train"] + run["n_val"] == 351
