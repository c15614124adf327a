"""One image, from whatever the user has, to an RGB PIL image.

Phone photos are big: with `max_side`, JPEGs are decoded already downscaled by the
DCT (`Image.draft`), which is ~7× cheaper than a full decode of a 12-MP photo."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]
# Refuse images whose pixel count suggests a decompression bomb (~180 MP).
MAX_PIXELS = 180_000_000
WHITE = (255, 255, 255)


def load_image(source: ImageSource, *, max_side: int | None = None) -> Image.Image:
    """Decode `source` to RGB with EXIF orientation applied; raise `ImageDecodeError`."""
    name = _describe(source)
    try:
        image = source if isinstance(source, Image.Image) else _open(source)
        _check_size(image, name)
        if max_side and image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
            image.draft("RGB" if image.mode != "L" else "L", (max_side, max_side))
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return image
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{name}: {_reason(exc)}") from exc


def _open(source) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageDecodeError("<bytes>: empty data")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise ImageDecodeError(f"{source}: empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF / multi-page TIFF: the first frame
    return image


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"{name}: image too large ({width}×{height} pixels)")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{name}: image has no pixels")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha over white, 16-bit/float scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        image.load()
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "L" and "transparency" in image.info:
        return to_rgb(image.convert("LA"))
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scaled = array / 65535.0
    elif image.mode == "I":
        # 32-bit integer images are almost always 16-bit data widened by PIL.
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        scaled = array / top
    else:  # float: map the observed range to 0..1
        low, high = float(array.min(initial=0)), float(array.max(initial=1))
        scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    grey = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return "<image>"
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return getattr(source, "name", "<stream>")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image file"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large (possible decompression bomb)"
    text = str(exc)
    if "truncated" in text.lower():
        return "file is truncated"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return text or type(exc).__name__


# Truncated images raise instead of being silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
