"""The UI's pure helpers, without a browser: logins, data roots (share mode), uploads
(zip-slip), the map's figure, per-session state and the training read-outs."""

from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.cli import main as cli_main
from retrieval_app.errors import RetrievalAppError
from retrieval_app.training import JobSnapshot
from retrieval_app.ui import app as ui_app
from retrieval_app.data import scan_folder
from retrieval_app.ui.access import MAX_UPLOAD_FILES, DataRoots, UploadLimits, expire_uploads, extract_upload, generate_password, parse_auth
from retrieval_app.ui.plot import PALETTE, POINT_SIZE, map_figure_json
from retrieval_app.ui.query_input import QUERY_MAX_PIXELS, read_query_image, uploaded_path
from retrieval_app.ui.served import ServedFiles, expire_served
from retrieval_app.ui.session import SessionState, _safe_name
from retrieval_app.ui.text import error_text, md_escape, plural

from synthetic import write_class_folder


# ------------------------------------------------------------------ logins
@pytest.mark.parametrize("text, expected", [("alice:s3cret", ("alice", "s3cret")), ("bob:a:b", ("bob", "a:b"))])
def test_parse_auth_splits_at_the_first_colon(text, expected):
    assert parse_auth(text) == expected


@pytest.mark.parametrize("text", ["alice", ":pw", "alice:", ""])
def test_parse_auth_rejects_incomplete_logins(text):
    with pytest.raises(RetrievalAppError, match="user:password"):
        parse_auth(text)


def test_generated_passwords_are_long_and_unique():
    passwords = {generate_password() for _ in range(20)}
    assert len(passwords) == 20
    assert all(len(p) >= 16 for p in passwords)


# -------------------------------------------------------------- data roots
@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "set_a" / "cats").mkdir(parents=True)
    (allowed / "set_a" / "dogs").mkdir()
    (allowed / "loose").mkdir()
    sibling = tmp_path / "secret"
    (sibling / "class").mkdir(parents=True)
    (allowed / "escape").symlink_to(sibling, target_is_directory=True)
    return allowed, sibling


def test_share_mode_accepts_folders_inside_a_root(roots):
    allowed, _ = roots
    guard = DataRoots.of([allowed], restricted=True)
    assert guard.check(str(allowed)) == allowed.resolve()
    assert guard.check(f"  {allowed / 'set_a'}  ") == (allowed / "set_a").resolve()


@pytest.mark.parametrize("relative", ["../secret", "set_a/../../secret", "escape", "escape/class"])
def test_share_mode_rejects_dot_dot_and_symlinks_out_of_the_roots(roots, relative):
    allowed, _ = roots
    guard = DataRoots.of([allowed], restricted=True)
    with pytest.raises(RetrievalAppError, match="share mode"):
        guard.check(str(allowed / relative))


def test_share_mode_rejects_a_sibling_with_a_common_name_prefix(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data-private").mkdir()
    guard = DataRoots.of([tmp_path / "data"], restricted=True)
    with pytest.raises(RetrievalAppError):
        guard.check(str(tmp_path / "data-private"))


def test_without_share_mode_any_folder_may_be_loaded(roots):
    allowed, sibling = roots
    guard = DataRoots.of([allowed], restricted=False)
    assert guard.check(str(sibling)) == sibling.resolve()


def test_an_empty_path_is_an_error():
    with pytest.raises(RetrievalAppError, match="folder path"):
        DataRoots.of([], restricted=False).check("   ")


def test_picker_lists_roots_and_their_datasets(roots):
    allowed, _ = roots
    choices = DataRoots.of([allowed, allowed], restricted=True).choices()
    assert choices[0] == str(allowed.resolve())
    assert str(allowed.resolve() / "set_a") in choices
    assert str(allowed.resolve() / "loose") not in choices  # no class folders in it
    assert choices.count(str(allowed.resolve())) == 1


def _roots_with_a_linked_class(tmp_path):
    root = write_class_folder(tmp_path / "root", n_classes=2, per_class=3, size=16)
    outside = write_class_folder(tmp_path / "outside", n_classes=1, per_class=4, size=16, seed=3)
    (root / "linked").symlink_to(outside / "class_00", target_is_directory=True)
    return root


def test_share_mode_skips_images_that_resolve_outside_the_data_roots(tmp_path):
    root = _roots_with_a_linked_class(tmp_path)
    scan = scan_folder(root)
    assert len(scan.records) == 10  # the scan itself follows the linked class folder
    kept = DataRoots.of([root], restricted=True).keep_inside(scan)
    assert kept.classes == ["class_00", "class_01"]
    assert [r.id for r in kept.records] == [r.id for r in scan.records if not r.id.startswith("linked/")]
    assert all(kept.classes[r.label] == r.class_name for r in kept.records)
    outside = [s for s in kept.skipped if s.path.startswith("linked/")]
    assert len(outside) == 4 and all("outside the data roots" in s.reason for s in outside)
    assert any("linked" in w for w in kept.warnings)
    assert DataRoots.of([root], restricted=False).keep_inside(scan) is scan  # local use: unchanged


def test_share_mode_refuses_a_folder_whose_classes_all_lie_outside(tmp_path):
    outside = write_class_folder(tmp_path / "outside", n_classes=2, per_class=2, size=16)
    root = tmp_path / "root"
    root.mkdir()
    for name in ("class_00", "class_01"):
        (root / name).symlink_to(outside / name, target_is_directory=True)
    with pytest.raises(RetrievalAppError, match="inside the data roots"):
        DataRoots.of([root], restricted=True).keep_inside(scan_folder(root))


# ------------------------------------------------------------------ uploads
def _image_bytes(tmp_path: Path) -> bytes:
    folder = write_class_folder(tmp_path / "src", n_classes=1, per_class=1, size=16)
    return next(folder.rglob("*.jpg")).read_bytes()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_of_class_folders_unpacks_into_the_target(tmp_path):
    jpg = _image_bytes(tmp_path)
    upload = _zip(tmp_path / "set.zip", {"dataset/cats/a.jpg": jpg, "dataset/dogs/b.jpg": jpg, "dataset/notes.txt": b"x"})
    folder = extract_upload([upload], tmp_path / "cache" / "up1")
    assert folder == tmp_path / "cache" / "up1" / "dataset"  # the single top folder is the dataset
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["cats/a.jpg", "dogs/b.jpg"]


@pytest.mark.parametrize("member", ["../evil.jpg", "cats/../../evil.jpg", "/tmp/evil-upload-test.jpg"])
def test_zip_slip_members_are_refused_and_nothing_is_written_outside(tmp_path, member):
    jpg = _image_bytes(tmp_path)
    upload = _zip(tmp_path / "bad.zip", {member: jpg})
    target = tmp_path / "cache" / "up"
    with pytest.raises(RetrievalAppError, match="outside"):
        extract_upload([upload], target)
    assert not target.exists()  # nothing of a refused upload stays
    assert not (tmp_path / "cache" / "evil.jpg").exists()
    assert not (tmp_path / "evil.jpg").exists()
    assert not Path("/tmp/evil-upload-test.jpg").exists()


def test_a_refused_zip_slip_member_after_good_ones_leaves_no_partial_extraction(tmp_path):
    jpg = _image_bytes(tmp_path)
    upload = _zip(tmp_path / "mixed.zip", {"set/cats/a.jpg": jpg, "set/dogs/b.jpg": jpg, "set/../../evil.jpg": jpg})
    target = tmp_path / "cache" / "up"
    with pytest.raises(RetrievalAppError, match="outside"):
        extract_upload([upload], target)
    assert not target.exists() and not (tmp_path / "evil.jpg").exists()


def test_a_zip_with_too_many_images_is_refused_before_anything_is_written(tmp_path):
    upload = tmp_path / "many.zip"
    with zipfile.ZipFile(upload, "w") as archive:  # the real limit: 20,000 images
        for i in range(MAX_UPLOAD_FILES + 1):
            archive.writestr(f"set/c{i % 2}/{i}.png", b"x")
    target = tmp_path / "cache" / "up"
    with pytest.raises(RetrievalAppError, match="20,000 images"):
        extract_upload([upload], target)
    assert not target.exists()


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path):
    # 80 MB of zeros compress to ~80 KB: a 1000-fold expansion no set of images has
    upload = tmp_path / "bomb.zip"
    with zipfile.ZipFile(upload, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("set/a/bomb.png", bytes(80 * 1024**2))
        archive.writestr("set/b/ok.png", b"x")
    assert upload.stat().st_size < 1024**2
    target = tmp_path / "cache" / "up"
    with pytest.raises(RetrievalAppError, match="zip bomb"):
        extract_upload([upload], target)
    assert not target.exists()


def test_one_member_above_the_per_image_limit_is_refused(tmp_path):
    upload = _zip(tmp_path / "big.zip", {"set/a/big.png": bytes(3 * 1024**2), "set/b/ok.png": b"x"})
    target = tmp_path / "cache" / "up"
    with pytest.raises(RetrievalAppError, match="per image"):
        extract_upload([upload], target, UploadLimits(member_bytes=2 * 1024**2))
    assert not target.exists()


def test_the_total_unpacked_size_is_bounded(tmp_path):
    upload = _zip(tmp_path / "sum.zip", {f"set/c{i % 2}/{i}.png": bytes(1024**2) for i in range(4)})
    target = tmp_path / "cache" / "up"
    with pytest.raises(RetrievalAppError, match="unpacked"):
        extract_upload([upload], target, UploadLimits(total_bytes=3 * 1024**2))
    assert not target.exists()
    assert extract_upload([upload], target, UploadLimits(total_bytes=4 * 1024**2)).is_dir()  # at the limit: fine


def test_old_uploads_expire_and_new_ones_stay(tmp_path):
    uploads = tmp_path / "uploads"
    old, young = uploads / "s1" / "old", uploads / "s2" / "young"
    for folder in (old, young):
        (folder / "cats").mkdir(parents=True)
        (folder / "cats" / "a.jpg").write_bytes(b"x")
    day_and_a_bit = time.time() - 25 * 3600
    os.utime(old, (day_and_a_bit, day_and_a_bit))
    assert expire_uploads(uploads) == [old]
    assert not (uploads / "s1").exists()  # its session folder was left empty
    assert (young / "cats" / "a.jpg").is_file()


def test_loose_images_go_into_one_class_folder(tmp_path):
    jpg = _image_bytes(tmp_path)
    (tmp_path / "a.jpg").write_bytes(jpg)
    (tmp_path / "b.png").write_bytes(jpg)
    target = tmp_path / "cache" / "up"
    folder = extract_upload([tmp_path / "a.jpg", tmp_path / "b.png"], target)
    assert sorted(p.name for p in (folder / "uploaded").iterdir()) == ["a.jpg", "b.png"]


def test_uploads_without_images_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RetrievalAppError, match="neither an image"):
        extract_upload([tmp_path / "notes.txt"], tmp_path / "up1")
    empty = _zip(tmp_path / "empty.zip", {"readme.md": b"no images"})
    with pytest.raises(RetrievalAppError, match="no images"):
        extract_upload([empty], tmp_path / "up2")


# ---------------------------------------------------------------- the map
def test_map_figure_carries_global_indices_and_highlights():
    coords = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = np.array([1, 0, 1, 0, 1, 1])
    thumbs = [Path(f"/cache/t{i}.jpg") for i in range(5)] + [None]
    figure = json.loads(map_figure_json(coords, labels, ["a", "b"], [f"id{i}" for i in range(6)], thumbs, query=2, neighbours=[4, 0]))
    classes = {t["name"]: t for t in figure["data"] if t["name"] in ("a", "b")}
    assert [row[0] for row in classes["a"]["customdata"]] == [1, 3]
    assert [row[0] for row in classes["b"]["customdata"]] == [0, 2, 4, 5]
    assert classes["b"]["x"] == [0.0, 4.0, 8.0, 10.0]  # each point at its own coordinates
    assert classes["b"]["customdata"][1][1] == "/gradio_api/file=/cache/t2.jpg"
    assert classes["b"]["customdata"][3][1] == ""  # no thumbnail, no hover image
    highlight = {t["name"]: t for t in figure["data"] if t["name"] in ("query", "neighbours")}
    assert highlight["query"]["x"] == [4.0] and highlight["query"]["y"] == [5.0]
    assert highlight["neighbours"]["x"] == [8.0, 0.0]
    assert figure["layout"]["uirevision"]  # zoom survives redraws


def test_map_ranges_do_not_move_when_a_highlight_appears():
    # autorange would widen for the big star at the edge and shift points under the mouse
    coords = np.array([[0.0, 0.0], [10.0, 5.0], [4.0, 2.0]], dtype=np.float32)
    args = (coords, np.array([0, 1, 0]), ["a", "b"], ["x", "y", "z"], [None] * 3)
    plain = json.loads(map_figure_json(*args))["layout"]
    highlighted = json.loads(map_figure_json(*args, query=1, neighbours=[0, 2]))["layout"]
    assert plain["xaxis"]["range"] == highlighted["xaxis"]["range"]
    assert plain["yaxis"]["range"] == highlighted["yaxis"]["range"]
    x_lo, x_hi = plain["xaxis"]["range"]
    assert x_lo < 0.0 and x_hi > 10.0
    outside = json.loads(map_figure_json(*args, query_point=np.array([20.0, 1.0])))["layout"]
    assert outside["xaxis"]["range"][1] > 20.0  # a dropped query far out stays visible
    assert json.loads(map_figure_json(*args, revision="other"))["layout"]["uirevision"] == "other"


def test_map_figure_places_a_dropped_query_without_neighbour_index():
    coords = np.zeros((3, 2), dtype=np.float32)
    figure = json.loads(map_figure_json(coords, np.array([0, 1, 1]), ["a", "b"], ["x", "y", "z"], [None] * 3, query_point=np.array([0.5, -1.5])))
    query = next(t for t in figure["data"] if t["name"] == "query")
    assert query["x"] == [0.5] and query["y"] == [-1.5]
    assert not any(t["name"] == "neighbours" for t in figure["data"])


def test_the_query_star_is_drawn_last_above_the_points_in_a_colour_no_class_uses():
    coords = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    labels = np.arange(40) % 20
    figure = json.loads(map_figure_json(coords, labels, [f"c{i}" for i in range(20)], [str(i) for i in range(40)], [None] * 40, query=3, neighbours=[1, 2]))
    star, rings = figure["data"][-1], figure["data"][-2]
    assert star["name"] == "query" and rings["name"] == "neighbours"
    # plotly paints SVG traces under the WebGL points; in the same WebGL layer, last is on top
    assert {t["type"] for t in figure["data"]} == {"scattergl"}
    assert star["marker"]["color"].lower() not in {c.lower() for c in PALETTE}
    assert star["marker"]["line"]["color"].lower() == "#ffffff"
    assert star["marker"]["size"] >= 3 * POINT_SIZE


# ----------------------------------------------------------- page text
def test_markdown_escaping_keeps_paths_and_reasons_literal():
    text = "needs root/cats/*.jpg, root/dogs/*.jpg; see [x](y) `code` #1 <b>_a_</b> $$x$$"
    escaped = md_escape(text)
    assert "*" not in escaped.replace("\\*", "")
    assert "_" not in escaped.replace("\\_", "")
    assert escaped.replace("\\", "") == text.replace("\\", "")  # only backslashes added


@pytest.mark.parametrize("count, expected", [(0, "0 images"), (1, "1 image"), (2, "2 images"), (20000, "20,000 images")])
def test_plurals(count, expected):
    assert plural(count, "image") == expected
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"


def test_errors_read_error_and_carry_no_emoji():
    text = error_text(RetrievalAppError("folder a_b*c* is empty"))
    assert text.startswith("**Error:**") and "❌" not in text
    assert "a\\_b\\*c\\*" in text
    assert error_text(ValueError("bad")) == "**Error:** ValueError\\: bad"


# ----------------------------------------------------------- query input
def _png(tmp_path: Path, name: str, size: tuple[int, int], mode: str = "1") -> Path:
    from PIL import Image

    path = tmp_path / name
    Image.new(mode, size).save(path)
    return path


def test_a_query_above_the_pixel_cap_is_refused_from_its_header(tmp_path):
    side = int(QUERY_MAX_PIXELS**0.5) + 100
    path = _png(tmp_path, "huge.png", (side, side))
    assert path.stat().st_size < 100_000  # small on disk, huge in memory
    with pytest.raises(RetrievalAppError, match=r"huge\.png: image too large for a query"):
        read_query_image(str(path), "huge.png", 448)


def test_a_query_is_decoded_to_the_networks_working_size_and_named_by_its_upload_name(tmp_path):
    path = _png(tmp_path, "grey.png", (3000, 1500), mode="L")
    image = read_query_image(str(path), "mine.png", 448)
    assert image.mode == "RGB" and image.size == (448, 224)
    (tmp_path / "broken.jpg").write_text("not an image")
    with pytest.raises(RetrievalAppError) as info:
        read_query_image(str(tmp_path / "broken.jpg"), "broken.jpg", 448)
    assert str(info.value).startswith("broken.jpg: not a recognised image") and str(tmp_path) not in str(info.value)


def test_uploaded_files_arrive_as_gradio_file_data_or_paths():
    assert uploaded_path({"path": "/tmp/gradio/abc/x.png", "orig_name": "holiday.png"}) == ("/tmp/gradio/abc/x.png", "holiday.png")
    assert uploaded_path("/data/q.jpg") == ("/data/q.jpg", "q.jpg")
    with pytest.raises(RetrievalAppError):
        uploaded_path({"path": None})


# ----------------------------------------------------------- served files
def test_served_files_are_links_under_an_unguessable_folder_and_go_with_the_session(tmp_path):
    thumbs = tmp_path / "thumbs"
    thumbs.mkdir()
    sources = [thumbs / "a.jpg", None, thumbs / "missing.jpg"]
    sources[0].write_bytes(b"jpeg bytes")
    served = ServedFiles(tmp_path / "served")
    first = served.publish(sources)
    assert first[1] is None and first[2] is None  # no thumbnail, or one that vanished
    assert first[0].read_bytes() == b"jpeg bytes" and first[0].parent.parent == served.folder
    assert len(served.folder.name) == 32 and served.folder.name != ServedFiles(tmp_path / "served").folder.name
    second = served.publish(sources)
    assert second[0] != first[0] and not first[0].exists()  # a new map, new names; the old ones go
    served.close()
    assert not served.folder.exists() and sources[0].exists()  # the thumbnail cache is untouched


def test_served_folders_of_past_runs_expire(tmp_path):
    old, young = ServedFiles(tmp_path), ServedFiles(tmp_path)
    for files in (old, young):
        files.publish([])
    stale = time.time() - 25 * 3600
    os.utime(old.folder, (stale, stale))
    assert expire_served(tmp_path) == [old.folder]
    assert young.folder.exists()


# ----------------------------------------------------------- session state
@pytest.mark.parametrize("name, expected", [("My model v2", "My-model-v2"), ("../../etc", "etc"), ("a/b\\c", "a-b-c")])
def test_model_names_cannot_leave_the_models_folder(name, expected):
    assert _safe_name(name) == expected


def test_a_model_name_without_letters_is_refused():
    with pytest.raises(RetrievalAppError):
        _safe_name("../..")


@pytest.fixture(scope="module")
def loaded_session(tmp_path_factory):
    base = tmp_path_factory.mktemp("session")
    folder = write_class_folder(base / "shapes", n_classes=3, per_class=5, size=48)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
    monkey.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
    steps = []
    state = SessionState()
    state.load(folder, "efficientnet_lite0", lambda fraction, text: steps.append((fraction, text)))
    yield state, steps, folder
    monkey.undo()


def test_loading_reports_progress_and_makes_thumbnails(loaded_session):
    state, steps, _ = loaded_session
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0
    assert any("embedding" in text for _, text in steps)
    assert len(state.gallery) == 15 and len(state.thumbs) == 15
    assert all(p is not None and p.is_file() for p in state.thumbs)


def test_session_neighbours_match_the_core_and_highlight_them(loaded_session):
    state, _, _ = loaded_session
    state.quick_projection()
    neighbours = state.neighbours_of_point(7, 4)
    assert [n.index for n in neighbours] == [n.index for n in state.gallery.neighbours_of_index(7, 4)]
    assert state.highlight == (7, [n.index for n in neighbours])


@pytest.mark.parametrize("bad", [None, "seven", -1, 15, 10**9])
def test_session_rejects_bad_point_indices(loaded_session, bad):
    state, _, _ = loaded_session
    with pytest.raises(RetrievalAppError):
        state.neighbours_of_point(bad, 3)


def test_a_dropped_image_is_searched_and_placed_on_the_map(loaded_session):
    state, _, folder = loaded_session
    state.quick_projection()
    query = sorted((folder / "class_01").glob("*.jpg"))[0]
    neighbours = state.neighbours_of_image(str(query), 3)
    assert neighbours[0].path == query and neighbours[0].distance == pytest.approx(0.0, abs=1e-4)
    assert state.query_point is not None and state.highlight[0] is None
    assert np.allclose(state.query_point, state.projection.coords[neighbours[0].index], atol=1e-3)


def test_a_query_that_cannot_be_read_clears_the_previous_highlight(loaded_session, tmp_path):
    state, _, folder = loaded_session
    state.quick_projection()
    state.neighbours_of_image(str(sorted((folder / "class_00").glob("*.jpg"))[0]), 3)
    assert state.query_point is not None and state.highlight[1]
    (tmp_path / "broken.jpg").write_text("hello")
    with pytest.raises(RetrievalAppError, match="broken.jpg"):
        state.neighbours_of_image({"path": str(tmp_path / "broken.jpg"), "orig_name": "broken.jpg"}, 3)
    assert state.highlight == (None, []) and state.query_point is None and state.last_query is None


def test_loaded_thumbnails_are_served_from_the_sessions_folder(loaded_session):
    state, _, _ = loaded_session
    assert all(p.is_relative_to(state.served.folder) for p in state.thumbs)


def test_sessions_are_independent():
    assert SessionState().session_id != SessionState().session_id
    assert SessionState().gallery is None
    with pytest.raises(RetrievalAppError, match="load a folder"):
        SessionState().neighbours_of_point(0, 3)


# ------------------------------------------------------ training read-outs
def test_status_text_shows_progress_and_failure():
    running = JobSnapshot(state="running", phase="training", epoch=2, epochs=5, fraction=0.4, loss_history=[(1, 0.5), (2, 0.25)], active_history=[(1, 0.9), (2, 0.6)], images_per_s=123.0, eta_s=42.0)
    text = ui_app._status_text(running)
    for part in ("training", "epoch 2/5", "40 %", "loss 0.2500", "active triplets 0.60", "123 images/s", "ETA 42 s"):
        assert part in text
    failed = JobSnapshot(state="failed", error="out of memory")
    assert "out of memory" in ui_app._status_text(failed)


def test_before_after_table_marks_the_kept_model():
    class Result:
        before = {"precision_at_1": 0.5, "map_at_r": 0.25}
        after = {"precision_at_1": 0.75, "map_at_r": float("nan")}
        kept = "trained"

    rows = {row[0]: row[1:] for row in ui_app._before_after(Result())}
    assert rows["P@1 (mean)"] == ["0.500", "0.750"]
    assert rows["MAP@R (mean)"] == ["0.250", "–"]
    assert rows["kept"] == ["", "✓"]
    assert math.isnan(Result.after["map_at_r"])


# --------------------------------------------------------------- the CLI
def test_ui_command_refuses_a_missing_folder(tmp_path, capsys):
    assert cli_main(["ui", str(tmp_path / "nope"), "--no-browser"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bare_command_means_ui_and_checks_the_login_before_starting(capsys):
    # no sub-command: the options go to `ui`; a malformed --auth stops it before any server starts
    assert cli_main(["--no-browser", "--auth", "no-colon"]) == 2
    assert "user:password" in capsys.readouterr().err
