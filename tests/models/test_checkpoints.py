"""Checkpoint loading: every format gives the same model; unsafe and mismatched files get clear errors."""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import CheckpointError, load_checkpoint, read_model_card
from tests.models.conftest import BCCD_CLASSES, TINY_ARCH, tiny_model

FORMATS = ("taxalens", "safetensors", "timm-state-dict", "timm-train", "torchscript")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_the_same_weights(checkpoint_files, fmt):
    kwargs = {} if fmt == "taxalens" else {"class_names": BCCD_CLASSES}
    if fmt in ("safetensors", "timm-state-dict"):
        kwargs["arch"] = TINY_ARCH
    model, card = load_checkpoint(checkpoint_files[fmt], device="cpu", **kwargs)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = tiny_model()(x)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert card.class_names == BCCD_CLASSES
    assert card.source_format == fmt
    assert len(card.sha256) == 64
    assert not model.training


def test_taxalens_card_carries_preprocessing_without_side_files(checkpoint_files):
    card = read_model_card(checkpoint_files["taxalens"])
    assert card.arch == TINY_ARCH and card.input_size == (3, 64, 64) and card.crop_pct == 1.0
    assert read_model_card(checkpoint_files["safetensors"]) is None


def test_pickled_module_is_refused_unless_trusted(checkpoint_files):
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as info:
        load_checkpoint(checkpoint_files["pickle"], class_names=BCCD_CLASSES)
    assert "run" in str(info.value) and "code" in str(info.value)
    model, card = load_checkpoint(checkpoint_files["pickle"], class_names=BCCD_CLASSES, trust_checkpoint=True,
                                  device="cpu")
    assert card.source_format == "pickle"
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_head_size_mismatch_names_both_numbers(checkpoint_files):
    with pytest.raises(CheckpointError, match=r"head has 5 outputs but 4 class names"):
        load_checkpoint(checkpoint_files["timm-state-dict"], arch=TINY_ARCH, class_names=BCCD_CLASSES[:4])
    with pytest.raises(CheckpointError, match=r"head has 5 outputs but 6 class names"):
        load_checkpoint(checkpoint_files["torchscript"], class_names=(*BCCD_CLASSES, "Platelet"))


def test_bare_weights_need_arch_and_classes(checkpoint_files):
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(checkpoint_files["timm-state-dict"], class_names=BCCD_CLASSES)
    with pytest.raises(CheckpointError, match="--classes"):
        load_checkpoint(checkpoint_files["safetensors"], arch=TINY_ARCH)
    with pytest.raises(CheckpointError, match="unknown timm architecture"):
        load_checkpoint(checkpoint_files["safetensors"], arch="not_a_net", class_names=BCCD_CLASSES)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(checkpoint_files["safetensors"], arch="resnet10t", class_names=BCCD_CLASSES)


def test_corrupt_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02not really a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk, arch=TINY_ARCH, class_names=BCCD_CLASSES)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"{}garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad, arch=TINY_ARCH, class_names=BCCD_CLASSES)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")
