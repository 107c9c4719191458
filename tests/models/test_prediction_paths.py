"""core.prediction_paths and core.checkpoint_header: the prediction cache key read from a checkpoint's header (no
torch) is the one the loaded model's card gives, so the pages find what `predict` wrote."""

from __future__ import annotations

import json

import pytest
import timm
from safetensors.torch import save_file

from core.checkpoint_header import CheckpointError, read_taxalens_metadata, stored_preprocessing_key
from core.prediction_paths import model_identity, predictions_path
from core.workspace import load_workspace
from models.checkpoints import ModelCard, load_checkpoint, save_taxalens_checkpoint
from tests.models.conftest import BCCD_CLASSES, TINY_ARCH, tiny_model


def _hand_written(path, meta: dict):
    """A TaxaLens file whose metadata was written by hand (ints where the card holds floats, fields left out)."""
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(path),
              metadata={"taxalens": json.dumps(meta)})
    return path


CARDS = {
    "defaults": lambda p: save_taxalens_checkpoint(tiny_model(), ModelCard(arch=TINY_ARCH, class_names=BCCD_CLASSES),
                                                   p),
    "custom": lambda p: save_taxalens_checkpoint(tiny_model(), ModelCard(
        arch=TINY_ARCH, class_names=BCCD_CLASSES, input_size=(3, 72, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4),
        interpolation="bilinear", crop_pct=0.95, crop_mode="squash"), p),
    "by-hand": lambda p: _hand_written(p, {"arch": TINY_ARCH, "class_names": list(BCCD_CLASSES),
                                           "input_size": [3, 64, 64], "mean": [0, 0, 1], "std": [1, 1, 2],
                                           "crop_pct": 1}),
}


@pytest.mark.parametrize("kind", list(CARDS))
def test_the_header_key_is_the_loaded_cards_key(tmp_path, kind):
    path = CARDS[kind](tmp_path / f"{kind}.safetensors")
    _, card = load_checkpoint(path, device="cpu")
    from_header = stored_preprocessing_key(path)
    assert json.dumps(from_header, sort_keys=True) == json.dumps(card.preprocessing_key(), sort_keys=True)
    if kind == "custom":
        assert from_header["interpolation"] == "bilinear" and tuple(from_header["input_size"]) == (3, 72, 64)


def test_other_formats_have_no_header_key_and_are_keyed_by_the_timm_version(checkpoint_files, bccd_root, tmp_path):
    for fmt in ("safetensors", "timm-state-dict", "torchscript"):
        assert stored_preprocessing_key(checkpoint_files[fmt]) is None
    (tmp_path / "taxalens.toml").write_text(
        f'[dataset]\nroot = "{bccd_root}"\n\n[[checkpoints]]\nname = "plain"\n'
        f'path = "{checkpoint_files["safetensors"]}"\narch = "{TINY_ARCH}"\n'
        f'classes = "{checkpoint_files["classes"]}"\n', encoding="utf-8")
    workspace = load_workspace(tmp_path)
    dataset = workspace.load_dataset(verify="none")
    identity = model_identity(workspace, workspace.checkpoint("plain"), dataset)
    assert identity["preprocessing"] == {"arch": TINY_ARCH, "classes": list(BCCD_CLASSES), "timm": timm.__version__}
    path = predictions_path(workspace, "plain", dataset=dataset)
    assert path.parent == tmp_path / ".taxalens" / "predictions" and path.name.startswith("plain-")


@pytest.mark.parametrize(("meta", "expected"), [("{arch: resnet", "not JSON"), ("[1, 2]", "not an object"),
                                                (json.dumps({"arch": TINY_ARCH, "class_names": ["a"]}), "malformed")])
def test_bad_metadata_is_named(tmp_path, meta, expected):
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(path), metadata={"taxalens": meta})
    with pytest.raises(CheckpointError, match=expected) as info:
        stored_preprocessing_key(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_no_safetensors_has_no_metadata(tmp_path):
    files = {"short": b"abc", "huge-length": b"\xff" * 8 + b"{}", "text": b"hello world, not a header"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        assert read_taxalens_metadata(tmp_path / name) is None
    assert read_taxalens_metadata(tmp_path / "missing") is None
