"""The explore tools through the app's API (gradio_client, no browser): selections by
point numbers and by class, pages, the CSV of ids and find, checked against the core
library (the agreement colours are checked in the page: tests/test_ui_explore.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval_app.retrieval.selection import PAGE_SIZE, select, select_class, selection_csv

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

import ui_helpers  # noqa: E402
from synthetic import copy_sample_photos, isolated_app_dirs  # noqa: E402
from retrieval_app.ui.launch import launch_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Leopards", "pizza", "sunflower", "watch")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-explore-api")
    folder = copy_sample_photos(base / "photos", CLASSES, 8)
    with isolated_app_dirs(base):
        yield {"base": base, "folder": folder}


@pytest.fixture(scope="module")
def client(env):
    port = ui_helpers.free_port()
    demo = launch_app(folder=None, port=port, open_browser=False, block=False)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False, httpx_kwargs={"timeout": 120})
    status, _ = client.predict(str(env["folder"]), "efficientnet_lite0", "pca", api_name="/load_folder")
    assert "images in" in status, status
    yield client
    demo.close()


def file_path(output) -> Path:
    """The server's path of a file output (sent as an update: the button's value)."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        output = output["value"]
    return Path(output["path"] if isinstance(output, dict) else output)


def grid_ids(items) -> list[str]:
    return [item["caption"].split(" · ", 1)[1] for item in items]


def test_select_page_export_and_clear_through_the_api(client, core_gallery):
    grid, words, histogram, csv_file, page = client.predict(list(range(0, 32, 1)), False, api_name="/select_points")
    expected = select(core_gallery, range(32))
    assert grid_ids(grid) == [core_gallery.records[i].id for i in expected.indices[:PAGE_SIZE]] and page == 1
    assert "32 images selected" in words and "page 1 of 2" in words
    bars = json.loads(histogram["plot"])["data"][0]
    assert bars["x"] == list(core_gallery.classes) and bars["y"] == [8, 8, 8, 8]
    assert file_path(csv_file).read_text() == selection_csv(core_gallery, expected)
    grid, words, *_ = client.predict(2, api_name="/selection_page")
    assert grid_ids(grid) == [core_gallery.records[i].id for i in expected.indices[PAGE_SIZE:]]
    # a class; then points added to it
    grid, words, histogram, csv_file, _ = client.predict("pizza", api_name="/browse_class")
    assert grid_ids(grid) == [core_gallery.records[i].id for i in select_class(core_gallery, "pizza").indices]
    leopard = core_gallery.index_of_id("Leopards/image_0001.jpg")
    grid, words, *_ = client.predict([leopard], True, api_name="/select_points")
    assert "9 images selected" in words and "Leopards/image_0001.jpg" in grid_ids(grid)
    # bad input: one line, the selection unchanged
    _, words, *_ = client.predict([len(core_gallery)], False, api_name="/select_points")
    assert words.startswith("**Error:**") and "out of range" in words
    grid, words, histogram, csv_file, _ = client.predict(api_name="/clear_selection")
    assert grid == [] and words.startswith("Nothing selected")


def test_find_and_colour_through_the_api(client, core_gallery):
    index, words = client.predict("pizza/image_0003.jpg", api_name="/find_point")
    assert index == core_gallery.index_of_id("pizza/image_0003.jpg") and "pizza/image\\_0003" in words.replace("\\.", ".")
    with pytest.raises(Exception, match="No image id or file name matches"):
        client.predict("nothing-here.png", api_name="/find_point")
    client.predict("agreement", 4, api_name="/set_colouring")  # the page's colours: tests/test_ui_explore.py
    with pytest.raises(Exception):
        client.predict("rainbow", 4, api_name="/set_colouring")
