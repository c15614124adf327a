"""The fine-tune panel's live map: the space learning, redrawn while a run trains.

The training job carries a `LiveMap` callback (`training/live_map.py`); its frames
arrive in the job's snapshot (`series["live_map"]`). At each tick of the panel's timer
the latest frame is drawn when it is new (plotly moves the points to their new
positions: `layout.transition`); when the run has ended, a slider replays every frame.
What a session has drawn is kept in its `LiveMapView` (one per session, in `SessionState`).

`LiveMapPanel` builds the components where it is created and wires the slider; the
app's timer returns `updates(...)` (or `skip()`) for `LiveMapPanel.outputs`."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..retrieval.map_animation import frame_figure
from .plot import class_colour

HEIGHT = 440
TITLE = "Live map · "
EMPTY_TEXT = "The live map appears when a training run starts: a sample of the images (up to 2,000, every class) as the model places them now."


@dataclass
class LiveMapView:
    """What this session's page shows of the live map: the run (its start time), how
    many of its frames were drawn, and whether the replay slider is out."""

    run: float | None = None
    drawn: int = 0
    replay: bool = False


def frames_of(snapshot) -> list:
    return [frame for _, frame in snapshot.series.get("live_map", [])]


def figure(frames: list, index: int = -1):
    colours = [class_colour(label) for label in range(len(frames[0].points.classes))]
    return frame_figure(frames, index, colours=colours, title=TITLE, height=HEIGHT)


def describe(frames: list, finished: bool) -> str:
    points = frames[0].points
    text = (f"**Live map**: {len(points):,} images ({len(points.classes)} classes), each frame the PCA plane of the embeddings "
            f"turned to match the previous frame, so points move as training moves them · {len(frames)} frame{'s' if len(frames) != 1 else ''}")
    if any(frame.stage.startswith("fold") or frame.stage == "refit" for frame in frames):
        text += " · quick mode: the first class fold (its held-out classes are not trained), then the refit on every class when a model is kept"
    if finished and len(frames) > 1:
        text += " · move the slider to replay the run"
    return text


class LiveMapPanel:
    """The live map's components (created in the current layout block)."""

    def __init__(self) -> None:
        self.text = gr.Markdown(EMPTY_TEXT, elem_id="live-map-text", latex_delimiters=[])
        self.plot = gr.Plot(label="Live map", elem_id="live-map", show_label=False)
        self.slider = gr.Slider(0, 1, value=0, step=1, label="Replay: frame", elem_id="live-map-replay", visible=False, interactive=True)
        self.outputs = [self.text, self.plot, self.slider]

    def wire(self, state: gr.State) -> None:
        self.slider.change(replay, [state, self.slider], self.plot, trigger_mode="always_last", show_progress="hidden", api_name="replay_live_map")


def skip() -> tuple:
    return gr.skip(), gr.skip(), gr.skip()


def updates(view: LiveMapView, snapshot) -> tuple:
    """(text, figure, slider) for a timer tick: a figure only when a new frame came, the
    slider once the run has ended (hidden again when a new run starts)."""
    frames = frames_of(snapshot)
    text, plot, slider = skip()
    if view.run != snapshot.started_at:  # a new run: nothing of it drawn yet
        if view.replay:
            slider = gr.update(visible=False)
        view.run, view.drawn, view.replay = snapshot.started_at, 0, False
    if not frames:
        return text, plot, slider
    if len(frames) != view.drawn:
        view.drawn = len(frames)
        plot, text = figure(frames), describe(frames, snapshot.finished)
    if snapshot.finished and not view.replay:
        view.replay = True
        text = describe(frames, True)
        if len(frames) > 1:
            slider = gr.update(visible=True, minimum=0, maximum=len(frames) - 1, value=len(frames) - 1, step=1)
    return text, plot, slider


def replay(state, index: float):
    """The slider moved: that frame of the session's latest run."""
    if state is None or state.job is None:
        return gr.skip()
    frames = frames_of(state.job.snapshot())
    if not frames:
        return gr.skip()
    try:
        index = int(index)
    except (TypeError, ValueError):
        return gr.skip()
    return figure(frames, min(max(index, 0), len(frames) - 1))
