"""The app's side of folders without labels: the labels-CSV field, the words for a
folder that is coloured by cluster, and hiding the views that need labels.

A flat folder of images loads like any other (the core's "auto" layout reads it without
labels); its map is coloured by k-means clusters (`Gallery.colour_groups`). A labels CSV
(id,label; see `data/labels_csv.py`) is given by its path on the server, checked against
the data roots in share mode like a folder, and the folder is loaded again with it; its
bad rows are listed with the scan's warnings. Suspicious labels and the hardest
positive / nearest negative of a point need labels: without any they are hidden, not
shown as errors."""

from __future__ import annotations

from functools import partial

import gradio as gr

from .text import md_escape, plural

LABELS_HELP = "Optional: a CSV of id,label rows (id = the image's path inside the folder), for folders not sorted into class folders"


def components() -> tuple[gr.Textbox, gr.Button]:
    """The labels-CSV path and its button; placed by the caller in its layout."""
    with gr.Row():
        path = gr.Textbox(label="Labels CSV (optional)", placeholder="/path/to/labels.csv", info=LABELS_HELP, elem_id="labels-csv", scale=5)
        button = gr.Button("Load with these labels", elem_id="labels-load", scale=1)
    return path, button


def summary_head(state) -> str | None:
    """The first line of the load status for a folder without labels (None: labelled)."""
    scan, gallery = state.scan, state.gallery
    if scan.labelled:
        return None
    _, names, _ = gallery.colour_groups()
    return (f"**{plural(len(gallery), 'image')} without labels** from {md_escape(scan.root)} ({gallery.n_cached} from cache, "
            f"{gallery.n_computed} embedded now) · coloured by {plural(len(names), 'k-means cluster')}; "
            "metrics that need labels are hidden (give a labels CSV to use some)")


def point_summary(state, index: int) -> str | None:
    """The clicked point's line when it has no label: its id and cluster (None: labelled)."""
    gallery = state.gallery
    record = gallery.records[index]
    if record.label >= 0:
        return None
    groups, names, _ = gallery.colour_groups()
    return f"Query: **{md_escape(record.id)}** ({md_escape(names[groups[index]])})"


def label_views_visible(state):
    """Show the views that need labels only when the loaded folder has them."""
    labelled = state is not None and state.gallery is not None and state.gallery.labelled
    return gr.update(visible=labelled), gr.update(visible=labelled), gr.update(visible=labelled)


def load_with_labels(config, state, folder: str, labels: str, model: str, method: str, progress=gr.Progress()):
    """Load the folder again, labelled by the CSV (both paths checked in share mode)."""
    from .app import _error, _load

    state = state or config.sessions.new()
    try:
        resolved = config.data_roots.check(folder)
        if not str(labels or "").strip():
            raise ValueError("enter the path of a labels CSV (id,label rows)")
        csv_path = config.data_roots.check(labels)
    except Exception as exc:
        yield state, _error(exc), gr.skip()
        return
    yield from _load(state, resolved, model, method, progress, config.data_roots, labels=str(csv_path))


def wire(config, *, state, folder, model, method, labels_path, labels_button, load_status, plot, label_views) -> None:
    """The labels button, and the label views' visibility after every load."""
    labels_button.click(partial(load_with_labels, config), [state, folder, labels_path, model, method], [state, load_status, plot],
                        concurrency_limit=2, concurrency_id="load", api_name="load_folder_with_labels")
    load_status.change(label_views_visible, state, label_views, show_progress="hidden", api_visibility="private")
