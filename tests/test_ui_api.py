"""The app through its API (gradio_client) and raw HTTP, no browser: named endpoints,
queries by point and by image, bad and hostile queries, concurrency, and share mode's
rules (login on every route, what is served, data roots, uploads)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

import ui_helpers  # noqa: E402
from retrieval_app.ui.access import MAX_UPLOAD_FILE_BYTES  # noqa: E402
from retrieval_app.ui.plot import decode_map  # noqa: E402
from retrieval_app.ui.launch import launch_app  # noqa: E402
from retrieval_app.training.standby import StandbyWorker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Leopards", "sunflower", "watch")
K = 5
LOGIN = ("alice", "pa55word")
SHARE_MAX_FILE_BYTES = 2 * 1024**2
ENDPOINTS = {"/load_folder", "/upload_folder", "/set_map_method", "/neighbours_of_point", "/query_image", "/set_k",
             "/train", "/cancel_training", "/training_status", "/preview_blend", "/set_blend", "/delete_model", "/list_models",
             "/hardest_pair_of_point", "/suspicious_labels", "/verify_pair", "/calibrate_verification", "/set_verification_threshold",
             "/load_folder_with_labels", "/replay_live_map",
             "/select_points", "/clear_selection", "/browse_class", "/selection_page", "/find_point", "/set_colouring"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """data/photos (3 classes × 8 photos), data/linked (2 classes + a class folder linked to
    one outside the data root), elsewhere/ (a dataset outside it)."""
    base = tmp_path_factory.mktemp("ui-api")
    folder = base / "data" / "photos"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for path in sorted((ROOT / "sample_data" / name).glob("*.jpg"))[:8]:
            shutil.copy(path, folder / name / path.name)
    outside = base / "elsewhere"
    shutil.copytree(folder, outside)
    linked = base / "data" / "linked"
    linked.mkdir()
    for name in CLASSES[:2]:
        shutil.copytree(folder / name, linked / name)
    (linked / "smuggled").symlink_to(outside / CLASSES[2], target_is_directory=True)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
    monkey.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
    yield {"base": base, "folder": folder, "linked": linked, "outside": outside, "cache": base / "cache"}
    monkey.undo()


@pytest.fixture(scope="module")
def server(env):
    port = ui_helpers.free_port()
    demo = launch_app(folder=env["folder"], port=port, open_browser=False, block=False)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def share_server(env):
    """Share mode's rules (login, data roots) without a public link (no network in tests),
    with a small upload limit so the 413 can be tested."""
    port = ui_helpers.free_port()
    demo = launch_app(folder=env["folder"], port=port, open_browser=False, block=False, auth=":".join(LOGIN),
                      restrict_folders=True, data_roots=[str(env["folder"].parent)], max_file_size=SHARE_MAX_FILE_BYTES)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


# What these tests check is that answers are right, not how fast they come: the client's
# HTTP requests (an upload takes httpx's default 5 s) may wait on a busy machine.
SLOW_MACHINE = {"timeout": 120}


def loaded_client(url: str, folder: Path, auth=None) -> Client:
    client = Client(url, verbose=False, auth=auth, download_files=False, httpx_kwargs=SLOW_MACHINE)
    status, _ = client.predict(str(folder), "efficientnet_lite0", "pca", api_name="/load_folder")
    assert "images in" in status, status
    return client


@pytest.fixture(scope="module")
def client(server, env):
    return loaded_client(server[1], env["folder"])


def caption_ids(gallery) -> list[str]:
    return [item["caption"].rsplit(" · ", 1)[-1] for item in gallery]


def map_overlays(map_json: str) -> dict[str, dict]:
    """The map's highlight (rings, star) by name (in the map's value itself)."""
    return {o["name"]: o for o in (json.loads(map_json)["highlight"] or {}).get("overlays", [])}


def fetcher(url: str, cookie: str | None = None):
    """`decode_map`'s fetch for the app at `url`: the map's points over HTTP, as the page gets them."""
    def fetch(path: str) -> bytes:
        status, body = http_request(url, path, cookie=cookie)
        assert status == 200, (path, status)
        return body
    return fetch


def sample_queries(n: int) -> list[Path]:
    """n photos of sample_data/ (all classes, most of them not in the loaded folder)."""
    photos = sorted((ROOT / "sample_data").glob("*/*.jpg"))
    return photos[:: max(1, len(photos) // n)][:n]


# ----------------------------------------------------------------- the API
def test_every_event_has_a_meaningful_api_name_and_internal_ones_are_private(client):
    api = client.view_api(print_info=False, return_format="dict", all_endpoints=True)
    assert set(api["named_endpoints"]) == ENDPOINTS
    assert not api["unnamed_endpoints"]
    point = api["named_endpoints"]["/neighbours_of_point"]["parameters"]
    assert [(p["parameter_name"], p["component"]) for p in point] == [("index", "Number"), ("k", "Slider")]
    assert api["named_endpoints"]["/query_image"]["parameters"][0]["component"] == "Image"


def test_a_point_through_the_api_gives_the_cores_neighbours(client, core_gallery):
    index = core_gallery.index_of_id("watch/image_0003.jpg")
    gallery, query, summary = client.predict(index, K, api_name="/neighbours_of_point")
    assert caption_ids(gallery) == [n.id for n in core_gallery.neighbours_of_index(index, K)]
    assert gallery[0]["caption"].startswith("1. ")
    assert "watch/image\\_0003\\.jpg" in summary and query is not None
    for bad in (len(core_gallery), -1, 2.5):
        gallery, _, message = client.predict(bad, K, api_name="/neighbours_of_point")
        assert gallery == [] and message.startswith("**Error:**"), bad


def test_a_points_hardest_pair_and_the_suspicious_labels_through_the_api(client, core_gallery):
    from retrieval_app.retrieval.labels import suspicious_labels

    index = core_gallery.index_of_id("Leopards/image_0003.jpg")
    items, words = client.predict(index, api_name="/hardest_pair_of_point")
    positive, negative = core_gallery.hardest_pair_of_index(index)
    assert caption_ids(items) == [positive.id, negative.id]
    assert items[0]["caption"].startswith("hardest positive ✓ Leopards") and items[1]["caption"].startswith("nearest negative ✗")
    assert f"{negative.distance - positive.distance:+.3f}" in words
    items, words = client.predict(len(core_gallery), api_name="/hardest_pair_of_point")
    assert items == [] and words.startswith("**Error:**")
    summary, table, pairs, csv_file = client.predict(5, api_name="/suspicious_labels")
    expected = suspicious_labels(core_gallery, k=5)
    assert [row[1] for row in table["data"]] == [hit.id for hit in expected]
    assert len(pairs) == 2 * min(len(expected), 24)
    lines = Path(csv_file["path"]).read_text(encoding="utf-8").splitlines()  # the server's copy (same machine)
    assert lines[0].startswith("rank,id,class,looks_like") and len(lines) == len(expected) + 1
    assert f"{len(core_gallery)} images" in summary


def test_an_image_through_the_api_gives_the_cores_neighbours(client, core_gallery):
    query = ROOT / "sample_data" / "watch" / "image_0012.jpg"
    gallery, summary = client.predict(handle_file(str(query)), K, api_name="/query_image")
    assert caption_ids(gallery) == [n.id for n in core_gallery.neighbours_of_images([query], K)[0]]
    assert "placed on the map" in summary


def test_a_corrupt_query_gives_one_line_and_clears_the_old_results(client, env):
    client.predict(handle_file(str(ROOT / "sample_data" / "Leopards" / "image_0020.jpg")), K, api_name="/query_image")
    _, figure = client.predict("pca", api_name="/set_map_method")
    assert {"query", "neighbours"} <= set(map_overlays(figure))  # a star and rings to be cleared
    broken = env["base"] / "broken.jpg"
    broken.write_text("these are text bytes, not a JPEG")
    gallery, message = client.predict(handle_file(str(broken)), K, api_name="/query_image")
    assert gallery == []
    assert message.startswith("**Error:** broken\\.jpg\\: not a recognised image file") and "\n" not in message
    assert "preprocess" not in message.lower() and "UnidentifiedImageError" not in message
    _, figure = client.predict("pca", api_name="/set_map_method")
    assert not {"query", "neighbours"} & set(map_overlays(figure))


def test_a_huge_one_bit_png_query_is_refused_at_once(client, env):
    path = env["base"] / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)  # ~12 KB on disk, 100 MP
    assert path.stat().st_size < 50_000
    start = time.perf_counter()
    gallery, message = client.predict(handle_file(str(path)), K, api_name="/query_image")
    assert gallery == [] and "too large for a query" in message and "40 MP" in message
    assert time.perf_counter() - start < 5.0  # header only: seconds of decoding before the fix


def test_image_queries_have_a_concurrency_limit(server):
    demo, _ = server
    query = next(fn for fn in demo.fns.values() if fn.api_name == "query_image")
    assert query.concurrency_limit == 2 and query.concurrency_id == "query_image"
    assert query.preprocess is False  # the raw upload: decoded by the app, never re-saved


def test_50_concurrent_queries_from_5_sessions_are_all_correct(server, env, core_gallery):
    clients = [loaded_client(server[1], env["folder"]) for _ in range(5)]
    queries = sample_queries(50)
    expected = {q: [n.id for n in found] for q, found in zip(queries, core_gallery.neighbours_of_images(queries, K))}
    jobs = [(q, clients[i % 5].submit(handle_file(str(q)), K, api_name="/query_image")) for i, q in enumerate(queries)]
    results = {q: job.result(timeout=300) for q, job in jobs}
    wrong = [q.name for q, (gallery, message) in results.items() if caption_ids(gallery) != expected[q]]
    assert not wrong, f"{len(wrong)} of 50 wrong: {wrong[:5]}"


def test_100_concurrent_identical_greyscale_queries_all_succeed(server, env, core_gallery):
    grey = env["base"] / "grey.png"
    Image.open(ROOT / "sample_data" / "sunflower" / "image_0015.jpg").convert("L").save(grey)
    expected = [n.id for n in core_gallery.neighbours_of_images([grey], K)[0]]
    clients = [loaded_client(server[1], env["folder"]) for _ in range(4)]
    jobs = [clients[i % 4].submit(handle_file(str(grey)), K, api_name="/query_image") for i in range(100)]
    results = [job.result(timeout=300) for job in jobs]
    failed = [message for gallery, message in results if caption_ids(gallery) != expected]
    assert not failed, f"{len(failed)} of 100 failed, e.g. {failed[:2]}"


def test_thumbnails_are_made_for_what_is_shown_not_at_load(server, env):
    def thumbnails() -> set[Path]:
        return set((env["cache"] / "thumbs").rglob("*.jpg"))

    before = thumbnails()
    client = Client(server[1], verbose=False, download_files=False, httpx_kwargs=SLOW_MACHINE)
    status, figure = client.predict(str(env["outside"]), "efficientnet_lite0", "pca", api_name="/load_folder")
    assert "24 images in 3 classes" in status and len(decode_map(figure, fetcher(server[1]))["ids"]) == 24
    assert thumbnails() == before  # none made at load
    gallery, query, _ = client.predict(3, K, api_name="/neighbours_of_point")
    made = thumbnails() - before
    assert len(gallery) == K and query is not None and 1 <= len(made) <= K + 1  # the gallery's and the query's


def test_sessions_through_the_api_keep_their_own_folders(server, env, core_gallery):
    first = loaded_client(server[1], env["folder"])
    second = loaded_client(server[1], env["linked"])
    index = core_gallery.index_of_id("sunflower/image_0002.jpg")
    gallery, _, _ = first.predict(index, K, api_name="/neighbours_of_point")
    assert caption_ids(gallery) == [n.id for n in core_gallery.neighbours_of_index(index, K)]
    gallery, _, _ = second.predict(0, K, api_name="/neighbours_of_point")
    assert all(i.split("/")[0] in ("Leopards", "sunflower", "smuggled") for i in caption_ids(gallery))


def poll_training(client: Client, done: str, timeout: float = 300) -> list:
    """/training_status until its status has `done`; every output of the last poll."""
    deadline = time.monotonic() + timeout
    while True:
        outputs = client.predict(api_name="/training_status")
        if done in outputs[0]:
            return outputs
        assert time.monotonic() < deadline, outputs[0]
        time.sleep(1.0)


def test_training_and_its_dial_through_the_api(server, env):
    client = loaded_client(server[1], env["folder"])
    assert client.predict(1.0, api_name="/set_blend")[0].startswith("No dial yet")
    # /train's last input, the blend, defaults to the dial's recommended point
    started = client.predict("efficientnet_lite0", "quick", "euclidean", 0.2, "batch_all", 2, None, "api-run", api_name="/train")
    assert started[0] == "Training started…"
    outputs = poll_training(client, "Kept")
    words = next(o for o in outputs if isinstance(o, str) and "on your classes" in o)
    assert outputs[0].count("Kept") == 1 and "Switching" not in outputs[0], outputs[0]
    _, preview = client.predict(1.0, api_name="/preview_blend")
    assert preview.startswith("**Blend 1**") and "on new classes" in preview and preview != words
    kept_backbone = "Kept the backbone" in outputs[0]
    answer = client.predict(1.0, api_name="/set_blend")[0]
    if kept_backbone:  # nothing was saved: the same settings train again at blend 1
        assert answer == "Training again with blend 1…"
        assert "Switching" in poll_training(client, "Kept the fine")[0]  # (Markdown: "fine\\-tuned")
    else:  # the saved model moved to blend 1
        assert "now use" in answer


def test_uploads_are_limited_to_1_gib_per_file_by_default(server):
    assert server[0].max_file_size == MAX_UPLOAD_FILE_BYTES == 1024**3


def test_the_launch_banner_names_the_apps_own_share_option(env, capfd):
    demo = launch_app(folder=None, port=ui_helpers.free_port(), open_browser=False, block=False)
    demo.close()
    out = "".join(capfd.readouterr())
    assert "share=True" not in out and "launch()" not in out
    assert "retrieval-app --share" in out and "running at http://127.0.0.1:" in out


# ------------------------------------------------------------- share mode
def http_request(url: str, path: str, method: str = "GET", cookie: str | None = None, body: bytes | None = None, headers=None, timeout=5.0):
    """(status, body start) of a raw request: the path is sent exactly as given (no
    normalisation of `..` or %-escapes by a client library)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    all_headers = dict(headers or {})
    if cookie:
        all_headers["Cookie"] = cookie
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    except TimeoutError:
        return "open stream", b""
    finally:
        connection.close()


def login_cookie(url: str) -> str:
    form = urllib.parse.urlencode({"username": LOGIN[0], "password": LOGIN[1]}).encode()
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("POST", "/login", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    response.read()
    cookies = [v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
    assert response.status == 200 and cookies, response.status
    return "; ".join(cookies)


def all_routes(app):
    for route in app.routes:
        if hasattr(route, "original_router"):  # FastAPI's included routers (/gradio_api/...)
            yield from all_routes(route.original_router)
        else:
            yield route


# Answer 2xx/3xx without a login, and why that is fine: the login page and Gradio's own
# static assets, nothing of the app's data.
PUBLIC = {
    "/": "the login page (its config says only auth_required)",
    "/logout": "redirects to the login page",
    "/openapi.json": "FastAPI's list of Gradio's routes (no app endpoints or data)",
    "/favicon.ico": "Gradio's icon", "/theme.css": "Gradio's theme", "/gradio_api/theme.css": "Gradio's theme",
    "/robots.txt": "robots rules", "/manifest.json": "app name and icon",
    "/gradio_api/user": "null without a login", "/gradio_api/user/": "null without a login",
    "/gradio_api/token": "nulls without a login", "/gradio_api/token/": "nulls without a login",
    "/gradio_api/app_id": "a random number per server", "/gradio_api/app_id/": "a random number per server",
    "/gradio_api/startup-events": "true/false: whether the server has started",
    "/gradio_api/heartbeat/{session_hash}": "a ping stream for a session id the caller made up",
    "/gradio_api/reset": "a no-op in Gradio 6", "/gradio_api/reset/": "a no-op in Gradio 6",
    "/gradio_api/cancel": "cancels a job only given its session hash and event id, random ids; returns no data",
}


def test_share_mode_asks_for_the_login_on_every_route(share_server, env):
    demo, url = share_server
    checked = 0
    for route in all_routes(demo.server_app):
        for method in sorted(set(getattr(route, "methods", None) or []) - {"HEAD"}):
            path = re.sub(r"\{path_or_url:path\}", "/etc/hostname", route.path)
            path = re.sub(r"\{(size|component_id|run|fn_index)\}", "1", path).replace("{ext}", "ts")
            path = re.sub(r"\{[^}]+\}", "x", path)
            body = b'{"data": [], "fn_index": 0, "session_hash": "x", "event_id": "x"}' if method == "POST" else None
            status, content = http_request(url, path, method, body=body, headers={"Content-Type": "application/json"}, timeout=3)
            checked += 1
            if status == "open stream" or status < 400:
                assert route.path in PUBLIC, f"{method} {route.path} answers {status} without a login"
            else:
                assert 400 <= status < 500, f"{method} {route.path}: {status}"  # refused: login, not found, invalid
    assert checked > 60
    _, page = http_request(url, "/")
    assert b'"auth_required":true' in page
    # Gradio 6 puts the API description into the login page: it must hold no server paths
    for secret in (env["folder"], env["folder"].parent, env["base"]):
        assert str(secret).encode() not in page, secret
    cookie = login_cookie(url)  # the same routes open with the login
    for path in ("/config", "/gradio_api/info"):
        assert http_request(url, path, cookie=cookie)[0] == 200


@pytest.fixture(scope="module")
def share_client(share_server, env):
    return loaded_client(share_server[1], env["folder"], auth=LOGIN)


def hover_request(url: str, cookie: str | None, token: str, index) -> tuple[int, dict | bytes]:
    """What the page sends when a point is hovered: the map's server function
    `hover_thumbnail([session token, point index])`, over raw HTTP."""
    status, config = http_request(url, "/config", cookie=cookie)
    component = next(c["id"] for c in json.loads(config)["components"] if c.get("props", {}).get("elem_id") == "embedding-plot") if status == 200 else 1
    body = json.dumps({"data": [token, index], "component_id": component, "fn_name": "hover_thumbnail", "session_hash": "made-up"}).encode()
    status, content = http_request(url, "/gradio_api/component_server/", "POST", cookie=cookie, body=body, headers={"Content-Type": "application/json"})
    return status, json.loads(content) if status == 200 else content


def served_thumbnails(url: str, cookie: str, map_json: str) -> list[str]:
    """The thumbnail of every point, as a hover would make and serve it (the map itself
    links to none)."""
    decoded = decode_map(map_json, fetcher(url, cookie))
    answers = [hover_request(url, cookie, decoded["token"], i) for i in range(len(decoded["ids"]))]
    assert all(status == 200 for status, _ in answers)
    return [answer["url"].split("file=", 1)[1] for _, answer in answers if answer["url"]]


def test_share_mode_serves_only_the_sessions_thumbnails(share_server, share_client, env):
    url = share_server[1]
    cookie = login_cookie(url)
    _, figure = share_client.predict("pca", api_name="/set_map_method")
    thumbs = served_thumbnails(url, cookie, figure)
    assert len(thumbs) == 8 * len(CLASSES)
    served_root = env["cache"] / "served"
    assert all(Path(t).is_relative_to(served_root) for t in thumbs)
    assert http_request(url, f"/gradio_api/file={thumbs[0]}", cookie=cookie)[0] == 200
    assert http_request(url, f"/gradio_api/file={thumbs[0]}")[0] in (401, 403)  # and only with the login
    points = json.loads(figure)["points"]["url"]  # the map's points: served like the thumbnails
    assert Path(points.split("file=", 1)[1]).is_relative_to(served_root) and http_request(url, points)[0] in (401, 403)
    token = json.loads(figure)["token"]
    assert hover_request(url, None, token, 0)[0] in (401, 403)  # hover requests need the login too,
    assert hover_request(url, cookie, "0" * 32, 0) == (200, {"url": ""})  # and this session's token
    stores = sorted((env["cache"] / "embeddings").rglob("store.npz"))
    cached_thumbs = sorted((env["cache"] / "thumbs").rglob("*.jpg"))
    assert stores and cached_thumbs
    refused = {
        "an embedding store": stores[0],
        "the thumbnail cache (any folder's thumbnails)": cached_thumbs[0],
        "an original image": env["folder"] / CLASSES[0] / sorted(p.name for p in (env["folder"] / CLASSES[0]).iterdir())[0],
        "an image outside the data roots": next((env["outside"] / CLASSES[1]).iterdir()),
        "a file outside everything": "/etc/passwd",
        "the served folder itself": served_root,
    }
    for what, path in refused.items():
        assert http_request(url, f"/gradio_api/file={path}", cookie=cookie)[0] in (403, 404), what


def test_share_mode_refuses_traversal_out_of_the_served_folder(share_server, share_client, env):
    url = share_server[1]
    cookie = login_cookie(url)
    _, figure = share_client.predict("pca", api_name="/set_map_method")
    thumb = Path(served_thumbnails(url, cookie, figure)[0])
    store = sorted((env["cache"] / "embeddings").rglob("store.npz"))[0]
    up = "/".join([".."] * len(thumb.relative_to(env["cache"]).parts[:-1]))
    escape = env["cache"] / "served" / "escape.jpg"
    escape.symlink_to(store)  # a link inside the served folder pointing out of it
    attempts = [
        f"{thumb.parent}/{up}/{store.relative_to(env['cache'])}",
        f"{thumb.parent}/{up.replace('..', '%2e%2e')}/{store.relative_to(env['cache'])}",
        f"{thumb.parent}/{up.replace('..', '%2E%2E').replace('/', '%2f')}%2f{urllib.parse.quote(str(store.relative_to(env['cache'])), safe='')}",
        f"{thumb.parent}/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "../../../../../../../../etc/passwd",
        "%2fetc%2fpasswd",
        str(escape),
    ]
    try:
        for attempt in attempts:
            status, content = http_request(url, f"/gradio_api/file={attempt}", cookie=cookie)
            assert status in (403, 404), (attempt, status)
            assert b"root:" not in content and not content.startswith(b"PK")
    finally:
        escape.unlink()


def test_share_mode_refuses_folders_outside_the_data_roots(share_client, env):
    for folder in (env["outside"], env["folder"] / ".." / ".." / "elsewhere", "/etc"):
        status, _ = share_client.predict(str(folder), "efficientnet_lite0", "pca", api_name="/load_folder")
        assert "outside the data roots" in status, folder


def test_share_mode_skips_linked_images_that_lie_outside_the_data_roots(share_server, env):
    client = Client(share_server[1], verbose=False, auth=LOGIN, download_files=False, httpx_kwargs=SLOW_MACHINE)
    status, figure = client.predict(str(env["linked"]), "efficientnet_lite0", "pca", api_name="/load_folder")
    assert "16 images in 2 classes" in status
    assert "Skipped 8 files" in status and "outside the data roots" in status
    ids = decode_map(figure, fetcher(share_server[1], login_cookie(share_server[1])))["ids"]
    assert len(ids) == 16 and not any(i.startswith("smuggled/") for i in ids)


def test_share_mode_refuses_zip_slip_and_zip_bomb_uploads_and_keeps_nothing(share_client, env):
    jpg = (env["folder"] / CLASSES[0]).iterdir().__next__().read_bytes()
    slip, bomb = env["base"] / "slip.zip", env["base"] / "bomb.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("set/a/first-good.jpg", jpg)
        archive.writestr("set/b/second-good.jpg", jpg)
        archive.writestr("set/../../../evil.jpg", jpg)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("set/a/bomb.png", bytes(80 * 1024**2))
        archive.writestr("set/b/ok.jpg", jpg)
    assert bomb.stat().st_size < SHARE_MAX_FILE_BYTES
    for archive, expected in ((slip, "outside the upload folder"), (bomb, "zip bomb")):
        status, _, _ = share_client.predict([handle_file(str(archive))], "efficientnet_lite0", "pca", api_name="/upload_folder")
        assert expected in status, status
    uploads = env["cache"] / "uploads"
    left = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
    assert not left
    assert not (env["base"] / "evil.jpg").exists() and not (env["cache"] / "evil.jpg").exists()


def test_share_mode_refuses_an_upload_above_the_size_limit(share_server):
    url = share_server[1]
    cookie = login_cookie(url)
    boundary = "retrievalappboundary"
    payload = b"\0" * (SHARE_MAX_FILE_BYTES + 1024)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.zip\"\r\n"
            f"Content-Type: application/zip\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    status, content = http_request(url, "/gradio_api/upload", "POST", cookie=cookie, body=body,
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert status == 413, (status, content[:200])


def test_verification_through_the_api(client, env):
    """The verification panel's endpoints: calibrate on the loaded folder, verify a pair
    (images uploaded like the query box's), move the threshold along the ROC."""
    words, figure, slider = client.predict(api_name="/calibrate_verification")
    assert "EER" in words and "the loaded folder" in words, words
    slider = slider["value"] if isinstance(slider, dict) else slider  # the slider's update: range and value
    photos = sorted((env["folder"] / CLASSES[0]).glob("*.jpg"))
    answer, _, _ = client.predict(handle_file(str(photos[0])), handle_file(str(photos[1])), slider, api_name="/verify_pair")
    assert answer.startswith("### ✓ Same identity") or answer.startswith("### ✗ Different identities"), answer
    _, words = client.predict(slider, api_name="/set_verification_threshold")
    assert words.splitlines()[0] == answer.splitlines()[0] and "At this threshold the calibration accepts" in words


def test_a_local_page_that_answers_late_is_started_again(env, monkeypatch):
    """Gradio's launch check (one request, 3 s timeout) can miss on a busy machine: the app
    starts its server again instead of failing, and the page then answers."""
    import gradio.networking

    real, checks = gradio.networking.url_ok, []

    def first_check_fails(url: str) -> bool:
        checks.append(url)
        return len(checks) > 1 and real(url)

    monkeypatch.setattr(gradio.networking, "url_ok", first_check_fails)
    closed = []  # the restart closes the server only, not the app's standby training process
    monkeypatch.setattr(StandbyWorker, "close", lambda self: closed.append(self))
    port = ui_helpers.free_port()
    demo = launch_app(folder=env["folder"], port=port, open_browser=False, block=False)
    try:
        assert len(checks) == 2  # the first check failed, the second launch passed it
        assert closed == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        demo.close()
