"""Training augmentations on uint8 CHW tensors: a light one for every class and a stronger one for rare classes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

Augment = Callable[[torch.Tensor], torch.Tensor]


def build_light_augment(img_size: int) -> Augment:
    """Flips, a mild affine, an occasional perspective warp and blur; uint8 (3, S, S) in and out.

    Specimen photographs and micrographs have no canonical orientation, so vertical flips and full-range
    rotations of 90° steps are label-preserving; the affine stays mild so small structures survive at 64 px.
    """
    kernel = _odd(max(3, img_size // 16))
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=20, translate=(0.08, 0.08), scale=(0.85, 1.15)),
            v2.RandomPerspective(distortion_scale=0.15, p=0.25),
            v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 1.2))], p=0.2),
            v2.RandomApply([v2.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.1)], p=0.5),
        ]
    )


def build_strong_augment(img_size: int) -> Augment:
    """The light augmentation plus elastic deformation, stronger contrast and random erasing, for rare classes."""
    light = build_light_augment(img_size)
    return v2.Compose(
        [
            light,
            v2.RandomApply([v2.ElasticTransform(alpha=max(8.0, img_size / 3), sigma=max(3.0, img_size / 12))], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.45, saturation=0.3, hue=0.03)], p=0.6),
            v2.RandomAutocontrast(p=0.2),
            # RandomErasing works on any dtype; value 0 erases to black, `random` would need a float image
            v2.RandomErasing(p=0.4, scale=(0.02, 0.15), ratio=(0.3, 3.3), value=0),
        ]
    )


def _odd(n: int) -> int:
    return n if n % 2 else n + 1
