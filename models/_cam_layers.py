"""Which layer Grad-CAM hooks for each timm family, and how that layer's output becomes a (B, C, H, W) map."""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from core.errors import TaxaLensError
from models.checkpoints import model_device

MIN_CAM_GRID = 7  # the automatic layer is the deepest whose map is at least this many cells high and wide


class CamError(TaxaLensError, ValueError):
    """A Grad-CAM request that cannot be served as asked; the message names the values and the fix."""


@dataclass(frozen=True)
class CamLayer:
    """The module whose activations and gradients a CAM reads."""

    name: str  # dotted module path inside the model ("layer4", "blocks.11.norm1")
    module: nn.Module  # the module itself (hooks go here)
    layout: str  # "nchw" (CNN map), "nhwc" (Swin map) or "tokens" (B, prefix + gh*gw, C) of a ViT
    family: str  # the rule that chose it: "resnet", "vit", ...; "override" when named by the user; "generic"
    num_prefix_tokens: int = 0  # class/distillation/register tokens before the patch grid ("tokens" only)
    grid: tuple[int, int] = (0, 0)  # height, width of its map at the probed input size ((0, 0): not probed)
    note: str = ""  # said to the user when the automatic choice is coarser than MIN_CAM_GRID (the model's finest)


def _timm_classes(module_name: str, *class_names: str) -> tuple[type, ...]:
    import importlib

    try:
        module = importlib.import_module(f"timm.models.{module_name}")
    except ImportError:  # a timm without this family: the rule simply never matches
        return ()
    return tuple(getattr(module, name) for name in class_names if hasattr(module, name))


def _last_child_name(model: nn.Module, attr: str) -> str:
    container = getattr(model, attr)
    return f"{attr}.{len(container) - 1}"


def _children_deepest_first(attr: str, *, skip_last: bool = False) -> Callable[[nn.Module], list[str]]:
    """Stage names `attr.N-1 ... attr.0` of a container (without its last child when that is the rule's layer)."""
    def names(model: nn.Module) -> list[str]:
        container = getattr(model, attr, None)
        if container is None:
            return []
        count = len(container) - (1 if skip_last else 0)
        return [f"{attr}.{i}" for i in range(count - 1, -1, -1)]
    return names


def _no_stages(model: nn.Module) -> list[str]:
    return []


def _vit_layer(model: nn.Module) -> str:
    # The class token reads the patch tokens only through the last block's attention, so the last block's *output*
    # patch tokens get no gradient; its first norm (the attention input) is the standard ViT Grad-CAM layer.
    return f"{_last_child_name(model, 'blocks')}.norm1"


@dataclass(frozen=True)
class _FamilyRule:
    family: str  # name shown in messages and stored in CamLayer.family
    classes: tuple[type, ...]  # timm model classes of the family
    layer: Callable[[nn.Module], str]  # dotted name of the layer to hook
    layout: str  # layout of that layer's output
    # earlier stage outputs, deepest first: where the automatic choice moves when the layer's map is below 7x7
    stages: Callable[[nn.Module], list[str]] = _no_stages


def _family_rules() -> tuple[_FamilyRule, ...]:
    return (
        # ResNet / ResNeXt / SE-ResNet...: the last stage's output, i.e. the map that global pooling reads.
        _FamilyRule("resnet", _timm_classes("resnet", "ResNet"), lambda m: "layer4", "nchw",
                    lambda m: ["layer3", "layer2", "layer1"]),
        # ResNeXt-ts, RepVGG, GERNet... (timm's "bring your own blocks" nets): after the final 1x1 conv.
        _FamilyRule("byobnet", _timm_classes("byobnet", "ByobNet"), lambda m: "final_conv", "nchw",
                    _children_deepest_first("stages")),
        # ConvNeXt: stages are NCHW; the head norm comes after pooling, so the last stage is the pooled map.
        _FamilyRule("convnext", _timm_classes("convnext", "ConvNeXt"), lambda m: _last_child_name(m, "stages"), "nchw",
                    _children_deepest_first("stages", skip_last=True)),
        # EfficientNet: conv_head + bn2 (norm and activation) run before pooling.
        _FamilyRule("efficientnet", _timm_classes("efficientnet", "EfficientNet"), lambda m: "bn2", "nchw",
                    _children_deepest_first("blocks")),
        # MobileNetV3/V4: conv_head runs *after* pooling, so the spatial map is the output of the blocks.
        _FamilyRule("mobilenet", _timm_classes("mobilenetv3", "MobileNetV3"), lambda m: "blocks", "nchw",
                    _children_deepest_first("blocks")),
        # RegNet: s1..s4 then final_conv (an Identity unless linear_out), which is what pooling reads.
        _FamilyRule("regnet", _timm_classes("regnet", "RegNet"), lambda m: "final_conv", "nchw",
                    lambda m: ["s4", "s3", "s2", "s1"]),
        # ViT, DeiT (incl. distilled), EVA/EVA-02: tokens; prefix tokens are dropped by the reshape transform.
        # Every block keeps the same patch grid, so there is no finer stage to fall back to.
        _FamilyRule("vit", _timm_classes("vision_transformer", "VisionTransformer") + _timm_classes("eva", "Eva")
                    + _timm_classes("vision_transformer_relpos", "VisionTransformerRelPos")
                    + _timm_classes("beit", "Beit"), _vit_layer, "tokens"),
        # Swin v1/v2 in timm keep NHWC maps; the final norm's output is what average pooling reads.
        _FamilyRule("swin", _timm_classes("swin_transformer", "SwinTransformer")
                    + _timm_classes("swin_transformer_v2", "SwinTransformerV2"), lambda m: "norm", "nhwc",
                    _children_deepest_first("layers")),
    )


def model_family(model: nn.Module) -> str | None:
    """The Grad-CAM family of a timm model (`"resnet"`, `"vit"`, ...), or `None` when no rule knows it."""
    for rule in _family_rules():
        if rule.classes and isinstance(model, rule.classes):
            return rule.family
    return None


def probe_layer_outputs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Output shape of every named module for one zero image of `input_size` (C, H, W), in execution order.

    Modules returning something other than one tensor (tuples, dicts) are left out. The hooks are removed before
    returning, also when the forward pass fails.
    """
    names = {module: name for name, module in model.named_modules() if name}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def _record(module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and module in names:
            shapes.setdefault(names[module], tuple(output.shape))

    try:
        for module in names:
            handles.append(module.register_forward_hook(_record))
        _run_probe(model, model, input_size)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def spatial_layer_candidates(model: nn.Module, input_size: tuple[int, int, int]) -> list[str]:
    """Names of modules whose output still has a spatial grid (4-D maps, or 3-D token sequences), last first."""
    shapes = probe_layer_outputs(model, input_size)
    nhwc = model_family(model) == "swin"
    modules = dict(model.named_modules())
    candidates = [name for name, shape in shapes.items()
                  if _has_grid(shape, nhwc=nhwc) and not _is_pass_through(modules[name])]
    return candidates[::-1]


def _is_pass_through(module: nn.Module) -> bool:
    # Dropout, identity, drop-path and activation modules repeat their neighbour's map: not worth listing.
    kind = type(module)
    return (kind.__module__.startswith(("torch.nn.modules.dropout", "torch.nn.modules.activation"))
            or kind.__name__ in ("Identity", "DropPath", "DropBlock2d"))


def find_cam_layer(model: nn.Module, *, layer: str | None = None, input_size: tuple[int, int, int]) -> CamLayer:
    """The layer to explain: `layer` (a dotted module name) when given, else the family's rule, else a probe.

    The family's rule names the map global pooling reads; when that map is smaller than `MIN_CAM_GRID` x
    `MIN_CAM_GRID` at `input_size`, the deepest earlier stage whose map reaches it is taken instead (a 2x2 map is
    four blurred quadrants), and when no stage reaches it, the finest map the model has, with a `note` saying so.
    `input_size` (C, H, W) is the model's input, used to probe output shapes.
    Raises `CamError` naming the layers that could be used when `layer` is unknown or has no spatial output, or
    when the architecture has no layer with a spatial map that can be found automatically.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise CamError("Grad-CAM needs module hooks, which TorchScript models do not support; "
                       "export the model as a timm checkpoint (.safetensors or state_dict) and load that")
    family = model_family(model)
    if layer:
        return _override_layer(model, layer, family, input_size)
    if family is not None:
        rule = next(r for r in _family_rules() if r.family == family)
        name = rule.layer(model)
        modules = dict(model.named_modules())
        if name in modules:
            return _auto_family_layer(model, rule, name, modules, tuple(input_size))
    return _generic_layer(model, input_size)


# model -> {(input_size): chosen layer}: the choice needs a forward pass, and compute_cams asks on every batch
_AUTO_CHOICES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], CamLayer]] = weakref.WeakKeyDictionary()


def _auto_family_layer(model: nn.Module, rule: _FamilyRule, name: str, modules: dict[str, nn.Module],
                       input_size: tuple[int, int, int]) -> CamLayer:
    cached = _AUTO_CHOICES.get(model, {}).get(input_size)
    if cached is not None:
        return cached
    candidates = [name] + [n for n in rule.stages(model) if n in modules and n != name]
    shapes = probe_layer_outputs(model, input_size)
    grids = {n: _grid_of(shapes[n], rule.layout, model, input_size) for n in candidates if n in shapes}
    if not grids:  # the rule's layer did not run (an unusual variant): trust the rule as before
        chosen = _make_layer(model, name, modules[name], rule.layout, rule.family)
    else:
        chosen_name, note = _pick_grid(grids, model, input_size)
        chosen = replace(_make_layer(model, chosen_name, modules[chosen_name], rule.layout, rule.family),
                         grid=grids[chosen_name], note=note)
    _AUTO_CHOICES.setdefault(model, {})[input_size] = chosen
    return chosen


def _pick_grid(grids: dict[str, tuple[int, int]], model: nn.Module, input_size: tuple[int, int, int]
               ) -> tuple[str, str]:
    """The first (deepest) layer of `grids` whose map is at least MIN_CAM_GRID on both sides, else the finest."""
    for name, grid in grids.items():
        if min(grid) >= MIN_CAM_GRID:
            return name, ""
    finest = max(grids, key=lambda n: grids[n][0] * grids[n][1])  # max keeps the first (deepest) of equals
    h, w = grids[finest]
    return finest, (f"{type(model).__name__} has no map of at least {MIN_CAM_GRID}x{MIN_CAM_GRID} at a "
                    f"{input_size[1]}x{input_size[2]} input; its finest, {finest!r} ({h}x{w}), is used, so the heat "
                    "map is coarse (a larger input size gives finer maps)")


def _grid_of(shape: tuple[int, ...], layout: str, model: nn.Module, input_size: tuple[int, int, int]
             ) -> tuple[int, int]:
    if layout == "tokens":
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
            return tuple(int(v) for v in patch_embed.dynamic_feat_size(tuple(input_size[1:])))
        if patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
            return tuple(int(v) for v in patch_embed.grid_size)
        side = math.isqrt(max(shape[1] - int(getattr(model, "num_prefix_tokens", 0) or 0), 0))
        return side, side
    if layout == "nhwc":
        return int(shape[1]), int(shape[2])
    return int(shape[2]), int(shape[3])


def _override_layer(model: nn.Module, name: str, family: str | None, input_size: tuple[int, int, int]) -> CamLayer:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
        hint = f"closest names: {close}" if close else f"layers with a spatial output: {_short(model, input_size)}"
        raise CamError(f"the model ({type(model).__name__}) has no module named {name!r}; {hint}")
    shape = probe_layer_outputs(model, input_size).get(name)
    if shape is None:
        raise CamError(f"layer {name!r} did not return a single tensor for a {input_size} input (it is not run, or "
                       f"returns a tuple); layers with a spatial output: {_short(model, input_size)}")
    if not _has_grid(shape, nhwc=family == "swin"):
        raise CamError(f"layer {name!r} outputs shape {shape}, which has no spatial grid to map back onto the "
                       f"image; pick one of: {_short(model, input_size)}")
    if len(shape) == 3:
        layout = "tokens"
    elif family == "swin" and not isinstance(modules[name], nn.Conv2d | nn.BatchNorm2d):
        layout = "nhwc"  # every Swin module past the patch projection works on (B, H, W, C)
    else:
        layout = "nchw"
    return _make_layer(model, name, modules[name], layout, "override")


def _generic_layer(model: nn.Module, input_size: tuple[int, int, int]) -> CamLayer:
    """No family rule: hook the module whose output `forward_features` returns (timm models), when it is a map."""
    name, shape = _features_module(model, input_size)
    num_features = int(getattr(model, "num_features", 0) or 0)
    if name is not None and len(shape) == 4:
        nhwc = shape[3] == num_features and shape[1] != num_features  # NHWC nets (MambaOut, ...) end channels-last
        if _has_grid(shape, nhwc=nhwc):
            return _make_layer(model, name, dict(model.named_modules())[name], "nhwc" if nhwc else "nchw", "generic")
    if name is None and not hasattr(model, "forward_features"):
        # Not a timm model: the last (B, C, H, W) map in execution order is what a pooling head reads.
        shapes = probe_layer_outputs(model, input_size)
        maps = [n for n, s in shapes.items() if len(s) == 4 and s[2] * s[3] > 1]
        if maps:
            return _make_layer(model, maps[-1], dict(model.named_modules())[maps[-1]], "nchw", "generic")
    candidates = spatial_layer_candidates(model, input_size)[:12]
    raise CamError(f"no Grad-CAM layer can be picked automatically for {type(model).__name__} at input size "
                   f"{input_size} (it has no rule for its family and its features are not a (B, C, H, W) map); pass "
                   f"`layer=` (CLI --layer) with one of the layers that keep a spatial grid, last first: "
                   f"{candidates or 'none (the model flattens its input early, so Grad-CAM cannot explain it)'}")


def _features_module(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[str | None, tuple[int, ...]]:
    """The last module whose output tensor is what `model.forward_features` returns, and that output's shape."""
    if not hasattr(model, "forward_features"):
        return None, ()
    names = {module: name for name, module in model.named_modules() if name}
    outputs: list[tuple[str, torch.Tensor]] = []
    handles = []
    try:
        for module in names:
            handles.append(module.register_forward_hook(
                lambda m, _i, out: outputs.append((names[m], out)) if isinstance(out, torch.Tensor) else None))
        features = _run_probe(model, model.forward_features, input_size)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(features, torch.Tensor):
        return None, ()
    for name, output in reversed(outputs):
        if output is features:
            return name, tuple(features.shape)
    return None, tuple(features.shape)


def _run_probe(model: nn.Module, forward: Callable, input_size: tuple[int, int, int]) -> object:
    try:
        with torch.no_grad():
            return forward(torch.zeros((1, *input_size), device=model_device(model)))
    except RuntimeError as exc:
        message = (f"{type(model).__name__} could not run on an input of size {tuple(input_size)} while looking for "
                   f"its Grad-CAM layer ({exc}); preprocess images with the checkpoint's own input size")
        raise CamError(message) from exc


def _make_layer(model: nn.Module, name: str, module: nn.Module, layout: str, family: str) -> CamLayer:
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0) if layout == "tokens" else 0
    return CamLayer(name=name, module=module, layout=layout, family=family, num_prefix_tokens=prefix)


def _has_grid(shape: tuple[int, ...], *, nhwc: bool = False) -> bool:
    if len(shape) == 4:
        return (shape[1] * shape[2] if nhwc else shape[2] * shape[3]) > 1
    return len(shape) == 3 and shape[1] > 1


def _short(model: nn.Module, input_size: tuple[int, int, int]) -> list[str]:
    return spatial_layer_candidates(model, input_size)[:12]


class TokenGridReshape:
    """Reshape transform for ViT-style tokens: drop the prefix tokens, fold the rest to (B, C, gh, gw)."""

    def __init__(self, num_prefix_tokens: int, grid_size: tuple[int, int]) -> None:
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = tensor.shape
        gh, gw = self.grid_size
        if tokens - self.num_prefix_tokens != gh * gw:
            raise CamError(f"token layer has {tokens} tokens but {self.num_prefix_tokens} prefix tokens plus a "
                           f"{gh}x{gw} patch grid were expected; pick another layer (e.g. blocks.N.norm1)")
        grid = tensor[:, self.num_prefix_tokens:, :].reshape(batch, gh, gw, channels)
        return grid.permute(0, 3, 1, 2)


def nhwc_to_nchw(tensor: torch.Tensor) -> torch.Tensor:
    """Reshape transform for Swin maps: (B, H, W, C) to (B, C, H, W)."""
    return tensor.permute(0, 3, 1, 2)


def reshape_transform_for(model: nn.Module, cam_layer: CamLayer, image_hw: tuple[int, int]) -> Callable | None:
    """The grad-cam `reshape_transform` for `cam_layer` at input height/width `image_hw` (None for NCHW maps)."""
    if cam_layer.layout == "nhwc":
        return nhwc_to_nchw
    if cam_layer.layout == "tokens":
        return TokenGridReshape(cam_layer.num_prefix_tokens, _patch_grid(model, cam_layer, image_hw))
    return None


def _patch_grid(model: nn.Module, cam_layer: CamLayer, image_hw: tuple[int, int]) -> tuple[int, int]:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        return tuple(int(v) for v in patch_embed.dynamic_feat_size(tuple(image_hw)))
    if patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
        return tuple(int(v) for v in patch_embed.grid_size)
    # A token model of unknown make: assume a square grid of what is left after the prefix tokens.
    shape = probe_layer_outputs(model, (3, *image_hw)).get(cam_layer.name)
    patches = (shape[1] if shape else 0) - cam_layer.num_prefix_tokens
    side = math.isqrt(max(patches, 0))
    if side * side != patches or side == 0:
        raise CamError(f"cannot infer the patch grid of layer {cam_layer.name!r} ({patches} patch tokens is not a "
                       f"square); pick a layer with a (B, C, H, W) output")
    return side, side
