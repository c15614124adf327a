"""Where the app keeps things. Nothing is ever written into a user's image folder."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout holding `retrieval_app/`, `models/` and `sample_data/`."""
    return _PACKAGE_DIR.parent


def sample_data_dir() -> Path:
    return project_root() / "sample_data"


def models_dir() -> Path:
    """Checkpoint store; `RETRIEVAL_APP_MODELS_DIR` overrides the project's `models/`."""
    override = os.environ.get("RETRIEVAL_APP_MODELS_DIR")
    return Path(override).expanduser() if override else project_root() / "models"


def cache_dir() -> Path:
    """Embedding / feature / projection caches; `RETRIEVAL_APP_CACHE_DIR` overrides."""
    override = os.environ.get("RETRIEVAL_APP_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "retrieval-app"
