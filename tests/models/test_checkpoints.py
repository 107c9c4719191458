"""Checkpoint loading: every format gives the same model; unsafe, mismatched, invalid and non-checkpoint files get
clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import models.checkpoints as checkpoints
from models.checkpoints import CheckpointError, load_checkpoint, read_model_card
from tests.models.conftest import BCCD_CLASSES, TINY_ARCH, tiny_model

FORMATS = ("taxalens", "safetensors", "timm-state-dict", "timm-train", "torchscript")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_the_same_weights(checkpoint_files, fmt):
    kwargs = {} if fmt == "taxalens" else {"class_names": BCCD_CLASSES}
    if fmt in ("safetensors", "timm-state-dict"):
        kwargs["arch"] = TINY_ARCH
    if fmt == "torchscript":
        kwargs["trust_checkpoint"] = True  # TorchScript is code: loading it is an explicit opt-in
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
        load_checkpoint(checkpoint_files["torchscript"], class_names=(*BCCD_CLASSES, "Platelet"),
                        trust_checkpoint=True)


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


class _ReadsAFile(torch.nn.Module):
    """A 'classifier' whose forward returns the first five float32 values of a file: TorchScript can read files."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=False, size=5, dtype=torch.float32)
        return data.unsqueeze(0).expand(x.shape[0], 5)


@pytest.fixture(scope="module")
def file_reading_torchscript(tmp_path_factory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("torchscript")
    secret = np.array([3.5, -1.0, 7.25, 0.5, 2.0], dtype=np.float32)
    secret.tofile(folder / "secret.bin")
    path = folder / "reads_a_file.pt"
    torch.jit.save(torch.jit.script(_ReadsAFile(str(folder / "secret.bin"))), str(path))
    return path, secret


def test_torchscript_that_reads_a_file_is_refused_unless_trusted(file_reading_torchscript, monkeypatch):
    path, secret = file_reading_torchscript
    jit_loads = []
    real_jit_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: jit_loads.append(a) or real_jit_load(*a, **k))
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as info:
        load_checkpoint(path, class_names=BCCD_CLASSES, device="cpu")
    assert "TorchScript" in str(info.value) and "trust = true" in str(info.value)
    assert jit_loads == []  # refused before torch.jit.load saw the file
    model, card = load_checkpoint(path, class_names=BCCD_CLASSES, device="cpu", trust_checkpoint=True)
    assert card.source_format == "torchscript" and len(jit_loads) == 1
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 32, 32))
    np.testing.assert_array_equal(out.numpy(), np.stack([secret, secret]))  # it did read the file


def test_workspace_trust_setting_opens_the_torchscript_gate(file_reading_torchscript, tmp_path, bccd_root):
    from core.workspace import load_workspace
    from models.inference import load_workspace_model

    path, _ = file_reading_torchscript
    (tmp_path / "classes.txt").write_text("\n".join(BCCD_CLASSES) + "\n")
    entry = f'[[checkpoints]]\nname = "scripted"\npath = "{path}"\nclasses = "classes.txt"\n'
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n\n{entry}')
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_workspace_model(load_workspace(tmp_path), "scripted", device="cpu")
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n\n{entry}trust = true\n')
    _, card = load_workspace_model(load_workspace(tmp_path), "scripted", device="cpu")
    assert card.source_format == "torchscript"


def _meta(**changes: object) -> dict:
    meta = {"arch": TINY_ARCH, "class_names": list(BCCD_CLASSES), "input_size": [3, 64, 64],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 1.0}
    return {**meta, **changes}


# (id, metadata value of the `taxalens` header key, the key the error must name)
BAD_METADATA = [
    ("not-json", "{arch: resnet", "not JSON"),
    ("a-json-list", json.dumps([1, 2]), "not an object"),
    ("mean-of-2", json.dumps(_meta(mean=[0.5, 0.5])), "`mean`"),
    ("mean-nan", json.dumps(_meta(mean=[0.5, float("nan"), 0.5])), "`mean`"),
    ("std-zero", json.dumps(_meta(std=[0.2, 0.0, 0.2])), "`std`"),
    ("std-text", json.dumps(_meta(std="0.2")), "`std`"),
    ("duplicate-classes", json.dumps(_meta(class_names=["a", "b", "a", "c", "d"])), "`class_names`"),
    ("empty-class-name", json.dumps(_meta(class_names=["a", "", "c", "d", "e"])), "`class_names`"),
    ("no-classes", json.dumps(_meta(class_names=[])), "`class_names`"),
    ("input-too-large", json.dumps(_meta(input_size=[3, 100000, 100000])), "`input_size`"),
    ("input-too-small", json.dumps(_meta(input_size=[3, 8, 8])), "`input_size`"),
    ("input-two-numbers", json.dumps(_meta(input_size=[64, 64])), "`input_size`"),
    ("arch-unknown", json.dumps(_meta(arch="os.system")), "`arch`"),
    ("arch-not-text", json.dumps(_meta(arch=["resnet10t"])), "`arch`"),
    ("missing-std", json.dumps({k: v for k, v in _meta().items() if k != "std"}), "['std']"),
]


@pytest.mark.parametrize(("meta", "key"), [case[1:] for case in BAD_METADATA], ids=[case[0] for case in BAD_METADATA])
def test_metadata_is_validated_before_any_tensor_is_made(tmp_path, monkeypatch, meta, key):
    path = tmp_path / "bad-meta.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(path),
              metadata={"taxalens": meta})
    made = []
    monkeypatch.setattr(checkpoints, "load_file", lambda *a, **k: made.append("weights"))
    monkeypatch.setattr(checkpoints.timm, "create_model", lambda *a, **k: made.append("model"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and key in message
    assert made == []


@pytest.mark.parametrize("content", ["text", "random"])
def test_a_file_that_is_no_checkpoint_is_named_so_without_the_trust_flag(tmp_path, content):
    path = tmp_path / "model.pth"
    if content == "text":
        path.write_text("epoch,loss\n1,0.53\n2,0.41\n", encoding="utf-8")
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch=TINY_ARCH, class_names=BCCD_CLASSES)
    message = str(info.value)
    assert f"{path} is not a checkpoint" in message
    assert ("a text file" in message) == (content == "text")
    assert "trust" not in message


def test_a_damaged_pickle_is_not_sent_to_the_trust_flag(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(b"\x80\x02not really a checkpoint")  # pickle's magic, then garbage
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch checkpoint") as info:
        load_checkpoint(path, arch=TINY_ARCH, class_names=BCCD_CLASSES)
    assert "trust" not in str(info.value)
