"""Incremental predictions: k new or changed images cost k forward samples, old tables do not linger, failures
are not retried, and `python -m cli cache` reports and prunes what is stale."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from core.prediction_store import read_store
from core.workspace import load_workspace
from models import inference

CLASSES = ("Basophil", "Monocyte")  # 3 + 20 real crops: a cheap dataset


@pytest.fixture()
def workspace(bccd_root: Path, checkpoint_files, tmp_path: Path):
    data = tmp_path / "data"
    for name in CLASSES:
        shutil.copytree(bccd_root / name, data / name)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "taxalens.toml").write_text(f'[dataset]\nroot = "{data}"\n\n[[checkpoints]]\nname = "tiny"\n'
                                      f'path = "{checkpoint_files["taxalens"]}"\n', encoding="utf-8")
    return load_workspace(ws)


@pytest.fixture()
def forwarded(monkeypatch) -> list[int]:
    """The batch sizes of every forward pass."""
    calls: list[int] = []
    real_forward = inference.forward_with_embeddings

    def counting_forward(model, images):
        calls.append(len(images))
        return real_forward(model, images)

    monkeypatch.setattr(inference, "forward_with_embeddings", counting_forward)
    return calls


def _predict(workspace):
    return inference.predict_workspace(workspace, "tiny", num_workers=0, batch_size=16)


def test_k_new_or_changed_images_cost_k_forward_samples(workspace, forwarded: list[int]):
    first = _predict(workspace)
    n = len(first)
    assert sum(forwarded) == n == 23
    old_table = inference.predictions_path(workspace, "tiny")
    old_cv = old_table.with_name(old_table.name.removesuffix(".parquet") + ".cv-probe-5f-s0-abc.parquet")
    old_cv.write_bytes(b"stands for a cross-validated table of the old predictions")

    data = workspace.dataset_source
    touched = sorted((data / "Monocyte").iterdir())[0]
    info = touched.stat()
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # same bytes, new stamp
    shutil.copy(sorted((data / "Monocyte").iterdir())[1], data / "Monocyte" / "added_1.jpg")
    shutil.copy(sorted((data / "Basophil").iterdir())[0], data / "Basophil" / "added_2.jpg")
    forwarded.clear()
    second = _predict(workspace)
    assert sum(forwarded) == 3  # k = 1 changed + 2 new
    assert len(second) == n + 2
    assert not old_table.exists() and not old_table.with_suffix(".skipped.csv").exists() and not old_cv.exists()
    assert inference.predictions_path(workspace, "tiny").is_file()
    before = first.frame.set_index("sample_id")
    after = second.frame.set_index("sample_id")
    np.testing.assert_allclose(after.loc[before.index, "confidence"], before["confidence"], rtol=1e-5)
    copied = sorted(p.name for p in (data / "Monocyte").iterdir() if p.name != "added_1.jpg")[1]
    assert after.loc["Monocyte/added_1.jpg", "confidence"] == pytest.approx(after.loc[f"Monocyte/{copied}",
                                                                                      "confidence"], rel=1e-5)

    (data / "Monocyte" / "added_1.jpg").unlink()  # a removed image: the table is re-assembled, nothing predicted
    forwarded.clear()
    third = _predict(workspace)
    assert forwarded == [] and len(third) == n + 1


def test_an_image_that_fails_to_decode_is_not_retried_until_it_changes(workspace, forwarded: list[int]):
    data = workspace.dataset_source
    good = sorted((data / "Monocyte").iterdir())[1].read_bytes()
    (data / "Monocyte" / "cut.jpg").write_bytes(good[: len(good) // 3])  # a valid header, truncated data
    table = _predict(workspace)
    assert "Monocyte/cut.jpg" not in set(table.frame["sample_id"]) and len(table) == 23
    skipped = inference.predictions_path(workspace, "tiny").with_suffix(".skipped.csv").read_text()
    assert "Monocyte/cut.jpg" in skipped
    shutil.copy(sorted((data / "Basophil").iterdir())[0], data / "Basophil" / "added.jpg")
    forwarded.clear()
    _predict(workspace)
    assert sum(forwarded) == 1  # the new image only
    (data / "Monocyte" / "cut.jpg").write_bytes(good)  # repaired
    forwarded.clear()
    assert len(_predict(workspace)) == 25 and sum(forwarded) == 1


def test_cache_command_reports_and_prunes_stale_entries(workspace, forwarded: list[int], capsys):
    _predict(workspace)
    old_table = inference.predictions_path(workspace, "tiny")
    gone = sorted((workspace.dataset_source / "Monocyte").iterdir())[:5]
    for path in gone:
        path.unlink()
    shutil.copy(old_table, old_table.with_name("tiny-" + "0" * 24 + ".parquet"))  # a table of an older dataset
    results = inference.predictions_dir(workspace) / "results"
    results.mkdir()
    (results / "headline-old.json").write_text("{}")  # intervals of the table as it was
    os.utime(results / "headline-old.json", ns=(1, 1))
    assert main(["cache", "--workspace", str(workspace.root)]) == 0
    report = capsys.readouterr().out
    assert "stale   table     tiny" in report and "tiny-" + "0" * 24 in report
    store_line = next(line for line in report.splitlines() if " store " in line)
    assert store_line.startswith("stale") and " 23 " in store_line and " 5 " in store_line
    # the table of the dataset as it was (its skipped list, its intervals) are stale too; the store serves 18 images
    assert main(["cache", "--workspace", str(workspace.root), "--prune"]) == 0
    assert "pruned 5 stale entries" in capsys.readouterr().out
    assert not (results / "headline-old.json").exists()
    assert sorted(p.name for p in inference.predictions_dir(workspace).glob("*.parquet")) == []
    stored = read_store(inference.store_path(workspace, "tiny"))
    assert len(stored) == 18 and not set(stored.sample_ids) & {f"Monocyte/{p.name}" for p in gone}
    forwarded.clear()
    assert len(_predict(workspace)) == 18 and forwarded == []
    assert main(["cache", "--workspace", str(workspace.root)]) == 0
    assert "0 stale entries" in capsys.readouterr().out


def test_torchrun_two_gloo_processes_fill_the_workspace_store(workspace, tmp_path: Path):
    """`torchrun --nproc_per_node=2 -m core predict --workspace`: each rank predicts its share of the missing images
    into the shared store, rank 0 assembles the table; equal to one process's predictions."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "core",
               "predict", "--workspace", str(workspace.root), "--checkpoint", "tiny", "--workers", "0",
               "--device", "cpu", "--batch-size", "8"]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("23 predictions cached") == 1  # rank 0 only
    parts = sorted(inference.store_path(workspace, "tiny").glob("part-*.parquet"))
    assert sorted(p.name.rsplit("-", 1)[1] for p in parts) == ["0.parquet", "1.parquet"]  # one part per rank
    merged = inference.cached_predictions(workspace, "tiny")
    assert merged is not None and len(merged) == 23
    single = inference.predict_workspace(workspace, "tiny", num_workers=0, force=True)
    order = merged.frame.set_index("sample_id").loc[single.frame["sample_id"]]
    np.testing.assert_allclose(order["confidence"], single.frame["confidence"].to_numpy(), rtol=1e-4)
