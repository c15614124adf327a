"""The UI's pure helpers, without a browser: logins, data roots (share mode), uploads
(zip-slip), the map's figure, per-session state and the training read-outs."""

from __future__ import annotations

import gc
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
from retrieval_app.ui.plot import PALETTE, POINT_SIZE, STAR_SIZE, decode_map, file_path, file_url, highlight_json, highlight_payload, map_payload, points_json
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
def test_the_map_payload_decodes_to_each_points_position_class_and_id():
    coords = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = np.array([1, 0, 1, 0, 1, 1])
    ids = ["b/x0.png", "a/x1.png", "b/deeper/x2.png", "a/x3.png", "elsewhere/x4.png", "b/x5.png"]
    value = map_payload(coords, labels, ["a", "b"], ids, token="t0k", highlight=highlight_payload(query=2, neighbours=[4, 0]))
    decoded = decode_map(value)
    assert np.array_equal(decoded["coords"], coords) and decoded["labels"].tolist() == labels.tolist()
    assert decoded["ids"] == ids and decoded["classes"] == ["a", "b"] and decoded["token"] == "t0k"
    payload = json.loads(value)
    assert payload["points"]["ids"] == ["x0.png", "x1.png", "deeper/x2.png", "x3.png", "/elsewhere/x4.png", "x5.png"]
    assert "thumb" not in value and "gradio_api" not in value  # no thumbnail URL for any point
    overlays = {o["name"]: o for o in payload["highlight"]["overlays"]}
    assert overlays["query"]["points"] == [2] and overlays["neighbours"]["points"] == [4, 0]
    assert [o["name"] for o in payload["highlight"]["overlays"]] == ["neighbours", "query"]  # the star last: on top
    assert payload["highlight"]["key"] == payload["key"] and payload["layout"]["uirevision"]  # zoom survives redraws


def test_the_map_payload_is_compact_at_20000_points():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(20_000, 2)).astype(np.float32)
    labels = rng.integers(0, 10, 20_000)
    classes = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    ids = [f"{classes[label]}/{i:05d}.png" for i, label in enumerate(labels)]  # as Fashion-MNIST exported to PNG
    value = map_payload(coords, labels, classes, ids, highlight=highlight_payload(query=5, neighbours=list(range(10))), title="UMAP")
    assert len(value) / 20_000 < 40  # bytes per point (a dict, URL and id per point was > 100)
    decoded = decode_map(value)
    assert np.array_equal(decoded["coords"], coords) and decoded["ids"][123] == ids[123]


def test_a_map_sent_with_a_points_url_carries_no_points_and_decodes_with_them_fetched():
    coords = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = np.array([1, 0, 1, 0, 1, 1])
    ids = ["b/x0.png", "a/x1.png", "b/x2.png", "a/x3.png", "b/x4.png", "b/x5.png"]
    args = (coords, labels, ["a", "b"], ids)
    value = map_payload(*args, highlight=highlight_payload(query=2, neighbours=[4]), points_url="/gradio_api/file=/s/p.json")
    # what the page's component holds: no point data, whatever the number of points
    assert json.loads(value)["points"] == {"n": 6, "url": "/gradio_api/file=/s/p.json"}
    assert json.loads(value)["highlight"]["overlays"] and json.loads(value)["key"] == json.loads(map_payload(*args))["key"]
    asked = []
    decoded = decode_map(value, lambda url: asked.append(url) or points_json(*args))
    inline = decode_map(map_payload(*args))
    assert asked == ["/gradio_api/file=/s/p.json"] and decoded["ids"] == inline["ids"] == ids
    assert np.array_equal(decoded["coords"], coords) and decoded["labels"].tolist() == labels.tolist()
    with pytest.raises(ValueError, match="fetch"):
        decode_map(value)
    assert file_path(file_url("/s/p.json")) == Path("/s/p.json")


def test_more_than_256_classes_get_two_byte_labels():
    labels = np.arange(300)
    value = map_payload(np.zeros((300, 2), np.float32), labels, [f"c{i}" for i in range(300)], [f"c{i}/x.png" for i in range(300)])
    assert json.loads(value)["points"]["label_type"] == "uint16"
    assert decode_map(value)["labels"].tolist() == labels.tolist()


def test_map_ranges_do_not_move_when_a_highlight_appears():
    # autorange would widen for the big star at the edge and shift points under the mouse
    coords = np.array([[0.0, 0.0], [10.0, 5.0], [4.0, 2.0]], dtype=np.float32)
    args = (coords, np.array([0, 1, 0]), ["a", "b"], ["a/x", "b/y", "a/z"])
    plain = json.loads(map_payload(*args))["layout"]
    highlighted = json.loads(map_payload(*args, highlight=highlight_payload(query=1, neighbours=[0, 2])))["layout"]
    assert plain["xaxis"]["range"] == highlighted["xaxis"]["range"]
    assert plain["yaxis"]["range"] == highlighted["yaxis"]["range"]
    x_lo, x_hi = plain["xaxis"]["range"]
    assert x_lo < 0.0 and x_hi > 10.0
    outside = json.loads(map_payload(*args, highlight=highlight_payload(query_point=np.array([20.0, 1.0]))))
    assert outside["layout"]["xaxis"]["range"][1] > 20.0  # a dropped query far out stays visible
    assert outside["highlight"]["range"] == {"x": outside["layout"]["xaxis"]["range"], "y": outside["layout"]["yaxis"]["range"]}
    assert json.loads(map_payload(*args, revision="other"))["layout"]["uirevision"] == "other"


def test_a_highlight_alone_names_its_map_and_carries_no_points():
    coords = np.random.default_rng(1).normal(size=(500, 2)).astype(np.float32)
    labels = np.arange(500) % 5
    full = json.loads(map_payload(coords, labels, list("abcde"), [f"{'abcde'[i % 5]}/{i}" for i in range(500)], revision="r"))
    alone = json.loads(highlight_json(coords, "r", highlight_payload(query=7, neighbours=[1, 2, 3], seq=9)))
    assert alone["key"] == full["key"] and alone["seq"] == 9 and "points" not in alone
    assert json.loads(highlight_json(coords + 1, "r", highlight_payload(query=7)))["key"] != full["key"]  # moved points: another map
    dropped = json.loads(highlight_json(coords, "r", highlight_payload(query_point=np.array([0.5, -1.5]))))
    star = next(o for o in dropped["overlays"] if o["name"] == "query")
    assert star["x"] == [0.5] and star["y"] == [-1.5] and "points" not in star
    assert not any(o["name"] == "neighbours" for o in dropped["overlays"])


def test_the_query_star_is_drawn_last_above_the_points_in_a_colour_no_class_uses():
    overlays = highlight_payload(query=3, neighbours=[1, 2])["overlays"]
    star, rings = overlays[-1], overlays[-2]
    assert star["name"] == "query" and rings["name"] == "neighbours" and rings["fill"] == "none"
    assert star["symbol"] == "star" and star["fill"].lower() not in {c.lower() for c in PALETTE}
    assert star["stroke"].lower() == "#ffffff"
    assert star["size"] == STAR_SIZE >= 3 * POINT_SIZE


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
    source = thumbs / "a.jpg"
    source.write_bytes(b"jpeg bytes")
    served = ServedFiles(tmp_path / "served")
    served.renew()
    first = served.add(source, "0-a.jpg")
    assert served.add(None, "1.jpg") is None and served.add(thumbs / "missing.jpg", "2.jpg") is None  # none, or vanished
    assert first.read_bytes() == b"jpeg bytes" and first.parent.parent == served.folder
    assert served.add(source, "0-a.jpg") == first  # asked again: the same link
    assert len(served.folder.name) == 32 and served.folder.name != ServedFiles(tmp_path / "served").folder.name
    served.renew()
    second = served.add(source, "0-a.jpg")
    assert second != first and not first.exists()  # a new map, new names; the old ones go
    served.close()
    assert not served.folder.exists() and source.exists()  # the thumbnail cache is untouched


def test_published_files_are_named_by_content_written_once_and_renewed_with_the_map(tmp_path):
    served = ServedFiles(tmp_path / "served")
    with pytest.raises(RuntimeError):
        served.publish(b"{}", ".json")
    served.renew()
    first = served.publish(b'{"n": 1}', ".json")
    assert first.read_bytes() == b'{"n": 1}' and first.parent == served.current and first.suffix == ".json"
    mtime = first.stat().st_mtime_ns
    assert served.publish(b'{"n": 1}', ".json") == first and first.stat().st_mtime_ns == mtime  # not written again
    other = served.publish(b'{"n": 2}', ".json")
    assert other != first and first.exists()  # another map of the same folder (PCA, then UMAP)
    served.renew()
    assert not first.exists() and not other.exists()  # another folder or model: the old maps go


def test_served_folders_of_past_runs_expire(tmp_path):
    old, young = ServedFiles(tmp_path), ServedFiles(tmp_path)
    for files in (old, young):
        files.renew()
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


def test_loading_reports_progress_and_makes_no_thumbnail(loaded_session):
    state, steps, _ = loaded_session
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0
    assert any("embedding" in text for _, text in steps)
    assert len(state.gallery) == 15
    assert not any("thumbnail" in text for _, text in steps)


def test_thumbnails_are_made_when_shown_and_only_those(tmp_path, monkeypatch):
    """Loading makes none (20,000 used to cost most of a minute before the first map); a
    gallery makes its own, a hovered point its one, each once."""
    import retrieval_app.ui.session as session_module

    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "cache"))
    made = []
    real = session_module.ensure_thumbnails
    monkeypatch.setattr(session_module, "ensure_thumbnails", lambda records, **kw: made.extend(r.id for r in records) or real(records, **kw))
    folder = write_class_folder(tmp_path / "shapes", n_classes=3, per_class=8, size=32)
    state = SessionState(served=ServedFiles(tmp_path / "served"))
    state.load(folder, "efficientnet_lite0", lambda fraction, text: None)
    thumbs = tmp_path / "cache" / "thumbs"
    assert made == [] and not list(thumbs.rglob("*.jpg"))  # none at load
    neighbours = state.neighbours_of_point(4, 5)
    items = ui_app._neighbour_items(state, neighbours)
    assert sorted(made) == sorted(n.id for n in neighbours) and len(list(thumbs.rglob("*.jpg"))) == 5
    for (path, caption), n in zip(items, neighbours):
        assert Path(path).is_file() and Path(path).is_relative_to(state.served.folder) and n.id in caption
    assert state.thumb(neighbours[0].index) == Path(items[0][0]) and len(made) == 5  # made once
    hovered = state.thumb(4)
    assert hovered.is_file() and made[-1] == state.gallery.records[4].id and len(made) == 6
    assert state.thumb(10**6) is None and state.thumb(-1) is None


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


def test_hover_requests_reach_only_their_own_session(loaded_session):
    state, _, _ = loaded_session
    sessions = ui_app.SessionRegistry()
    mine = sessions.new()
    mine.scan, mine.gallery, mine.served = state.scan, state.gallery, state.served  # loaded as `state` is
    other = sessions.new()
    answer = ui_app.hover_answer(sessions, [mine.page_token, 3])
    assert answer["url"].startswith("/gradio_api/file=") and "/served/" in answer["url"]
    assert Path(answer["url"].split("file=", 1)[1]).is_relative_to(state.served.folder)
    assert len(mine.page_token) == 32 and mine.page_token != other.page_token
    for bad in ([other.page_token, 3], ["0" * 32, 3], [mine.page_token, 10**9], [mine.page_token, "x"], None, "junk", [None, 1]):
        assert ui_app.hover_answer(sessions, bad) == {"url": ""}, bad
    del other  # a session Gradio dropped is gone from the registry
    gc.collect()
    assert len(sessions._sessions) == 1


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
