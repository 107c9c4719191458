"""Image decoding: any file PIL can read, in any mode, to 8-bit RGB, with specific errors for bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from core.errors import TaxaLensError

# PIL's decompression-bomb guard stays on (Image.MAX_IMAGE_PIXELS is left at its default); warnings past the
# soft limit are raised as errors so a bomb is reported, not decoded.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})


class ImageError(TaxaLensError, ValueError):
    """An image file that cannot be used; `reason` is a short machine-readable tag."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


def load_image_rgb(path: str | Path) -> Image.Image:
    """Decode `path` fully and return it as an 8-bit RGB image.

    Modes are converted faithfully: L/LA/P/PA through RGB(A); RGBA and LA composited on white; I;16 and I
    rescaled from their real value range to 0..255; CMYK through its embedded ICC profile when present.
    Raises `ImageError` with reason `missing`, `not_image`, `corrupt`, `truncated` or `decompression_bomb`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "missing", "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, "decompression_bomb", f"refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not_image", "not an image file PIL can identify") from exc
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(path, reason, f"{reason} image data ({exc})") from exc
    except (SyntaxError, ValueError) as exc:  # some PIL plugins raise these on corrupt headers
        raise ImageError(path, "corrupt", f"corrupt image header ({exc})") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (see `load_image_rgb`)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_bit_depth_to_rgb(image)
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's convert("L") clips 16-bit values at 255, turning most microscope frames white; rescale instead.
    array = np.asarray(image, dtype=np.float64)
    lo, hi = float(np.min(array)), float(np.max(array))
    scaled = np.zeros_like(array) if hi <= lo else (array - lo) / (hi - lo) * 255.0
    grey = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        try:
            import io

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            target = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, source, target, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile falls back to the naive conversion below
    return image.convert("RGB")
