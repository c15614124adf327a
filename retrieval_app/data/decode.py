"""One image, from whatever the user has, to an 8-bit RGB PIL image.

Phone photos are big: with `max_side`, JPEGs are decoded already downscaled by the DCT
(`Image.draft`), several times cheaper than a full decode of a 12-MP photo.

`check_image_file` is the cheap integrity test the folder scan runs on every file: it
reads headers and, per format, enough to catch truncated files without decoding pixels."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]

# Pillow's own hard limit (2 × Image.MAX_IMAGE_PIXELS by default); kept here as a
# constant so that a caller raising or disabling Pillow's global limit changes nothing.
MAX_PIXELS = 178_956_970
# Pillow's DecompressionBombWarning threshold (its default MAX_IMAGE_PIXELS): images
# above it are decoded, but the scan reports them, since each costs seconds and GBs.
LARGE_PIXELS = MAX_PIXELS // 2
WHITE = (255, 255, 255)
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Formats whose truncation `Image.open` cannot see and that have no cheap check: the scan
# decodes files of these formats when they are at most this big.
FULL_CHECK_MAX_BYTES = 8 * 1024 * 1024
JPEG_EOI = b"\xff\xd9"
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: multi-picture JPEG (some cameras and phones)


def load_image(source: ImageSource, *, max_side: int | None = None) -> Image.Image:
    """Decode `source` (a path, bytes, a binary file object or a PIL image) to RGB.

    EXIF orientation is applied; greyscale, palette, CMYK, alpha (composited onto white),
    16-bit and float images are converted with their full range scaled to 0..255; of a
    multi-frame file the first frame is used. With `max_side`, the result's long side is
    at most `max_side` (never upscaled). Raises `ImageDecodeError` naming the source and
    a short reason."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, not {max_side}")
    where = describe_source(source)
    try:
        if isinstance(source, Image.Image):
            return _decode_given(source, max_side, where)
        owns_file = not hasattr(source, "read")  # a caller's stream is never closed
        return _decode_opened(_open(source, where), max_side, where, owns_file=owns_file)
    except ImageDecodeError:
        raise
    except Exception as exc:  # any decoder failure is one unreadable image, never a crash
        raise decode_error(where, failure_reason(exc)) from exc


def _decode_given(image: Image.Image, max_side: int | None, where: str) -> Image.Image:
    """A caller's PIL image: used as it is (current frame), never modified in place."""
    _check_pixels(image, where)
    image.load()
    return _fit(to_rgb(_upright(image, in_place=False)), max_side)


def _decode_opened(image: Image.Image, max_side: int | None, where: str, *, owns_file: bool) -> Image.Image:
    result = None
    try:
        _check_pixels(image, where)  # a freshly opened multi-frame file is at its first frame
        if max_side and image.format in JPEG_FORMATS:
            # DCT scaling by 1/2, 1/4 or 1/8 while keeping both sides >= max_side.
            image.draft("RGB", (max_side, max_side))
        bits = _stored_bits(image)  # known only before loading, from the decoder setup
        image.load()
        image = _upright(image, in_place=True)
        result = _fit(to_rgb(image, bits=bits), max_side)
        if owns_file and result is image and image.format != "JPEG":
            # Pillow closes a plain JPEG's file after loading; multi-frame formats (GIF,
            # TIFF, MPO, APNG, ...) keep it open: detach the pixels so it can be closed.
            result = image.copy()
        return result
    finally:
        if owns_file and result is not image:
            image.close()


def _open(source, where: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise decode_error(where, "empty data (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and path.stat().st_size == 0:
            raise decode_error(where, "empty file (0 bytes)")
    return Image.open(source)


def _check_pixels(image: Image.Image, where: str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise decode_error(where, f"image too large ({width}×{height} pixels, limit {MAX_PIXELS // 1_000_000} MP): possible decompression bomb")
    if width == 0 or height == 0:
        raise decode_error(where, "image has no pixels")


def _upright(image: Image.Image, *, in_place: bool) -> Image.Image:
    """Apply the EXIF orientation; an unreadable EXIF block leaves the pixels as stored."""
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost a photo whose pixels are fine
        return image


def _fit(image: Image.Image, max_side: int | None) -> Image.Image:
    width, height = image.size
    if not max_side or max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a cheap integer box reduction first, then an antialiased bilinear step.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def to_rgb(image: Image.Image, *, bits: int | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: transparency composited onto white, 16-bit and
    float data scaled from their full range (not clipped).

    `bits`: the stored bit depth of a mode-I image when known (Pillow widens 16-bit
    PNG/PGM data to I); otherwise it is guessed from the largest value."""
    mode = image.mode
    if mode in HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image, bits)
    if mode in ("P", "L", "RGB") and "transparency" in image.info:
        return _over_white(image.convert("RGBA"))
    if mode in ALPHA_MODES:
        return _over_white(image.convert("RGBA"))
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _stored_bits(image: Image.Image) -> int | None:
    """Bit depth of the data behind a mode-I image, read from its decoder set-up."""
    if image.mode != "I" or len(image.tile) != 1:
        return None
    codec, args = image.tile[0][0], image.tile[0][3]
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    if codec in ("ppm", "ppm_plain") or str(rawmode).startswith("I;16"):
        return 16  # Pillow scales any PGM maxval above 255 to 0..65535
    return None


def _high_depth_to_rgb(image: Image.Image, bits: int | None) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    scaled = values / (2.0**bits - 1.0) if bits else _unit_range(values, image.mode)
    grey = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _unit_range(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float pixel values to 0..1."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith("I;16"):
        return values / 65535.0
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if mode == "I" and low >= 0:
        # Depth unknown: the smallest of 8 or 16 bits the values fit in, else their range.
        for top in (255.0, 65535.0):
            if high <= top:
                return values / top
    if mode == "F" and low >= 0 and high <= 1.0:
        return values  # float data already in 0..1
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def check_image_file(path: str | os.PathLike) -> tuple[int, int]:
    """Cheaply check that `path` holds a readable image and return its (width, height);
    raise `ImageDecodeError` if it is not readable.

    Headers are parsed for every format; a JPEG must contain its end-of-image marker, a
    PNG must pass `verify()` (chunk checksums up to IEND); other formats are decoded when
    the file is small (they have no cheap integrity check). Pixels of JPEGs and PNGs are
    never decoded, so a whole folder of photos is checked at disk speed."""
    path = Path(path)
    where = str(path)
    try:
        if path.stat().st_size == 0:
            raise decode_error(where, "empty file (0 bytes)")
        with Image.open(path) as image:
            _check_pixels(image, where)
            if image.format in JPEG_FORMATS:
                if not _jpeg_is_complete(path):
                    raise decode_error(where, "file is truncated")
            elif image.format == "PNG":
                image.verify()
            elif path.stat().st_size <= FULL_CHECK_MAX_BYTES:
                image.load()
            return image.size
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise decode_error(where, failure_reason(exc)) from exc


def _jpeg_is_complete(path: Path) -> bool:
    """True when the JPEG's main image has its end-of-image marker."""
    with open(path, "rb") as file:
        file.seek(-2, os.SEEK_END)
        if file.read(2) == JPEG_EOI:
            # Entropy-coded data escapes every 0xFF, so a file ending in FF D9 ends with a marker.
            return True
        file.seek(0)
        data = file.read()
    # Data after the end marker (padding, maker notes, a motion photo's video): look for
    # the marker after the main image's first scan, past any embedded EXIF thumbnail.
    scan_start = _first_scan_offset(data)
    return scan_start is not None and data.find(JPEG_EOI, scan_start) >= 0


def _first_scan_offset(data: bytes) -> int | None:
    """Offset of the entropy-coded data after the first top-level SOS marker."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    return None


def decode_error(where: str, reason: str) -> ImageDecodeError:
    """An `ImageDecodeError` reading "<where>: <reason>", with `.source` and `.reason` set
    (attributes survive pickling, so worker processes can report them)."""
    error = ImageDecodeError(f"{where}: {reason}")
    error.source = where
    error.reason = reason
    return error


def describe_source(source) -> str:
    """A short name for an image source, for messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<{source.format or 'in-memory'} image>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<image bytes>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else "<image stream>"


def failure_reason(exc: BaseException) -> str:
    """A short, user-readable reason for a decoding failure."""
    text = str(exc)
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large (limit {MAX_PIXELS // 1_000_000} MP): possible decompression bomb"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image file (not an image, or an unsupported format)"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "file is truncated"
    if isinstance(exc, (ValueError, KeyError)) and ("mode" in text or "conversion" in text):
        return f"unsupported image kind ({text})"
    short = text if len(text) <= 160 else text[:157] + "..."
    return f"cannot be decoded ({type(exc).__name__}: {short})" if short else f"cannot be decoded ({type(exc).__name__})"
