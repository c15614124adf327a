"""Crash-safe file writes: write a temporary file in the target's folder, flush it to
disk, then `os.replace` it over the target. A reader (or a process killed mid-write)
sees either the old file or the new one, never a torn one.

Permissions are those a plain `open(path, "w")` gives: a new file gets 0666 minus the
process umask (the temp file is created with mode 0666 and the kernel applies the umask,
and any default ACL, itself), and an existing file keeps its permission bits (as a plain
write, which truncates the file in place, would). Its owner and group are those of the
writing process.

A process killed mid-write leaves its temp file behind: `.<target name>.<pid>-<random>.tmp`.
`remove_stale_temp_files(folder)` removes those whose writer is gone."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Callable, IO

TEMP_SUFFIX = ".tmp"
# A temp file older than this is stale whatever its name says: writes go from memory to
# disk in one go, so even a big one takes seconds, never minutes.
STALE_TEMP_AGE_S = 10 * 60
# `.<target>.<pid>-<8 hex>.tmp`; the pid lets the next opener tell a live writer's file
# from a killed one's.
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return target


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new, empty temp file next to `target`, with the permissions a plain write would give."""
    existing_mode = _permission_bits(target)
    binary = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
    while True:
        tmp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | binary, 0o666)
        except FileExistsError:  # another writer drew the same name: draw again
            continue
        if existing_mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, existing_mode)
        return fd, tmp


def _permission_bits(target: Path) -> int | None:
    try:
        st = os.stat(target)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def remove_stale_temp_files(folder: str | os.PathLike, *, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the temp files killed writers left in `folder` and return them.

    Another process may be writing into `folder` right now, so a temp file is removed
    only when the process named in it no longer exists (on this machine), or when it is
    older than `max_age_s` (a writer on another machine sharing the folder, or a name
    from an older version). Files that do not look like this module's temp files are
    never touched."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            match = _TEMP_NAME.match(entry.name)
            writer_gone = match is not None and not _process_exists(int(match["pid"]))
            if writer_gone or age > max_age_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # its writer renamed it, or another cleaner won
            continue
        except OSError:
            continue
    return removed


def _process_exists(pid: int) -> bool:
    if os.name != "posix":  # os.kill would terminate the process on Windows
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by someone else (or an absurd pid: leave it to age)
    return True


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_stream(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """`write(handle)` fills a temp file that then replaces `path`; if `write` raises, the
    temp file is removed, `path` is left as it was and the error propagates."""
    return _atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_numpy_save(path: str | os.PathLike, **arrays: Any) -> Path:
    """`np.savez` into a temp file and rename; `path` should end in `.npz`. Written
    straight to the file (no in-memory copy: an embedding store of 100k × 1280 floats is
    half a gigabyte)."""
    import numpy as np

    return _atomic_write(path, lambda handle: np.savez(handle, **arrays))
