"""More of the app's workflow in a real browser (Debian chromium through Playwright):
the k slider repeating a query, a real drag-and-drop query, share-mode folder limits, a
zip upload, the models section (use, delete) and errors shown in the page."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

import ui_helpers  # noqa: E402

if not ui_helpers.CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

from retrieval_app.training import TrainConfig, TrainingJob  # noqa: E402
from retrieval_app.ui.launch import launch_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Leopards", "sunflower", "watch")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-workflow")
    folder = base / "data" / "photos"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for path in sorted((ROOT / "sample_data" / name).glob("*.jpg"))[:8]:
            shutil.copy(path, folder / name / path.name)
    outside = base / "elsewhere"  # a valid dataset beside the data root
    shutil.copytree(folder, outside)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
    monkey.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
    yield {"base": base, "folder": folder, "outside": outside}
    monkey.undo()


@pytest.fixture(scope="module")
def server(env):
    port = ui_helpers.free_port()
    demo = launch_app(folder=env["folder"], port=port, open_browser=False, block=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def restricted_server(env):
    """Share mode's folder rules without a public link (no network in tests)."""
    port = ui_helpers.free_port()
    demo = launch_app(folder=env["folder"], port=port, open_browser=False, block=False, restrict_folders=True, data_roots=[str(env["folder"].parent)])
    yield f"http://127.0.0.1:{port}"
    demo.close()




def load_status(page) -> str:
    return page.inner_text("#load-status")


def wait_for_load_status(page, text: str, timeout_ms: int = 120_000) -> None:
    page.wait_for_function("(t) => document.querySelector('#load-status').innerText.includes(t)", arg=text, timeout=timeout_ms)


def caption_ids(page) -> list[str]:
    return [caption.rsplit("· ", 1)[-1].strip() for caption in ui_helpers.gallery_captions(page)]


def test_moving_k_repeats_the_query_with_more_or_fewer_neighbours(page, server, core_gallery):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    ui_helpers.wait_for_method(page, "UMAP")
    ui_helpers.set_k(page, 6)
    index = ui_helpers.isolated_points(page, radius_px=3.0)[0]
    point = ui_helpers.click_point(page, index)
    ui_helpers.wait_for_query_result(page, f"{point['id']} (class")
    ui_helpers.wait_for_gallery(page, 6)
    expected = core_gallery.neighbours_of_index(core_gallery.index_of_id(point["id"]), 6)
    assert caption_ids(page) == [n.id for n in expected]
    ui_helpers.wait_for_highlight(page, point, 6)

    ui_helpers.set_k(page, 3)
    ui_helpers.wait_for_gallery(page, 3)
    assert caption_ids(page) == [n.id for n in expected[:3]]
    ui_helpers.wait_for_query_result(page, f"/3 neighbours of the same class")
    ui_helpers.wait_for_highlight(page, point, 3)


def test_an_image_dragged_onto_the_query_box_is_searched(page, server, core_gallery):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    ui_helpers.set_k(page, 4)
    query = ROOT / "sample_data" / "watch" / "image_0012.jpg"  # not among the folder's 8 per class
    ui_helpers.drop_file(page, "#query-image .upload-container", query)
    ui_helpers.wait_for_query_result(page, "placed on the map")
    ui_helpers.wait_for_gallery(page, 4)
    expected = core_gallery.neighbours_of_images([query], 4)[0]
    assert caption_ids(page) == [n.id for n in expected]
    assert expected[0].label == "watch"
    page.wait_for_function("() => document.querySelector('%s').data.some(t => t.name === 'query')" % ui_helpers.PLOT, timeout=30_000)


def test_errors_are_shown_in_the_page_and_the_map_stays(page, server, env):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    page.fill("#folder-path textarea, #folder-path input", str(env["base"] / "no-such-folder"))
    page.click("#load-folder")
    wait_for_load_status(page, "❌")
    assert "no-such-folder" in load_status(page)
    assert page.evaluate(ui_helpers.MAP_READY)  # the previous map is still there


def test_share_mode_loads_only_folders_inside_the_data_roots(page, restricted_server, env):
    page.goto(restricted_server)
    ui_helpers.wait_for_map(page)
    # consecutive attempts land in different places, so each refusal is a new message
    for attempt, lands in ((env["outside"], env["outside"]), ("/etc", Path("/etc")), (env["folder"] / ".." / ".." / "elsewhere", env["outside"])):
        page.fill("#folder-path textarea, #folder-path input", str(attempt))
        page.click("#load-folder")
        wait_for_load_status(page, f"{lands.resolve()} is outside the data roots")
    # a folder inside the root loads
    page.fill("#folder-path textarea, #folder-path input", str(env["folder"]))
    page.click("#load-folder")
    wait_for_load_status(page, f"{8 * len(CLASSES)} images in {len(CLASSES)} classes")


def test_files_outside_the_app_cache_are_not_served(restricted_server, env):
    def status(path) -> int:
        try:
            return urllib.request.urlopen(f"{restricted_server}/gradio_api/file={path}").status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(env["outside"] / "watch" / sorted(p.name for p in (env["outside"] / "watch").iterdir())[0]) == 403
    assert status(env["folder"] / "..") == 403
    assert status(f"{env['base'] / 'cache'}/../elsewhere/watch") == 403
    assert status("/etc/hostname") == 403


def test_an_uploaded_zip_is_unpacked_into_the_cache_and_loaded(page, server, env):
    archive = env["base"] / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("Leopards", "watch"):
            for path in sorted((ROOT / "sample_data" / name).glob("*.jpg"))[10:14]:
                zf.write(path, f"my-set/{name}/{path.name}")
    page.goto(server)
    ui_helpers.wait_for_map(page)
    with page.expect_file_chooser() as chooser:  # the button opens the system file dialog
        page.click("#upload-folder")
    chooser.value.set_files(str(archive))
    wait_for_load_status(page, "8 images in 2 classes", timeout_ms=180_000)
    uploads = env["base"] / "cache" / "uploads"
    assert any(p.name == "my-set" for p in uploads.rglob("my-set"))
    assert "uploads" in page.input_value("#folder-path textarea, #folder-path input")
    assert sorted(p.name for p in env["folder"].iterdir()) == sorted(CLASSES)  # the user's folder is untouched


@pytest.fixture(scope="module")
def trained_checkpoint(env):
    out_dir = env["base"] / "models" / "tiny-head"
    config = TrainConfig(folder=str(env["folder"]), out_dir=str(out_dir), mode="quick", epochs=1, dim=16, batch_size=24, num_workers=0, unseen_class_fraction=0.0, patience=None)
    snapshot = TrainingJob(config).start().wait(timeout=300)
    assert snapshot.state == "done", snapshot.error
    return out_dir


def open_models(page) -> None:
    page.get_by_role("button", name="5 · Models").click()
    page.get_by_role("button", name="Refresh").click()


def test_models_section_uses_and_deletes_a_checkpoint(page, server, trained_checkpoint):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    open_models(page)
    page.wait_for_function("(name) => document.body.innerText.includes(name)", arg=trained_checkpoint.name, timeout=30_000)
    page.get_by_role("combobox", name="Checkpoint", exact=True).click()
    page.get_by_role("option", name=f"{trained_checkpoint.name} (trained)").click()
    page.get_by_role("button", name="Use for search").click()
    page.wait_for_function(
        "(name) => { const g = document.querySelector('%s'); return !!(g && g.layout && g.layout.title.text.includes(name)); }" % ui_helpers.PLOT,
        arg=trained_checkpoint.name, timeout=120_000,
    )
    page.get_by_role("button", name="Delete").click()
    page.wait_for_function("() => document.body.innerText.includes('Deleted')", timeout=30_000)
    assert not trained_checkpoint.exists()
