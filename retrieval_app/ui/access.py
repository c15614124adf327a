"""What a UI session may read: data roots, logins, uploads. Pure functions, tested
without a browser."""

from __future__ import annotations

import secrets
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..data.scan import IMAGE_EXTENSIONS
from ..errors import RetrievalAppError

MAX_UPLOAD_FILES = 20_000
MAX_UPLOAD_BYTES = 2 * 1024**3


def parse_auth(text: str) -> tuple[str, str]:
    """`user:password` → (user, password); the password may contain colons."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise RetrievalAppError("--auth must look like user:password")
    return user, password


def generate_password() -> str:
    """A random password for share mode when no --auth is given."""
    return secrets.token_urlsafe(12)


@dataclass
class DataRoots:
    """Folders a session may load. `restricted` (share mode) enforces them."""

    roots: list[Path] = field(default_factory=list)
    restricted: bool = False

    @classmethod
    def of(cls, roots: Iterable[str | Path], restricted: bool) -> "DataRoots":
        """Resolved, de-duplicated roots."""
        unique = []
        for root in roots:
            resolved = Path(root).expanduser().resolve()
            if resolved not in unique:
                unique.append(resolved)
        return cls(unique, restricted)

    def check(self, folder: str | Path) -> Path:
        """The resolved folder, or an error if share mode forbids it. Resolving first
        means `..` and symlinks pointing out of a root are judged by where they land."""
        text = str(folder).strip()
        if not text:
            raise RetrievalAppError("enter a folder path")
        resolved = Path(text).expanduser().resolve()
        if self.restricted and not any(resolved == root or root in resolved.parents for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise RetrievalAppError(f"{resolved} is outside the data roots: in share mode only folders inside them can be loaded ({allowed})")
        return resolved

    def choices(self) -> list[str]:
        """The roots and their sub-folders that hold class folders: for the picker."""
        found = []
        for root in self.roots:
            if root.is_dir():
                found.append(str(root))
                found += [str(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and _has_class_folders(p)]
        return found


def _has_class_folders(folder: Path) -> bool:
    try:
        return any(child.is_dir() for child in folder.iterdir())
    except OSError:
        return False


def extract_upload(files: Sequence[str | Path], target: Path) -> Path:
    """Uploaded images and/or zips → an image folder under `target` (the app's cache).
    Loose images go into a class folder named "uploaded". Zip members are checked so none
    lands outside `target` (zip-slip), and sizes are bounded."""
    target.mkdir(parents=True, exist_ok=True)
    count, total = 0, 0
    for file in files:
        path = Path(file)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    if member.is_dir() or Path(member.filename).suffix.lower() not in IMAGE_EXTENSIONS:
                        continue
                    destination = (target / member.filename).resolve()
                    if target.resolve() not in destination.parents:
                        raise RetrievalAppError(f"refusing zip member outside the upload folder: {member.filename}")
                    count, total = count + 1, total + member.file_size
                    _check_limits(count, total)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, open(destination, "wb") as out:
                        shutil.copyfileobj(source, out)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            count, total = count + 1, total + path.stat().st_size
            _check_limits(count, total)
            (target / "uploaded").mkdir(exist_ok=True)
            shutil.copy(path, target / "uploaded" / path.name)
        else:
            raise RetrievalAppError(f"{path.name} is neither an image nor a zip of images")
    if count == 0:
        raise RetrievalAppError("the upload holds no images")
    return _single_top_folder(target)


def _check_limits(count: int, total: int) -> None:
    if count > MAX_UPLOAD_FILES or total > MAX_UPLOAD_BYTES:
        raise RetrievalAppError("the upload is too large")


def _single_top_folder(target: Path) -> Path:
    # A zip of "dataset/<class>/*.jpg" unpacks one level deeper than the class folders.
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
        return entries[0]
    return target
