"""The map at 5,000 points in a real browser (Debian chromium through Playwright): the
compact payload decodes in the page to the server's own positions, classes and ids, and
clicking real plotted points gives the core library's neighbours. No thumbnail is made
until one is shown."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

import ui_helpers  # noqa: E402

if not ui_helpers.CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

from retrieval_app.ui.launch import launch_app  # noqa: E402
from synthetic import write_class_folder, write_fashion_mnist_folder  # noqa: E402

FASHION = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion_mnist.npz"
PER_CLASS = 500  # 10 classes: 5,000 points
K = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """5,000 small images and a small-CNN checkpoint (seeded weights, no training: the test
    is about the map, and the core is asked with the same model)."""
    import torch

    from retrieval_app.networks import create_model
    from retrieval_app.training.checkpoint import save_model

    base = tmp_path_factory.mktemp("ui-scale")
    if FASHION.is_file():
        folder = write_fashion_mnist_folder(base / "fashion", FASHION, per_class=PER_CLASS)
    else:
        folder = write_class_folder(base / "shapes", n_classes=10, per_class=PER_CLASS, size=28)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
    monkey.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
    torch.manual_seed(0)
    net = create_model("small_cnn", dim=32, pretrained=False, head="linear")
    checkpoint = base / "models" / "seeded-cnn"
    save_model(checkpoint / "model.pt", net, classes=sorted(p.name for p in folder.iterdir()), train_config={"distance": "euclidean"}, metrics={}, epoch=0)
    yield {"base": base, "folder": folder, "checkpoint": checkpoint}
    monkey.undo()


@pytest.fixture(scope="module")
def server(env):
    port = ui_helpers.free_port()
    demo = launch_app(folder=None, port=port, open_browser=False, block=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def core(env):
    from retrieval_app.data import scan_folder
    from retrieval_app.retrieval import Gallery, compute_projection
    from retrieval_app.training import load_embedder

    gallery = Gallery.build(scan_folder(env["folder"]), load_embedder(str(env["checkpoint"])), num_workers=0)
    return gallery, compute_projection(gallery.embeddings, "pca")


def caption_ids(page) -> list[str]:
    return [re.search(r"· (\S+)$", c.replace("\n", " ")).group(1) for c in ui_helpers.gallery_captions(page)]


def test_5000_points_decode_in_the_page_and_clicks_give_the_cores_neighbours(page, server, env, core):
    gallery, projection = core
    page.goto(server)
    page.wait_for_selector("#load-folder")
    page.wait_for_timeout(1000)  # the page's lists are filled when it opens
    page.get_by_role("radio", name="PCA").check()
    page.fill("#folder-path textarea, #folder-path input", str(env["folder"]))
    page.get_by_role("combobox", name="Model (backbone or trained checkpoint)", exact=True).click()
    page.get_by_role("option", name="seeded-cnn (trained)", exact=True).click()
    page.click("#load-folder")
    ui_helpers.wait_for_method(page, "PCA of 5,000 images", timeout_ms=600_000)
    assert not list((env["base"] / "cache" / "thumbs").rglob("*.jpg"))  # none made at load

    # The page's decoded map: every point at the server's position, with its class and id.
    points = ui_helpers.map_points(page)
    assert [p[0] for p in points] == list(range(len(gallery)))
    assert [p[1] for p in points] == [r.id for r in gallery.records]
    assert [p[2] for p in points] == [gallery.classes[label] for label in gallery.labels]
    drawn = np.asarray(page.evaluate("() => { const m = document.querySelector('%s').__rmap; return [Array.from(m.x), Array.from(m.y)]; }" % ui_helpers.PLOT)).T
    assert np.array_equal(drawn.astype(np.float32), projection.coords.astype(np.float32))
    assert page.evaluate("() => document.querySelector('%s').data.every(t => t.type === 'scattergl')" % ui_helpers.PLOT)

    ui_helpers.set_k(page, K)
    for index in ui_helpers.isolated_points(page, radius_px=3.0)[:: 97][:3]:
        point = ui_helpers.click_point(page, index)
        ui_helpers.wait_for_query_result(page, f"{point['id']} (class")
        ui_helpers.wait_for_gallery(page, K)
        assert point["id"] == gallery.records[index].id
        assert caption_ids(page) == [n.id for n in gallery.neighbours_of_index(index, K)]
        ui_helpers.wait_for_highlight(page, point, K)
        rings = page.evaluate("() => document.querySelector('%s').__rmapOverlay.neighbours.points" % ui_helpers.PLOT)
        assert rings == [n.index for n in gallery.neighbours_of_index(index, K)]
    made = list((env["base"] / "cache" / "thumbs").rglob("*.jpg"))
    # only those shown: per click the query, its k neighbours, its hardest positive and nearest negative
    assert 0 < len(made) <= 3 * (K + 1 + 2)
