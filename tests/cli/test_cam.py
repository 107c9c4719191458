"""`python -m core cam` on a small workspace over the real BCCD crops with a random-init tiny checkpoint."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from cli.main import main
from core.workspace import load_workspace
from models.checkpoints import ModelCard, save_taxalens_checkpoint
from models.inference import predict_workspace, safe_file_name

CLASSES = ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil")


@pytest.fixture(scope="module")
def workspace(bccd_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_ws")
    rows = []
    for name in CLASSES:  # a few images per class keeps the predictions pass short
        rows += [(p.relative_to(bccd_root).as_posix(), name) for p in sorted((bccd_root / name).iterdir())[:6]]
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(CLASSES))
    card = ModelCard(arch="resnet10t", class_names=CLASSES, input_size=(3, 64, 64), interpolation="bilinear")
    save_taxalens_checkpoint(model, card, root / "tiny.safetensors")
    (root / "taxalens.toml").write_text(
        f'[dataset]\nmanifest = "manifest.csv"\nroot = "{bccd_root.as_posix()}"\n\n'
        '[[checkpoints]]\nname = "tiny"\npath = "tiny.safetensors"\n', encoding="utf-8")
    return root


def _index(out) -> list[dict]:
    with open(out / "cam_index.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_sample_with_several_targets(workspace, tmp_path):
    sample = load_workspace(workspace).load_dataset().samples["sample_id"].iloc[0]  # a Basophil
    out = tmp_path / "out"
    code = main(["cam", "--workspace", str(workspace), "--checkpoint", "tiny", "--sample", sample,
                 "--target", "pred", "--target", "true", "--target", "Monocyte", "--method", "gradcam++",
                 "--size", "96", "--device", "cpu", "--out", str(out)])
    assert code == 0
    rows = _index(out)
    assert [r["sample_id"] for r in rows] == [sample] * 3
    assert rows[1]["explained_class"] == "Basophil" and rows[2]["explained_class"] == "Monocyte"
    assert rows[0]["explained_class"] == rows[0]["pred"]
    assert {r["layer"] for r in rows} == {"layer2"}  # at 64 px: layer2 is 8x8, layer3 4x4, layer4 2x2
    for row in rows:
        image = np.asarray(Image.open(out / row["file"]))
        assert image.shape == (96, 96, 3)
        assert row["file"].endswith(f"__gradcam++__{row['explained_class']}.png")
    # Different classes give different overlays.
    first, third = (np.asarray(Image.open(out / rows[i]["file"])) for i in (0, 2))
    assert rows[0]["explained_class"] == "Monocyte" or not np.array_equal(first, third)
    # A second run into the same folder keeps the first run's rows; a rewritten PNG keeps one row.
    assert main(["cam", "--workspace", str(workspace), "--checkpoint", "tiny", "--sample", sample, "--target",
                 "Monocyte", "--target", "Lymphocyte", "--method", "gradcam++", "--device", "cpu",
                 "--out", str(out)]) == 0
    files = [r["file"] for r in _index(out)]
    expected = {r["file"] for r in rows} | {f"{safe_file_name(sample)}__gradcam++__{c}.png"
                                            for c in ("Monocyte", "Lymphocyte")}
    assert len(files) == len(set(files)) and set(files) == expected and files[-1].endswith("__Lymphocyte.png")
    assert sorted(files) == sorted(p.name for p in out.glob("*.png"))


def test_cell_writes_one_overlay_per_sample_in_the_cell(workspace, tmp_path):
    table = predict_workspace(load_workspace(workspace), "tiny", device="cpu")
    pairs = table.frame.groupby(["label", "pred"]).size().sort_values(ascending=False)
    (true, pred), count = pairs.index[0], int(pairs.iloc[0])
    out = tmp_path / "cell"
    code = main(["cam", "--workspace", str(workspace), "--checkpoint", "tiny", "--cell", f"{true},{pred}",
                 "--target", "true", "--limit", "4", "--device", "cpu", "--out", str(out)])
    assert code == 0
    rows = _index(out)
    assert len(rows) == min(count, 4)
    assert all(r["label"] == true and r["pred"] == pred and r["explained_class"] == true for r in rows)
    assert len(list(out.glob("*.png"))) == len(rows)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sample", "nope.jpg"], "not in the workspace dataset"),
        (["--cell", "Basophil"], "TRUE,PRED"),
        (["--cell", "Basophil,Platelet"], "neither a model class nor a dataset label"),
        (["--sample", "Basophil/x", "--method", "saliency"], "unknown CAM method"),
    ],
)
def test_bad_requests_exit_2_with_the_fix(workspace, tmp_path, capsys, extra, message):
    code = main(["cam", "--workspace", str(workspace), "--checkpoint", "tiny", "--device", "cpu",
                 "--out", str(tmp_path / "x"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_layer_names_usable_layers(workspace, tmp_path, capsys):
    sample = load_workspace(workspace).load_dataset().samples["sample_id"].iloc[0]
    code = main(["cam", "--workspace", str(workspace), "--checkpoint", "tiny", "--sample", sample,
                 "--layer", "layer7", "--device", "cpu", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no module named 'layer7'" in err and "layer4" in err
