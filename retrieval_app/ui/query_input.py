"""A query image as uploaded: checked and decoded by the app's own decoder.

The query component hands over the raw uploaded file (its event has `preprocess=False`):
Gradio's own image preprocessing would open it with PIL, convert and re-save non-RGB
images (seconds for a 100-MP one-bit PNG, and a content-named file that a concurrent
identical upload could read half-written), and report a broken file as a Gradio error.
Here the file's size and pixel count are checked before decoding, far below the folder
scan's limits, and the image is decoded straight to the network's working size."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from ..data.decode import decode_error, failure_reason, load_image
from ..errors import ImageDecodeError, RetrievalAppError

QUERY_MAX_BYTES = 50 * 1024**2  # one query file
QUERY_MAX_PIXELS = 40_000_000  # e.g. 7700 × 5200; folder images may have up to 178 MP


def uploaded_path(payload) -> tuple[str, str]:
    """(file path on the server, name to show) of an uploaded file as the query event
    receives it without preprocessing (a dict with `path` and `orig_name`), or of a
    plain path (Python callers)."""
    if isinstance(payload, dict):
        path = payload.get("path")
        if not path:
            raise RetrievalAppError("the uploaded image did not arrive; please upload it again")
        return str(path), str(payload.get("orig_name") or Path(path).name)
    return str(payload), Path(str(payload)).name


def read_query_image(path: str, name: str, max_side: int | None) -> Image.Image:
    """The query at `path` as RGB, its long side at most `max_side`. Errors name the file
    by `name` (the user's file name, not the server's temporary path)."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise decode_error(name, failure_reason(exc)) from exc
    if size > QUERY_MAX_BYTES:
        raise decode_error(name, f"file too large for a query ({size / 1024**2:.0f} MB, limit {QUERY_MAX_BYTES // 1024**2} MB)")
    _check_query_pixels(path, name)
    try:
        return load_image(path, max_side=max_side)
    except ImageDecodeError as exc:
        raise decode_error(name, getattr(exc, "reason", str(exc))) from exc


def _check_query_pixels(path: str, name: str) -> None:
    """Refuse a query with too many pixels from its header alone (nothing decoded)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:
        return  # not readable as an image: `load_image` says why, in its words
    if width * height > QUERY_MAX_PIXELS:
        raise decode_error(name, f"image too large for a query ({width}×{height} pixels, limit {QUERY_MAX_PIXELS // 1_000_000} MP); please resize it")
