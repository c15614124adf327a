"""Plotly figures of a training run's live map frames (`training.map_frames`): one frame
at a time (what the app redraws while a run trains, and its replay slider), and the whole
run as a plotly animation with a slider and a play button, written as a standalone HTML
file (`retrieval-app map --animate`; plotly.js inlined, so it opens offline).

Every frame is drawn in the same axes (the extent of all frames), with one trace per
class and an id per point, so plotly moves each point from one position to the next
rather than redrawing the picture."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write_text
from ..errors import RetrievalAppError

PADDING = 0.05  # of the extent, on each side
POINT_SIZE = 6
FRAME_MS = 400  # the play button's time per frame
TRANSITION_MS = 300


def default_colours(n: int) -> list[str]:
    from plotly.colors import qualitative

    palette = qualitative.Plotly + qualitative.Dark24 + qualitative.Light24
    return [palette[i % len(palette)] for i in range(n)]


def frame_title(frame) -> str:
    return f"{frame.label} · {frame.elapsed_s:.1f} s"


def frame_traces(frame, colours: Sequence[str] | None = None) -> list:
    """One scatter trace per class of the frame's points (every class, even one with no
    point in the subsample, so traces keep their order from frame to frame)."""
    import plotly.graph_objects as go

    points = frame.points
    colours = colours or default_colours(len(points.classes))
    traces = []
    for label, name in enumerate(points.classes):
        rows = np.flatnonzero(points.labels == label)
        traces.append(go.Scatter(
            x=frame.coords[rows, 0], y=frame.coords[rows, 1], ids=[points.ids[i] for i in rows], mode="markers", name=str(name),
            marker={"size": POINT_SIZE, "color": colours[label % len(colours)], "opacity": 0.85},
            customdata=[points.ids[i] for i in rows], hovertemplate="%{customdata}<extra>%{fullData.name}</extra>",
        ))
    return traces


def axis_ranges(frames: Sequence) -> tuple[list[float], list[float]]:
    """x and y ranges holding every point of every frame, padded."""
    coords = np.concatenate([f.coords for f in frames])
    ranges = []
    for axis in (0, 1):
        low, high = float(coords[:, axis].min()), float(coords[:, axis].max())
        pad = max(high - low, 1e-6) * PADDING
        ranges.append([low - pad, high + pad])
    return ranges[0], ranges[1]


def base_layout(frames: Sequence, title: str, height: int | None = None) -> dict:
    x_range, y_range = axis_ranges(frames)
    layout = {
        "title": {"text": title}, "template": "plotly_white", "hovermode": "closest", "legend": {"title": {"text": "class"}},
        "xaxis": {"range": x_range, "showticklabels": False, "zeroline": False, "title": None},
        "yaxis": {"range": y_range, "showticklabels": False, "zeroline": False, "title": None, "scaleanchor": "x"},
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    }
    if height:
        layout["height"] = height
    return layout


def frame_figure(frames: Sequence, index: int = -1, *, colours: Sequence[str] | None = None, title: str = "", height: int | None = None):
    """Frame `index` of `frames` in the axes of all of them; a redraw of the figure with
    another frame moves the points there (`layout.transition`)."""
    import plotly.graph_objects as go

    frame = frames[index]
    layout = base_layout(frames, f"{title}{frame_title(frame)}", height)
    layout["transition"] = {"duration": TRANSITION_MS, "easing": "cubic-in-out"}
    layout["uirevision"] = "live-map"  # the user's zoom survives redraws
    return go.Figure(data=frame_traces(frame, colours), layout=layout)


def animated_figure(frames: Sequence, *, colours: Sequence[str] | None = None, title: str = ""):
    """Every frame as a plotly animation frame, a slider over them and play / pause."""
    import plotly.graph_objects as go

    if not frames:
        raise RetrievalAppError("no frames to animate")
    figure = go.Figure(data=frame_traces(frames[0], colours), layout=base_layout(frames, f"{title}{frame_title(frames[0])}"))
    # A frame holds only positions: ids, names, colours and hover text are the first
    # frame's (the same points in the same traces), so 200 frames of 2,000 points stay a
    # few megabytes.
    figure.frames = [go.Frame(name=str(i), data=_positions(f), layout={"title": {"text": f"{title}{frame_title(f)}"}}) for i, f in enumerate(frames)]
    step = {"mode": "immediate", "frame": {"duration": FRAME_MS, "redraw": False}, "transition": {"duration": TRANSITION_MS, "easing": "cubic-in-out"}}
    figure.update_layout(
        sliders=[{
            "active": 0, "currentvalue": {"prefix": "frame: "}, "pad": {"t": 30},
            "steps": [{"label": f.label, "method": "animate", "args": [[str(i)], step]} for i, f in enumerate(frames)],
        }],
        updatemenus=[{
            "type": "buttons", "direction": "left", "x": 0.0, "y": 0.0, "xanchor": "right", "yanchor": "top", "pad": {"t": 40, "r": 10},
            "buttons": [
                {"label": "▶ play", "method": "animate", "args": [None, {**step, "fromcurrent": True}]},
                {"label": "❚❚ pause", "method": "animate", "args": [[None], {"mode": "immediate", "frame": {"duration": 0, "redraw": False}, "transition": {"duration": 0}}]},
            ],
        }],
    )
    return figure


def _positions(frame) -> list:
    import plotly.graph_objects as go

    rows = [np.flatnonzero(frame.points.labels == label) for label in range(len(frame.points.classes))]
    return [go.Scatter(x=frame.coords[r, 0], y=frame.coords[r, 1]) for r in rows]


def export_animation_html(frames: Sequence, out: str | Path, *, title: str = "") -> Path:
    """A standalone HTML file of the animation (plotly.js inlined: it opens offline)."""
    from .export import _user_errors, check_output_path

    out = check_output_path(out, "html")
    html = animated_figure(frames, title=title).to_html(include_plotlyjs=True, full_html=True, auto_play=False)
    with _user_errors(out):
        return atomic_write_text(out, html)
