"""Grad-CAM: every method on every supported timm family, target layers, hooks released, rendering, bad input."""

from __future__ import annotations

import functools
import gc

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pytorch_grad_cam.base_cam import BaseCAM
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from core.images import load_image_rgb
from models._cam_layers import TokenGridReshape, nhwc_to_nchw
from models.cam import (
    CAM_METHODS,
    CamError,
    compute_cams,
    explain_images,
    find_cam_layer,
    get_cam_method,
    model_family,
    model_view_images,
    preprocess_images,
    render_overlay,
    resolve_class_index,
)
from models.checkpoints import ModelCard

torch.set_num_threads(1)

# (family, timm arch, create_model kwargs, input side, expected automatic layer, expected layout): small random-init
# variants at small inputs, where the family's pooled map is below 7x7, so the automatic layer is the deepest earlier
# stage whose map reaches 7x7 (ViT-style models keep one patch grid: their finest, with a note).
FAMILIES = {
    "resnet": ("test_resnet", {}, 64, "layer2", "nchw"),
    "resnext": ("resnext50_32x4d", {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 64), "stem_width": 16,
                                    "cardinality": 4}, 64, "layer2", "nchw"),
    "byobnet": ("test_byobnet", {}, 64, "stages.1", "nchw"),
    "convnext": ("test_convnext", {}, 64, "stages.1", "nchw"),
    "efficientnet": ("test_efficientnet", {}, 64, "blocks.2", "nchw"),
    "mobilenet": ("mobilenetv3_small_050", {}, 64, "blocks.1", "nchw"),
    "regnet": ("regnetx_002", {}, 48, "s1", "nchw"),
    "vit": ("test_vit", {"img_size": 64}, 64, "blocks.5.norm1", "tokens"),
    "deit": ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 2}, 32, "blocks.1.norm1", "tokens"),
    "eva": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28, "blocks.1.norm1", "tokens"),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 64, "window_size": 2, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
             64, "layers.1", "nhwc"),
}
# The family rule's own layer (what global pooling reads), taken when its map is at least 7x7.
POOLED_LAYERS = {"resnet": "layer4", "resnext": "layer4", "byobnet": "final_conv", "convnext": "stages.3",
                 "efficientnet": "bn2", "mobilenet": "blocks", "regnet": "final_conv", "swin": "norm"}


@functools.cache
def _model(family: str) -> nn.Module:
    arch, kwargs, _, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=5, **kwargs).eval()


def _images(n: int, side: int, seed: int = 0, width: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, width or side, generator=generator)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _live_cams() -> int:
    gc.collect()
    return sum(issubclass(type(obj), BaseCAM) for obj in gc.get_objects())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_gets_its_layer(family):
    _, _, side, layer, layout = FAMILIES[family]
    cam_layer = find_cam_layer(_model(family), input_size=(3, side, side))
    assert (cam_layer.name, cam_layer.layout) == (layer, layout)
    expected_prefix = {"deit": 2, "vit": 1, "eva": 1}.get(family, 0)
    assert cam_layer.num_prefix_tokens == expected_prefix


@pytest.mark.parametrize("family", list(POOLED_LAYERS))
def test_the_pooled_map_is_kept_where_it_is_at_least_7x7(family):
    arch, kwargs, side, _, layout = FAMILIES[family]
    big = 32 * 8 if family != "regnet" else 32 * 7  # the last stage's map is 8x8 (regnet: 7x7)
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5,
                              **({**kwargs, "img_size": big} if "img_size" in kwargs else kwargs)).eval()
    cam_layer = find_cam_layer(model, input_size=(3, big, big))
    assert (cam_layer.name, cam_layer.layout) == (POOLED_LAYERS[family], layout)
    assert min(cam_layer.grid) >= 7 and not cam_layer.note


# Real architectures at their default input sizes (random init, nothing downloaded): the automatic map is >= 7x7.
DEFAULT_SIZE_ARCHS = {"resnet18": ("layer4", (7, 7)), "convnext_atto": ("stages.3", (7, 7)),
                      "efficientnet_b0": ("bn2", (7, 7)), "vit_tiny_patch16_224": ("blocks.11.norm1", (14, 14))}


@pytest.mark.parametrize("arch", list(DEFAULT_SIZE_ARCHS))
def test_default_map_is_at_least_7x7_at_the_default_input_size(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5).eval()
    input_size = tuple(model.pretrained_cfg["input_size"])
    cam_layer = find_cam_layer(model, input_size=input_size)
    assert (cam_layer.name, cam_layer.grid) == DEFAULT_SIZE_ARCHS[arch] and not cam_layer.note
    result = compute_cams(model, _images(1, input_size[1]))
    assert result.grid == cam_layer.grid and min(result.grid) >= 7


def test_a_model_without_a_7x7_map_gets_its_finest_and_says_so():
    model = _model("resnet")
    cam_layer = find_cam_layer(model, input_size=(3, 16, 16))  # layer1 4x4 is the finest stage at 16 px
    assert (cam_layer.name, cam_layer.grid) == ("layer1", (4, 4))
    assert "finest" in cam_layer.note and "'layer1' (4x4)" in cam_layer.note
    assert compute_cams(model, _images(1, 16)).note == cam_layer.note


@pytest.mark.parametrize("method", list(CAM_METHODS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_on_every_family_gives_finite_maps_of_input_size(family, method):
    _, _, side, _, _ = FAMILIES[family]
    model = _model(family)
    n = 1 if CAM_METHODS[method].slow else 2
    result = compute_cams(model, _images(n, side), [None, 3][:n], method=method)
    assert result.cams.shape == (n, side, side)
    assert result.cams.dtype == np.float32
    expected_grid = {"regnet": (12, 12), "deit": (2, 2), "eva": (2, 2), "vit": (4, 4)}.get(family, (8, 8))
    assert result.grid == expected_grid
    assert bool(result.note) == (family in ("deit", "eva", "vit"))  # below 7x7 only where no stage is finer
    assert np.isfinite(result.cams).all()
    assert result.cams.min() >= 0.0 and result.cams.max() <= 1.0
    assert result.pred_probs.shape == (n, 5)
    assert result.class_indices[0] == result.pred_probs[0].argmax()  # None -> the predicted class
    if n == 2:
        assert result.class_indices[1] == 3


@pytest.mark.parametrize("family", ["resnet", "vit", "swin"])
def test_non_square_input_keeps_height_and_width(family):
    arch, kwargs, _, _, _ = FAMILIES[family]
    kwargs = {**kwargs, "img_size": (32, 64)} if "img_size" in kwargs else kwargs
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5, **kwargs).eval()
    result = compute_cams(model, _images(2, 32, width=64))
    assert result.cams.shape == (2, 32, 64)
    assert np.isfinite(result.cams).all()


def test_token_grid_reshape_drops_prefix_tokens_and_keeps_row_major_order():
    # Tokens: 2 prefix tokens, then a 2x3 grid whose channel 0 holds 10*row + col.
    grid = [[10 * r + c for c in range(3)] for r in range(2)]
    tokens = torch.tensor([-1.0, -2.0] + [v for row in grid for v in row]).view(1, 8, 1).repeat(1, 1, 4)
    folded = TokenGridReshape(2, (2, 3))(tokens)
    assert folded.shape == (1, 4, 2, 3)
    np.testing.assert_array_equal(folded[0, 0].numpy(), np.array(grid, dtype=np.float32))
    with pytest.raises(CamError, match="8 tokens but 1 prefix tokens plus a 2x3"):
        TokenGridReshape(1, (2, 3))(tokens)
    nhwc = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    np.testing.assert_array_equal(nhwc_to_nchw(nhwc)[0, :, 1, 2].numpy(), nhwc[0, 1, 2].numpy())


def test_hooks_and_cam_objects_are_released_over_50_calls():
    model = _model("resnet")
    flags = [p.requires_grad for p in model.parameters()]
    hooks_before, cams_before = _hook_count(model), _live_cams()
    images = _images(2, 64)
    methods = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "finercam"]
    for i in range(50):
        compute_cams(model, images, method=methods[i % len(methods)])
        assert _hook_count(model) == hooks_before
    assert _live_cams() == cams_before
    assert [p.requires_grad for p in model.parameters()] == flags  # parameters unfrozen again
    assert all(p.grad is None for p in model.parameters())  # no gradient memory left behind


def test_hooks_released_when_the_computation_fails():
    model = _model("resnet")
    hooks_before = _hook_count(model)
    with pytest.raises(CamError, match="out of range"):
        compute_cams(model, _images(2, 64), [0, 9])
    assert _hook_count(model) == hooks_before
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_works_under_inference_mode_and_no_grad(mode):
    model = _model("resnet")
    images = _images(2, 64)
    expected = compute_cams(model, images, [1, 2]).cams
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        inside = _images(2, 64)  # an inference tensor when created under inference_mode
        got = compute_cams(model, inside, [1, 2]).cams
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batching_does_not_change_the_maps():
    model = _model("convnext")
    images = _images(5, 64, seed=3)
    whole = compute_cams(model, images, [0, 1, 2, 3, 4], batch_size=5)
    pieces = compute_cams(model, images, [0, 1, 2, 3, 4], batch_size=2)
    np.testing.assert_allclose(pieces.cams, whole.cams, atol=1e-5)
    np.testing.assert_array_equal(pieces.class_indices, whole.class_indices)
    single = compute_cams(model, images[3:4], [3])
    np.testing.assert_allclose(single.cams[0], whole.cams[3], atol=1e-5)


def test_class_specific_methods_depend_on_the_class_and_eigencam_does_not():
    model = _model("resnet")
    image = _images(1, 64, seed=7).repeat(2, 1, 1, 1)
    gradcam = compute_cams(model, image, [0, 4], method="gradcam").cams
    assert np.abs(gradcam[0] - gradcam[1]).max() > 0.05
    eigen = compute_cams(model, image, [0, 4], method="eigencam").cams
    np.testing.assert_allclose(eigen[0], eigen[1], atol=1e-6)
    assert not CAM_METHODS["eigencam"].class_specific and CAM_METHODS["gradcam"].class_specific


def test_finercam_on_two_classes_and_against_plain_gradcam():
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    result = compute_cams(model, _images(2, 64), [0, 1], method="finercam")
    assert np.isfinite(result.cams).all() and result.cams.shape == (2, 64, 64)
    # With one comparison class the target is (logit_c - logit_other): its map differs from Grad-CAM of logit_c.
    gradcam = compute_cams(model, _images(2, 64), [0, 1], method="gradcam")
    assert np.abs(result.cams - gradcam.cams).max() > 1e-3


def test_only_scorecam_is_flagged_slow():
    assert [m.name for m in CAM_METHODS.values() if m.slow] == ["scorecam"]
    assert "slow" in CAM_METHODS["scorecam"].note


def test_method_names_are_forgiving_and_unknown_names_list_the_choices():
    assert get_cam_method("GradCAM++").name == "gradcam++"
    assert get_cam_method("grad-cam").name == "gradcam"
    assert get_cam_method("Finer-CAM").name == "finercam"
    with pytest.raises(CamError, match="choose one of.*gradcam"):
        get_cam_method("saliency")


def test_layer_override_by_name():
    vit = _model("vit")
    result = compute_cams(vit, _images(1, 64), layer="blocks.2.norm1")
    assert result.layer == "blocks.2.norm1" and result.cams.shape == (1, 64, 64)
    swin_layer = find_cam_layer(_model("swin"), layer="layers.2", input_size=(3, 64, 64))
    assert swin_layer.layout == "nhwc"
    assert compute_cams(_model("swin"), _images(1, 64), layer="layers.2").cams.shape == (1, 64, 64)
    resnet = compute_cams(_model("resnet"), _images(1, 64), layer="layer3")
    assert resnet.layer == "layer3"


def test_unknown_or_flat_layer_names_the_usable_ones():
    model = _model("resnet")
    with pytest.raises(CamError, match=r"no module named 'layer9'.*layer4"):
        find_cam_layer(model, layer="layer9", input_size=(3, 64, 64))
    with pytest.raises(CamError, match=r"'fc' outputs shape \(1, 5\).*no spatial grid.*layer4"):
        find_cam_layer(model, layer="fc", input_size=(3, 64, 64))


def test_architecture_without_automatic_layer_lists_candidates_that_work():
    torch.manual_seed(0)
    mixer = MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=16, num_classes=3).eval()
    with pytest.raises(CamError, match="pass `layer=`") as info:
        find_cam_layer(mixer, input_size=(3, 32, 32))
    assert "blocks.1.norm1" in str(info.value)
    result = compute_cams(mixer, _images(2, 32), layer="blocks.1.norm1")  # a named candidate works
    assert result.cams.shape == (2, 32, 32) and np.isfinite(result.cams).all()


def test_model_that_flattens_its_input_gets_a_clear_error():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(CamError, match="flattens its input early"):
        compute_cams(flat, _images(1, 8))


def test_unknown_timm_family_falls_back_to_the_features_layer():
    torch.manual_seed(0)
    model = timm.create_model("test_mambaout", pretrained=False, num_classes=3).eval()  # NHWC conv net, no rule
    assert model_family(model) is None
    layer = find_cam_layer(model, input_size=(3, 64, 64))
    assert (layer.family, layer.layout) == ("generic", "nhwc")
    assert compute_cams(model, _images(1, 64)).cams.shape == (1, 64, 64)


def test_torchscript_model_is_refused_with_the_fix():
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(CamError, match="TorchScript"):
        compute_cams(scripted, _images(1, 16))


def test_bad_arguments():
    model = _model("resnet")
    with pytest.raises(CamError, match="2 class indices for 3 images"):
        compute_cams(model, _images(3, 64), [0, 1])
    with pytest.raises(CamError, match=r"\(B, C, H, W\)"):
        compute_cams(model, torch.zeros(3, 64, 64))
    empty = compute_cams(model, _images(0, 64))
    assert empty.cams.shape == (0, 64, 64)


def test_render_overlay_blends_with_opacity():
    image = np.full((6, 8, 3), 200, dtype=np.uint8)
    cam = np.zeros((3, 4), dtype=np.float32)
    cam[0, 0] = 1.0
    np.testing.assert_array_equal(render_overlay(image, cam, opacity=0.0), image)
    heat = render_overlay(image, cam, opacity=1.0)
    assert heat.shape == (6, 8, 3) and heat.dtype == np.uint8
    assert tuple(heat[-1, -1]) == (0, 0, 128)  # jet at 0: dark blue
    assert heat[0, 0, 0] > 100 and heat[0, 0, 2] < 50  # jet near 1: red (cam resized bilinearly to 6x8)
    half = render_overlay(image, cam, opacity=0.5).astype(int)
    np.testing.assert_allclose(half[-1, -1], [100, 100, 164], atol=1)
    with pytest.raises(ValueError, match="opacity"):
        render_overlay(image, cam, opacity=1.5)
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(image.astype(np.float32), cam)
    with pytest.raises(ValueError, match="colormap"):
        render_overlay(image, cam, colormap="rainbow-ish")
    big = render_overlay(image, (cam * 255).astype(np.uint8), opacity=1.0, display_size=16)
    assert big.shape == (12, 16, 3)  # longer side 16, aspect kept
    assert tuple(big[-1, -1]) == (0, 0, 128) and big[0, 0, 0] > 100  # uint8 maps read as /255


def test_resolve_class_index():
    names = ("Neutrophil", "Eosinophil", "Lymphocyte")
    assert resolve_class_index("pred", class_names=names, pred_idx=2, label_idx=0) == 2
    assert resolve_class_index("true", class_names=names, pred_idx=2, label_idx=0) == 0
    assert resolve_class_index("Lymphocyte", class_names=names) == 2
    assert resolve_class_index("1", class_names=names) == 1
    assert resolve_class_index(0, class_names=names) == 0
    with pytest.raises(CamError, match="label is one of the model's classes"):
        resolve_class_index("true", class_names=names, pred_idx=1, label_idx=-1)
    with pytest.raises(CamError, match="out of range for 3 classes"):
        resolve_class_index("7", class_names=names)
    with pytest.raises(CamError, match="unknown target 'Basophil'"):
        resolve_class_index("Basophil", class_names=names)


def _card(side: int, crop_pct: float = 1.0) -> ModelCard:
    return ModelCard(arch="test_resnet", class_names=("a", "b", "c", "d", "e"), input_size=(3, side, side),
                     mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear", crop_pct=crop_pct)


def test_preprocess_and_model_view_round_trip():
    card = _card(32)
    image = Image.new("RGB", (50, 40), (10, 120, 250))
    tensor = preprocess_images([image], card)
    assert tensor.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(tensor[0, :, 5, 5].numpy(), [(10 / 255 - 0.5) / 0.2, (120 / 255 - 0.4) / 0.25,
                                                           (250 / 255 - 0.3) / 0.3], atol=1e-3)
    view = model_view_images(tensor, card)
    assert view.dtype == np.uint8 and view.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(view[0, 16, 16], [10, 120, 250], atol=1)


def test_explain_real_images(bccd_root):
    paths = sorted(bccd_root.rglob("*.jp*g"))[:3] or sorted(p for p in bccd_root.rglob("*") if p.is_file())[:3]
    images = [load_image_rgb(p) for p in paths]
    card = _card(64, crop_pct=0.875)
    explanation = explain_images(_model("resnet"), card, images, [None, 1, 2], method="gradcam++")
    assert explanation.views.shape == (3, 64, 64, 3)
    assert explanation.result.cams.shape == (3, 64, 64)
    assert list(explanation.result.class_indices[1:]) == [1, 2]
    overlay = render_overlay(explanation.views[0], explanation.result.cams[0], opacity=0.4)
    assert overlay.shape == (64, 64, 3)
    assert not np.array_equal(overlay, explanation.views[0])


def test_demo_checkpoint_default_map_resolves_the_organism(demo_workspace_readonly):
    from core.workspace import load_workspace
    from models.checkpoints import load_checkpoint

    workspace = load_workspace(demo_workspace_readonly)
    model, card = load_checkpoint(workspace.checkpoints[0].path, device="cpu")
    cam_layer = find_cam_layer(model, input_size=tuple(card.input_size))
    assert min(cam_layer.grid) >= 7 and not cam_layer.note, (cam_layer.name, cam_layer.grid, card.input_size)
    path = workspace.load_dataset().samples["path"].iloc[0]
    result = explain_images(model, card, [load_image_rgb(path)], [None]).result
    assert result.grid == cam_layer.grid and result.layer == cam_layer.name
