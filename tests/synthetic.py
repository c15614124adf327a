"""Labelled image folders for tests: small synthetic ones (each class has its own colour
and shape, with per-image jitter, so pretrained features separate them but not
perfectly), subsets of the real photos in sample_data/, and app directories kept apart
from the user's."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"

_SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "stripes", "dots", "diamond")


def write_class_folder(root: Path, n_classes: int = 6, per_class: int = 10, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for c in range(n_classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(exist_ok=True)
        base = rng.integers(40, 215, size=3)
        for i in range(per_class):
            colour = tuple(int(v) for v in np.clip(base + rng.normal(0, 25, 3), 0, 255))
            image = _draw(_SHAPES[c % len(_SHAPES)], colour, size, rng)
            image.save(folder / f"img_{i:03d}.jpg", quality=90)
    return root


def _draw(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 60, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    jitter = int(rng.integers(-size // 10, size // 10 + 1))
    lo, hi = size // 5 + jitter, size - size // 5 + jitter
    box = (lo, lo, hi, hi)
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=colour)
    elif shape == "cross":
        w = size // 8
        draw.rectangle((lo, size // 2 - w, hi, size // 2 + w), fill=colour)
        draw.rectangle((size // 2 - w, lo, size // 2 + w, hi), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=size // 10)
    elif shape == "stripes":
        for x in range(0, size, size // 6):
            draw.rectangle((x, 0, x + size // 12, size), fill=colour)
    elif shape == "dots":
        for _ in range(8):
            x, y = rng.integers(0, size, 2)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
    else:
        m = size // 2
        draw.polygon([(m, lo), (hi, m), (m, hi), (lo, m)], fill=colour)
    return image


def write_fashion_mnist_folder(root: Path, npz_path: Path, per_class: int = 30, seed: int = 0) -> Path:
    """A class-per-folder PNG copy of a Fashion-MNIST subset (28×28 greyscale)."""
    data = np.load(npz_path)
    images, labels, names = data["x_train"], data["y_train"], [str(n) for n in data["class_names"]]
    rng = np.random.default_rng(seed)
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        chosen = rng.choice(np.flatnonzero(labels == label), size=per_class, replace=False)
        for i in chosen:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    return root


def copy_sample_photos(dest: Path, classes: Sequence[str], per_class: int, *, flat: bool = False) -> Path:
    """The first `per_class` photos (by name) of each of `classes` in sample_data/, copied
    into `dest`: one sub-folder per class, or with `flat` all in `dest` as CLASS_FILE
    (a folder without labels)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in classes:
        photos = sorted((SAMPLE_DATA / name).glob("*.jpg"))[:per_class]
        if len(photos) < per_class:
            raise ValueError(f"sample_data/{name} has {len(photos)} photos, fewer than {per_class}")
        target = dest if flat else dest / name
        target.mkdir(exist_ok=True)
        for path in photos:
            shutil.copy(path, target / (f"{name}_{path.name}" if flat else path.name))
    return dest


@contextlib.contextmanager
def isolated_app_dirs(base: Path) -> Iterator[Path]:
    """The body runs with the app's cache and models directories under `base`
    (RETRIEVAL_APP_CACHE_DIR, RETRIEVAL_APP_MODELS_DIR), restored afterwards."""
    names = {"RETRIEVAL_APP_CACHE_DIR": base / "cache", "RETRIEVAL_APP_MODELS_DIR": base / "models"}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(path) for name, path in names.items()})
    try:
        yield base
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
