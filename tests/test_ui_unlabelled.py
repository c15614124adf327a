"""A flat folder of images (no class folders) in the app, in a real browser: the map is
coloured by k-means clusters, the views that need labels are hidden, and a click
searches (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

import ui_helpers  # noqa: E402
from synthetic import copy_sample_photos, isolated_app_dirs  # noqa: E402
from ui_helpers import MAP_READY, gallery_captions, set_k  # noqa: E402

if not ui_helpers.CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

from retrieval_app.ui.launch import launch_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui_flat")
    folder = copy_sample_photos(base / "flat", ("Leopards", "pizza", "sunflower", "watch"), 4, flat=True)
    with isolated_app_dirs(base):
        yield {"base": base, "folder": folder}


@pytest.fixture(scope="module")
def server(env):
    port = ui_helpers.free_port()
    demo = launch_app(folder=env["folder"], port=port, open_browser=False, block=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def test_a_flat_folder_is_coloured_by_cluster_and_searchable(page, server, env, core_gallery):
    page.goto(server)
    page.wait_for_function(MAP_READY, timeout=240_000)
    page.wait_for_function("() => document.querySelector('#load-status').innerText.includes('without labels')", timeout=60_000)
    status = page.inner_text("#load-status")
    clusters = int(re.search(r"coloured by (\d+) k-means clusters", status).group(1))
    assert "16 images without labels" in status
    # The map's groups are the core's clusters: one trace per cluster, each point's group as the core has it.
    groups, names, kind = core_gallery.colour_groups()
    assert kind == "cluster" and len(names) == clusters >= 2
    points = ui_helpers.map_points(page)
    assert len(points) == 16
    by_id = {r.id: names[g] for r, g in zip(core_gallery.records, groups)}
    assert {p[1]: p[2] for p in points} == by_id
    traces = page.evaluate("() => document.querySelector('#embedding-plot .rmap-plot').data.map((t) => t.name)")
    assert set(names) <= set(traces)
    # Views that need labels are hidden, not errors.
    assert not page.locator("#suspicious").is_visible() and not page.locator("#hardest-pair").is_visible()
    # A click searches: the core's neighbours, captioned without a class or ✓/✗.
    set_k(page, K)
    index = ui_helpers.isolated_points(page)[0]
    point = ui_helpers.click_point(page, index)
    ui_helpers.wait_for_gallery(page, K)
    expected = core_gallery.neighbours_of_index(core_gallery.index_of_id(point["id"]), K)
    captions = gallery_captions(page)
    assert [n.id for n in expected] == [re.search(r"· (\S+)$", c).group(1) for c in captions]
    assert all(re.match(r"^\d+\. \d+\.\d{3} · ", c) for c in captions)  # rank, distance, id: no class, no mark
    ui_helpers.wait_for_query_result(page, point["id"])
    assert "cluster" in page.inner_text("#query-result")
