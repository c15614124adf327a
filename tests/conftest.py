"""Shared fixtures. `make_image_folder` writes small labelled image folders into tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pytest
from PIL import Image


def write_image_folder(
    root: Path,
    classes: Mapping[str, int],
    *,
    size: tuple[int, int] = (32, 24),
    ext: str = "jpg",
    seed: int = 0,
) -> Path:
    """`root/<class>/img_NNN.<ext>` for each (class, count): a per-class colour with a
    little per-image noise, so images differ but classes are told apart by colour."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(30, 226, size=3)
        for i in range(count):
            noise = rng.integers(-20, 21, size=(size[1], size[0], 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def make_image_folder(tmp_path) -> Callable[..., Path]:
    """Factory: `make_image_folder({"cats": 3, "dogs": 2}, name="data", size=(w, h),
    ext="jpg", seed=0) -> root` (a folder under tmp_path)."""

    def make(classes: Mapping[str, int], *, name: str = "data", **options) -> Path:
        return write_image_folder(tmp_path / name, classes, **options)

    return make


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch):
    """Caches and checkpoints of one test go into its tmp_path, never ~/.cache or models/."""
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RETRIEVAL_APP_MODELS_DIR", str(tmp_path / "models"))


# ------------------------------------------------ browser tests (tests/ui_helpers.py)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    import ui_helpers

    with sync_playwright() as p:
        instance = ui_helpers.launch_chromium(p)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; a screenshot lands in test-artifacts/ when the test failed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    failed_before = request.session.testsfailed
    yield page
    # The call phase's failure is already counted when this teardown runs.
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="module")
def core_gallery(env):
    """The core library's own gallery of the module's `env["folder"]`: the reference the
    browser results are checked against."""
    from retrieval_app.data import scan_folder
    from retrieval_app.retrieval import Gallery
    from retrieval_app.training import load_embedder

    return Gallery.build(scan_folder(env["folder"]), load_embedder("efficientnet_lite0"), num_workers=0)
