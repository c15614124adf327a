"""The files the app serves over HTTP (besides plotly.js): one session's thumbnails,
hard-linked into a folder named by a random token, one at a time, when the page shows
them (a gallery, a hovered point): a folder of 20,000 images makes no thumbnail at load;
and its maps' points (`publish`: the page fetches them; see plot.py).

Gradio serves only paths under `served_root()` (launch's `allowed_paths`), so embedding
stores, maps, uploads and the thumbnails of folders no session has loaded are never
served, and a session's files cannot be found by guessing: each session's folder name
is 128 random bits. Hard links cost no space and no copying, and a link is judged by
where it is (a symbolic link would be resolved to the thumbnail cache and refused)."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from ..atomic import atomic_write_bytes
from ..paths import cache_dir

SERVED_MAX_AGE_S = 24 * 3600  # a session folder older than this is left from a past run


def served_root() -> Path:
    return cache_dir() / "served"


class ServedFiles:
    """One session's served folder: `renew` starts a fresh sub-folder (a new map), `add`
    links one file into it, `close` removes everything. Safe to call from several threads."""

    def __init__(self, root: Path | None = None):
        self.folder = (root or served_root()) / secrets.token_hex(16)
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> Path:
        return self.folder / str(self._generation)

    def renew(self) -> None:
        """A fresh sub-folder for the files of a new map (a new map never shows an older
        map's files under the same URL); the previous one is removed."""
        with self._lock:
            self._generation += 1
            folder = self.current
            folder.mkdir(parents=True)
            for old in self.folder.iterdir():
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)

    def add(self, source: Path | None, name: str) -> Path | None:
        """`source` served as `name` in the current sub-folder (None for None, or for a file
        that vanished). Adding the same name twice gives the same link."""
        if source is None:
            return None
        with self._lock:
            if self._generation == 0:
                raise RuntimeError("renew() before add()")
            link = self.current / name
            if link.is_file():
                return link
            return _link(source, link)

    def publish(self, data: bytes, suffix: str) -> Path:
        """`data` served from the current sub-folder as `<digest><suffix>` (e.g. a map's
        points: made once per map, not a file of the user's folder). Named by content, so
        the same data is written once and a URL never changes what it serves; written
        atomically, as the page may be fetching an earlier file meanwhile."""
        name = hashlib.blake2b(data, digest_size=16).hexdigest() + suffix
        with self._lock:
            if self._generation == 0:
                raise RuntimeError("renew() before publish()")
            path = self.current / name
            if not path.is_file():
                atomic_write_bytes(path, data)
            return path

    def close(self) -> None:
        with self._lock:
            shutil.rmtree(self.folder, ignore_errors=True)


def _link(source: Path, link: Path) -> Path | None:
    try:
        os.link(source, link)
    except FileNotFoundError:
        return None
    except OSError:  # a file system without hard links, or the cache on another device
        shutil.copyfile(source, link)
    return link


def expire_served(root: Path | None = None, max_age_s: float = SERVED_MAX_AGE_S, now: float | None = None) -> list[Path]:
    """Remove session folders of past runs (older than `max_age_s`); returns them. A
    running app's sessions re-publish on every load, so theirs stay young."""
    root = root or served_root()
    now = time.time() if now is None else now
    removed = []
    try:
        folders = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return removed
    for folder in folders:
        try:
            age = now - folder.stat().st_mtime
        except OSError:
            continue
        if age > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
