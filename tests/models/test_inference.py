"""Predictions: bccd through the CLI from every checkpoint format, the cache, bad images, and torchrun sharding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from cli.main import main
from core.dataset import load_dataset
from core.predictions import load_predictions
from core.workspace import load_workspace
from models import inference
from tests.models.conftest import BCCD_CLASSES, TINY_ARCH

REPO = Path(__file__).resolve().parents[2]


def _cli_args(fmt: str, files: dict) -> list[str]:
    args = ["--checkpoint", str(files[fmt])]
    if fmt in ("safetensors", "timm-state-dict"):
        args += ["--arch", TINY_ARCH]
    if fmt != "taxalens":
        args += ["--classes", str(files["classes"])]
    if fmt == "torchscript":
        args += ["--trust-checkpoint"]  # TorchScript is code: loading it is an explicit opt-in
    return args


@pytest.mark.parametrize("fmt", ["taxalens", "safetensors", "timm-state-dict", "timm-train", "torchscript"])
def test_cli_predicts_bccd_from_every_format(bccd_root, checkpoint_files, tmp_path, fmt):
    out = tmp_path / "out"
    code = main(["predict", "--data", str(bccd_root), *_cli_args(fmt, checkpoint_files), "--out", str(out),
                 "--workers", "0", "--batch-size", "128"])
    assert code == 0
    table = load_predictions(out / "predictions.parquet")
    assert len(table) == 351
    assert table.class_names == BCCD_CLASSES
    assert table.pred_probs.shape == (351, 5)
    np.testing.assert_allclose(table.pred_probs.sum(axis=1), 1.0, rtol=1e-4)
    assert (table.frame["label_idx"] >= 0).all()
    assert table.frame["label"].value_counts()["Basophil"] == 3
    np.testing.assert_array_equal(table.frame["pred_idx"], table.pred_probs.argmax(axis=1))
    np.testing.assert_allclose(table.frame["confidence"], table.pred_probs.max(axis=1))
    if fmt == "torchscript":
        assert table.embeddings.shape == (351, 0)  # a scripted model exposes no penultimate layer
    else:
        assert table.embeddings.shape[0] == 351 and table.embeddings.shape[1] > 0


def test_formats_agree_on_bccd(bccd_root, checkpoint_files, tmp_path):
    dataset = load_dataset(bccd_root)
    tables = []
    for fmt in ("taxalens", "timm-train"):
        out = tmp_path / fmt
        main(["predict", "--data", str(bccd_root), *_cli_args(fmt, checkpoint_files), "--out", str(out),
              "--workers", "0"])
        tables.append(load_predictions(out / "predictions.parquet"))
    # timm-train has no preprocessing in the file, so it uses timm's default (224 px): same weights, other inputs.
    assert tables[0].frame["sample_id"].tolist() == dataset.samples["sample_id"].tolist()
    assert tables[0].meta["preprocessing"]["input_size"] == [3, 64, 64]
    assert tables[1].meta["preprocessing"]["input_size"] == [3, 224, 224]


def _workspace(tmp_path: Path, data_root: Path, checkpoint: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "taxalens.toml").write_text(
        f'[dataset]\nroot = "{data_root}"\n\n[[checkpoints]]\nname = "tiny"\npath = "{checkpoint}"\n'
    )
    return ws


def test_second_run_performs_zero_forward_passes(bccd_root, checkpoint_files, tmp_path, monkeypatch):
    data = tmp_path / "bccd"  # a private copy: the test touches an image, never the shared data
    shutil.copytree(bccd_root, data)
    workspace = load_workspace(_workspace(tmp_path, data, checkpoint_files["taxalens"]))
    calls = []
    real_forward = inference.forward_with_embeddings

    def counting_forward(model, images):
        calls.append(len(images))
        return real_forward(model, images)

    monkeypatch.setattr(inference, "forward_with_embeddings", counting_forward)
    progress = []
    first = inference.predict_workspace(workspace, "tiny", num_workers=0, batch_size=100,
                                        progress=lambda done, total: progress.append((done, total)))
    assert sum(calls) == 351 and len(calls) == 4
    assert progress[-1] == (351, 351)
    calls.clear()
    second = inference.predict_workspace(workspace, "tiny", num_workers=0)
    assert calls == []  # cache hit: no forward pass at all
    np.testing.assert_array_equal(first.pred_probs, second.pred_probs)
    assert inference.cached_predictions(workspace, "tiny") is not None
    # a changed image invalidates the cache
    os.utime(workspace.dataset_source / "Basophil" / "BloodImage_00008_1.jpg", ns=(1, 1))
    assert inference.cached_predictions(workspace, "tiny") is None


def test_bad_images_are_reported_not_fatal(tmp_path, checkpoint_files, bccd_root):
    import shutil

    data = tmp_path / "data"
    for cls in ("Basophil", "Monocyte"):
        shutil.copytree(bccd_root / cls, data / cls)
    good = sorted((data / "Monocyte").iterdir())[0].read_bytes()
    (data / "Monocyte" / "cut.jpg").write_bytes(good[: len(good) // 3])
    dataset = load_dataset(data, verify="none")  # lets the truncated file through to prediction time
    result = inference.predict_to_dir(dataset, checkpoint_files["taxalens"], tmp_path / "out", num_workers=0)
    table = load_predictions(result)
    assert len(table) == 23 and "Monocyte/cut.jpg" not in set(table.frame["sample_id"])
    skipped = (tmp_path / "out" / "skipped.csv").read_text()
    assert "Monocyte/cut.jpg" in skipped and "truncated" in skipped


def test_labels_outside_the_model_classes_are_marked(tmp_path, checkpoint_files, bccd_root):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(bccd_root / "Basophil", data / "Basophil")
    shutil.copytree(bccd_root / "Basophil", data / "Platelet")  # a class the model never saw
    dataset = load_dataset(data)
    table = load_predictions(inference.predict_to_dir(dataset, checkpoint_files["taxalens"], tmp_path / "o",
                                                      num_workers=0))
    unknown = table.frame[table.frame["label"] == "Platelet"]
    assert len(unknown) == 3 and (unknown["label_idx"] == -1).all() and unknown["loss"].isna().all()


def test_torchrun_two_processes_merge_into_one_table(bccd_root, checkpoint_files, tmp_path):
    single = tmp_path / "single"
    main(["predict", "--data", str(bccd_root), "--checkpoint", str(checkpoint_files["taxalens"]),
          "--out", str(single), "--workers", "0"])
    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "core", "predict", "--data", str(bccd_root), "--checkpoint", str(checkpoint_files["taxalens"]),
               "--out", str(sharded), "--workers", "0", "--device", "cpu"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_predictions(single / "predictions.parquet")
    merged = load_predictions(sharded / "predictions.parquet")
    assert merged.meta["world_size"] == 2
    assert len(merged) == 351  # DistributedSampler's padding duplicate was dropped
    merged_order = merged.frame.set_index("sample_id").loc[one.frame["sample_id"]]
    np.testing.assert_allclose(merged_order["confidence"], one.frame["confidence"].to_numpy(), rtol=1e-4)
    assert accuracy_score(one.frame["label"], one.frame["pred"]) == accuracy_score(merged.frame["label"],
                                                                                      merged.frame["pred"])
    assert not (sharded / ".shards").exists()
