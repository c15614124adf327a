"""The Gradio app: one page, five steps (load, explore, query, fine-tune, models).

A thin layer: every handler calls the core library through `SessionState` and turns
results into components. Each browser session has its own `SessionState`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from ..errors import RetrievalAppError
from ..choices import DEFAULT_DISTANCE, DEFAULT_MINING, DEFAULT_TRAIN_MODE, DISTANCES, MINING_STRATEGIES, PRESETS, TRAIN_MODES
from ..networks import DEFAULT_BACKBONE, list_models
from ..paths import models_dir, sample_data_dir
from ..retrieval.projection import METHODS
from ..training import delete_checkpoint, list_checkpoints
from . import diagnostics
from . import dial as dial_view
from . import explore as explore_view
from . import inspect as inspect_view
from . import verify as verify_view
from . import unlabelled as unlabelled_view
from . import live_map as live_map_view
from .access import DataRoots, expire_uploads, extract_upload
from .plot import PLOT_CSS, PLOT_JS, PLOT_TEMPLATE, file_url, highlight_json, highlight_payload, map_payload, points_json
from .served import served_root
from .session import SessionRegistry, SessionState, uploads_dir, uploads_root
from .text import error_text, md_escape, plural

INTRO = """# Image similarity search
**1 · Load** a folder with one sub-folder per class (the sample set is ready below) ·
**2 · Explore**: click a point on the map to see its nearest neighbours ·
**3 · Query**: drop an image on the query box ·
**4 · Fine-tune** the network with a triplet loss (below) · **5 · Models**: reuse or delete trained models."""
METHOD_LABELS = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}
PLOTLY_JS = Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js"
# The training form's blend: the dial's recommended point, or one fixed in advance.
RECOMMENDED = "recommended"
BLEND_CHOICES = [("recommended (the folds choose)", RECOMMENDED), ("0 · the backbone", "0"), ("0.25", "0.25"), ("0.5", "0.5"), ("0.75", "0.75"), ("1 · the fine-tuned head", "1")]


@dataclass
class AppConfig:
    folder: Path | None = None
    data_roots: DataRoots = field(default_factory=DataRoots)
    allowed_paths: list[str] = field(default_factory=list)
    # This app's sessions, for the map's hover requests (one registry per app, not global).
    sessions: SessionRegistry = field(default_factory=SessionRegistry)


def _model_choices() -> list[str | tuple[str, str]]:
    """Backbones by name, then trained checkpoints: shown by name, chosen by folder."""
    return [*list_models(), *_checkpoint_choices()]


def _checkpoint_choices() -> list[tuple[str, str]]:
    return [(f"{info.name} (trained)", str(info.path)) for info in list_checkpoints()]


def _model_name(spec: str) -> str:
    return spec if spec in list_models() else Path(spec).name


def _neighbour_items(state: SessionState, neighbours) -> list[tuple[str, str]]:
    """Gallery items: thumbnail and "rank. ✓ class · distance · id" (the page wraps the
    caption, so the whole id shows, colours ✓ green and ✗ red, and gives it as a tooltip)."""
    items = []
    thumbs = state.thumbnails([n.index for n in neighbours])  # made now: only what is shown
    for rank, (n, thumb) in enumerate(zip(neighbours, thumbs), 1):
        mark = "✓ " if n.same_class else ("✗ " if n.same_class is False else "")
        label = f"{n.label} · " if n.label else ""  # an image without a label has none to show
        items.append((str(thumb), f"{rank}. {mark}{label}{n.distance:.3f} · {n.id}"))
    return items


def _map_value(state: SessionState) -> str:
    """The whole map (points and highlight): sent when the points change."""
    if state.gallery is None or state.projection is None:
        return ""
    g, p = state.gallery, state.projection
    title = f"{METHOD_LABELS[p.method]} of {plural(len(g), 'image')} · {_model_name(state.model_spec)}" + (f" · {p.note}" if p.note else "")
    groups, names, _ = g.colour_groups()  # classes, or k-means clusters for a folder without labels
    # The points go by URL, not in the component's value: see plot.py.
    points = state.served.publish(points_json(p.coords, groups, names, [r.id for r in g.records]).encode(), ".json")
    return map_payload(p.coords, groups, names, [r.id for r in g.records], token=state.page_token, highlight=_highlight(state), title=title,
                       revision=_revision(state), points_url=file_url(points))


def _revision(state: SessionState) -> str:
    return f"{state.gallery.root}|{state.model_spec}|{state.projection.method}|{len(state.gallery)}"


def _highlight(state: SessionState) -> dict:
    query, neighbours = state.highlight
    return highlight_payload(query=query, neighbours=neighbours, query_point=state.query_point, seq=state.next_seq())


def _highlight_update(state: SessionState | None):
    """Only the map's highlight (the component's `highlight` prop): what a click or a
    query changes; the points stay on the page."""
    if state is None or state.gallery is None or state.projection is None:
        return gr.skip()
    return gr.HTML(highlight=highlight_json(state.projection.coords, _revision(state), _highlight(state)))


def _scan_summary(state: SessionState) -> str:
    """What was loaded, skipped and looks wrong; every name from the folder escaped."""
    scan, g = state.scan, state.gallery
    counts = ", ".join(f"{md_escape(name)} {n}" for name, n in scan.class_counts().items())
    lines = [unlabelled_view.summary_head(state) or f"**{plural(len(g), 'image')} in {plural(len(scan.classes), 'class', 'classes')}** from {md_escape(scan.root)} ({g.n_cached} from cache, {g.n_computed} embedded now) · {counts}"]
    skipped = [(s.path, s.reason) for s in scan.skipped] + list(g.failures)
    if skipped:
        listed = "; ".join(f"{md_escape(p)}: {md_escape(r)}" for p, r in skipped[:20])
        lines.append(f"**Skipped {plural(len(skipped), 'file')}:** {listed}" + (" …" if len(skipped) > 20 else ""))
    lines += [f"⚠ {md_escape(w)}" for w in scan.warnings]
    lines.append(md_escape(g.index_summary()))  # the search backend and its measured recall
    return "\n\n".join(lines)


def _error(exc: Exception) -> str:
    return error_text(exc)


# ------------------------------------------------------------------ handlers
def load_folder(config: AppConfig, state: SessionState | None, folder: str, model: str, method: str, progress=gr.Progress()):
    """Load a typed or picked folder (checked against the data roots in share mode)."""
    state = state or config.sessions.new()
    try:
        resolved = config.data_roots.check(folder)
    except Exception as exc:
        yield state, _error(exc), _map_value(state)
        return
    yield from _load(state, resolved, model, method, progress, config.data_roots)


def _load(state: SessionState, folder: Path, model: str, method: str, progress, roots: DataRoots, labels: str | None = None):
    """Scan + embed with progress, show a first map at once, then the chosen map when it is
    ready (see `_follow_map`). In share mode (`roots.restricted`) images that resolve
    outside the roots are skipped."""
    try:
        state.load(folder, model, lambda f, text: progress(f, desc=text), roots=roots if roots.restricted else None, labels=labels)
        yield from _follow_map(state, method, _scan_summary)
    except Exception as exc:  # shown in the page; the previous state stays usable
        yield state, _error(exc), _map_value(state)


MAP_POLL_S = 1.0  # how often the status counts the seconds while a map is fitted


def _follow_map(state: SessionState, method: str, summary):
    """The requested map when it is cached, else a quick PCA map at once while the
    requested one is fitted in the background (the page stays usable: clicks, queries);
    the status says so and counts the seconds, and the map is swapped in when it is ready.
    Ends early when another map or folder was asked for meanwhile."""
    job = state.begin_map(method)
    name = METHOD_LABELS[method]
    if not job.done:
        waiting = lambda: f"\n\nShowing a quick PCA map; the {name} map is being computed in the background ({job.elapsed:.0f} s so far) and replaces it when ready."  # noqa: E731
        yield state, summary(state) + waiting(), _map_value(state)
        while (outcome := state.settle_map(job, MAP_POLL_S)) == "pending":
            yield state, summary(state) + waiting(), gr.skip()
        if outcome == "superseded":
            return
        yield state, summary(state) + (f"\n\n{name} map ready ({job.elapsed:.0f} s)." if job.quick else ""), _map_value(state)
        return
    state.settle_map(job)
    yield state, summary(state), _map_value(state)


def change_method(state: SessionState | None, method: str):
    """Redraw the map with another projection (UMAP, PCA or t-SNE): at once when cached or
    PCA, else PCA first and the map when it is fitted."""
    if state is None or state.gallery is None:
        yield state, gr.skip(), gr.skip()
        return
    try:
        yield from _follow_map(state, method, _scan_summary)
    except Exception as exc:  # e.g. too few images for UMAP: say so, keep the old map
        yield state, _error(exc), gr.skip()


def _point_summary(state: SessionState, index: int, neighbours) -> str:
    record = state.gallery.records[index]
    if (unlabelled := unlabelled_view.point_summary(state, index)) is not None:
        return unlabelled
    same = sum(bool(n.same_class) for n in neighbours)
    return f"Query: **{md_escape(record.id)}** (class {md_escape(record.class_name)}) · {same}/{len(neighbours)} neighbours of the same class"


def _image_summary(neighbours) -> str:
    return f"Query image placed on the map (★) · nearest: {md_escape(neighbours[0].label)}" if neighbours else "No neighbours."


def neighbours_of_point(state: SessionState | None, index: float | None, k: int, evt: gr.EventData):
    """The neighbours of map point `index` (a click on the map sends its point's index in
    the event; API callers pass `index`), its image as the query, and a summary."""
    if state is None or state.gallery is None:
        return state, [], None, "Load a folder first."
    data = getattr(evt, "_data", None)
    if isinstance(data, dict) and "index" in data:  # a click on the map
        index = data["index"]
    try:
        if isinstance(index, float) and not index.is_integer():
            raise RetrievalAppError(f"not a point index: {index!r}")
        neighbours = state.neighbours_of_point(index, int(k))
    except Exception as exc:
        state.clear_query()
        return state, [], None, _error(exc)
    index = int(index)
    items = _neighbour_items(state, neighbours)
    return state, items, str(state.thumb(index)), _point_summary(state, index, neighbours)


def query_image(state: SessionState | None, upload: dict | str | None, k: int):
    """A dropped / pasted / uploaded image: its neighbours in the loaded folder. `upload`
    is the raw uploaded file (the event skips Gradio's image preprocessing; see
    `query_input`). A file that is no usable image empties the results and the highlight."""
    if upload is None:
        return state, [], "Drop an image to search."
    if state is None or state.gallery is None:
        return state, [], "Load a folder first."
    try:
        neighbours = state.neighbours_of_image(upload, int(k))
    except Exception as exc:
        return state, [], _error(exc)
    return state, _neighbour_items(state, neighbours), _image_summary(neighbours)


def change_k(state: SessionState | None, k: int):
    """Moving the k slider repeats the last query (a clicked point or a dropped image); the
    highlight is redrawn after it. With nothing asked yet it changes nothing."""
    if state is None or state.gallery is None or state.last_query is None:
        return state, gr.skip(), gr.skip()
    try:
        neighbours = state.repeat_query(int(k))
    except Exception as exc:
        return state, gr.skip(), _error(exc)
    if isinstance(state.last_query, int):
        summary = _point_summary(state, state.last_query, neighbours)
    else:
        summary = _image_summary(neighbours)
    return state, _neighbour_items(state, neighbours), summary


def redraw_highlight(state: SessionState | None):
    """The map's highlight after a query (chained after it, so the gallery comes first)."""
    return _highlight_update(state)


def hover_answer(sessions: SessionRegistry, data) -> dict:
    """The page's request for a hovered point's thumbnail, `[session token, point index]`
    → {"url": ...} ("" when there is none). Made and served now, for that session only."""
    try:
        token, index = data
        index = int(index)
    except (TypeError, ValueError):
        return {"url": ""}
    state = sessions.get(token)
    return {"url": file_url(state.thumb(index)) if state is not None else ""}


def start_training(state: SessionState | None, backbone, mode, distance, margin, mining, epochs, budget, name, blend=RECOMMENDED, preset=None):
    """Start a `TrainingJob` on the loaded folder and switch the progress timer on.
    `blend`: "recommended" (the dial's recommended point), or 0…1 to keep that point;
    `preset`: a recipe (`training/presets.py`) filling the settings left at their defaults."""
    if state is None or state.gallery is None:
        return state, "**Error:** load a folder first", gr.Timer(active=False)
    try:
        state.start_training(
            backbone=backbone, mode=mode, distance=distance, margin=float(margin), mining=mining,
            epochs=int(epochs) if epochs else None, time_budget=float(budget) if budget else None, name=name,
            blend=_blend_choice(blend), preset=preset or None,
        )
    except Exception as exc:
        return state, _error(exc), gr.Timer(active=False)
    return state, "Training started…", gr.Timer(active=True)


def preset_form(name: str | None):
    """A recipe chosen: the form's distance, margin and mining show its values."""
    from ..training.presets import get_preset

    if not name:
        return gr.skip(), gr.skip(), gr.skip()
    settings = get_preset(name).settings
    return settings.get("distance", gr.skip()), settings.get("margin", gr.skip()), settings.get("mining", gr.skip())


def _blend_choice(blend) -> float | None:
    if blend in (None, "", RECOMMENDED):
        return None
    try:
        return float(blend)
    except (TypeError, ValueError):
        raise RetrievalAppError(f"blend must be 'recommended' or a number from 0 to 1, not {blend!r}") from None


CANCEL_WAIT_S = 0.9  # a cancel answers with the outcome when the run stops this soon


def prepare_training(state: SessionState | None) -> None:
    if state is not None:
        state.prepare_training()


def cancel_training(state: SessionState | None):
    """Ask the running job to stop and wait a moment for it: most runs stop within a
    step, so the answer is the outcome itself; the timer's next tick settles the rest
    (the table, the dial, a switch to a model a full run kept)."""
    if state is None or state.job is None or not state.job.running:
        return "Nothing is training."
    state.job.cancel()
    snap = state.job.wait(CANCEL_WAIT_S)
    return _status_text(snap) if snap.finished else "Cancelling…"


def _status_text(snap) -> str:
    if snap.state == "failed":
        return f"**Error:** training failed: {md_escape(snap.error)}"
    epochs = f"/{snap.epochs}" if snap.epochs else ""
    parts = [f"**{snap.state}**" + (f" · {md_escape(snap.phase)}" if snap.phase and snap.phase != snap.state else "")]
    if snap.epoch or snap.step or snap.fraction:  # before the first step the phase says it all
        parts += [f"epoch {snap.epoch}{epochs}", f"{100 * snap.fraction:.0f} %"]
    if snap.loss_history:
        parts.append(f"loss {snap.loss_history[-1][1]:.4f}")
    if snap.active_history:
        parts.append(f"active triplets {snap.active_history[-1][1]:.2f}")
    if snap.images_per_s:
        parts.append(f"{snap.images_per_s:.0f} images/s")
    if snap.eta_s is not None and snap.state == "running":
        parts.append(f"ETA {snap.eta_s:.0f} s")
    text = " · ".join(parts)
    for warning in snap.warnings:  # e.g. a stall: no active triplet for a long stretch
        text += f"\n\n**Warning:** {md_escape(warning)}"
    if snap.finished and snap.message:
        text += f"\n\n{md_escape(snap.message)}"
    return text


def _curves(snap) -> go.Figure:
    figure = go.Figure()
    if snap.loss_history:
        steps, losses = zip(*snap.loss_history)
        figure.add_trace(go.Scatter(x=steps, y=losses, name="loss", mode="lines"))
        figure.add_trace(go.Scatter(x=steps, y=[a for _, a in snap.active_history], name="active triplets", mode="lines", yaxis="y2"))
    figure.update_layout(height=260, margin={"l": 40, "r": 40, "t": 30, "b": 30}, title="Training loss", yaxis2={"overlaying": "y", "side": "right", "range": [0, 1]}, legend={"orientation": "h"})
    return figure


def _validation(snap) -> go.Figure:
    figure = go.Figure()
    rows = [r for r in snap.val_history if r.get("map_at_r") is not None]
    for key, label in (("precision_at_1", "P@1"), ("map_at_r", "MAP@R")):
        figure.add_trace(go.Scatter(x=[r["epoch"] for r in rows], y=[r[key] for r in rows], name=label, mode="lines+markers"))
    figure.update_layout(height=260, margin={"l": 40, "r": 10, "t": 30, "b": 30}, title="Validation (epoch 0 = start)", legend={"orientation": "h"})
    return figure


def _before_after(result) -> list[list]:
    """Before (the bare backbone; from scratch, the untrained start) and after (the kept
    model; quick mode: fold estimates), and which one is in use now."""
    if not result.before and not result.after:  # stopped before anything was measured
        return []
    rows = []
    for key, label in (("precision_at_1", "P@1 (mean)"), ("map_at_r", "MAP@R (mean)"), ("val_seen_map_at_r", "MAP@R held-out images"), ("val_unseen_map_at_r", "MAP@R held-out classes")):
        before, after = result.before.get(key), result.after.get(key)
        rows.append([label, _fmt(before), _fmt(after)])
    rows.append(["kept", "✓" if result.kept == "start" else "", "✓" if result.kept == "trained" else ""])
    return rows


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def poll_training(state: SessionState | None):
    """Timer tick: progress while running; stops itself when the run has ended. Then one
    outcome: the status with the run's summary, the before/after table, the dial; and
    only when the run saved a model, the switch of map and search to it."""
    dial_skip = (gr.skip(),) * 4
    if state is None or state.job is None:
        return (state, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(), *dial_skip, *_panel_skip())
    snap = state.job.snapshot()
    if not snap.finished:
        curves, validation, panel = _curves(snap), _validation(snap), _panel(state, snap)
        # The figures take a while on a busy machine, and meanwhile a Cancel may have
        # answered with the outcome: the status comes from the job as it is now, so a
        # tick that began before the cancel does not show "running" after its answer.
        latest = state.job.snapshot()
        if latest.finished:
            return poll_training(state)
        # Once a cancel is asked, its answer owns the status until the run has ended: a
        # "running" line sent now could land after that answer (these figures take longer
        # to send than its few words). A tick that checked just before the cancel still
        # may, and re-arms the timer: the next tick settles the status on the outcome.
        status = gr.skip() if state.job.cancel_requested else _status_text(latest)
        return (state, status, curves, validation, gr.skip(), gr.Timer(active=True), gr.skip(), *dial_skip, *panel)
    status, curves, validation = _status_text(snap), _curves(snap), _validation(snap)
    table, adopt = (_before_after(snap.result) if snap.result is not None else []), gr.skip()
    first = not state.job_consumed
    switch_to = state.take_outcome(snap)
    if switch_to is not None:  # a new value fires `adopt_trained_model` once
        status += "\n\nSwitching the map and search to the trained model…"
        adopt = f"{switch_to}|{snap.started_at}"  # unique per run, even in the same folder
    dial = _dial_updates(state) if first else dial_skip
    return (state, status, curves, validation, table, gr.Timer(active=False), adopt, *dial, *_panel(state, snap))


def _panel(state: SessionState, snap) -> tuple:
    """The run's diagnostics: mining statistics over the steps, the distance histograms."""
    return diagnostics.mining_figure(snap), diagnostics.gap_figure(snap), *live_map_view.updates(state.live_map, snap)


def _panel_skip() -> tuple:
    return gr.skip(), gr.skip(), *live_map_view.skip()


def adopt_trained_model(state: SessionState | None, progress=gr.Progress()):
    """After a run that saved a model: the folder's images under it (a quick-mode head
    on the features cached by training, no image decoded) and the map redrawn, once per run."""
    nothing = (state, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
    if state is None or state.job is None or state.job_consumed or state.gallery is None:
        return nothing
    snap = state.job.snapshot()
    if not snap.finished or snap.result is None or snap.result.model_path is None:
        return nothing
    state.job_consumed = True
    status = _status_text(snap)
    spec = str(snap.result.out_dir)
    try:
        state.switch_model(spec, lambda f, text: progress(f, desc=text))
        state.project(state.method)
    except Exception as exc:  # the previous model stays in use
        return state, status + f"\n\n{_error(exc)}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
    status += f"\n\nThe map and search now use **{md_escape(snap.result.out_dir.name)}**."
    return state, status, _map_value(state), gr.update(choices=_model_choices(), value=spec), models_table(), gr.update(choices=_checkpoint_choices())


# ------------------------------------------------------------------ the dial
def _dial_updates(state: SessionState) -> tuple:
    """The dial's box, figure, slider and words for the session's dial (hidden without one)."""
    dial = state.dial
    if dial is None:
        return gr.update(visible=False), None, gr.skip(), ""
    blend = dial_view.initial_blend(dial)
    slider = gr.update(value=blend, interactive=dial_view.is_blendable(dial))
    return gr.update(visible=True), dial_view.dial_figure(dial, blend), slider, dial_view.dial_text(dial, blend, saved=state.dial_model is not None)


def preview_blend(state: SessionState | None, blend: float):
    """The slider moved: the dial with that point marked, and its two estimates in words."""
    if state is None or state.dial is None:
        return gr.skip(), "No dial yet: it comes with a quick-mode training run."
    return dial_view.dial_figure(state.dial, blend), dial_view.dial_text(state.dial, blend, saved=state.dial_model is not None)


def keep_dial_point(state: SessionState | None, blend: float, progress=gr.Progress()):
    """"Keep this point": a saved model takes the slider's blend and the map and search
    switch to it; when the run kept the backbone, a new run trains with this blend."""
    skip5 = (gr.skip(),) * 5
    if state is None or state.dial is None:
        return (state, "No dial yet: it comes with a quick-mode training run.", gr.skip(), *skip5, gr.skip())
    try:
        job = state.keep_dial_point(float(blend), lambda f, text: progress(f, desc=text))
        if job is None:
            state.project(state.method)
    except Exception as exc:
        return (state, _error(exc), gr.skip(), *skip5, gr.skip())
    if job is not None:  # nothing was saved: the run with this blend reports through the timer
        return (state, f"Training again with blend {float(blend):g}…", gr.skip(), f"Training again with blend {float(blend):g}…", gr.Timer(active=True), gr.skip(), gr.skip(), gr.skip(), gr.skip())
    spec = str(state.dial_model)
    words = dial_view.dial_text(state.dial, blend, saved=True) + f" The map and search now use **{md_escape(state.dial_model.name)}** at blend {float(blend):g}."
    return (state, words, dial_view.dial_figure(state.dial, blend), gr.skip(), gr.skip(), _map_value(state),
            gr.update(choices=_model_choices(), value=spec), models_table(), gr.update(choices=_checkpoint_choices()))


def show_model_dial(state: SessionState | None, spec: str | None):
    """A checkpoint chosen in the Models section and put to use: its dial, if it has one."""
    if state is None or not spec or state.model_spec != spec:
        return (state, *(gr.skip(),) * 4)
    try:
        found = state.show_dial_of(spec)
    except Exception:  # a damaged checkpoint was already reported by the load
        return (state, *(gr.skip(),) * 4)
    return (state, *(_dial_updates(state) if found is not None else (gr.skip(),) * 4))


def models_table() -> list[list]:
    """One row per checkpoint under models/: name, metrics, backbone, mining, folder."""
    return [[info.name, _fmt(info.metrics.get("map_at_r")), _fmt(info.metrics.get("precision_at_1")), info.train.get("backbone", ""), info.train.get("mining", ""), str(info.path)] for info in list_checkpoints()]


def _checkpoint_dropdown():
    return gr.update(choices=_checkpoint_choices(), value=None)


def model_lists(current_model: str | None = None):
    """The models table and both model selectors as they are on disk now: read when a
    page opens, after every training run and deletion, and on Refresh. The model in use
    stays selected while it exists."""
    choices = _model_choices()
    values = {c if isinstance(c, str) else c[1] for c in choices}
    model = gr.update(choices=choices, value=current_model if current_model in values else DEFAULT_BACKBONE)
    return models_table(), gr.update(choices=_checkpoint_choices()), model


def open_page(config: AppConfig, current_model: str | None):
    """A page opens (after the login in share mode): the folder to start with, the data
    roots to pick from and the model lists. They are filled here, per session, and not
    when the page is built: Gradio 6 writes the built page's API description, with every
    default value and choice, into the login page too, where it would show share mode's
    visitors server paths before they log in."""
    table, checkpoints, models = model_lists(current_model)
    return str(config.folder or ""), gr.update(choices=config.data_roots.choices()), table, checkpoints, models


def ask_to_delete(config: AppConfig, path: str | None):
    """The Delete button: nothing is deleted yet, the page asks first."""
    if config.data_roots.restricted:
        return "Deleting models is switched off in share mode.", gr.Row(visible=False), gr.skip()
    if not path:
        return "Choose a model to delete.", gr.Row(visible=False), gr.skip()
    return "", gr.Row(visible=True), f"Delete **{md_escape(Path(path).name)}** for good? Its folder `models/{md_escape(Path(path).name)}` is removed."


# ------------------------------------------------------------- looking closer at labels
def hardest_pair_of_point(state: SessionState | None, index: float | None, evt: gr.EventData):
    """A clicked point's farthest image of its class and nearest image of another class
    (a click on the map sends its point's index in the event; API callers pass `index`)."""
    if state is None or state.gallery is None:
        return [], ""
    data = getattr(evt, "_data", None)
    if isinstance(data, dict) and "index" in data:
        index = data["index"]
    try:
        if index is None or (isinstance(index, float) and not index.is_integer()):
            raise RetrievalAppError(f"not a point index: {index!r}")
        return inspect_view.hardest_pair_items(state, int(index))
    except Exception as exc:
        return [], _error(exc)


def clear_hardest_pair():
    return [], ""


def suspicious_view(state: SessionState | None, k: float):
    """The loaded folder's suspicious labels: summary, table, thumbnail pairs, CSV file."""
    if state is None or state.gallery is None:
        return "Load a folder first.", [], [], None
    try:
        _, rows, pairs, csv_path, summary = inspect_view.find_suspicious(state, int(k or 10))
    except Exception as exc:
        return _error(exc), [], [], None
    return summary, rows, pairs, csv_path


def hide_confirmation():
    return gr.Row(visible=False)


def delete_model(config: AppConfig, path: str | None, current_model: str):
    """Delete a checkpoint folder under models/ (not in share mode: visitors may not)."""
    if config.data_roots.restricted:
        return "Deleting models is switched off in share mode.", gr.skip(), gr.skip(), gr.skip(), gr.Row(visible=False)
    if not path:
        return "Choose a model to delete.", models_table(), _checkpoint_dropdown(), gr.skip(), gr.Row(visible=False)
    try:
        delete_checkpoint(path, root=models_dir())
    except Exception as exc:
        return _error(exc), models_table(), _checkpoint_dropdown(), gr.skip(), gr.Row(visible=False)
    # The page keeps using a deleted model until another is loaded; the selector forgets it.
    table, _, model = model_lists(current_model)
    return f"Deleted {md_escape(Path(path).name)}.", table, _checkpoint_dropdown(), model, gr.Row(visible=False)


def upload_folder(config: AppConfig, state: SessionState | None, files, model, method, progress=gr.Progress()):
    """An uploaded zip / images: unpacked into this session's part of the app cache (never
    into a user folder), then loaded like a folder. The unpacked folder is ours, so share
    mode's data roots do not apply to it."""
    state = state or config.sessions.new()
    if not files:
        yield state, "Choose a zip or some images first.", _map_value(state), gr.skip()
        return
    expire_uploads(uploads_root())  # old uploads of every session go; this one is new
    try:
        folder = extract_upload([getattr(f, "name", f) for f in files], uploads_dir(state.session_id))
    except Exception as exc:
        yield state, _error(exc), _map_value(state), gr.skip()
        return
    # Links inside an unpacked zip are never created (members are written as files), but
    # the roots check still keeps every image of it inside its own folder in share mode.
    roots = DataRoots.of([folder], restricted=config.data_roots.restricted)
    for state, text, value in _load(state, folder, model, method, progress, roots):
        yield state, text, value, str(folder)


# ---------------------------------------------------------------------- page
def end_session(state: SessionState | None) -> None:
    """Gradio drops a closed tab's state after a while: stop its training run with it, and
    stop serving its thumbnails."""
    if state is None:
        return
    if state.job is not None and state.job.running:
        state.job.cancel()
    state.served.close()


def build_app(config: AppConfig) -> gr.Blocks:
    """The whole page: load, explore, query, fine-tune, models; one `SessionState` per browser session.

    Every event a client may call has an `api_name` (see README, "The app's API"); the
    internal ones (redraws, the timer's hand-over, page-load refreshes) are private."""
    # Gradio's temporary copies (query uploads, gallery images) older than a day go hourly.
    with gr.Blocks(title="retrieval-app", delete_cache=(3600, 24 * 3600)) as demo:
        state = gr.State(None, delete_callback=end_session)

        def hover_thumbnail(data):
            """The map's server function (its name is what the page calls): see `hover_answer`."""
            return hover_answer(config.sessions, data)

        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            # Paths and checkpoints are filled when a page opens (`open_page`), never built in.
            folder = gr.Textbox(label="Image folder (one sub-folder per class)", value="", elem_id="folder-path", scale=5)
            picker = gr.Dropdown(label="…or pick one", choices=[], value=None, scale=3)
            model = gr.Dropdown(label="Model (backbone or trained checkpoint)", choices=list_models(), value=DEFAULT_BACKBONE, allow_custom_value=False, scale=3)
            with gr.Column(scale=1, min_width=150):
                load = gr.Button("Load folder", variant="primary", elem_id="load-folder")
                upload = gr.UploadButton("…or upload a zip", file_count="multiple", file_types=[".zip", "image"], elem_id="upload-folder", size="sm")
        labels_path, labels_button = unlabelled_view.components()
        load_status = gr.Markdown("Press **Load folder** to embed the folder.", elem_id="load-status", label="Load status", latex_delimiters=[])
        with gr.Row():
            with gr.Column(scale=3):
                # Label hidden: the three choices name themselves, right above the map.
                method = gr.Radio(label="Map", show_label=False, container=False, choices=[(METHOD_LABELS[m], m) for m in METHODS], value="umap", elem_id="map-method")
                plot = gr.HTML(value="", html_template=PLOT_TEMPLATE, css_template=PLOT_CSS, js_on_load=PLOT_JS, elem_id="embedding-plot", apply_default_css=False,
                               label="Map (compact JSON, see plot.py)", highlight="", colouring="", server_functions=[hover_thumbnail])
            with gr.Column(scale=2):
                query = gr.Image(label="Query: drop, paste or click to upload an image", type="filepath", sources=["upload", "clipboard"], height=200, elem_id="query-image")
                # The map sends a click's point in the event; API callers give the index here.
                point_index = gr.Number(label="Point index", value=None, visible=False)
                k = gr.Slider(1, 30, value=8, step=1, label="Neighbours (k)", elem_id="k-slider", info="✓ / ✗: same / other class than the query · map: ★ query, ◯ neighbours")
                result = gr.Markdown("Click a point on the map, or drop an image: its nearest neighbours appear below, with class and distance.", elem_id="query-result", label="Query result", latex_delimiters=[])
                gallery = gr.Gallery(label="Nearest neighbours: rank, class, distance, id", show_label=False, columns=3, height=380, elem_id="neighbour-gallery", object_fit="contain", allow_preview=True)
                # Beside the neighbours: what a triplet loss with this point as anchor works on.
                pair_words = gr.Markdown("", elem_id="hardest-pair-text", latex_delimiters=[])
                pair_gallery = gr.Gallery(label="Hardest positive and nearest negative of the clicked point", columns=2, height=230, elem_id="hardest-pair", object_fit="contain", allow_preview=True)
        def show_point(event):
            """After `event` set `point_index`: that point as if clicked (a found image)."""
            # (Own names: private events otherwise take their functions' names from the named ones below.)
            event.success(neighbours_of_point, [state, point_index, k], [state, gallery, query, result], api_name="found_point_neighbours", **private).then(redraw_highlight, state, plot, show_progress="hidden", **private)
            event.success(hardest_pair_of_point, [state, point_index], [pair_gallery, pair_words], show_progress="hidden", api_name="found_point_hardest_pair", **private)

        private = {"api_visibility": "private"}
        explore_view.build(state=state, plot=plot, k=k, point_index=point_index, revision=_revision, show_point=show_point)
        with gr.Accordion("Suspicious labels: images whose neighbours mostly belong to another class", open=False, elem_id="suspicious") as suspicious_box:
            with gr.Row():
                suspicious_k = gr.Number(label="Neighbours looked at (k)", value=10, precision=0, minimum=2, maximum=50, scale=1)
                suspicious_find = gr.Button("Find suspicious labels", elem_id="suspicious-find", scale=1)
                suspicious_csv = gr.File(label="Export (CSV)", elem_id="suspicious-csv", scale=2, interactive=False)
            suspicious_summary = gr.Markdown("", elem_id="suspicious-summary", latex_delimiters=[])
            suspicious_table = gr.Dataframe(headers=inspect_view.SUSPICIOUS_HEADERS, label="Most suspicious first", elem_id="suspicious-table", interactive=False, max_height=320)
            suspicious_pairs = gr.Gallery(label="Each image (left) beside its nearest image of the class it looks like (right)", columns=4, height=420, elem_id="suspicious-pairs", object_fit="contain", allow_preview=True)
        verify_view.build_verify_panel(state)
        with gr.Accordion("4 · Fine-tune with a triplet loss", open=False) as train_panel:
            with gr.Row():
                backbone = gr.Dropdown(label="Backbone", choices=list_models(), value=DEFAULT_BACKBONE)
                mode = gr.Radio(label="Mode", choices=list(TRAIN_MODES), value=DEFAULT_TRAIN_MODE, info="quick: frozen backbone, head only")
                distance = gr.Dropdown(label="Distance", choices=list(DISTANCES), value=DEFAULT_DISTANCE)
                margin = gr.Number(label="Margin", value=0.2, minimum=0)
                mining = gr.Dropdown(label="Mining", choices=list(MINING_STRATEGIES), value=DEFAULT_MINING)
            with gr.Row():
                epochs = gr.Number(label="Epochs", value=None, precision=0, minimum=0, info="0 or empty: the default, or as many as the time budget allows")
                budget = gr.Number(label="Time budget, s (optional)", value=None, info="0 or empty: no limit")
                name = gr.Textbox(label="Model name (optional)", value="")
                preset = gr.Dropdown(label="Recipe", choices=[("none", ""), *[(p, p) for p in PRESETS]], value="", elem_id="train-preset", info="facenet: unit-norm 128-d, squared Euclidean, margin 0.2, summed semi-hard triplets (fills what you leave at its default)")
                blend = gr.Dropdown(label="Blend (quick mode)", choices=BLEND_CHOICES, value=RECOMMENDED, elem_id="train-blend", info="where on the dial to land: 0 = the backbone, 1 = the fine-tuned head")
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            train_status = gr.Markdown("Not training.", elem_id="train-status")
            with gr.Row():
                loss_plot = gr.Plot(label="Loss")
                val_plot = gr.Plot(label="Validation")
            with gr.Row():
                mining_plot = gr.Plot(label="Mining", elem_id="mining-plot")
                gap_plot = gr.Plot(label="Distances", elem_id="gap-plot")
            live_map = live_map_view.LiveMapPanel()
            before_after = gr.Dataframe(headers=["metric", "before (backbone)", "after"], label="Before / after", elem_id="before-after", interactive=False)
            # The specialise <-> generalise dial of a quick-mode run: shown when there is one.
            with gr.Group(visible=False, elem_id="dial") as dial_box:
                with gr.Row():
                    dial_plot = gr.Plot(label="The dial", elem_id="dial-plot", scale=3)
                    with gr.Column(scale=2):
                        dial_blend = gr.Slider(0, 1, value=1, step=dial_view.BLEND_STEP, label="Blend: 0 = the backbone, 1 = the fine-tuned head", elem_id="dial-blend")
                        dial_words = gr.Markdown("", elem_id="dial-text", latex_delimiters=[])
                        keep_point = gr.Button("Keep this point", elem_id="dial-keep", size="md")
        with gr.Accordion("5 · Models", open=False):
            models = gr.Dataframe(headers=["name", "MAP@R", "P@1", "backbone", "mining", "path"], label="Models", interactive=False)  # filled when the page opens
            with gr.Row():
                chosen = gr.Dropdown(label="Checkpoint", choices=[], allow_custom_value=False)
                use = gr.Button("Use for search")
                remove = gr.Button("Delete", variant="stop", elem_id="model-delete")
                refresh = gr.Button("Refresh")
            with gr.Row(visible=False, elem_id="delete-confirm") as confirm_row:
                confirm_text = gr.Markdown("", latex_delimiters=[])
                confirm_yes = gr.Button("Yes, delete", variant="stop", elem_id="delete-yes")
                confirm_no = gr.Button("Keep it", elem_id="delete-no")
            models_status = gr.Markdown("", elem_id="models-status", label="Models status", latex_delimiters=[])
        timer = gr.Timer(1.0, active=False)
        adopt = gr.Textbox(visible="hidden")  # set to a trained model's folder when its run ends

        private = {"api_visibility": "private"}
        load_inputs = [state, folder, model, method]
        lists = [models, chosen, model]
        load.click(partial(load_folder, config), load_inputs, [state, load_status, plot], concurrency_limit=2, concurrency_id="load", api_name="load_folder")
        folder.submit(partial(load_folder, config), load_inputs, [state, load_status, plot], concurrency_id="load", **private)
        picker.change(lambda p: p or gr.skip(), picker, folder, **private)
        upload.upload(partial(upload_folder, config), [state, upload, model, method], [state, load_status, plot, folder], concurrency_id="load", api_name="upload_folder")
        method.change(change_method, [state, method], [state, load_status, plot], concurrency_limit=2, api_name="set_map_method")
        plot.click(neighbours_of_point, [state, point_index, k], [state, gallery, query, result], trigger_mode="multiple", concurrency_limit=None, api_name="neighbours_of_point").then(redraw_highlight, state, plot, show_progress="hidden", **private)
        # Raw upload, decoded by the app (query_input.py); two decodes at a time at most.
        query.upload(query_image, [state, query, k], [state, gallery, result], preprocess=False, concurrency_limit=2, concurrency_id="query_image", api_name="query_image").then(redraw_highlight, state, plot, show_progress="hidden", **private)
        k.change(change_k, [state, k], [state, gallery, result], trigger_mode="always_last", api_name="set_k").then(redraw_highlight, state, plot, show_progress="hidden", **private)
        # Opening the panel starts the app's training process ahead of time (its imports take seconds).
        train_panel.expand(prepare_training, state, None, show_progress="hidden", **private)
        start.click(start_training, [state, backbone, mode, distance, margin, mining, epochs, budget, name, blend, preset], [state, train_status, timer], api_name="train")
        preset.change(preset_form, preset, [distance, margin, mining], **private)
        cancel.click(cancel_training, state, train_status, concurrency_limit=None, show_progress="hidden", api_name="cancel_training")
        dial_outputs = [dial_box, dial_plot, dial_blend, dial_words]
        panel_outputs = [mining_plot, gap_plot, *live_map.outputs]
        live_map.wire(state)
        timer.tick(poll_training, state, [state, train_status, loss_plot, val_plot, before_after, timer, adopt, *dial_outputs, *panel_outputs], concurrency_limit=None, show_progress="hidden", api_name="training_status")
        # One progress bar, on the status line (not one per output).
        adopt.change(adopt_trained_model, state, [state, train_status, plot, model, models, chosen], concurrency_limit=2, show_progress_on=[train_status], **private).then(model_lists, model, lists, **private)
        dial_blend.change(preview_blend, [state, dial_blend], [dial_plot, dial_words], show_progress="hidden", api_name="preview_blend")
        keep_point.click(keep_dial_point, [state, dial_blend], [state, dial_words, dial_plot, train_status, timer, plot, model, models, chosen], concurrency_limit=2, show_progress_on=[dial_words], api_name="set_blend")
        use.click(lambda m: gr.update(value=m) if m else gr.skip(), chosen, model, **private).then(partial(load_folder, config), load_inputs, [state, load_status, plot], **private).then(show_model_dial, [state, model], [state, *dial_outputs], **private)
        remove.click(partial(ask_to_delete, config), chosen, [models_status, confirm_row, confirm_text], **private)
        confirm_yes.click(partial(delete_model, config), [chosen, model], [models_status, models, chosen, model, confirm_row], api_name="delete_model")
        confirm_no.click(hide_confirmation, None, confirm_row, **private)
        chosen.change(hide_confirmation, None, confirm_row, **private)  # a confirmation is for one model
        refresh.click(model_lists, model, lists, api_name="list_models")
        plot.click(hardest_pair_of_point, [state, point_index], [pair_gallery, pair_words], trigger_mode="multiple", concurrency_limit=None, show_progress="hidden", api_name="hardest_pair_of_point")
        query.upload(clear_hardest_pair, None, [pair_gallery, pair_words], show_progress="hidden", **private)
        suspicious_find.click(suspicious_view, [state, suspicious_k], [suspicious_summary, suspicious_table, suspicious_pairs, suspicious_csv], concurrency_limit=2, api_name="suspicious_labels")
        unlabelled_view.wire(config, state=state, folder=folder, model=model, method=method, labels_path=labels_path, labels_button=labels_button,
                             load_status=load_status, plot=plot, label_views=[suspicious_box, pair_gallery, pair_words])
        opened = demo.load(partial(open_page, config), model, [folder, picker, *lists], **private)
        if config.folder is not None:
            opened.then(partial(load_folder, config), load_inputs, [state, load_status, plot], **private)
    return demo


# The neighbours' captions: wrapped, so the whole id shows; coloured by the ✓ / ✗ they
# start with (Gradio's captions are plain text: a script marks each one, see CAPTION_JS).
PAGE_CSS = """
#neighbour-gallery .caption-label { white-space: normal; overflow-wrap: anywhere; max-width: calc(100% - 8px); font-size: 12px; line-height: 1.25; }
#neighbour-gallery .caption-label[data-match="same"] { color: #1a7f37; font-weight: 600; }
#neighbour-gallery .caption-label[data-match="other"] { color: #c62828; font-weight: 600; }
"""

CAPTION_JS = """
<script>
(() => {
  // "1. ✓ class · 0.123 · id": same class (✓) or another (✗); the caption is its own tooltip.
  const mark = () => document.querySelectorAll('#neighbour-gallery .caption-label').forEach((el) => {
    const m = /^\\d+\\. ([\u2713\u2717])/.exec(el.textContent || '');
    const match = m ? (m[1] === '\u2713' ? 'same' : 'other') : '';
    if (el.dataset.match !== match) el.dataset.match = match;
    if (el.title !== el.textContent) el.title = el.textContent;
  });
  let pending = false;
  const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; mark(); }); } };
  const start = () => new MutationObserver(schedule).observe(document.body, {childList: true, subtree: true, characterData: true});
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();
</script>
"""


def page_head() -> str:
    """plotly.js from the installed plotly wheel (works offline), and the captions' script."""
    return f'<script src="/gradio_api/file={PLOTLY_JS.as_posix()}"></script>' + CAPTION_JS


def allowed_paths() -> list[str]:
    """What Gradio may serve from disk: plotly.js and the sessions' served folders (links
    to their thumbnails under random names, see served.py). Embedding stores, maps,
    uploads and the thumbnail cache itself are not served."""
    root = served_root()
    root.mkdir(parents=True, exist_ok=True)
    return [str(root), str(PLOTLY_JS)]


def default_folder() -> Path:
    """The folder opened when none is given: the bundled sample_data/."""
    return sample_data_dir()
