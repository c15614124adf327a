"""A folder of class sub-folders → image records.

First-level sub-folders are the classes; images anywhere below one belong to it. Each
image's id is its POSIX path relative to the root: stable across runs and machines, so
caches and the UI can refer to it. Unreadable files are skipped and reported, never fatal."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"})
HOW_TO_LAYOUT = "put images in one sub-folder per class, e.g. root/cats/*.jpg and root/dogs/*.jpg"


@dataclass(frozen=True)
class ImageRecord:
    id: str
    path: Path
    label: int
    class_name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class ScanResult:
    root: Path
    classes: list[str]
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        return np.asarray([r.label for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.class_name for r in self.records)
        return {name: counts[name] for name in self.classes}

    def summary(self) -> str:
        counts = self.class_counts()
        lines = [f"{len(self.records)} images in {len(self.classes)} classes ({self.root})"]
        lines += [f"  {name}: {n}" for name, n in counts.items()]
        if self.skipped:
            lines.append(f"{len(self.skipped)} files skipped:")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def scan_folder(root: str | os.PathLike, *, check_images: bool = True) -> ScanResult:
    """Scan `root`; raise `DatasetError` when it cannot serve as a labelled image set."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; {HOW_TO_LAYOUT}")
    root = root.resolve()
    skipped: list[SkippedFile] = []
    warnings: list[str] = []
    found: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found[entry.name] = _images_below(Path(entry.path), skipped, root)
        elif _is_image_name(entry.name):
            skipped.append(SkippedFile(entry.name, "not inside a class folder"))

    usable: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for class_name, paths in found.items():
        good = []
        for path in paths:
            reason = _unreadable_reason(path) if check_images else None
            if reason:
                skipped.append(SkippedFile(_relative(path, root), reason))
            else:
                good.append((path, path.stat()))
        if good:
            usable[class_name] = good
        else:
            warnings.append(f"class folder '{class_name}' has no usable images and is ignored")
    classes = sorted(usable)
    if not classes:
        raise DatasetError(f"no images found in {root}; {HOW_TO_LAYOUT}")
    if len(classes) < 2:
        raise DatasetError(f"found only one class ('{classes[0]}') in {root}; needs at least two class sub-folders with images ({HOW_TO_LAYOUT})")
    records = [
        ImageRecord(_relative(path, root), path, label, name, st.st_size, st.st_mtime_ns)
        for label, name in enumerate(classes)
        for path, st in usable[name]
    ]
    records.sort(key=lambda r: r.id)
    for name in classes:
        if len(usable[name]) == 1:
            warnings.append(f"class '{name}' has only one image: it cannot be an anchor for training")
    return ScanResult(root, classes, records, skipped, warnings)


def _images_below(folder: Path, skipped: list[SkippedFile], root: Path) -> list[Path]:
    images = []
    seen_dirs: set[tuple[int, int]] = set()
    # followlinks with a visited set: symlinked folders are read once, loops are cut.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if _is_image_name(name):
                if path.is_file():
                    images.append(path)
                else:
                    skipped.append(SkippedFile(_relative(path, root), "broken link or not a regular file"))
    return images


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _unreadable_reason(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            image.verify()  # checks headers and structure without a full decode
    except UnidentifiedImageError:
        return "not a recognised image file"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc) or type(exc).__name__
        return "file is truncated" if "truncat" in text.lower() else f"cannot be decoded: {text}"
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
