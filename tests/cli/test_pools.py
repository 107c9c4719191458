"""`python -m cli predict` covers the workspace's pools (only new images on a second run) and `python -m core export`
lists labelled pool images with status `new`: six real bccd crops as the dataset, four as the pool, a tiny real
checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from core.labelstore import LabelStore
from core.pools import load_pool
from core.workspace import load_workspace
from tests.pages.eval_workspaces import POOL, add_pool, write_workspace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path: Path, bccd_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "ws"
    for name in ("Monocyte", "Lymphocyte"):  # a six-image ImageFolder of real crops: the dataset
        (root / "data" / name).mkdir(parents=True)
        for source in sorted((bccd_root / name).glob("*.jpg"))[:3]:
            shutil.copyfile(source, root / "data" / name / source.name)
    write_workspace(root, dataset="data")
    add_pool(root, bccd_root, n=4)
    return root


def test_predict_covers_pools_and_export_lists_their_labels(workspace: Path, capsys) -> None:
    from models.inference import cached_pool_predictions

    argv = ["predict", "--workspace", str(workspace), "--checkpoint", "tiny", "--no-intervals", "--workers", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"pool {POOL}: 4 of 4 images predicted" in out
    ws = load_workspace(workspace)
    assert cached_pool_predictions(ws, "tiny", load_pool(ws, POOL)) is not None
    shutil.copyfile(workspace / "incoming" / "img000.jpg", workspace / "incoming" / "img100.jpg")
    assert main(argv) == 0
    assert f"pool {POOL}: 5 of 5 images predicted" in capsys.readouterr().out
    assert main([*argv, "--no-pools"]) == 0
    assert "pool " not in capsys.readouterr().out

    pool = load_pool(ws, POOL)
    with LabelStore(ws.label_store_url) as store:
        store.record(pool.samples["sample_id"].iloc[0], "label", label="Monocyte", reviewer="ann")
    done = subprocess.run([sys.executable, "-m", "core", "export", "--workspace", str(workspace), "--out",
                           str(workspace / "curated.csv")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # the `python -m core` shim
    export = pd.read_csv(workspace / "curated.csv", dtype=str, keep_default_na=False)
    new = export[export["status"] == "new"]
    assert new[["path", "label", "pool", "label_source"]].values.tolist() == [
        [pool.samples["relpath"].iloc[0], "Monocyte", POOL, "manual"]]
