"""`python -m cli crossval` on real bccd and on the demo, both modes (finetune with a tiny budget): the table is
cached beside the predictions, covers the training split, and the ranking uses it for those rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from core.crossval import find_crossval, load_crossval
from core.ranking import precision_at_k, rank_label_issues
from core.workspace import load_workspace
from models.inference import cached_predictions, predictions_path
from tests.pages.eval_workspaces import CHECKPOINT, build_bccd_workspace

REPO = Path(__file__).resolve().parents[2]
TINY_FINETUNE = ["--mode", "finetune", "--folds", "2", "--epochs", "1", "--batch-size", "32", "--threads", "1",
                 "--device", "cpu"]


@pytest.fixture(scope="module")
def bccd_ws(bccd_root: Path, tmp_path_factory) -> Path:
    """bccd with a tiny random resnet10t (32 px, no recorded recipe) and no predictions yet."""
    return build_bccd_workspace(tmp_path_factory.mktemp("cv") / "bccd", bccd_root, predictions=False)


def _cv_table(root: Path, mode: str, name: str = CHECKPOINT):
    workspace = load_workspace(root)
    dataset = workspace.load_dataset()
    path = find_crossval(predictions_path(workspace, name, dataset=dataset), dataset.samples, mode=mode)
    assert path is not None, f"no cached {mode} table"
    return dataset, path, load_crossval(path, dataset.samples)


def test_probe_on_bccd_is_cached_beside_the_predictions_and_ranks_the_training_split(bccd_ws: Path, capsys) -> None:
    assert main(["crossval", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--threads", "1"]) == 0
    dataset, path, cv = _cv_table(bccd_ws, "probe")
    workspace = load_workspace(bccd_ws)
    assert path.parent == predictions_path(workspace, CHECKPOINT, dataset=dataset).parent
    assert "5f" in path.name and "out-of-fold probabilities for" in capsys.readouterr().out
    train_ids = set(dataset.split("train")["sample_id"])
    assert set(cv.for_split("train").frame["sample_id"]) == train_ids  # Basophil too: 2-3 specimens, 5 folds
    table = cached_predictions(workspace, CHECKPOINT, dataset=dataset)  # computed by the command (embeddings)
    ranking = rank_label_issues(table, cv_table=cv)
    assert set(ranking.frame.loc[ranking.frame["split"] == "train", "sample_id"]) == train_ids
    assert set(ranking.frame.loc[ranking.frame["split"] == "train", "source"]) == {"cv"}
    assert not any("in-sample" in m for m in ranking.messages)

    stamp = path.stat().st_mtime_ns
    assert main(["crossval", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT]) == 0
    assert "already cached" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp


def test_finetune_on_bccd_with_a_tiny_budget(bccd_ws: Path, tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    code = main(["crossval", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, *TINY_FINETUNE,
                 "--status-file", str(status)])
    assert code == 0
    dataset, path, cv = _cv_table(bccd_ws, "finetune")
    assert "finetune-2f" in path.name
    assert set(cv.for_split("train").frame["sample_id"]) == set(dataset.split("train")["sample_id"])
    assert set(cv.for_split("val").frame["sample_id"]) == set(dataset.split("val")["sample_id"])
    state = pd.read_json(status, typ="series")
    assert state["state"] == "done" and state["path"] == str(path)
    assert not list((bccd_ws / ".taxalens").glob("**/fold1")), "fold runs go to a temporary folder"


def test_finetune_under_torchrun_splits_the_folds_across_two_gloo_processes(bccd_ws: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 -m cli crossval --mode finetune` on CPU: each rank trains its own folds (fold i on
    rank i % 2, no DDP), rank 0 gathers the held-out probabilities and writes the one table."""
    out, status = tmp_path / "folds", tmp_path / "status.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli",
               "crossval", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, *TINY_FINETUNE, "--seed", "1",
               "--out", str(out), "--status-file", str(status)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    dataset, path, cv = _cv_table(bccd_ws, "finetune")
    assert "finetune-2f-s1-" in path.name  # seed 1: not the single-process test's table
    assert set(cv.for_split("train").frame["sample_id"]) == set(dataset.split("train")["sample_id"])
    assert set(cv.for_split("val").frame["sample_id"]) == set(dataset.split("val")["sample_id"])
    assert cv.meta["world_size"] == 2 and cv.meta["fold_ranks"] == [0, 1]
    runs = [json.loads((out / f"fold{i}" / "run.json").read_text()) for i in (1, 2)]
    assert [r["world_size"] for r in runs] == [1, 1]  # each fold trained whole on one rank
    assert runs[0]["n_train"] + runs[1]["n_train"] == len(dataset.split("train"))  # each training row held out once
    state = json.loads(status.read_text())
    assert state["state"] == "done" and state["path"] == str(path)


def test_bad_requests_say_what_to_do(bccd_ws: Path, capsys) -> None:
    assert main(["crossval", "--workspace", str(bccd_ws), "--checkpoint", "nope"]) == 2
    assert "no checkpoint named 'nope'" in capsys.readouterr().err
    assert main(["crossval", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--folds", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["crossval", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--mode", "knn"])


def test_the_core_shim_knows_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "core", "crossval", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--mode" in done.stdout and "finetune" in done.stdout


def test_demo_in_both_modes_probe_finds_the_training_flips(demo_workspace: Path) -> None:
    flips = set(pd.read_csv(demo_workspace / "data" / "flipped_labels.csv")["sample_id"])
    name = load_workspace(demo_workspace).checkpoints[0].name
    assert main(["crossval", "--workspace", str(demo_workspace), "--checkpoint", name, "--threads", "1"]) == 0
    dataset, _, cv = _cv_table(demo_workspace, "probe", name)
    table = cached_predictions(load_workspace(demo_workspace), name, dataset=dataset)
    train = table.for_split("train")
    ranking = rank_label_issues(train, cv_table=cv)
    train_flips = flips & set(train.frame["sample_id"])
    assert len(train_flips) >= 30 and len(ranking) == len(train)
    assert precision_at_k(ranking, train_flips) >= 0.7

    code = main(["crossval", "--workspace", str(demo_workspace), "--checkpoint", name, *TINY_FINETUNE,
                 "--max-minutes", "0.02"])
    assert code == 0
    _, _, finetuned = _cv_table(demo_workspace, "finetune", name)
    assert set(finetuned.for_split("train").frame["sample_id"]) == set(train.frame["sample_id"])
    assert finetuned.meta["mode"] == "finetune" and finetuned.meta["folds"] == 2
