"""Small JPEG thumbnails in the app's cache, so the UI serves nothing from a user's
folder (only the cache) and a phone photo's hover preview costs a few kilobytes."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from .atomic import atomic_write_bytes
from .data.decode import load_image
from .data.scan import ImageRecord
from .errors import ImageDecodeError
from .paths import cache_dir as default_cache_dir

THUMB_SIDE = 192


def thumbnail_path(record: ImageRecord, cache_dir: Path | None = None, side: int = THUMB_SIDE) -> Path:
    # surrogateescape: a file name that is not valid UTF-8 hashes by its original bytes.
    described = f"{record.path}|{record.size}|{record.mtime_ns}|{side}".encode("utf-8", "surrogateescape")
    key = hashlib.sha256(described).hexdigest()[:20]
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "thumbs" / key[:2] / f"{key}.jpg"


def make_thumbnail(source, target: Path, side: int = THUMB_SIDE) -> Path:
    import io

    image = load_image(source, max_side=side * 2)
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return atomic_write_bytes(target, buffer.getvalue())


def ensure_thumbnails(records: Sequence[ImageRecord], *, cache_dir: Path | None = None, side: int = THUMB_SIDE, progress: Callable[[int, int], None] | None = None, workers: int = 2) -> list[Path | None]:
    """Thumbnail paths for `records` (made where missing); None where decoding failed."""
    targets = [thumbnail_path(r, cache_dir, side) for r in records]

    def one(i: int) -> Path | None:
        if targets[i].is_file():
            return targets[i]
        try:
            return make_thumbnail(records[i].path, targets[i], side)
        except (ImageDecodeError, OSError):
            return None

    out: list[Path | None] = [None] * len(records)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, (i, path) in enumerate(zip(range(len(records)), pool.map(one, range(len(records)))), 1):
            out[i] = path
            if progress is not None and (done % 50 == 0 or done == len(records)):
                progress(done, len(records))
    return out
