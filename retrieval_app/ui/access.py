"""What a UI session may read: data roots, logins, uploads. Pure functions, tested
without a browser."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import time
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from ..data.scan import IMAGE_EXTENSIONS, ScanResult, SkippedFile
from ..errors import DatasetError, RetrievalAppError

# Upload limits. Gradio refuses a single uploaded file above MAX_UPLOAD_FILE_BYTES while it
# streams in (launch's `max_file_size`); the rest is checked here from the zip's
# directory before anything is written, and again while unpacking.
MAX_UPLOAD_FILE_BYTES = 1024**3  # one uploaded file (a zip, an image)
MAX_UPLOAD_FILES = 20_000  # images in one upload
MAX_UPLOAD_BYTES = 2 * 1024**3  # unpacked bytes of one upload
MAX_MEMBER_BYTES = 256 * 1024**2  # one unpacked image
# Images hardly compress; an archive that expands more than this is a zip bomb.
MAX_COMPRESSION_RATIO = 100
COMPRESSION_CHECK_MIN_BYTES = 64 * 1024**2
DISK_RESERVE_BYTES = 512 * 1024**2  # free space an upload must leave on the cache's disk
UPLOAD_MAX_AGE_S = 24 * 3600  # unpacked uploads older than this are removed
CHUNK_BYTES = 1024**2


@dataclass(frozen=True)
class UploadLimits:
    files: int = MAX_UPLOAD_FILES
    total_bytes: int = MAX_UPLOAD_BYTES
    member_bytes: int = MAX_MEMBER_BYTES


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
        if self.restricted and not self.contains(resolved):
            allowed = ", ".join(str(r) for r in self.roots)
            raise RetrievalAppError(f"{resolved} is outside the data roots: in share mode only folders inside them can be loaded ({allowed})")
        return resolved

    def contains(self, path: str | Path) -> bool:
        """True when `path`, with links resolved, lies in (or is) one of the roots."""
        resolved = Path(path).resolve()
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def keep_inside(self, scan: ScanResult) -> ScanResult:
        """In share mode, the scan without images that resolve outside the roots (a
        linked class folder or file pointing elsewhere): they are listed as skipped.
        Without share mode the scan is returned as it is."""
        if not self.restricted:
            return scan
        inside = [r for r in scan.records if self.contains(r.path)]
        if len(inside) == len(scan.records):
            return scan
        outside = [SkippedFile(r.id, "outside the data roots (a link pointing out of them)") for r in scan.records if not self.contains(r.path)]
        present = {r.class_name for r in inside}
        classes = [name for name in scan.classes if name in present]  # the scan's (natural) order
        if len(classes) < 2:
            raise DatasetError(f"fewer than two classes of {scan.root} have images inside the data roots (share mode skips linked files that point outside them)")
        label = {name: i for i, name in enumerate(classes)}
        records = [dataclasses.replace(r, label=label[r.class_name]) for r in inside]
        gone = sorted(set(scan.classes) - set(classes))
        warnings = scan.warnings + [f"class folder '{name}' has no images inside the data roots and is ignored" for name in gone]
        return ScanResult(scan.root, classes, records, sorted(scan.skipped + outside, key=lambda s: s.path), warnings)

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


def extract_upload(files: Sequence[str | Path], target: Path, limits: UploadLimits = UploadLimits()) -> Path:
    """Uploaded images and/or zips → an image folder under `target` (a new folder in the
    app's cache). Loose images go into a class folder named "uploaded".

    Every member name, the count and the declared sizes are checked before anything is
    written (zip-slip, too many files, zip bombs, not enough disk); the copy counts the
    bytes really written against the same limits. On any refusal `target` is removed, so
    nothing of a refused upload stays on disk."""
    plan = _plan_upload([Path(f) for f in files], limits)
    target.mkdir(parents=True, exist_ok=False)
    try:
        _check_free_space(target, sum(size for *_, size in plan))
        with ExitStack() as stack:
            archives: dict[Path, zipfile.ZipFile] = {}  # each zip opened once, not per member
            written = 0
            for source, member, relative, _ in plan:
                if member is not None and source not in archives:
                    archives[source] = stack.enter_context(zipfile.ZipFile(source))
                reader = archives[source].open(member) if member is not None else open(source, "rb")
                with reader:
                    written = _copy_one(reader, member.filename if member else source.name, target / relative, written, limits)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return _single_top_folder(target)


def _plan_upload(files: list[Path], limits: UploadLimits) -> list[tuple[Path, zipfile.ZipInfo | None, PurePosixPath, int]]:
    """(source file, zip member or None, destination relative to the target, declared
    size) for every image of the upload; raises before anything is written."""
    plan, total = [], 0
    for path in files:
        if zipfile.is_zipfile(path):
            items = _plan_zip(path, limits)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            items = [(path, None, PurePosixPath("uploaded", path.name), path.stat().st_size)]
        else:
            raise RetrievalAppError(f"{path.name} is neither an image nor a zip of images")
        for item in items:
            _check_member(str(item[2]), item[3], limits)
            plan.append(item)
            total += item[3]
            _check_totals(len(plan), total, limits)
    if not plan:
        raise RetrievalAppError("the upload holds no images")
    return plan


def _plan_zip(path: Path, limits: UploadLimits) -> list:
    """A zip's images from its central directory: names checked, sizes as declared."""
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and PurePosixPath(m.filename).suffix.lower() in IMAGE_EXTENSIONS]
    _check_totals(len(members), 0, limits)  # before walking 10⁶ names of a huge archive
    plan = [(path, member, _safe_member_path(member.filename), member.file_size) for member in members]
    declared = sum(item[3] for item in plan)
    if declared > COMPRESSION_CHECK_MIN_BYTES and declared > MAX_COMPRESSION_RATIO * path.stat().st_size:
        raise RetrievalAppError(f"{path.name} would expand {declared / path.stat().st_size:.0f}-fold: refused as a possible zip bomb")
    return plan


def _safe_member_path(name: str) -> PurePosixPath:
    """A zip member's path inside the target, or an error for one that would land
    outside it (absolute, `..`, a drive letter: zip-slip)."""
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or (relative.parts and ":" in relative.parts[0]):
        raise RetrievalAppError(f"refusing zip member outside the upload folder: {name}")
    return relative


def _check_member(name: str, size: int, limits: UploadLimits) -> None:
    if size > limits.member_bytes:
        raise RetrievalAppError(f"the upload is too large: {name} would unpack to {_mb(size)} (limit {_mb(limits.member_bytes)} per image)")


def _check_totals(count: int, total: int, limits: UploadLimits) -> None:
    if count > limits.files:
        raise RetrievalAppError(f"the upload is too large: more than {limits.files:,} images (limit {limits.files:,})")
    _check_bytes(total, limits)


def _check_bytes(total: int, limits: UploadLimits) -> None:
    if total > limits.total_bytes:
        raise RetrievalAppError(f"the upload is too large: more than {_mb(limits.total_bytes)} unpacked (limit)")


def _check_free_space(target: Path, needed: int) -> None:
    free = shutil.disk_usage(target).free
    if free - needed < DISK_RESERVE_BYTES:
        raise RetrievalAppError(f"not enough free disk space for the upload ({_mb(needed)} needed, {_mb(free)} free)")


def _copy_one(reader, name: str, destination: Path, written: int, limits: UploadLimits) -> int:
    """Copy one image in chunks, counting the bytes against the limits (a zip's declared
    sizes are not trusted); returns the running total of the upload."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination, "wb") as out:
        copied = 0
        while chunk := reader.read(CHUNK_BYTES):
            copied, written = copied + len(chunk), written + len(chunk)
            _check_member(name, copied, limits)
            _check_bytes(written, limits)
            out.write(chunk)
    return written


def _mb(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"


def expire_uploads(uploads: Path, max_age_s: float = UPLOAD_MAX_AGE_S, now: float | None = None) -> list[Path]:
    """Remove unpacked uploads (`uploads/<session>/<upload>/`) older than `max_age_s`,
    and session folders left empty; returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for session in _subfolders(uploads):
        for upload in _subfolders(session):
            if now - _mtime(upload, now) > max_age_s:
                shutil.rmtree(upload, ignore_errors=True)
                removed.append(upload)
        try:
            session.rmdir()  # only when empty; a session still uploading keeps its folder
        except OSError:
            pass
    return removed


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another request
        return default


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _single_top_folder(target: Path) -> Path:
    # A zip of "dataset/<class>/*.jpg" unpacks one level deeper than the class folders.
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
        return entries[0]
    return target
