"""Build sample_data/ from ../shared/datasets/caltech101_dev: 10 visually distinct classes
× 20 images (the first 20 files of each class in name order), long side ≤ 256 px, JPEG
quality 85. Re-running it reproduces the same files."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageOps

CLASSES = ("Leopards", "bonsai", "butterfly", "cup", "elephant", "grand_piano", "helicopter", "pizza", "sunflower", "watch")
PER_CLASS = 20
MAX_SIDE = 256


def main(source: Path, target: Path) -> None:
    for name in CLASSES:
        out = target / name
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted((source / name).glob("*.jpg"))[:PER_CLASS]:
            image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            image.save(out / path.name, quality=85, optimize=True)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared" / "datasets" / "caltech101_dev"
    main(source, root / "sample_data")
