"""A folder of class sub-folders → image records.

First-level sub-folders are the classes; images anywhere below one belong to it. Each
image's id is its POSIX path relative to the root: stable across runs and machines, so
caches and the UI can refer to it. Unreadable files are skipped and reported, never fatal.

Hidden names (starting with "."): a hidden image file is skipped and listed with the
reason "hidden file", a hidden folder is listed once as "hidden folder, not scanned"
(so `.thumbs/` or a macOS `._photo.jpg` never enter a data set unannounced); other
files that are not images by their extension are ignored without a word. An image
larger than Pillow's decompression-bomb warning threshold is used, with a warning.

Symbolic links: linked files are followed; a linked class folder is followed; a linked
folder below a class folder is followed only when it points outside the root (one that
points into the root is scanned where it lives, or is a loop), and every real folder is
walked at most once, so link loops end."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..choices import FOLDER_LAYOUTS
from ..errors import DatasetError, ImageDecodeError
from .decode import LARGE_PIXELS, check_image_file
from .natural import natural_key

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"})
LAYOUT_HINT = "needs at least two class sub-folders with images, e.g. root/cats/*.jpg, root/dogs/*.jpg"
LOOSE_REASON = "not inside a class folder"
LAYOUTS = FOLDER_LAYOUTS
UNLABELLED = -1  # `ImageRecord.label` of an image without a label
UNLABELLED_HINT = "to use its images without labels, open it with --unlabelled (the app: 'no labels')"
HIDDEN_FILE_REASON = "hidden file"
HIDDEN_FOLDER_REASON = "hidden folder, not scanned"
SUMMARY_MAX_LINES = 5  # skipped files and warnings listed in `summary()`; the rest counted
SUMMARY_MAX_CLASSES = 12  # more classes: only the per-class count range


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: `id` is its POSIX path relative to the scanned root, `path` the
    absolute path (`root / id`), `label` the index of `class_name` in the scan's classes
    (`UNLABELLED`, -1, with `class_name` "", for an image without a label)."""

    id: str
    path: Path
    label: int
    class_name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SkippedFile:
    """A file (or folder) left out of the scan: its path relative to the root, and why."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """Classes (names with at least one usable image, in natural order: `natural_key`),
    records sorted by id, and what was skipped or looks wrong."""

    root: Path
    classes: list[str]
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """True when at least one image has a label (a class folder, or a labels CSV)."""
        return bool(self.classes)

    @property
    def n_unlabelled(self) -> int:
        return sum(1 for r in self.records if r.label == UNLABELLED)

    def labels(self) -> np.ndarray:
        """The records' labels as an int64 array, in record order."""
        return np.asarray([r.label for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counts = Counter(r.class_name for r in self.records if r.label != UNLABELLED)
        return {name: counts[name] for name in self.classes}

    def summary(self) -> str:
        """A few lines for the CLI and the UI."""
        counts = self.class_counts()
        if not self.labelled:
            lines = [f"{len(self.records)} images without labels in {self.root}"]
        else:
            unlabelled = f" ({self.n_unlabelled} without a label)" if self.n_unlabelled else ""
            lines = [f"{len(self.records)} images in {len(self.classes)} classes{unlabelled} in {self.root}"]
        if not counts:
            pass
        elif len(counts) <= SUMMARY_MAX_CLASSES:
            lines.append("  " + ", ".join(f"{name} {n}" for name, n in counts.items()))
        else:
            smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
            median = statistics.median(counts.values())
            lines.append(f"  images per class: min {counts[smallest]} ({smallest}), median {median:g}, max {counts[largest]} ({largest})")
        if self.skipped:
            lines.append(f"{len(self.skipped)} files skipped:")
            lines += _capped([f"  {s.path}: {s.reason}" for s in self.skipped], "files")
        lines += _capped([f"warning: {w}" for w in self.warnings], "warnings")
        return "\n".join(lines)


def _capped(lines: list[str], what: str) -> list[str]:
    if len(lines) <= SUMMARY_MAX_LINES:
        return lines
    return lines[:SUMMARY_MAX_LINES] + [f"  ... and {len(lines) - SUMMARY_MAX_LINES} more {what}"]


def scan_folder(root: str | os.PathLike, *, check_images: bool = True, layout: str = "auto") -> ScanResult:
    """Scan `root`: by default its first-level sub-folders are the classes (see the
    module's note for `layout`: "auto", "classes" or "unlabelled").

    With `check_images`, every file is checked cheaply with PIL (`check_image_file`) and
    one that cannot be read is skipped with its reason. Raises `DatasetError` when `root`
    is missing or not a folder, holds no images, or (class layout) fewer than two usable
    classes."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown folder layout '{layout}' (choose from {', '.join(LAYOUTS)})")
    root = _checked_root(root)
    walker = _Walker(root)
    class_folders, loose_images = walker.top_level()
    if layout == "unlabelled" or (layout == "auto" and loose_images and not _any_images(walker, class_folders)):
        return _scan_unlabelled(root, _Walker(root), check_images)
    found = {name: sorted(walker.images_below(folder)) for name, folder in class_folders}
    skipped = [SkippedFile(name, LOOSE_REASON) for name in loose_images] + walker.skipped
    usable, warnings = {}, []
    for name, paths in found.items():
        good = _usable(paths, root, skipped, warnings, check_images)
        if good:
            usable[name] = good
        else:
            what = "no readable images" if paths else "no images"
            warnings.append(f"class folder '{name}' has {what} and is ignored")
    _require_two_classes(root, usable, found, loose_images, skipped)
    classes = sorted(usable, key=natural_key)  # s2 before s10: labels follow this order
    records = sorted(
        (ImageRecord(_relative(path, root), path, label, name, st.st_size, st.st_mtime_ns) for label, name in enumerate(classes) for path, st in usable[name]),
        key=lambda r: r.id,
    )
    warnings += [f"class '{name}' has only one image: it cannot be an anchor for training" for name in classes if len(usable[name]) == 1]
    skipped.sort(key=lambda s: s.path)
    return ScanResult(root, classes, records, skipped, warnings)


def _any_images(walker: "_Walker", folders: list[tuple[str, Path]]) -> bool:
    """Whether any sub-folder holds an image file (stops at the first one found)."""
    probe = _Walker(walker.root)
    return any(next(probe.images_below(folder), None) is not None for _, folder in folders)


def _scan_unlabelled(root: Path, walker: "_Walker", check_images: bool) -> ScanResult:
    """Every image below `root`, without labels: the root itself is walked like a class."""
    walker.visited.discard(_identity(root))  # the walker marks the root as walked already
    paths = sorted(walker.images_below(root))
    skipped, warnings = list(walker.skipped), []
    good = _usable(paths, root, skipped, warnings, check_images)
    if not good:
        if paths:
            example = next(s for s in skipped if s.reason not in (HIDDEN_FILE_REASON, HIDDEN_FOLDER_REASON))
            raise DatasetError(f"none of the {len(paths)} images in {root} could be read (e.g. {example.path}: {example.reason})")
        raise DatasetError(f"no images found in {root} (or in its sub-folders)")
    records = sorted((ImageRecord(_relative(path, root), path, UNLABELLED, "", st.st_size, st.st_mtime_ns) for path, st in good), key=lambda r: r.id)
    skipped.sort(key=lambda s: s.path)
    return ScanResult(root, [], records, skipped, warnings)


def _checked_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"folder {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder; the data set {LAYOUT_HINT}")
    return path.resolve()


def _usable(paths: list[Path], root: Path, skipped: list[SkippedFile], warnings: list[str], check_images: bool) -> list[tuple[Path, os.stat_result]]:
    good = []
    for path in paths:
        try:
            if check_images:
                width, height = check_image_file(path)
                if width * height > LARGE_PIXELS:
                    warnings.append(f"{_relative(path, root)}: very large image ({width}×{height} pixels): decoding it takes seconds and gigabytes")
            good.append((path, path.stat()))
        except ImageDecodeError as exc:
            skipped.append(SkippedFile(_relative(path, root), getattr(exc, "reason", str(exc))))
        except OSError as exc:  # vanished or unreadable between listing and checking
            skipped.append(SkippedFile(_relative(path, root), f"cannot be read ({exc.strerror or exc})"))
    return good


def _require_two_classes(root: Path, usable: dict, found: dict, loose_images: list[str], skipped: list[SkippedFile]) -> None:
    if not usable:
        n_found = sum(len(paths) for paths in found.values())
        if n_found:
            example = next(s for s in skipped if s.reason not in (LOOSE_REASON, HIDDEN_FILE_REASON, HIDDEN_FOLDER_REASON))
            raise DatasetError(f"none of the {n_found} images in {root} could be read (e.g. {example.path}: {example.reason})")
        if loose_images:
            raise DatasetError(f"found {len(loose_images)} images directly in {root} but no class sub-folders; the data set {LAYOUT_HINT}, or {UNLABELLED_HINT}")
        raise DatasetError(f"no images found in {root}; the data set {LAYOUT_HINT}")
    if len(usable) < 2:
        (only,) = usable
        hint = ""
        if any(Path(p).parent != root / only for p, _ in usable[only]):
            hint = f" (if '{only}' holds the class folders, open {root / only} instead)"
        raise DatasetError(f"found only one class ('{only}') in {root}; the data set {LAYOUT_HINT}{hint}; {UNLABELLED_HINT}")


class _Walker:
    """Lists image files below the root, following links without looping."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: list[SkippedFile] = []
        self.visited: set[tuple[int, int]] = {_identity(root)}

    def top_level(self) -> tuple[list[tuple[str, Path]], list[str]]:
        """(class name, folder) pairs and the names of image files lying loose in the root."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise DatasetError(f"cannot read folder {self.root} ({exc.strerror or exc})") from exc
        folders, loose = [], []
        for entry in entries:
            if entry.name.startswith("."):
                self._skip_hidden(entry)
                continue
            if _is_dir(entry):
                folders.append((entry.name, Path(entry.path)))
            elif _is_image_name(entry.name):
                loose.append(entry.name)
        return folders, loose

    def images_below(self, folder: Path) -> Iterator[Path]:
        pending = [folder]
        while pending:
            current = pending.pop()
            entries = self._entries(current)
            for entry in entries:
                if entry.name.startswith("."):
                    self._skip_hidden(entry)
                    continue
                if _is_dir(entry):
                    if not entry.is_symlink() or self._link_leads_outside(entry):
                        pending.append(Path(entry.path))
                elif _is_image_name(entry.name):
                    if _is_file(entry):
                        yield Path(entry.path)
                    else:
                        self.skipped.append(SkippedFile(_relative(Path(entry.path), self.root), "broken link or not a regular file"))

    def _skip_hidden(self, entry: os.DirEntry) -> None:
        """List a hidden image file or folder as skipped; other hidden files are not images."""
        relative = _relative(Path(entry.path), self.root)
        if _is_dir(entry):
            self.skipped.append(SkippedFile(relative + "/", HIDDEN_FOLDER_REASON))
        elif _is_image_name(entry.name):
            self.skipped.append(SkippedFile(relative, HIDDEN_FILE_REASON))

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        """The folder's entries, or none when it was walked already (a loop) or is unreadable."""
        try:
            identity = _identity(folder)
            if identity in self.visited:
                return []
            self.visited.add(identity)
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append(SkippedFile(_relative(folder, self.root) + "/", f"folder cannot be read ({exc.strerror or exc})"))
            return []

    def _link_leads_outside(self, entry: os.DirEntry) -> bool:
        """Follow a folder link below a class only into a tree disjoint from the root's."""
        target = Path(os.path.realpath(entry.path))
        return not (target.is_relative_to(self.root) or self.root.is_relative_to(target))


def _is_dir(entry: os.DirEntry) -> bool:
    """Like `entry.is_dir()`, but a link loop (ELOOP) or an unreadable entry is no folder."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    """Like `entry.is_file()`, but a link loop (ELOOP) or an unreadable entry is no file."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
