"""More of the app's workflow in a real browser (Debian chromium through Playwright):
the k slider repeating a query, a real drag-and-drop query, a corrupt query, share-mode
folder limits, a zip upload, the models section (lists, use, delete with confirmation),
errors shown in the page, captions, glyphs, the star, and two sessions side by side."""

from __future__ import annotations

import ast
import io
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

import ui_helpers  # noqa: E402

if not ui_helpers.CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

from retrieval_app.training import TrainConfig, TrainingJob  # noqa: E402
from retrieval_app.ui.launch import launch_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Leopards", "sunflower", "watch")
# One file with an id too long for a caption's line: the caption must show all of it.
LONG_NAME = "a-photo-from-the-archive-with-a-name-much-longer-than-any-caption-line-image_0001.jpg"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-workflow")
    folder = base / "data" / "photos"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for path in sorted((ROOT / "sample_data" / name).glob("*.jpg"))[:8]:
            shutil.copy(path, folder / name / path.name)
    (folder / CLASSES[0] / "image_0001.jpg").rename(folder / CLASSES[0] / LONG_NAME)
    pair = base / "data" / "pair"  # a second, smaller dataset (2 classes)
    for name in CLASSES[1:]:
        shutil.copytree(folder / name, pair / name)
    one_loose = base / "data" / "loose"  # one class folder only: a bad folder (a flat one opens without labels)
    (one_loose / "lonely").mkdir(parents=True)
    shutil.copy(folder / CLASSES[1] / "image_0001.jpg", one_loose / "lonely" / "lonely.jpg")
    outside = base / "elsewhere"  # a valid dataset beside the data root
    shutil.copytree(folder, outside)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
    monkey.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
    yield {"base": base, "folder": folder, "outside": outside, "pair": pair, "loose": one_loose}
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
    ui_helpers.wait_for_star(page)


def test_errors_are_shown_in_the_page_and_the_map_stays(page, server, env):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    page.fill("#folder-path textarea, #folder-path input", str(env["base"] / "no-such-folder"))
    page.click("#load-folder")
    wait_for_load_status(page, "Error:")
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
    # The backbone already separates these photos, so the folds would keep it: blend 1 keeps the head.
    config = TrainConfig(folder=str(env["folder"]), out_dir=str(out_dir), mode="quick", epochs=1, dim=16, batch_size=24, num_workers=0, unseen_class_fraction=0.0, patience=None, blend=1.0)
    snapshot = TrainingJob(config).start().wait(timeout=300)
    assert snapshot.state == "done" and snapshot.result.model_path is not None, snapshot.message
    return out_dir


def open_models(page) -> None:
    page.get_by_role("button", name="5 · Models").click()


def dropdown_options(page, name: str) -> list[str]:
    page.get_by_role("combobox", name=name, exact=True).click()
    options = [o.inner_text() for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    return options


def test_models_trained_after_the_server_started_are_listed_without_refresh(page, server, trained_checkpoint):
    # The server (module fixture) was built before this checkpoint existed; nothing is refreshed by hand.
    page.goto(server)
    ui_helpers.wait_for_map(page)
    assert f"{trained_checkpoint.name} (trained)" in dropdown_options(page, "Model (backbone or trained checkpoint)")
    open_models(page)
    page.wait_for_function("(name) => document.body.innerText.includes(name)", arg=trained_checkpoint.name, timeout=30_000)
    assert f"{trained_checkpoint.name} (trained)" in dropdown_options(page, "Checkpoint")


def test_models_section_uses_and_deletes_a_checkpoint_after_asking(page, server, trained_checkpoint):
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
    page.get_by_role("button", name="Delete", exact=True).click()
    page.locator("#delete-confirm").wait_for(state="visible", timeout=30_000)
    assert trained_checkpoint.name in page.inner_text("#delete-confirm") and trained_checkpoint.exists()
    page.locator("#delete-no").click()  # changed my mind
    page.locator("#delete-confirm").wait_for(state="hidden", timeout=30_000)
    assert trained_checkpoint.exists()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.locator("#delete-yes").click()
    page.wait_for_function("() => document.querySelector('#models-status').innerText.includes('Deleted')", timeout=30_000)
    assert not trained_checkpoint.exists()
    assert f"{trained_checkpoint.name} (trained)" not in dropdown_options(page, "Model (backbone or trained checkpoint)")


# ---------------------------------------------------------- what the page shows
def test_a_corrupt_query_shows_one_line_and_clears_the_results(page, server, env):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    ui_helpers.wait_for_method(page, "UMAP")
    ui_helpers.set_k(page, 4)
    point = ui_helpers.click_point(page, ui_helpers.isolated_points(page, radius_px=3.0)[0])
    ui_helpers.wait_for_highlight(page, point, 4)
    broken = env["base"] / "broken.jpg"
    broken.write_text("text bytes with a .jpg name")
    ui_helpers.drop_file(page, "#query-image .upload-container", broken)
    ui_helpers.wait_for_query_result(page, "Error: broken.jpg: not a recognised image file")
    ui_helpers.wait_for_gallery(page, 0)
    page.wait_for_function("() => { const o = document.querySelector('%s').__rmapOverlay; return !!o && !o.query && !o.neighbours; }" % ui_helpers.PLOT, timeout=30_000)
    body = page.inner_text("body")
    assert "Could not preprocess" not in body and "UnidentifiedImageError" not in body
    assert page.locator(".toast-body").count() == 0  # no Gradio error pop-up


def test_a_bad_folder_message_shows_paths_literally(page, server, env):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    page.fill("#folder-path textarea, #folder-path input", str(env["loose"]))
    page.click("#load-folder")
    wait_for_load_status(page, "Error:")
    text = load_status(page)
    assert "root/cats/*.jpg, root/dogs/*.jpg" in text  # not "root/cats/.jpg, root/dogs/" in italics
    assert page.locator("#load-status em").count() == 0
    assert "❌" not in text


def test_captions_show_rank_coloured_marks_and_the_whole_id(page, server):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    ui_helpers.wait_for_method(page, "UMAP")
    ui_helpers.set_k(page, 23)  # every other point: both marks and the long id appear
    ids = [(index, id_) for index, id_, _ in ui_helpers.map_points(page)]
    isolated = set(ui_helpers.isolated_points(page, radius_px=3.0))
    index = next(i for i, id_ in ids if id_.startswith("watch/") and i in isolated)
    ui_helpers.click_point(page, index)
    ui_helpers.wait_for_gallery(page, 23)
    page.wait_for_function("() => [...document.querySelectorAll('#neighbour-gallery .caption-label')].every(c => c.dataset.match)", timeout=30_000)
    captions = page.evaluate("""() => [...document.querySelectorAll('#neighbour-gallery .caption-label')].map(c => ({
        text: c.innerText.replace(/\\s+/g, ' ').trim(), colour: getComputedStyle(c).color,
        clipped: c.scrollWidth > c.clientWidth + 1 || c.scrollHeight > c.clientHeight + 1, title: c.title}))""")
    assert [c["text"].split(".", 1)[0] for c in captions] == [str(r) for r in range(1, 24)]
    colours = {"✓": "rgb(26, 127, 55)", "✗": "rgb(198, 40, 40)"}
    assert {c["text"].split(" ")[1] for c in captions} == set(colours)
    for caption in captions:
        assert caption["colour"] == colours[caption["text"].split(" ")[1]], caption
    long_caption = next(c for c in captions if "a-photo-from-the-archive" in c["text"])
    assert long_caption["text"].replace(" ", "").endswith(f"{CLASSES[0]}/{LONG_NAME}") and not long_caption["clipped"]
    assert LONG_NAME in long_caption["title"]


def ui_glyphs() -> set[str]:
    """Every non-ASCII character in the strings the UI modules put on the page (docstrings aside)."""
    found = set()
    for path in (ROOT / "retrieval_app" / "ui").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found |= {c for c in node.value if ord(c) > 127}
    return found


_MISSING_GLYPHS_JS = """async ([chars, selector]) => {
    await document.fonts.ready;
    const font = '20px ' + getComputedStyle(document.querySelector(selector)).fontFamily;
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 48;
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    const draw = (c) => {
        ctx.clearRect(0, 0, 48, 48);
        ctx.font = font; ctx.fillStyle = '#000'; ctx.textBaseline = 'middle';
        ctx.fillText(c, 8, 24);
        return ctx.getImageData(0, 0, 48, 48).data.join(',');
    };
    // Code points no font has: whatever Chromium draws for them is what a missing glyph looks like.
    const missing = new Set(['\u0378', '\u0379', '\uFFFE'].map(draw));
    return chars.filter((c) => missing.has(draw(c)));
}"""


def test_every_glyph_the_ui_uses_renders_in_debian_chromium(page, server):
    glyphs = sorted(ui_glyphs())
    assert {"✓", "✗", "★"} <= set(glyphs)
    page.goto(server)
    ui_helpers.wait_for_map(page)
    assert page.evaluate(_MISSING_GLYPHS_JS, [["\u0378", "❌"], "#load-status"]) == ["\u0378", "❌"]  # the check sees boxes
    assert page.evaluate(_MISSING_GLYPHS_JS, [glyphs, "#load-status"]) == []


def test_the_query_star_is_drawn_above_a_dense_cluster(page, server, core_gallery):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    ui_helpers.wait_for_method(page, "UMAP")
    ui_helpers.set_k(page, 3)
    # the point with the most neighbours close by on the map: the star lands on other points
    index = page.evaluate("""() => {
        const gd = document.querySelector('%s'), fl = gd._fullLayout, pts = [];
        const m = gd.__rmap;
        for (let i = 0; i < m.n; i++) pts.push([i, fl.xaxis.l2p(m.x[i]), fl.yaxis.l2p(m.y[i])]);
        const crowd = (p) => pts.filter(q => Math.hypot(p[1] - q[1], p[2] - q[2]) < 14).length;
        return pts.reduce((best, p) => crowd(p) > crowd(best) ? p : best)[0];
    }""" % ui_helpers.PLOT)
    point = ui_helpers.click_point(page, index)
    ui_helpers.wait_for_highlight(page, point, 3)
    page.mouse.move(5, 5)  # the hover tip away from the map
    page.wait_for_timeout(300)
    # the star's black centre, where the clicked point (and its neighbours) are drawn too
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": point["x"] - 3, "y": point["y"] - 3, "width": 6, "height": 6}))).convert("RGB")
    dark = int((np.asarray(shot, dtype=int).sum(axis=2) < 90).sum())
    assert dark >= 30, f"only {dark} of 36 pixels black where the star should be"


def test_two_browser_sessions_keep_their_own_folder_and_query(browser, server, env, core_gallery):
    first = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    second = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        for page in (first, second):
            page.goto(server)
            ui_helpers.wait_for_map(page)
        ui_helpers.wait_for_method(first, "UMAP")
        ui_helpers.set_k(first, 5)
        point = ui_helpers.click_point(first, ui_helpers.isolated_points(first, radius_px=3.0)[0])
        ui_helpers.wait_for_gallery(first, 5)
        second.fill("#folder-path textarea, #folder-path input", str(env["pair"]))
        second.click("#load-folder")
        wait_for_load_status(second, "16 images in 2 classes")
        ui_helpers.wait_for_method(second, "UMAP of 16 images")
        ui_helpers.set_k(first, 6)  # the first session repeats its own query on its own folder
        ui_helpers.wait_for_gallery(first, 6)
        expected = core_gallery.neighbours_of_index(core_gallery.index_of_id(point["id"]), 6)
        assert caption_ids(first) == [n.id for n in expected]
        assert "24 images in 3 classes" in load_status(first) and "16 images" in load_status(second)
        assert first.evaluate("() => document.querySelector('%s').layout.title.text" % ui_helpers.PLOT).startswith("UMAP of 24 images")
    finally:
        first.context.close()
        second.context.close()
