"""Shared fixtures. `make_image_folder` writes small labelled image folders into tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pytest
from PIL import Image


def write_image_folder(
    root: Path,
    classes: Mapping[str, int],
    *,
    size: tuple[int, int] = (32, 24),
    ext: str = "jpg",
    seed: int = 0,
) -> Path:
    """`root/<class>/img_NNN.<ext>` for each (class, count): a per-class colour with a
    little per-image noise, so images differ but classes are told apart by colour."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(30, 226, size=3)
        for i in range(count):
            noise = rng.integers(-20, 21, size=(size[1], size[0], 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def make_image_folder(tmp_path) -> Callable[..., Path]:
    """Factory: `make_image_folder({"cats": 3, "dogs": 2}, name="data", size=(w, h),
    ext="jpg", seed=0) -> root` (a folder under tmp_path)."""

    def make(classes: Mapping[str, int], *, name: str = "data", **options) -> Path:
        return write_image_folder(tmp_path / name, classes, **options)

    return make
