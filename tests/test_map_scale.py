"""Maps at scale: the kNN graph UMAP gets (FAISS IVF above a size), a first map at once
with the requested one fitted in the background and swapped in, placing a query from
its neighbours' positions, and the payload's class numbers beyond 255."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from retrieval_app.retrieval.knn_graph import _drop_self, graph_recall, knn_graph
from retrieval_app.retrieval.map_job import MapJob
from retrieval_app.retrieval.projection import compute_projection
from retrieval_app.ui.plot import decode_map, file_path, map_payload

from synthetic import write_class_folder


def clustered(n_per: int, centres: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)) * 4
    labels = np.repeat(np.arange(centres), n_per)
    return (middle[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


# ------------------------------------------------------------------ the graph
def test_the_faiss_graph_keeps_the_exact_neighbours():
    pytest.importorskip("faiss")
    x, _ = clustered(100, 30, 24, seed=1)
    approx_idx, approx_dist = knn_graph(x, 15, approximate=True)
    exact_idx, exact_dist = knn_graph(x, 15, approximate=False)
    assert approx_idx.shape == exact_idx.shape == (3000, 15)
    assert (approx_idx[:, 0] == np.arange(3000)).all() and (approx_dist[:, 0] == 0).all()
    assert (np.diff(approx_dist, axis=1) >= -1e-4).all()  # nearest first
    assert not (approx_idx[:, 1:] == np.arange(3000)[:, None]).any()  # a point is never its own neighbour
    assert graph_recall(approx_idx, exact_idx) >= 0.95
    rows = np.arange(3000)[:, None]  # the distances are the true ones of the points found
    np.testing.assert_allclose(approx_dist[:, 1:], np.linalg.norm(x[approx_idx[:, 1:]] - x[rows], axis=2), rtol=1e-3, atol=1e-3)


def test_self_is_dropped_and_missing_neighbours_are_padded():
    found = np.array([[5, 0, 7, 9], [1, 4, -1, -1], [-1, -1, -1, -1]])  # rows 0, 1, 2 are points 0, 1, 2
    dist = np.array([[0.0, 0.0, 1.0, 2.0], [0.0, 3.0, 9.0, 9.0], [9.0] * 4], np.float32)
    out_idx, out_dist = np.zeros((3, 4), np.int64), np.zeros((3, 4), np.float32)
    _drop_self(np.arange(3), found, dist, out_idx, out_dist)
    assert out_idx[:, 1:].tolist() == [[5, 7, 9], [4, 4, 4], [2, 2, 2]]
    assert out_dist[:, 1:].tolist() == [[0.0, 1.0, 2.0], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]


# ------------------------------------------------------------------ the background map
class HeldFit:
    """The real `compute_projection`, except that the requested (slow) method waits until
    `release()`: lets a test look at the job while its map is being fitted."""

    def __init__(self) -> None:
        self.gate, self.calls = threading.Event(), []

    def __call__(self, embeddings, method, **options):
        self.calls.append(method)
        if method != "pca":
            assert self.gate.wait(600)
        return compute_projection(embeddings, method, **options)

    def release(self) -> None:
        self.gate.set()


def test_a_first_map_at_once_then_the_requested_one_replaces_it(tmp_path):
    x, labels = clustered(20, 4, 16, seed=2)
    fit = HeldFit()
    job = MapJob.start(x, "umap", cache_dir=tmp_path, compute=fit)
    assert job.first.method == "pca" and job.current is job.first and not job.done
    assert not job.wait(0.2)  # still fitting: the PCA map is what there is
    fit.release()
    assert job.wait(600) and job.done and job.quick
    assert job.result.method == "umap" and job.current is job.result and job.result.coords.shape == (80, 2)
    assert job.elapsed >= 0.2 and fit.calls == ["pca", "umap"]
    # The UMAP map is cached now: the next request shows it at once, no stand-in.
    again = MapJob.start(x, "umap", cache_dir=tmp_path, compute=fit)
    assert again.done and not again.quick and again.first.method == "umap" and fit.calls == ["pca", "umap"]
    np.testing.assert_array_equal(again.first.coords, job.result.coords)
    # A query is placed from its neighbours' positions on the map it lands on.
    new = x[labels == 3][:3] + 0.05
    placed = again.current.transform(new)
    centres = np.stack([again.current.coords[labels == c].mean(0) for c in range(4)])
    assert (np.linalg.norm(placed[:, None] - centres[None], axis=2).argmin(1) == 3).all()


def test_a_failed_fit_is_raised_to_whoever_waits_and_the_first_map_stays(tmp_path):
    x, _ = clustered(20, 4, 16)
    job = MapJob.start(x, "umap", cache_dir=tmp_path, compute=lambda e, m, **o: compute_projection(e, m, **o) if m == "pca" else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        job.wait(30)
    assert job.current is job.first and job.first.method == "pca"


def read_served(url: str) -> bytes:
    """A map's points from the session's served folder (what the page fetches)."""
    return file_path(url).read_bytes()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from retrieval_app.ui.session import SessionState

    base = tmp_path_factory.mktemp("map-session")
    monkey = pytest.MonkeyPatch()
    monkey.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
    monkey.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
    state = SessionState()
    state.load(write_class_folder(base / "shapes", n_classes=3, per_class=5, size=48), "efficientnet_lite0", lambda f, t: None)
    yield state
    monkey.undo()


def test_the_app_shows_pca_first_says_so_and_swaps_in_umap(session, monkeypatch, tmp_path):
    from retrieval_app.ui import app as ui_app

    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path))  # nothing cached: the fit is held

    fit = HeldFit()
    monkeypatch.setattr("retrieval_app.retrieval.map_job.compute_projection", fit)
    monkeypatch.setattr(ui_app, "MAP_POLL_S", 0.05)
    steps = ui_app._follow_map(session, "umap", lambda s: "summary")
    _, status, value = next(steps)
    assert decode_map(value, read_served)["layout"]["title"]["text"].startswith("PCA of 15 images") and "computed in the background" in status
    assert set(json.loads(value)["points"]) == {"n", "url"}  # the points go by URL, not in the component's value
    session.neighbours_of_point(3, 4)  # the page stays usable on the first map
    _, status, value = next(steps)
    assert "background" in status and not isinstance(value, str)  # waiting: the map is not sent again
    fit.release()
    *_, (_, status, value) = list(steps)
    shown = decode_map(value, read_served)
    assert shown["layout"]["title"]["text"].startswith("UMAP of 15 images") and "UMAP map ready" in status
    np.testing.assert_array_equal(shown["coords"], session.projection.coords)
    assert session.projection.method == "umap" and shown["highlight"]["overlays"]  # the click's rings survive the swap


def test_a_map_asked_for_meanwhile_supersedes_the_one_being_fitted(session, monkeypatch, tmp_path):
    from retrieval_app.ui import app as ui_app

    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path))  # nothing cached
    fit = HeldFit()
    monkeypatch.setattr("retrieval_app.retrieval.map_job.compute_projection", fit)
    monkeypatch.setattr(ui_app, "MAP_POLL_S", 0.05)
    steps = ui_app._follow_map(session, "tsne", lambda s: "summary")
    next(steps)
    session.project("pca")  # the user picked PCA while t-SNE was fitting
    fit.release()
    assert [v for _, _, v in steps if isinstance(v, str)] == []  # the t-SNE map is never shown
    assert session.projection.method == "pca"


# ------------------------------------------------------------------ the payload
@pytest.mark.parametrize("n_classes, label_type", [(256, "uint8"), (300, "uint16"), (70_000, "uint32")])
def test_class_numbers_beyond_a_byte_survive_the_payload(n_classes, label_type):
    rng = np.random.default_rng(0)
    n = max(1000, n_classes)
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    classes = [f"c{i}" for i in range(n_classes)]
    ids = [f"c{label}/{i}.jpg" for i, label in enumerate(labels)]
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    value = map_payload(coords, labels, classes, ids)
    decoded = decode_map(value)
    assert decoded["labels"].tolist() == labels.tolist() and decoded["ids"] == ids and decoded["classes"] == classes
    assert f'"label_type":"{label_type}"' in value


def test_the_page_decodes_many_classes_and_draws_one_trace_per_colour(tmp_path):
    """The page's own decoder and trace builder (PLOT_JS, run by node): 300 classes come
    back from uint16 labels and are drawn as one trace per palette colour, every point once."""
    import json
    import shutil
    import subprocess

    from retrieval_app.ui.plot import PALETTE, PLOT_JS

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    rng = np.random.default_rng(0)
    n, n_classes = 3000, 300
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    value = map_payload(rng.normal(size=(n, 2)).astype(np.float32), labels, [f"c{i}" for i in range(n_classes)],
                        [f"c{label}/{i}.png" for i, label in enumerate(labels)])
    script = tmp_path / "page.js"
    script.write_text(
        "const page = (function (element, props, watch, trigger, server) {" + PLOT_JS + "; return {decodeMap, classTraces}; })"
        "({querySelector: () => null}, {value: ''}, () => {}, () => {}, {});\n"
        "const fig = JSON.parse(require('fs').readFileSync(0, 'utf8')), m = page.decodeMap(fig), traces = page.classTraces(m, fig);\n"
        "const rows = traces.map((t) => Array.from(t.customdata));\n"
        "console.log(JSON.stringify({labels: Array.from(m.label), rows, colours: traces.map((t) => t.marker.color),"
        " legend: traces.some((t) => t.showlegend), traceOf: Array.from(m.traceOf)}));\n"
    )
    out = json.loads(subprocess.run(["node", str(script)], input=value, capture_output=True, text=True, check=True, timeout=60).stdout)
    assert out["labels"] == labels.tolist()
    assert len(out["rows"]) == len(PALETTE) and not out["legend"]
    assert sorted(i for rows in out["rows"] for i in rows) == list(range(n))  # every point, once
    for t, rows in enumerate(out["rows"]):
        assert {PALETTE[labels[i] % len(PALETTE)] for i in rows} == {out["colours"][t]}
        assert {out["traceOf"][labels[i]] for i in rows} == {t}  # hover and click find a class's trace
