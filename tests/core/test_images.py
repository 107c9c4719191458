"""Image decoding: every mode to RGB, and a specific error for each kind of bad file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.images import ImageError, load_image_rgb


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_grey_palette_and_alpha_become_rgb(tmp_path):
    grey = _save(Image.new("L", (8, 6), 100), tmp_path / "grey.png")
    palette = Image.new("P", (8, 6))
    palette.putpalette([255, 0, 0] * 256)
    pal = _save(palette, tmp_path / "pal.png")
    rgba = Image.new("RGBA", (8, 6), (0, 0, 255, 0))  # fully transparent blue: composited on white
    transparent = _save(rgba, tmp_path / "rgba.png")
    assert np.asarray(load_image_rgb(grey))[0, 0].tolist() == [100, 100, 100]
    assert np.asarray(load_image_rgb(pal))[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(load_image_rgb(transparent))[0, 0].tolist() == [255, 255, 255]
    for path in (grey, pal, transparent):
        image = load_image_rgb(path)
        assert image.mode == "RGB" and image.size == (8, 6)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    # A 16-bit microscope frame whose values sit well above 255: a naive convert("L") would make it all white.
    values = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)
    image = Image.new("I;16", (8, 8))
    image.frombytes(values.astype("<u2").tobytes())
    path = _save(image, tmp_path / "deep.png")
    rgb = np.asarray(load_image_rgb(path))
    assert rgb.shape == (8, 8, 3)
    assert rgb.min() == 0 and rgb.max() == 255  # the real range is stretched to 8 bits
    assert rgb[0, 0, 0] < rgb[7, 7, 0]  # and the ordering is kept


def test_cmyk_converts_to_rgb(tmp_path):
    path = _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # pure red in CMYK
    r, g, b = np.asarray(load_image_rgb(path))[0, 0].tolist()
    assert r > 200 and g < 60 and b < 60


def test_bad_files_get_specific_reasons(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    cases = {text: "not_image", truncated: "truncated", tmp_path / "absent.png": "missing"}
    for path, reason in cases.items():
        with pytest.raises(ImageError) as info:
            load_image_rgb(path)
        assert info.value.reason == reason, (path, info.value)
        assert str(path) in str(info.value)


def test_decompression_bomb_is_refused_with_pil_limit_on(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 = 4096 > 2 * 1000: PIL refuses it
    with pytest.raises(ImageError) as info:
        load_image_rgb(path)
    assert info.value.reason == "decompression_bomb"
