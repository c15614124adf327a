"""Build sample_data/ from Caltech 101 (the development copy in ../shared/datasets/caltech101_dev).

Selection, deterministic: the 10 visually distinct classes in CLASSES; of each, the first
PER_CLASS files in name order (image_0001.jpg ...). Each image has its EXIF orientation
applied, is converted to RGB, shrunk (Lanczos) so the long side is at most MAX_SIDE px
(never enlarged) and saved as JPEG, quality 85, with the source's file name. Re-running
it reproduces the same bytes.

    python scripts/make_sample_data.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageOps

CLASSES = ("Leopards", "bonsai", "butterfly", "cup", "elephant", "grand_piano", "helicopter", "pizza", "sunflower", "watch")
PER_CLASS = 20
MAX_SIDE = 256
QUALITY = 85
MAX_TOTAL_BYTES = 5 * 1024 * 1024

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = PROJECT.parent / "shared" / "datasets" / "caltech101_dev"


def selected_files(source: Path, class_name: str) -> list[Path]:
    files = sorted((source / class_name).glob("*.jpg"))
    if len(files) < PER_CLASS:
        raise SystemExit(f"{source / class_name} has {len(files)} JPEGs; {PER_CLASS} are needed")
    return files[:PER_CLASS]


def shrink(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # only ever shrinks
    return image


def main(source: Path, target: Path) -> int:
    """Write the sample set; return its size in bytes."""
    total = 0
    for name in CLASSES:
        out = target / name
        out.mkdir(parents=True, exist_ok=True)
        wanted = selected_files(source, name)
        for path in wanted:
            shrink(path).save(out / path.name, quality=QUALITY, optimize=True)
            total += (out / path.name).stat().st_size
        extra = sorted({p.name for p in out.iterdir()} - {p.name for p in wanted})
        if extra:
            print(f"warning: {out} also holds files this script did not write: {', '.join(extra)}", file=sys.stderr)
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"the sample set is {total / 1e6:.1f} MB, over the {MAX_TOTAL_BYTES / 1e6:.1f} MB budget")
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="caltech101_dev folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=PROJECT / "sample_data", help="target folder (default: %(default)s)")
    args = parser.parse_args()
    size = main(args.source, args.out)
    print(f"{len(CLASSES)} classes × {PER_CLASS} images, {size / 1e6:.2f} MB in {args.out}")
