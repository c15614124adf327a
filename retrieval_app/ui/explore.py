"""Exploring the map: lasso / box selections browsed as a paged grid with a class
histogram and a CSV of their ids, a class shown alone (legend double-click, or picked),
an image found by id or file name, and the points coloured by class or by neighbour
agreement.

The answers come from the core (`retrieval.selection`, `retrieval.agreement`); this
module holds a session's view of them (`ExploreView`), turns them into components, and
wires the map's events (`map_select`, `map_clear`, `class_isolate`, `map_loaded`, sent by
the page's script in plot.py) and its own controls. `build` is the one call from app.py."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from ..errors import RetrievalAppError
from ..retrieval.agreement import neighbour_agreement
from ..retrieval.selection import PAGE_SIZE, Selection, class_histogram, find_images, page_of, select, select_class, write_selection_csv
from .plot import class_colour, colouring_json
from .text import error_text, md_escape, plural

COLOUR_CHOICES = [("class", "class"), ("neighbour agreement", "agreement")]
HINT = ("Select points with the map's **lasso** or **box** tool (top right of the map; hold shift to add to the selection, "
        "double-click on empty map to clear), or **double-click a class in the legend** to see all its images.")
FOUND_SHOWN = 5  # other matches of a search listed by id


@dataclass
class ExploreView:
    """One session's selection, the page of it shown, and its neighbour agreement per k,
    for one gallery: a new gallery (another folder, model) starts a new view."""

    gallery: object = None
    selection: Selection = field(default_factory=Selection)
    page: int = 0
    how: str = ""  # how the selection was made, in words
    agreement: dict[int, np.ndarray] = field(default_factory=dict)
    csv_dir: Path | None = None

    def agreement_of(self, k: int) -> np.ndarray:
        if k not in self.agreement:
            self.agreement[k] = neighbour_agreement(self.gallery, k)
        return self.agreement[k]

    def csv_path(self) -> Path:
        if self.csv_dir is None:  # one folder per view; Gradio serves a copy of the file
            self.csv_dir = Path(tempfile.mkdtemp(prefix="retrieval-app-selection-"))
        return self.csv_dir / "selection.csv"


def _view(state, view: ExploreView | None) -> ExploreView:
    gallery = state.require_gallery()
    if view is None or view.gallery is not gallery:
        view = ExploreView(gallery=gallery, csv_dir=view.csv_dir if view is not None else None)
    return view


# ------------------------------------------------------------------ outputs
def _selection_outputs(state, view: ExploreView) -> tuple:
    """(view, grid items, words, histogram, CSV file, page number) of the view."""
    gallery, sel = view.gallery, view.selection
    page = page_of(sel, view.page, PAGE_SIZE)
    view.page = page.number
    thumbs = state.thumbnails(list(page.indices))  # made now: only the page shown
    items = [(str(t), f"{gallery.records[i].class_name} · {gallery.records[i].id}") for i, t in zip(page.indices, thumbs) if t is not None]
    csv = str(write_selection_csv(gallery, sel, view.csv_path())) if len(sel) else None
    return view, items, _words(view, page), _histogram(gallery, sel), gr.update(value=csv, interactive=csv is not None), page.number + 1


def _words(view: ExploreView, page) -> str:
    sel = view.selection
    if not len(sel):
        return "Nothing selected. " + HINT
    n_classes = len(class_histogram(view.gallery, sel))
    shown = f"images {page.first + 1}–{page.first + len(page.indices)}, page {page.number + 1} of {page.n_pages}"
    return f"**{plural(len(sel), 'image')} selected** ({md_escape(view.how)}) in {plural(n_classes, 'class', 'classes')} · {shown}"


def _histogram(gallery, sel: Selection) -> go.Figure:
    """Images of each class in the selection, in class order, in the map's class colours."""
    counts = class_histogram(gallery, sel)
    label = {name: i for i, name in enumerate(gallery.classes)}
    figure = go.Figure(go.Bar(x=[n for n, _ in counts], y=[c for _, c in counts], marker_color=[class_colour(label[n]) for n, _ in counts],
                              text=[c for _, c in counts], textposition="outside", cliponaxis=False))
    figure.update_layout(title="Classes in the selection", height=300, margin={"l": 40, "r": 10, "t": 40, "b": 80}, yaxis={"title": "images"},
                         xaxis={"type": "category", "tickangle": -45 if len(counts) > 6 else 0})
    return figure


def _failed(state, view, exc: Exception) -> tuple:
    """The view as it was, with the error in place of the words."""
    view = _view(state, view) if state is not None and state.gallery is not None else view
    return (view, gr.skip(), error_text(exc), gr.skip(), gr.skip(), gr.skip())


def _event_data(evt, key: str, default):
    data = getattr(evt, "_data", None)
    return data[key] if isinstance(data, dict) and key in data else default


# ------------------------------------------------------------------ handlers
def select_points(state, view, indices, add, evt: gr.EventData):
    """A lasso or box on the map (its points' indices come in the event; API callers pass
    `indices`, a list of point numbers, and `add`). With `add` (shift held) the points join
    the current selection."""
    if state is None or state.gallery is None:
        return view, [], "Load a folder first.", gr.skip(), gr.skip(), gr.skip()
    indices = _event_data(evt, "indices", indices)
    add = bool(_event_data(evt, "add", add))
    try:
        view = _view(state, view)
        if indices is None or isinstance(indices, (str, bytes, dict)):
            raise RetrievalAppError("indices must be a list of point numbers")
        view.selection = select(view.gallery, indices, add_to=view.selection if add else None)
        view.page, view.how = 0, "added to" if add and view.how else "lasso / box"
        return _selection_outputs(state, view)
    except Exception as exc:
        return _failed(state, view, exc)


def clear_selection(state, view):
    """Forget the selection (a double-click on empty map)."""
    if state is None or state.gallery is None:
        return view, [], HINT, gr.skip(), gr.skip(), gr.skip()
    view = _view(state, view)
    view.selection, view.page, view.how = Selection(), 0, ""
    return _selection_outputs(state, view)


def browse_class(state, view, name, evt: gr.EventData):
    """Every image of one class in the grid (a class isolated in the map's legend sends its
    name in the event; API callers and the class picker pass `name`)."""
    if state is None or state.gallery is None:
        return view, [], "Load a folder first.", gr.skip(), gr.skip(), gr.skip()
    name = _event_data(evt, "name", name)
    try:
        view = _view(state, view)
        view.selection = select_class(view.gallery, name)
        view.page, view.how = 0, f"class {name}"
        return _selection_outputs(state, view)
    except Exception as exc:
        return _failed(state, view, exc)


def goto_page(state, view, number):
    """Page `number` (from 1) of the selection."""
    if state is None or state.gallery is None:
        return view, [], "Load a folder first.", gr.skip(), gr.skip(), gr.skip()
    view = _view(state, view)
    try:
        view.page = int(number or 1) - 1
    except (TypeError, ValueError):
        view.page = 0
    return _selection_outputs(state, view)


def step_page(step: int, state, view):
    if state is None or state.gallery is None:
        return view, [], "Load a folder first.", gr.skip(), gr.skip(), gr.skip()
    view = _view(state, view)
    view.page += step
    return _selection_outputs(state, view)


def find_point(state, text: str):
    """The point an id or file name names (the first when several do): its number, which
    the page then shows like a click, and words saying what matched. No match: an error."""
    if state is None or state.gallery is None:
        raise gr.Error("Load a folder first.")
    try:
        found = find_images(state.gallery, text)
    except RetrievalAppError as exc:
        raise gr.Error(str(exc)) from None
    if not found:
        raise gr.Error(f"No image id or file name matches '{text.strip()}'.")
    records = state.gallery.records
    words = f"Found **{md_escape(records[found[0]].id)}** (point {found[0]})"
    if len(found) > 1:
        others = ", ".join(md_escape(records[i].id) for i in found[1:1 + FOUND_SHOWN])
        words += f"; {len(found) - 1} more match: {others}" + (" …" if len(found) > 1 + FOUND_SHOWN else "")
    return found[0], words


def colouring_update(state, view, mode: str, k, revision: Callable) -> tuple:
    """(view, the map's colouring prop) for `mode`: "class", or "agreement" with the
    neighbours slider's k (the same k a click's summary counts)."""
    if state is None or state.gallery is None or state.projection is None:
        return view, gr.skip()
    view = _view(state, view)
    coords = state.projection.coords
    if mode == "agreement":
        k = max(1, int(k or 1))
        value = colouring_json(coords, revision(state), "agreement", view.agreement_of(k), title=f"neighbour agreement (k = {k})")
    else:
        value = colouring_json(coords, revision(state), "class")
    return view, gr.HTML(colouring=value)


def set_colouring(revision: Callable, state, view, mode: str, k):
    """Colour the map's points by class or by neighbour agreement."""
    if mode not in ("class", "agreement"):
        raise gr.Error(f"colour by 'class' or 'agreement', not {mode!r}")
    return colouring_update(state, view, mode, k, revision)


def k_changed(revision: Callable, state, view, mode: str, k):
    """The neighbours slider moved: an agreement colouring follows its k."""
    if mode != "agreement":
        return view, gr.skip()
    return colouring_update(state, view, mode, k, revision)


def map_loaded(revision: Callable, state, view, mode: str, k):
    """The page drew another map (folder, model, projection): a new view for a new gallery,
    the class picker's classes (in their natural order), and the colouring asked for."""
    if state is None or state.gallery is None:
        return (view, gr.skip(), gr.skip(), *(gr.skip(),) * 5)
    fresh = view is None or view.gallery is not state.gallery
    view = _view(state, view)
    picker = gr.update(choices=list(view.gallery.classes), value=None) if fresh else gr.skip()
    view, colouring = colouring_update(state, view, mode, k, revision) if mode == "agreement" else (view, gr.skip())
    selection = _selection_outputs(state, view)[1:] if fresh else (gr.skip(),) * 5
    return (view, picker, colouring, *selection)


# ------------------------------------------------------------------ the panel
def build(*, state, plot, k, point_index, revision: Callable, show_point: Callable) -> None:
    """The explore panel below the map, and its events. `revision(state)` names the map on
    screen (app.py's); `show_point(event)` chains after `event` what a click on the point in
    `point_index` shows (neighbours, highlight, hardest pair)."""
    private = {"api_visibility": "private"}
    view = gr.State(None)
    with gr.Accordion("Explore: select, browse, find, colour", open=True, elem_id="explore"):
        with gr.Row(equal_height=True):
            colour_by = gr.Radio(label="Colour points by", choices=COLOUR_CHOICES, value="class", elem_id="colour-by", scale=3,
                                 info="agreement: the share of a point's k nearest neighbours (k: the slider above) in its own class, dark 0 → yellow 1")
            find_text = gr.Textbox(label="Find an image (id or file name)", elem_id="find-text", scale=2)
            find_button = gr.Button("Find", elem_id="find-button", scale=0, min_width=80)
            # Custom values allowed: API clients name a class without the page's list (the
            # handler checks the name against the gallery's classes).
            class_pick = gr.Dropdown(label="Browse a class", choices=[], value=None, allow_custom_value=True, elem_id="class-pick", scale=2)
            browse_button = gr.Button("Show class", elem_id="class-browse", scale=0, min_width=110)
        find_words = gr.Markdown("", elem_id="find-status", latex_delimiters=[])
        words = gr.Markdown(HINT, elem_id="selection-text", latex_delimiters=[])
        with gr.Row():
            with gr.Column(scale=3):
                grid = gr.Gallery(label="Selection: class · id", show_label=False, columns=6, height=430, elem_id="selection-grid", object_fit="contain", allow_preview=True)
                with gr.Row(equal_height=True):
                    previous = gr.Button("Previous page", size="sm", elem_id="selection-prev")
                    page_box = gr.Number(label="Page", value=1, precision=0, minimum=1, elem_id="selection-page", min_width=80)
                    following = gr.Button("Next page", size="sm", elem_id="selection-next")
                    export = gr.DownloadButton("Export ids (CSV)", value=None, interactive=False, size="sm", elem_id="selection-export")
            histogram = gr.Plot(label="Classes in the selection", elem_id="selection-histogram", scale=2)
        # API inputs of /select_points (the map sends its points in the event instead).
        indices_in = gr.JSON(value=None, visible=False)
        add_in = gr.Checkbox(value=False, visible=False)

    outputs = [view, grid, words, histogram, export, page_box]
    plot.map_select(select_points, [state, view, indices_in, add_in], outputs, trigger_mode="multiple", show_progress="hidden", api_name="select_points")
    plot.map_clear(clear_selection, [state, view], outputs, show_progress="hidden", api_name="clear_selection")
    # (The named event first: a private one with the same function would take its name.)
    browse_button.click(browse_class, [state, view, class_pick], outputs, api_name="browse_class")
    plot.class_isolate(browse_class, [state, view, class_pick], outputs, show_progress="hidden", **private)
    page_box.submit(goto_page, [state, view, page_box], outputs, api_name="selection_page")
    previous.click(partial(step_page, -1), [state, view], outputs, **private)
    following.click(partial(step_page, 1), [state, view], outputs, **private)
    show_point(find_button.click(find_point, [state, find_text], [point_index, find_words], api_name="find_point"))
    show_point(find_text.submit(find_point, [state, find_text], [point_index, find_words], **private))
    colour_by.change(partial(set_colouring, revision), [state, view, colour_by, k], [view, plot], api_name="set_colouring")
    k.change(partial(k_changed, revision), [state, view, colour_by, k], [view, plot], show_progress="hidden", **private)
    plot.map_loaded(partial(map_loaded, revision), [state, view, colour_by, k], [view, class_pick, plot, grid, words, histogram, export, page_box], show_progress="hidden", **private)
