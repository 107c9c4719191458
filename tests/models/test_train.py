"""Training: layer-wise lr decay groups, the schedule, a tiny run end to end, resume, errors (the balanced sampler:
test_sampling.py; augmentation: test_augment.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from core.dataset import load_dataset
from models.checkpoints import load_checkpoint, read_model_card
from models.train import (
    TrainConfig,
    TrainingError,
    build_optimizer,
    build_param_groups,
    lr_factor,
    train_model,
    weights_digest,
)

TINY = TrainConfig(arch="resnet10t", img_size=32, epochs=1, batch_size=32, lr=2e-3, warmup_epochs=0.0,
                   num_threads=1, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bccd(bccd_root: Path):
    return load_dataset(bccd_root, verify="none")


# -- layer-wise learning-rate decay ---------------------------------------------------------------------------------


def test_layer_decay_assigns_stated_lrs_per_stage():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    lr_of = {}
    decay_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = next(n for n, p in model.named_parameters() if p is param)
            lr_of[name] = group["lr"]
            decay_of[name] = group["weight_decay"]
    # resnet: stem (depth 5 below the head), layer1..layer4 (4..1), fc (0)
    assert lr_of["fc.weight"] == pytest.approx(1e-3)
    assert lr_of["fc.bias"] == pytest.approx(1e-3)
    assert lr_of["layer4.0.conv1.weight"] == pytest.approx(1e-3 * 0.8)
    assert lr_of["layer3.0.conv1.weight"] == pytest.approx(1e-3 * 0.8**2)
    assert lr_of["layer2.0.bn1.weight"] == pytest.approx(1e-3 * 0.8**3)
    assert lr_of["layer1.0.conv2.weight"] == pytest.approx(1e-3 * 0.8**4)
    assert lr_of["conv1.0.weight"] == pytest.approx(1e-3 * 0.8**5)
    assert lr_of["bn1.weight"] == pytest.approx(1e-3 * 0.8**5)
    # every parameter is optimised exactly once; 1-d params get no weight decay
    assert set(lr_of) == {n for n, _ in model.named_parameters()}
    assert decay_of["fc.weight"] == 0.05 and decay_of["fc.bias"] == 0.0 and decay_of["bn1.weight"] == 0.0


def test_layer_decay_off_gives_one_lr_and_the_schedule_keeps_ratios():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    flat = build_param_groups(model, lr=3e-3, weight_decay=0.0, layer_decay=1.0)
    assert {g["lr"] for g in flat} == {3e-3}
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.0, layer_decay=0.5)
    factor = lr_factor(50, total_steps=100, warmup_steps=10, min_ratio=0.0)
    scaled = [g["initial_lr"] * factor for g in groups]
    top = max(g["layer"] for g in groups)
    for group, lr in zip(groups, scaled, strict=True):
        assert lr == pytest.approx(1e-3 * factor * 0.5 ** (top - group["layer"]))


def test_vit_layer_decay_goes_per_block():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, depth=3)
    groups = build_param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    by_name = {}
    for group in groups:
        for param in group["params"]:
            by_name[next(n for n, p in model.named_parameters() if p is param)] = group["lr"]
    assert by_name["head.weight"] == 1.0
    assert by_name["blocks.2.attn.qkv.weight"] == 0.5
    assert by_name["blocks.0.attn.qkv.weight"] == 0.125
    assert by_name["patch_embed.proj.weight"] == 0.0625


def test_lr_factor_warms_up_then_anneals_to_min():
    assert lr_factor(0, total_steps=100, warmup_steps=10, min_ratio=0.01) == pytest.approx(0.1)
    assert lr_factor(9, total_steps=100, warmup_steps=10, min_ratio=0.01) == pytest.approx(1.0)
    assert lr_factor(10, total_steps=100, warmup_steps=10, min_ratio=0.01) == pytest.approx(1.0)
    assert lr_factor(55, total_steps=100, warmup_steps=10, min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(100, total_steps=100, warmup_steps=10, min_ratio=0.01) == pytest.approx(0.01)


# -- a tiny run end to end ------------------------------------------------------------------------------------------


def test_tiny_run_writes_a_loadable_checkpoint_and_resumes(bccd, tmp_path: Path):
    events = []
    result = train_model(bccd, TINY, tmp_path, progress=events.append)
    assert result.checkpoint_path.is_file() and result.best_epoch == 1 and len(result.history) == 1
    kinds = {e["event"] for e in events}
    assert {"decode", "step", "epoch", "done"} <= kinds
    assert all(e["eta_s"] is None or e["eta_s"] >= 0 for e in events if "eta_s" in e)

    card = read_model_card(result.checkpoint_path)
    assert card.arch == "resnet10t" and card.class_names == bccd.class_names
    assert card.input_size == (3, 32, 32)
    assert card.training["data_hash"] == result.data_hash
    assert card.training["config"]["img_size"] == 32
    assert card.training["class_counts_train"]["Basophil"] == int(
        ((bccd.samples["label"] == "Basophil") & (bccd.samples["split"] == "train")).sum())
    assert len(card.training["history"]) == 1
    model, _ = load_checkpoint(result.checkpoint_path, device="cpu")
    assert weights_digest(model) == result.weights_sha256
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["history"][0]["val_macro_f1"] == pytest.approx(result.best_macro_f1)

    resumed = train_model(bccd, replace(TINY, epochs=2), tmp_path, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[0] == json.loads(json.dumps(result.history[0]))  # epoch 1 not redone


def test_resume_refuses_other_data(bccd, tmp_path: Path):
    train_model(bccd, TINY, tmp_path)
    samples = bccd.samples.copy()
    samples.loc[samples.index[0], "label"] = "Eosinophil" if samples.loc[samples.index[0], "label"] != "Eosinophil" \
        else "Neutrophil"
    other = replace(bccd, samples=samples)
    with pytest.raises(TrainingError, match="data hash"):
        train_model(other, replace(TINY, epochs=2), tmp_path, resume=True)


def test_init_checkpoint_lacking_a_class_is_refused_with_the_fix(bccd, tmp_path: Path):
    first = train_model(bccd, TINY, tmp_path / "a")
    samples = bccd.samples.copy()
    samples.loc[samples["label"] == "Monocyte", "label"] = "Amoeba"
    renamed = replace(bccd, samples=samples, class_names=tuple(sorted(samples["label"].unique())))
    config = replace(TINY, init_checkpoint=str(first.checkpoint_path))
    with pytest.raises(TrainingError, match=r"lacks: \['Amoeba'\].*--new-head"):
        train_model(renamed, config, tmp_path / "b")
    result = train_model(renamed, replace(config, new_head=True), tmp_path / "c")
    assert read_model_card(result.checkpoint_path).class_names == renamed.class_names


def test_class_without_training_images_is_refused(bccd, tmp_path: Path):
    samples = bccd.samples[~((bccd.samples["label"] == "Basophil") & (bccd.samples["split"] == "train"))]
    broken = replace(bccd, samples=samples.reset_index(drop=True))
    with pytest.raises(TrainingError, match=r"\['Basophil'\] have validation images but no training images"):
        train_model(broken, TINY, tmp_path)


def test_empty_val_split_is_refused(bccd, tmp_path: Path):
    samples = bccd.samples.assign(split="train")
    with pytest.raises(TrainingError, match="no `val` rows"):
        train_model(replace(bccd, samples=samples), TINY, tmp_path)


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="balance must be"):
        TrainConfig(balance="oversample")
    with pytest.raises(ValueError, match="layer_decay"):
        TrainConfig(layer_decay=1.5)


def test_data_hash_follows_labels_not_order(bccd):
    from models.train import training_data_hash

    shuffled = replace(bccd, samples=bccd.samples.sample(frac=1.0, random_state=1))
    assert training_data_hash(shuffled) == training_data_hash(bccd)
    relabelled = bccd.samples.copy()
    relabelled.loc[relabelled.index[5], "label"] = "Basophil"
    assert training_data_hash(replace(bccd, samples=relabelled)) != training_data_hash(bccd)


def test_pretrained_never_downloads_and_says_so(bccd, tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # nothing cached here
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(TrainingError, match="not in timm's cache"):
        train_model(bccd, replace(TINY, pretrained=True), tmp_path / "run")
    assert "HF_HUB_OFFLINE" not in __import__("os").environ  # restored afterwards


def test_uncached_decoding_and_loss_balancing_train_too(bccd, tmp_path: Path):
    result = train_model(bccd, replace(TINY, cache_images=False, balance="loss"), tmp_path)
    assert result.extra["image_cache"] is False
    assert len(result.history) == 1 and 0.0 <= result.best_macro_f1 <= 1.0
