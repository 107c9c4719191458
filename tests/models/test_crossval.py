"""Fine-tuned cross-validation (`models.crossval`): each fold trains without its held-out specimens, every training
row gets exactly one out-of-fold probability, val rows the folds' mean; the recipe comes from the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.crossval import CrossvalError, crossval_folds
from core.dataset import load_dataset
from models.checkpoints import ModelCard, read_model_card
from models.crossval import cross_validated_predictions, recipe_config
from models.train import TrainConfig

torch.set_num_threads(1)
TINY = TrainConfig(arch="resnet10t", img_size=32, epochs=1, batch_size=32, warmup_epochs=0, num_threads=1,
                   device="cpu")


@pytest.fixture(scope="module")
def bccd_folds(bccd_root: Path, tmp_path_factory):
    """bccd (Basophil: 3 images, one specimen each: fewer specimens than folds) cross-validated in 3 folds."""
    dataset = load_dataset(bccd_root, verify="none")
    events: list[dict] = []
    table, results = cross_validated_predictions(dataset, TINY, tmp_path_factory.mktemp("cv"), n_folds=3, seed=0,
                                                 progress=events.append)
    return dataset, table, results, events


def test_every_training_row_gets_one_out_of_fold_probability(bccd_folds) -> None:
    dataset, table, results, _ = bccd_folds
    train = dataset.split("train")
    cv_train = table.for_split("train").frame
    assert sorted(cv_train["sample_id"]) == sorted(train["sample_id"]), "each training row once"
    assert set(train.loc[train["label"] == "Basophil", "sample_id"]) <= set(cv_train["sample_id"])
    val = table.for_split("val").frame
    assert sorted(val["sample_id"]) == sorted(dataset.split("val")["sample_id"])
    assert np.allclose(table.pred_probs.sum(axis=1), 1.0, atol=1e-4)
    assert table.class_names == dataset.class_names and table.meta["mode"] == "finetune"


def test_each_fold_trained_without_its_held_out_specimens(bccd_folds) -> None:
    dataset, _, results, events = bccd_folds
    train = dataset.split("train")
    folds = crossval_folds(train, n_folds=3, seed=0).folds
    assert len(results) == 3
    for fold, result in enumerate(results):
        card = read_model_card(result.checkpoint_path)
        assert card.training["n_train"] == int((folds != fold).sum()), f"fold {fold + 1} trained on held-out rows"
        assert card.training["n_val"] == len(dataset.split("val"))
    assert {e["fold"] for e in events} == {1, 2, 3} and {e["folds"] for e in events} == {3}


def test_recipe_comes_from_the_card_with_overrides() -> None:
    card = ModelCard(arch="resnet10t", class_names=("a", "b"), input_size=(3, 112, 112),
                     training={"config": {"arch": "resnet10t", "img_size": 112, "epochs": 4, "lr": 0.003,
                                          "warmup_epochs": 0.5, "field_of_a_future_version": 1}})
    config = recipe_config(card, epochs=1, max_minutes=None, num_threads=1)
    assert (config.arch, config.img_size, config.epochs, config.lr, config.warmup_epochs) == \
        ("resnet10t", 112, 1, 0.003, 0.5)
    assert config.max_minutes is None and config.num_threads == 1
    foreign = ModelCard(arch="convnext_atto", class_names=("a", "b"), input_size=(3, 96, 96))
    assert (recipe_config(foreign).arch, recipe_config(foreign).img_size) == ("convnext_atto", 96)
    with pytest.raises(CrossvalError, match="no training recipe and no architecture"):
        recipe_config(None)
