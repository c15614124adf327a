"""The app's live map without a browser: what a timer tick sends (a figure only for a
new frame, the replay slider once the run has ended, hidden again for the next run) and
what the slider replays."""

from __future__ import annotations

import numpy as np

from retrieval_app.training import JobSnapshot
from retrieval_app.training.map_frames import MapFrame, MapPoints
from retrieval_app.ui import app as ui_app
from retrieval_app.ui import live_map as live_view
from retrieval_app.ui.session import SessionState

SKIP = {"__type__": "update"}  # gr.skip()
POINTS = MapPoints(("a/1", "a/2", "b/1", "b/2", "c/1"), np.array([0, 0, 1, 1, 2]), ("a", "b", "c"))


def frame(index: int, stage: str = "epoch 1", step: int = 0) -> MapFrame:
    coords = np.random.default_rng(index).normal(size=(len(POINTS), 2)).astype(np.float32)
    return MapFrame(index, stage, step, 0.5 * index, coords, POINTS)


def snapshot(frames, state="running", started_at=1.0) -> JobSnapshot:
    return JobSnapshot(state=state, started_at=started_at, series={"live_map": [(f.step, f) for f in frames]})


def test_a_tick_draws_only_a_new_frame():
    view = live_view.LiveMapView()
    text, figure, slider = live_view.updates(view, snapshot([]))
    assert figure == SKIP and slider == SKIP
    frames = [frame(0, "start")]
    text, figure, slider = live_view.updates(view, snapshot(frames))
    assert figure.layout.title.text == "Live map · start · 0.0 s" and "5 images (3 classes)" in text and slider == SKIP
    assert [t.name for t in figure.data] == ["a", "b", "c"]
    assert list(figure.data[0].ids) == ["a/1", "a/2"] and np.allclose(figure.data[1].x, frames[0].coords[2:4, 0])
    assert live_view.updates(view, snapshot(frames))[1] == SKIP  # nothing new: nothing sent
    frames.append(frame(1, "epoch 1", 12))
    figure = live_view.updates(view, snapshot(frames))[1]
    assert figure.layout.title.text.startswith("Live map · epoch 1 · step 12")
    assert figure.layout.transition.duration > 0  # the points move to their new places
    # the axes hold every frame so far: a point does not leave the picture
    both = np.concatenate([f.coords for f in frames])
    assert figure.layout.xaxis.range[0] < both[:, 0].min() and figure.layout.xaxis.range[1] > both[:, 0].max()


def test_the_replay_slider_comes_when_the_run_ends_and_goes_with_the_next():
    view = live_view.LiveMapView()
    frames = [frame(i) for i in range(4)]
    live_view.updates(view, snapshot(frames[:3]))
    text, figure, slider = live_view.updates(view, snapshot(frames, state="done"))
    assert slider["visible"] is True and slider["maximum"] == 3 and slider["value"] == 3
    assert "replay" in text
    assert live_view.updates(view, snapshot(frames, state="done"))[2] == SKIP  # once
    _, figure, slider = live_view.updates(view, snapshot([frame(0, "start")], started_at=2.0))
    assert slider["visible"] is False and figure.layout.title.text.startswith("Live map · start")


def test_the_slider_replays_the_sessions_frames():
    class Job:
        def snapshot(self):
            return snapshot(frames, state="done")

    frames = [frame(0, "start"), frame(1, "fold 1", 25), frame(2, "refit", 0), frame(3, "end")]
    state = SessionState()
    assert live_view.replay(state, 1) == SKIP  # no run yet
    state.job = Job()
    assert live_view.replay(state, 1).layout.title.text.startswith("Live map · fold 1 · step 25")
    assert live_view.replay(state, 99).layout.title.text.startswith("Live map · end")  # clamped
    assert "quick mode" in live_view.describe(frames, True)


def test_the_training_tick_carries_the_live_map():
    class Job:
        cancel_requested = False

        def snapshot(self):
            return snapshot([frame(0, "start")])

    state = SessionState()
    state.job = Job()
    out = ui_app.poll_training(state)
    text, figure, slider = out[-3:]
    assert figure.layout.title.text.startswith("Live map · start") and slider == SKIP
