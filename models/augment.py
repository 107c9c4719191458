"""Training augmentation on whole batches on the training device: a light recipe for all, a strong one for rare classes.

Per-image torchvision transforms cost tens of milliseconds per 64 px image on a busy CPU (each op is a tiny tensor
program); here every op runs once per batch: one homography + elastic field through a single `grid_sample`,
grouped-convolution blur, colour arithmetic and erasing masks, each with per-image random parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentStrength:
    """One recipe's random ranges and probabilities (0 disables an op)."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip (specimens rarely have a canonical orientation)
    degrees: float = 20.0  # rotation drawn from [-degrees, degrees]
    translate: float = 0.08  # shift drawn from [-translate, translate] of the image side
    scale: tuple[float, float] = (0.85, 1.15)  # zoom range
    perspective_p: float = 0.25  # probability of a perspective warp
    perspective: float = 0.15  # perspective distortion strength
    blur_p: float = 0.2  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.2)  # blur sigma range, in pixels at 64 px (scaled with the side)
    color_p: float = 0.5  # probability of brightness/contrast/saturation jitter
    brightness: float = 0.15  # brightness factor drawn from 1 +- brightness
    contrast: float = 0.15  # contrast factor drawn from 1 +- contrast
    saturation: float = 0.1  # saturation factor drawn from 1 +- saturation
    autocontrast_p: float = 0.0  # probability of stretching each channel to the full range
    elastic_p: float = 0.0  # probability of an elastic deformation
    elastic_alpha: float = 0.04  # elastic displacement magnitude, as a fraction of the image side
    elastic_sigma: float = 0.08  # smoothness of the displacement field, as a fraction of the image side
    erase_p: float = 0.0  # probability of erasing one rectangle (filled with the normalisation mean)
    erase_area: tuple[float, float] = (0.02, 0.15)  # erased fraction of the image


LIGHT = AugmentStrength()
STRONG = AugmentStrength(
    degrees=30.0, translate=0.1, scale=(0.8, 1.2), perspective_p=0.4, perspective=0.2, color_p=0.8,
    brightness=0.3, contrast=0.45, saturation=0.3, autocontrast_p=0.2, elastic_p=0.5, erase_p=0.4,
)
OFF = AugmentStrength(hflip=0.0, vflip=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0), perspective_p=0.0,
                      blur_p=0.0, color_p=0.0)


class BatchAugment:
    """`augment(images, strong)`: images float (N, 3, H, W) in [0, 1], strong bool (N,) -> augmented, same shape.

    Rows with `strong` true get the `strong` recipe, the others `light`. Random numbers come from torch's global
    generator on the images' device (seed it with `torch.manual_seed`). Random erasing is left to `erase`, which
    runs after normalisation so the rectangle is filled with the mean colour.
    """

    def __init__(self, light: AugmentStrength = LIGHT, strong: AugmentStrength = STRONG) -> None:
        self.light, self.strong = light, strong

    def __call__(self, images: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        if n == 0:
            return images
        strong = strong.to(images.device, dtype=torch.bool)
        images = self._geometry(images, strong)
        images = self._blur(images, strong)
        images = self._color(images, strong)
        return images.clamp_(0.0, 1.0)

    def erase(self, images: torch.Tensor, strong: torch.Tensor, *, fill: float = 0.0) -> torch.Tensor:
        """Erase one random rectangle per selected row (in place is avoided; returns a new tensor)."""
        n, _, h, w = images.shape
        p = self._pick("erase_p", strong, images)
        chosen = torch.rand(n, device=images.device) < p
        if not bool(chosen.any()):
            return images
        lo, hi = self._pick_pair("erase_area", strong, images)
        area = _uniform(lo, hi) * h * w
        log_ratio = _uniform(torch.full_like(area, math.log(0.3)), torch.full_like(area, math.log(1 / 0.3)))
        ratio = torch.exp(log_ratio)
        eh = torch.sqrt(area * ratio).clamp(1, h)
        ew = torch.sqrt(area / ratio).clamp(1, w)
        top = torch.rand(n, device=images.device) * (h - eh)
        left = torch.rand(n, device=images.device) * (w - ew)
        rows = torch.arange(h, device=images.device).view(1, h, 1)
        cols = torch.arange(w, device=images.device).view(1, 1, w)
        inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
                  & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)))
        mask = (inside & chosen.view(n, 1, 1)).unsqueeze(1)
        return images.masked_fill(mask, fill)

    # -- the ops --------------------------------------------------------------------------------------------------

    def _pick(self, name: str, strong: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        light, heavy = getattr(self.light, name), getattr(self.strong, name)
        return torch.where(strong, torch.tensor(float(heavy), device=like.device),
                           torch.tensor(float(light), device=like.device)).to(like.dtype)

    def _pick_pair(self, name: str, strong: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (l_lo, l_hi), (s_lo, s_hi) = getattr(self.light, name), getattr(self.strong, name)
        lo = torch.where(strong, torch.tensor(float(s_lo), device=like.device), torch.tensor(float(l_lo),
                                                                                             device=like.device))
        hi = torch.where(strong, torch.tensor(float(s_hi), device=like.device), torch.tensor(float(l_hi),
                                                                                             device=like.device))
        return lo.to(like.dtype), hi.to(like.dtype)

    def _geometry(self, images: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        device, dtype = images.device, images.dtype

        def coin(name: str) -> torch.Tensor:
            return torch.rand(n, device=device) < self._pick(name, strong, images)

        # A homography mapping output coordinates (normalised to [-1, 1]) to input coordinates.
        flip_x = torch.where(coin("hflip"), -1.0, 1.0).to(dtype)
        flip_y = torch.where(coin("vflip"), -1.0, 1.0).to(dtype)
        angle = _uniform(-1.0, 1.0, like=flip_x) * self._pick("degrees", strong, images) * math.pi / 180
        lo, hi = self._pick_pair("scale", strong, images)
        zoom = _uniform(lo, hi)
        shift = self._pick("translate", strong, images) * 2
        tx, ty = _uniform(-1.0, 1.0, like=flip_x) * shift, _uniform(-1.0, 1.0, like=flip_x) * shift
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        matrix = torch.zeros((n, 3, 3), device=device, dtype=dtype)
        matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2] = cos * flip_x, -sin * flip_y, tx
        matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2] = sin * flip_x, cos * flip_y, ty
        warp = coin("perspective_p").to(dtype) * self._pick("perspective", strong, images) * 0.5
        matrix[:, 2, 0] = _uniform(-1.0, 1.0, like=flip_x) * warp
        matrix[:, 2, 1] = _uniform(-1.0, 1.0, like=flip_x) * warp
        matrix[:, 2, 2] = 1.0
        if torch.allclose(matrix, torch.eye(3, device=device, dtype=dtype).expand(n, 3, 3)) and \
                not bool((self._pick("elastic_p", strong, images) > 0).any()):
            return images
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).view(1, h * w, 3)
        mapped = points @ matrix.transpose(1, 2)  # (n, h*w, 3)
        grid = (mapped[..., :2] / mapped[..., 2:].clamp(min=1e-3)).view(n, h, w, 2)
        elastic = coin("elastic_p")
        if bool(elastic.any()):
            grid = grid + self._elastic_field(n, h, w, strong, images) * elastic.view(n, 1, 1, 1).to(dtype)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _elastic_field(self, n: int, h: int, w: int, strong: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sigma = float(max(self.light.elastic_sigma, self.strong.elastic_sigma)) * max(h, w)
        noise = torch.rand((n, 2, h, w), device=like.device, dtype=like.dtype) * 2 - 1
        smooth = _gaussian_blur(noise, torch.full((n,), sigma, device=like.device, dtype=like.dtype))
        smooth = smooth / smooth.flatten(1).abs().amax(dim=1).clamp(min=1e-6).view(n, 1, 1, 1)
        alpha = self._pick("elastic_alpha", strong, like) * 2  # fraction of the side -> normalised units
        return (smooth * alpha.view(n, 1, 1, 1)).permute(0, 2, 3, 1)

    def _blur(self, images: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        chosen = torch.rand(n, device=images.device) < self._pick("blur_p", strong, images)
        if not bool(chosen.any()):
            return images
        lo, hi = self._pick_pair("blur_sigma", strong, images)
        sigma = _uniform(lo, hi) * max(h, w) / 64
        blurred = _gaussian_blur(images[chosen], sigma[chosen])
        out = images.clone()
        out[chosen] = blurred
        return out

    def _color(self, images: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        chosen = (torch.rand(n, device=images.device) < self._pick("color_p", strong, images)).to(images.dtype)

        def factor(name: str) -> torch.Tensor:
            spread = self._pick(name, strong, images) * chosen
            return (1 + _uniform(-1.0, 1.0, like=spread) * spread).view(n, 1, 1, 1)

        images = images * factor("brightness")
        grey = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
        images = grey.mean(dim=(2, 3), keepdim=True) + (images - grey.mean(dim=(2, 3), keepdim=True)) \
            * factor("contrast")
        grey = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
        images = grey + (images - grey) * factor("saturation")
        auto = torch.rand(n, device=images.device) < self._pick("autocontrast_p", strong, images)
        if bool(auto.any()):
            lo = images.amin(dim=(2, 3), keepdim=True)
            hi = images.amax(dim=(2, 3), keepdim=True)
            stretched = (images - lo) / (hi - lo).clamp(min=1e-3)
            images = torch.where(auto.view(n, 1, 1, 1), stretched, images)
        return images


def _uniform(lo: torch.Tensor | float, hi: torch.Tensor | float, *, like: torch.Tensor | None = None) -> torch.Tensor:
    if like is not None:
        lo = torch.full_like(like, float(lo))
        hi = torch.full_like(like, float(hi))
    return lo + (hi - lo) * torch.rand(lo.shape, device=lo.device, dtype=lo.dtype)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image: images (n, c, h, w), sigma (n,)."""
    n, c, h, w = images.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1).clamp(min=1e-3)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    flat = images.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)
