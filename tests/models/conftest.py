"""Tiny models saved in every checkpoint format TaxaLens reads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from models.checkpoints import ModelCard, save_taxalens_checkpoint

BCCD_CLASSES = ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil")
TINY_ARCH = "mobilenetv3_small_050"


def tiny_model(num_classes: int = 5, arch: str = TINY_ARCH, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()


@pytest.fixture(scope="session")
def checkpoint_files(tmp_path_factory) -> dict[str, Path]:
    """The same weights as TaxaLens, safetensors, state_dict, timm-train and TorchScript files, plus classes.txt."""
    out = tmp_path_factory.mktemp("checkpoints")
    model = tiny_model()
    state = model.state_dict()
    (out / "classes.txt").write_text("\n".join(BCCD_CLASSES) + "\n")
    card = ModelCard(arch=TINY_ARCH, class_names=BCCD_CLASSES, input_size=(3, 64, 64), crop_pct=1.0)
    files = {"taxalens": save_taxalens_checkpoint(model, card, out / "tiny.safetensors")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "plain.safetensors"))
    files["safetensors"] = out / "plain.safetensors"
    torch.save(state, out / "state_dict.pth")
    files["timm-state-dict"] = out / "state_dict.pth"
    # timm train.py's layout: args Namespace, DDP prefixes, an EMA copy preferred over the raw weights
    train = {"epoch": 3, "arch": TINY_ARCH, "args": argparse.Namespace(model=TINY_ARCH, num_classes=5),
             "state_dict": {f"module.{k}": torch.zeros_like(v) for k, v in state.items()},
             "state_dict_ema": {f"module._orig_mod.{k}": v for k, v in state.items()}, "metric": 0.5}
    torch.save(train, out / "train_ckpt.pth.tar")
    files["timm-train"] = out / "train_ckpt.pth.tar"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 64, 64)), str(out / "scripted.pt"))
    files["torchscript"] = out / "scripted.pt"
    torch.save(model, out / "pickled_module.pt")
    files["pickle"] = out / "pickled_module.pt"
    files["classes"] = out / "classes.txt"
    return files
