"""The files the app serves over HTTP (besides plotly.js): one session's thumbnails,
hard-linked into a folder named by a random token.

Gradio serves only paths under `served_root()` (launch's `allowed_paths`), so embedding
stores, maps, uploads and the thumbnails of folders no session has loaded are never
served, and a session's files cannot be found by guessing: each session's folder name
is 128 random bits. Hard links cost no space and no copying, and a link is judged by
where it is (a symbolic link would be resolved to the thumbnail cache and refused)."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Sequence

from ..paths import cache_dir

SERVED_MAX_AGE_S = 24 * 3600  # a session folder older than this is left from a past run


def served_root() -> Path:
    return cache_dir() / "served"


class ServedFiles:
    """One session's served folder: `publish` links files into it, `close` removes it."""

    def __init__(self, root: Path | None = None):
        self.folder = (root or served_root()) / secrets.token_hex(16)
        self._generation = 0

    def publish(self, paths: Sequence[Path | None]) -> list[Path | None]:
        """Served names for `paths` (None stays None, as does a file that vanished), in a
        fresh sub-folder: a new map never shows an older map's files under the same URL.
        The previous sub-folder is removed."""
        self._generation += 1
        folder = self.folder / str(self._generation)
        folder.mkdir(parents=True)
        served = [_link(path, folder / f"{i}{path.suffix}") if path is not None else None for i, path in enumerate(paths)]
        for old in self.folder.iterdir():
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        return served

    def close(self) -> None:
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
