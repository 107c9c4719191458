"""Batch augmentation on real BCCD crops: each op does what its recipe says (flips are exact mirrors, brightness one
factor per image, blur smooths, erasing fills one rectangle), rows go to their own recipe, nothing leaves [0, 1]."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.images import load_image_rgb
from models.augment import LIGHT, OFF, STRONG, BatchAugment

SIDE = 48


@pytest.fixture(scope="module")
def images(bccd_root: Path) -> torch.Tensor:
    """Eight real crops (two of each of four classes) as float (8, 3, 48, 48) in [0, 1]."""
    paths = [p for c in ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte")
             for p in sorted((bccd_root / c).iterdir())[:2]]
    arrays = [np.asarray(load_image_rgb(p).resize((SIDE, SIDE)), dtype=np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


RARE = torch.tensor([True, False] * 4)
ALL = torch.ones(8, dtype=torch.bool)


def test_an_empty_batch_passes_through(images: torch.Tensor):
    empty = images[:0]
    assert BatchAugment()(empty, RARE[:0]) is empty


def test_augment_off_is_identity_and_strong_changes_images():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32)
    rare = torch.tensor([True, False] * 4)
    assert torch.allclose(BatchAugment(OFF, OFF)(images, rare), images, atol=1e-5)
    out = BatchAugment()(images, rare)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.01
    erased = BatchAugment(OFF, replace(OFF, erase_p=1.0)).erase(images, rare, fill=-7.0)
    assert bool((erased[rare] == -7.0).any()) and not bool((erased[~rare] == -7.0).any())


@pytest.mark.parametrize(("field", "dim"), [("hflip", 3), ("vflip", 2)])
def test_a_certain_flip_is_an_exact_mirror(images: torch.Tensor, field: str, dim: int):
    recipe = replace(OFF, **{field: 1.0})
    out = BatchAugment(recipe, recipe)(images, RARE)
    assert torch.allclose(out, torch.flip(images, dims=[dim]), atol=1e-4)


def test_each_row_gets_its_own_recipe(images: torch.Tensor):
    out = BatchAugment(OFF, replace(OFF, hflip=1.0))(images, RARE)  # only the rare rows flip
    assert torch.allclose(out[RARE], torch.flip(images[RARE], dims=[3]), atol=1e-4)
    assert torch.allclose(out[~RARE], images[~RARE], atol=1e-5)


def test_brightness_is_one_factor_per_image_within_its_range(images: torch.Tensor):
    torch.manual_seed(1)
    dim = images * 0.5  # no clamping at 1
    recipe = replace(OFF, color_p=1.0, brightness=0.4, contrast=0.0, saturation=0.0)
    out = BatchAugment(recipe, recipe)(dim, ALL)
    bright = dim > 0.05
    ratios = [(out[i][bright[i]] / dim[i][bright[i]]) for i in range(8)]
    assert all(float(r.std()) < 1e-4 for r in ratios)  # the same factor on every pixel of an image
    factors = torch.tensor([float(r.mean()) for r in ratios])
    assert bool(((factors >= 0.6) & (factors <= 1.4)).all())
    assert float(factors.std()) > 0.05  # drawn per image, not once per batch


def test_blur_smooths_and_keeps_the_colour(images: torch.Tensor):
    torch.manual_seed(2)
    recipe = replace(OFF, blur_p=1.0, blur_sigma=(1.5, 1.5))
    out = BatchAugment(recipe, recipe)(images, ALL)

    def roughness(x: torch.Tensor) -> float:
        return float((x[..., 1:] - x[..., :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    assert roughness(out) < 0.6 * roughness(images)
    assert torch.allclose(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.01)
    flat = torch.full((2, 3, SIDE, SIDE), 0.3)
    assert torch.allclose(BatchAugment(recipe, recipe)(flat, ALL[:2]), flat, atol=1e-5)  # nothing to smooth


def test_erase_fills_one_rectangle_of_the_asked_area_in_chosen_rows_only(images: torch.Tensor):
    torch.manual_seed(3)
    augment = BatchAugment(OFF, replace(OFF, erase_p=1.0, erase_area=(0.1, 0.1)))
    out = augment.erase(images, RARE, fill=-7.0)
    assert torch.equal(out[~RARE], images[~RARE])
    for i in RARE.nonzero().flatten().tolist():
        mask = (out[i] == -7.0).all(dim=0)  # every channel filled
        rows, cols = mask.any(dim=1), mask.any(dim=0)
        assert int(mask.sum()) == int(rows.sum()) * int(cols.sum())  # one axis-aligned rectangle
        assert 0.8 * 0.1 * SIDE * SIDE <= int(mask.sum()) <= 1.2 * 0.1 * SIDE * SIDE
        assert torch.equal(out[i][:, ~mask], images[i][:, ~mask])  # the rest is untouched
    assert torch.equal(BatchAugment(OFF, OFF).erase(images, RARE), images)  # erase_p 0: nothing


@pytest.mark.parametrize("recipe", [LIGHT, STRONG], ids=["light", "strong"])
def test_the_same_seed_gives_the_same_batch_and_values_stay_in_range(images: torch.Tensor, recipe):
    torch.manual_seed(7)
    first = BatchAugment(recipe, recipe)(images, ALL)
    torch.manual_seed(7)
    again = BatchAugment(recipe, recipe)(images, ALL)
    assert torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1 and not torch.isnan(first).any()
