"""The live map: a stratified subsample, frames every few seconds of a fake clock,
aligned with each other, the stages quick mode shows, the frames file, real runs (quick
and full) with and without it, and `retrieval-app map --animate`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval_app.errors import RetrievalAppError
from retrieval_app.retrieval.aligned_layout import AlignedPCA
from retrieval_app.training import TrainConfig, Trainer
from retrieval_app.training import live_map as live_map_module
from retrieval_app.training.callbacks import RunView
from retrieval_app.training.events import TrainEvent
from retrieval_app.training.live_map import LiveMap, stratified_subsample
from retrieval_app.training.map_frames import FRAMES_FILE, load_frames
from synthetic import write_class_folder

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- the subsample
def test_the_subsample_keeps_every_class_in_proportion():
    labels = np.repeat([0, 1, 2, 3], [3000, 1000, 7, 1])
    rows = stratified_subsample(labels, 2000, seed=3)
    assert len(rows) == 2000 and len(set(rows.tolist())) == 2000 and np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows], minlength=4)
    assert counts[3] == 1 and counts[2] >= 1  # small classes are not dropped
    assert abs(counts[0] - 2000 * 3000 / 4008) <= 2 and abs(counts[1] - 2000 * 1000 / 4008) <= 2
    assert np.array_equal(rows, stratified_subsample(labels, 2000, seed=3))  # fixed
    assert not np.array_equal(rows, stratified_subsample(labels, 2000, seed=4))


def test_a_small_run_is_shown_whole():
    labels = np.array([0, 0, 1, 1, 2])
    assert stratified_subsample(labels, 2000).tolist() == [0, 1, 2, 3, 4]


# -------------------------------------------------------------- the layout
def _clusters(n=600, dim=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim)) * 3
    return (centres[rng.integers(0, 6, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_the_layout_is_the_pca_plane_and_does_not_move_for_the_same_space():
    from sklearn.decomposition import PCA

    x = _clusters()
    layout = AlignedPCA()
    first = layout.place(x)
    reference = PCA(2).fit_transform(x)
    # the same plane as sklearn's PCA, up to a rotation or mirror of it
    turn, *_ = np.linalg.lstsq(first, reference, rcond=None)
    assert np.allclose(first @ turn, reference, atol=1e-3 * np.abs(reference).max())
    assert np.allclose(turn @ turn.T, np.eye(2), atol=1e-3)
    # an unchanged model: the same frame; a rotated (or mirrored) space: the same frame too,
    # where a fresh PCA may turn or flip the picture
    scale = np.abs(first).max()
    assert np.allclose(layout.place(x), first, atol=1e-4 * scale)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(64, 64)))[0].astype(np.float32)
    assert np.allclose(layout.place(x @ rotation), first, atol=1e-3 * scale)
    assert np.allclose(layout.place(-x), first, atol=1e-3 * scale)


def test_a_small_change_moves_points_a_little():
    x = _clusters()
    layout = AlignedPCA()
    first = layout.place(x)
    nudged = x + 0.05 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    second = layout.place(nudged)
    moved = np.linalg.norm(second - first, axis=1)
    assert moved.max() < 0.05 * np.abs(first).max() * 3


# ---------------------------------------------------- the callback, driven by hand
@dataclass
class Record:
    id: str
    label: int


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModel:
    """Embeddings of rows = features @ weights; each embed call costs `cost` seconds."""

    def __init__(self, clock: FakeClock, n=300, dim=16, cost=0.0) -> None:
        self.features = _clusters(n, dim)
        self.weights = np.eye(dim, dtype=np.float32)
        self.clock, self.cost, self.calls = clock, cost, 0

    def embed(self, rows) -> np.ndarray:
        self.clock.now += self.cost
        self.calls += 1
        torch.rand(3)  # as a DataLoader would: frames must not disturb training's draws
        return self.features[np.asarray(rows)] @ self.weights


def drive(tmp_path, mode="full", cost=0.0, interval=1.0, n=300, **options):
    clock = FakeClock()
    model = FakeModel(clock, n=n, cost=cost)
    events: list[TrainEvent] = []
    records = [Record(f"c{i % 5}/img{i}.png", i % 5) for i in range(n)]
    callback = LiveMap(interval, clock=clock, frame_budget_s=None, **options)
    view = RunView(mode, records, [f"c{k}" for k in range(5)], tmp_path, model.embed, events.append)
    callback.on_training_start(view)
    return callback, clock, model, events


def frames_of(events):
    return [e.data["live_map"] for e in events if e.kind == "data" and "live_map" in e.data]


def step(callback, clock, step, dt=0.1, stage=None, epoch=1):
    clock.now += dt
    callback.on_event(TrainEvent("step", epoch=epoch, step=step, data={"stage": stage or f"epoch {epoch}"}))


def test_frames_come_every_interval_not_every_step(tmp_path):
    callback, clock, _, events = drive(tmp_path)
    for s in range(1, 101):  # 10 s of steps, 0.1 s apart
        step(callback, clock, s)
    frames = frames_of(events)
    assert 10 <= len(frames) <= 11  # the start, then one a second
    assert frames[0].stage == "start" and frames[0].step == 0
    assert [f.index for f in frames] == list(range(len(frames)))
    gaps = np.diff([f.elapsed_s for f in frames[1:]])
    assert gaps.min() >= 1.0 - 1e-9
    assert all(f.points is frames[0].points for f in frames)  # one subsample for the run


def test_an_expensive_frame_waits_longer_so_training_loses_at_most_a_twentieth(tmp_path):
    callback, clock, model, events = drive(tmp_path, cost=0.5)
    for s in range(1, 601):  # 60 s of training
        step(callback, clock, s)
    frames = frames_of(events)
    spent = 0.5 * (len(frames) - 1)  # every frame after the start
    assert spent <= 0.05 * clock.now * 1.1
    assert len(frames) >= 5  # still frames: about one every 10 s


def test_an_unchanged_model_gives_the_same_frame(tmp_path):
    callback, clock, model, events = drive(tmp_path)
    for s in range(1, 31):
        step(callback, clock, s)
    frames = frames_of(events)
    assert len(frames) >= 3
    for frame in frames[1:]:
        assert np.allclose(frame.coords, frames[0].coords, atol=1e-4 * np.abs(frames[0].coords).max())


def test_a_turning_model_gives_frames_that_move_smoothly(tmp_path):
    """The model's space rotates a little each step (as training does): the aligned
    frames follow without flips; consecutive frames are close."""
    callback, clock, model, events = drive(tmp_path)
    rng = np.random.default_rng(0)
    for s in range(1, 51):
        generator = rng.normal(size=(16, 16)) * 0.02
        model.weights = model.weights @ np.asarray(torch.linalg.matrix_exp(torch.tensor(generator - generator.T)), dtype=np.float32)
        step(callback, clock, s)
    frames = frames_of(events)
    scale = np.abs(frames[0].coords).max()
    for a, b in zip(frames, frames[1:]):
        assert np.abs(b.coords - a.coords).max() < 0.1 * scale


def test_frames_leave_the_training_random_draws_alone(tmp_path):
    callback, clock, model, _ = drive(tmp_path)
    before = torch.get_rng_state()
    for s in range(1, 30):
        step(callback, clock, s)
    assert model.calls >= 3 and torch.equal(before, torch.get_rng_state())


def test_quick_mode_shows_the_first_fold_and_the_refit(tmp_path):
    callback, clock, model, events = drive(tmp_path, mode="quick")
    for s in range(1, 31):
        step(callback, clock, s, stage="fold 1")
    for s in range(31, 61):  # fold 2: not shown
        step(callback, clock, s, stage="fold 2")
    model.weights = model.weights * 3  # the refit trains from the start again
    for s in range(61, 91):
        step(callback, clock, s, stage="refit")
    callback.on_run_end(tmp_path)
    frames = frames_of(events)
    stages = [f.stage for f in frames]
    assert "fold 2" not in stages and stages[0] == "start" and stages[-1] == "end"
    assert "fold 1" in stages and stages.count("refit") >= 2
    refit = [f for f in frames if f.stage == "refit"]
    assert refit[0].step == 0 and np.array_equal(refit[0].coords, frames[0].coords)  # the start, reused
    assert refit[1].step == 1 and refit[-1].step <= 30  # counted from the refit's start


def test_the_frames_are_saved_beside_the_checkpoint_and_read_back(tmp_path):
    callback, clock, _, events = drive(tmp_path)
    for s in range(1, 40):
        step(callback, clock, s)
    callback.on_run_end(tmp_path)
    sent = frames_of(events)
    saved = load_frames(tmp_path)
    assert (tmp_path / FRAMES_FILE).is_file() and len(saved) == len(sent) and saved[-1].stage == "end"
    for a, b in zip(sent, saved):
        assert np.array_equal(a.coords, b.coords) and (a.stage, a.step) == (b.stage, b.step)
    assert saved[0].points.ids == sent[0].points.ids and saved[0].points.classes == tuple(f"c{k}" for k in range(5))
    assert np.array_equal(saved[0].points.labels, sent[0].points.labels)


def test_a_long_run_keeps_a_bounded_number_of_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(live_map_module, "MAX_FRAMES", 10)
    callback, clock, _, events = drive(tmp_path)
    for s in range(1, 400):
        step(callback, clock, s)
    callback.on_run_end(tmp_path)
    saved = load_frames(tmp_path)
    assert len(saved) <= 11 and saved[0].stage == "start" and saved[-1].stage == "end"
    assert len(frames_of(events)) < 40  # the interval doubled as frames were thinned


def test_the_subsample_is_capped(tmp_path):
    callback, clock, _, events = drive(tmp_path, n=300, max_points=50)
    frame = frames_of(events)[0]
    assert len(frame.points) == 50 and frame.coords.shape == (50, 2)
    assert sorted(set(frame.points.labels.tolist())) == [0, 1, 2, 3, 4]


def test_no_frames_file_says_so(tmp_path):
    with pytest.raises(RetrievalAppError, match="no live map frames"):
        load_frames(tmp_path)


# ---------------------------------------------------------- real training runs
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("shapes") / "data", n_classes=5, per_class=8, size=28)


def _run(folder, out, callbacks=(), **settings):
    options = dict(folder=str(folder), out_dir=str(out), backbone="small_cnn", mode="full", epochs=2, batch_size=16, num_workers=0)
    options.update(settings)
    events = []
    result = Trainer(TrainConfig(**options), on_event=events.append, callbacks=list(callbacks)).run()
    return result, events


@pytest.mark.usefixtures("isolated_dirs")
def test_a_full_run_sends_frames_and_trains_exactly_as_without_them(shapes, tmp_path):
    plain, _ = _run(shapes, tmp_path / "plain")
    live, events = _run(shapes, tmp_path / "live", [LiveMap(0.001, frame_budget_s=None, cost_share=1.0)])
    frames = frames_of(events)
    assert len(frames) >= 3 and frames[0].stage == "start" and frames[-1].stage == "end"
    assert {f.stage for f in frames[1:-1]} <= {"epoch 1", "epoch 2"}
    assert not np.allclose(frames[0].coords, frames[-1].coords)  # training moved the points
    assert len(load_frames(tmp_path / "live")) == len(frames)
    assert [row["loss"] for row in live.history[1:]] == [row["loss"] for row in plain.history[1:]]
    assert not (tmp_path / "plain" / FRAMES_FILE).exists()


# ------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def trained_run(shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "model"
    _run(shapes, out, [LiveMap(0.001, frame_budget_s=None, cost_share=1.0)], epochs=3)
    return out


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "retrieval_app", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_map_animate_writes_a_standalone_html_with_the_frames(trained_run, tmp_path):
    out = tmp_path / "training.html"
    done = _cli("map", "--animate", "--model", trained_run, "--out", out)
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert "<script src=" not in html  # plotly.js inlined: opens offline
    figure = _figure_json(html)
    saved = load_frames(trained_run)
    assert len(figure["frames"]) == len(saved) >= 2
    assert [f["name"] for f in figure["frames"]] == [str(i) for i in range(len(saved))]
    assert len(figure["layout"]["sliders"][0]["steps"]) == len(saved)
    assert any(button.get("label") == "▶ play" for menu in figure["layout"]["updatemenus"] for button in menu["buttons"])
    # each frame holds every point at its saved position, class by class
    last, classes = figure["frames"][-1], saved[-1].points.classes
    xs = np.concatenate([_array(trace["x"]) for trace in last["data"]])
    assert len(xs) == len(saved[-1].points) and [t["name"] for t in figure["data"]] == list(classes)
    first_class = np.flatnonzero(saved[-1].points.labels == 0)
    assert np.allclose(_array(last["data"][0]["x"]), saved[-1].coords[first_class, 0], atol=1e-5)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata": base64}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def _figure_json(html: str) -> dict:
    """The figure plotly's `to_html` wrote: Plotly.newPlot("id", data, layout, config)
    then Plotly.addFrames("id", frames)."""
    decoder = json.JSONDecoder()

    def values_after(call: str, count: int) -> list:
        at = html.index(call) + len(call)
        at = html.index(",", at) + 1  # past the element id
        out = []
        for _ in range(count):
            while html[at] in " \n,":
                at += 1
            value, at = decoder.raw_decode(html, at)
            out.append(value)
        return out

    data, layout = values_after("Plotly.newPlot(", 2)
    (frames,) = values_after("Plotly.addFrames(", 1)
    return {"data": data, "layout": layout, "frames": frames}


def test_map_animate_without_frames_is_one_error_line(tmp_path):
    done = _cli("map", "--animate", "--model", tmp_path, "--out", tmp_path / "x.html")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "no live map frames" in done.stderr
    assert not (tmp_path / "x.html").exists()


def test_map_without_a_folder_or_animate_asks_for_one(tmp_path, capsys):
    from retrieval_app.cli import main

    assert main(["map", "--out", str(tmp_path / "m.html")]) == 2
    err = capsys.readouterr().err
    assert "map needs a FOLDER" in err and err.strip().count("\n") == 0
