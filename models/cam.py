"""Grad-CAM family explanations for timm classifiers: batched class-activation maps and overlay rendering."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import (
    EigenCAM,
    FinerCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from torch import nn

from models._cam_layers import (
    MIN_CAM_GRID,
    CamError,
    CamLayer,
    find_cam_layer,
    model_family,
    reshape_transform_for,
    spatial_layer_candidates,
)
from models.checkpoints import ModelCard, model_device

__all__ = [
    "CAM_METHODS",
    "MIN_CAM_GRID",
    "CamError",
    "CamLayer",
    "CamMethod",
    "CamResult",
    "compute_cams",
    "explain_images",
    "find_cam_layer",
    "get_cam_method",
    "model_family",
    "model_view_images",
    "preprocess_images",
    "render_overlay",
    "resolve_class_index",
    "spatial_layer_candidates",
]


class _QuietScoreCAM(ScoreCAM):
    """ScoreCAM without the per-image tqdm bar on stderr, scoring all masked copies in batches of `batch_size`."""

    batch_size = 64

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # noqa: ANN001, ANN201
        with torch.no_grad():
            maps = torch.from_numpy(activations).to(self.device)
            maps = torch.nn.functional.interpolate(maps, size=input_tensor.shape[-2:], mode="bilinear",
                                                   align_corners=True)
            flat = maps.flatten(2)
            lo, hi = flat.min(dim=-1).values, flat.max(dim=-1).values
            maps = (maps - lo[:, :, None, None]) / (hi - lo + 1e-8)[:, :, None, None]
            scores = []
            for target, image, image_maps in zip(targets, input_tensor.detach(), maps, strict=True):
                masked = image[None] * image_maps[:, None]  # (C_layer, 3, H, W): the image seen through each map
                for start in range(0, masked.shape[0], self.batch_size):
                    scores.append(target(self.model(masked[start:start + self.batch_size])).float().cpu())
            scores = torch.cat(scores).view(activations.shape[0], activations.shape[1])
            return torch.softmax(scores, dim=-1).numpy()


@dataclass(frozen=True)
class CamMethod:
    """One explanation method offered in the UI and on the command line."""

    name: str  # key used on the CLI (`--method`) and in caches
    label: str  # name shown in the UI
    cam_class: type  # the pytorch_grad_cam class
    class_specific: bool = True  # False: the same map whatever class is asked for (EigenCAM)
    uses_gradients: bool = True  # False: forward passes only
    slow: bool = False  # True: one forward pass per channel of the layer; avoid for whole gallery pages
    note: str = ""  # one line for the UI


CAM_METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gradcam", "Grad-CAM", GradCAM, note="channel weights = mean gradient; the reference method"),
        CamMethod("gradcam++", "Grad-CAM++", GradCAMPlusPlus, note="weights favour positive gradients; "
                                                                   "better with several instances"),
        CamMethod("hirescam", "HiResCAM", HiResCAM, note="element-wise gradient x activation; faithful to the "
                                                         "model's score"),
        CamMethod("xgradcam", "XGrad-CAM", XGradCAM, note="activation-normalised gradient weights"),
        CamMethod("layercam", "LayerCAM", LayerCAM, note="positive gradients per location; finer maps"),
        CamMethod("eigencam", "EigenCAM", EigenCAM, class_specific=False, uses_gradients=False,
                  note="first principal component of the activations: the same map for every class"),
        CamMethod("finercam", "Finer-CAM", FinerCAM, note="explains the class against its most similar classes "
                                                          "(made for fine-grained taxa)"),
        CamMethod("scorecam", "Score-CAM", _QuietScoreCAM, uses_gradients=False, slow=True,
                  note="slow: one forward pass per channel of the layer (hundreds per image)"),
    )
}

# Comparison classes FinerCAM weighs the target against: the 1st..3rd most similar by logit (pytorch-grad-cam default).
_FINER_COMPARISONS = 3
# Hooks go on the shared model's modules and parameters are frozen during a call: one CAM computation at a time.
_CAM_LOCK = threading.RLock()


def get_cam_method(name: str) -> CamMethod:
    """The method registered as `name` (`"gradcam"`, `"gradcam++"`, ...); `CamError` listing the names otherwise."""
    key = name.strip().lower().replace("_", "").replace("-", "").replace("plusplus", "++").replace("pp", "++")
    for method in CAM_METHODS.values():
        if key in (method.name, method.label.lower().replace("-", "")):
            return method
    raise CamError(f"unknown CAM method {name!r}; choose one of {list(CAM_METHODS)}")


@dataclass(frozen=True)
class CamResult:
    """Class-activation maps for a batch of preprocessed images."""

    cams: np.ndarray  # (B, H, W) float32 in [0, 1], at the model's input height and width
    class_indices: np.ndarray  # (B,) int64: the class each map explains
    pred_probs: np.ndarray  # (B, K) float32: softmax of the model's output for the same inputs
    method: str  # CAM_METHODS key
    layer: str  # dotted name of the module explained
    grid: tuple[int, int] = (0, 0)  # height, width of the layer's map: how coarse the maps really are
    note: str = ""  # set when the automatic layer is coarser than 7x7 (the model's finest): say so to the user

    @property
    def pred_indices(self) -> np.ndarray:
        """(B,) predicted class of each input."""
        return self.pred_probs.argmax(axis=1)


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    class_indices: Sequence[int | None] | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    batch_size: int = 24,
) -> CamResult:
    """Maps of `method` for `images` (a preprocessed float tensor of shape `(B, 3, H, W)`).

    `class_indices`: one entry per image, a class index or `None` for the predicted class; `None` means
    predicted class for all. `layer` overrides the automatic target layer (a dotted module name).
    Runs with gradients enabled whatever the caller's grad mode (also inside `torch.inference_mode()`); hooks are
    released and parameter gradients cleared before returning. Raises `CamError` for bad classes or layers.
    """
    spec = get_cam_method(method)
    if images.ndim != 4:
        raise CamError(f"images must have shape (B, C, H, W); got {tuple(images.shape)}")
    n = images.shape[0]
    wanted = [None] * n if class_indices is None else list(class_indices)
    if len(wanted) != n:
        raise CamError(f"got {len(wanted)} class indices for {n} images; pass one per image (None = predicted)")
    if batch_size < 1:
        raise CamError(f"batch_size must be >= 1, got {batch_size}")
    cam_layer = find_cam_layer(model, layer=layer, input_size=tuple(images.shape[1:]))
    cams, classes, probs, grid = [], [], [], (0, 0)
    with _CAM_LOCK, torch.inference_mode(False), torch.enable_grad(), _frozen_parameters(model):
        for start in range(0, n, batch_size):
            batch_cams, batch_classes, batch_probs, grid = _compute_batch(
                model, images[start:start + batch_size], wanted[start:start + batch_size], spec, cam_layer)
            cams.append(batch_cams)
            classes.append(batch_classes)
            probs.append(batch_probs)
    if n == 0:
        return CamResult(np.zeros((0, *images.shape[2:]), np.float32), np.zeros(0, np.int64),
                         np.zeros((0, 0), np.float32), spec.name, cam_layer.name)
    return CamResult(cams=np.concatenate(cams), class_indices=np.concatenate(classes),
                     pred_probs=np.concatenate(probs), method=spec.name, layer=cam_layer.name, grid=grid,
                     note=cam_layer.note)


def _compute_batch(
    model: nn.Module, images: torch.Tensor, wanted: list[int | None], spec: CamMethod, cam_layer: CamLayer
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    device = model_device(model)
    # A clone made outside inference mode is an ordinary tensor autograd can use, even if `images` was not.
    batch = images.detach().clone().to(device=device, dtype=torch.float32)
    with torch.no_grad():
        logits = model(batch).float()
    num_classes = logits.shape[1]
    predicted = logits.argmax(dim=1).tolist()
    classes = [predicted[i] if c is None else int(c) for i, c in enumerate(wanted)]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise CamError(f"class indices {bad} are out of range for a model with {num_classes} outputs "
                       f"(0..{num_classes - 1})")
    targets = _targets(spec, classes, logits)
    batch.requires_grad_(spec.uses_gradients)  # parameters are frozen: the graph hangs off the input
    reshape = reshape_transform_for(model, cam_layer, tuple(batch.shape[-2:]))
    try:
        with spec.cam_class(model=model, target_layers=[cam_layer.module], reshape_transform=reshape) as cam:
            try:
                maps = cam(input_tensor=batch, targets=targets)
                recorded = getattr(cam, "base_cam", cam).activations_and_grads.activations  # FinerCAM wraps one
                grid = tuple(int(v) for v in recorded[0].shape[-2:]) if recorded else (0, 0)
            except IndexError as exc:
                # grad-cam's __exit__ swallows IndexError (and prints); re-raise as ours so it reaches the caller.
                raise CamError(f"{spec.label} failed on layer {cam_layer.name!r}: {exc}") from exc
    finally:
        model.zero_grad(set_to_none=True)
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    probs = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
    return np.clip(maps, 0.0, 1.0), np.asarray(classes, dtype=np.int64), probs, grid


def _targets(spec: CamMethod, classes: list[int], logits: torch.Tensor) -> list:
    if spec.name != "finercam":
        return [ClassifierOutputTarget(c) for c in classes]
    if logits.shape[1] < 2:
        raise CamError("Finer-CAM compares a class with its most similar classes; the model has only one output")
    # As FinerCAM does for its own default targets, but for the class each image asks for: rank classes by how
    # close their logit is to the target's, skip the target itself, keep the nearest few.
    targets = []
    for row, main in zip(logits.cpu().numpy(), classes, strict=True):
        order = np.argsort(np.abs(row - row[main]), kind="stable")
        similar = [int(c) for c in order if c != main][:_FINER_COMPARISONS]
        targets.append(FinerWeightedTarget(main, similar, 1.0))
    return targets


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    # Weight gradients are never used by a CAM; skipping them roughly halves the backward pass.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def preprocess_images(images: Sequence[Image.Image], card: ModelCard) -> torch.Tensor:
    """Stack PIL RGB images into the `(B, 3, H, W)` tensor the model expects, using the card's eval transform."""
    from models.inference import build_eval_transform

    transform = build_eval_transform(card)
    if not images:
        return torch.zeros((0, *card.input_size))
    return torch.stack([transform(image.convert("RGB")) for image in images])


def model_view_images(images: torch.Tensor, card: ModelCard) -> np.ndarray:
    """Undo the normalisation of preprocessed `images` `(B, 3, H, W)`: uint8 `(B, H, W, 3)`, what the model saw."""
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().cpu().float() * std + mean).clamp(0.0, 1.0)
    return (pixels.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class CamExplanation:
    """Maps for a list of images, with the model-view images they align with."""

    views: np.ndarray  # (B, H, W, 3) uint8: the preprocessed (resized, cropped) images, de-normalised
    result: CamResult  # maps, classes explained and predictions


def explain_images(
    model: nn.Module,
    card: ModelCard,
    images: Sequence[Image.Image],
    class_indices: Sequence[int | None] | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    batch_size: int = 24,
) -> CamExplanation:
    """Preprocess `images` with the card's transform and compute maps (see `compute_cams`)."""
    tensor = preprocess_images(images, card)
    result = compute_cams(model, tensor, class_indices, method=method, layer=layer, batch_size=batch_size)
    return CamExplanation(views=model_view_images(tensor, card), result=result)


_COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
              "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA}


def render_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    opacity: float = 0.5,
    colormap: str = "jet",
    display_size: int | None = None,
) -> np.ndarray:
    """Blend a heat map of `cam` over `image`; a pure function.

    `image`: uint8 array `(H, W, 3)` RGB. `cam`: float array `(h, w)` in [0, 1] (uint8 maps are read as /255),
    resized bilinearly to the image. `opacity` in [0, 1]: 0 returns the image unchanged, 1 the heat map alone.
    `colormap`: one of jet, turbo, inferno, viridis, magma. `display_size`: when given, the image is first resized
    (bicubic) so its longer side has this many pixels (small model inputs are hard to read at 64 px).
    Returns uint8 `(H', W', 3)` RGB.
    """
    image = np.asarray(image)
    cam = np.asarray(cam)
    cam = cam.astype(np.float32) / 255.0 if cam.dtype == np.uint8 else cam.astype(np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array; got {image.dtype} {image.shape}")
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D (h, w) array; got shape {cam.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]; got {opacity}")
    if colormap not in _COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {list(_COLORMAPS)}")
    if display_size is not None:
        if display_size < 1:
            raise ValueError(f"display_size must be a positive number of pixels; got {display_size}")
        scale = display_size / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    height, width = image.shape[:2]
    if cam.shape != (height, width):
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    cam = np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0)
    heat = cv2.applyColorMap(np.uint8(np.round(cam * 255.0)), _COLORMAPS[colormap])
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def resolve_class_index(
    target: str | int,
    *,
    class_names: Sequence[str],
    pred_idx: int | None = None,
    label_idx: int | None = None,
) -> int:
    """The class index a target names: `"pred"`, `"true"`, a class name, or an index (int or digits).

    Raises `CamError` when `"true"` is asked for a sample whose label is not one of the model's classes, or the
    name/index is unknown.
    """
    k = len(class_names)
    if isinstance(target, int | np.integer):
        index = int(target)
    elif target == "pred":
        if pred_idx is None:
            raise CamError("target 'pred' needs the sample's predicted class")
        index = int(pred_idx)
    elif target == "true":
        if label_idx is None or label_idx < 0:
            raise CamError("target 'true' needs a sample whose label is one of the model's classes; "
                           "use --target pred or a class name")
        index = int(label_idx)
    elif target in class_names:
        index = list(class_names).index(target)
    elif str(target).lstrip("-").isdigit():
        index = int(target)
    else:
        raise CamError(f"unknown target {target!r}; use 'pred', 'true', a class index 0..{k - 1} or one of "
                       f"{list(class_names)[:20]}")
    if not 0 <= index < k:
        raise CamError(f"class index {index} is out of range for {k} classes (0..{k - 1})")
    return index
