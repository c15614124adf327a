"""The Gradio app: one page, five steps (load, explore, query, fine-tune, models).

A thin layer: every handler calls the core library through `SessionState` and turns
results into components. Each browser session has its own `SessionState`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from ..errors import RetrievalAppError
from ..losses import MINING_STRATEGIES
from ..networks import DEFAULT_BACKBONE, list_models
from ..paths import cache_dir, models_dir, sample_data_dir
from ..retrieval.projection import METHODS
from ..training import delete_checkpoint, list_checkpoints
from ..training.config import MODES
from .access import DataRoots, extract_upload
from .plot import PLOT_CSS, PLOT_JS, PLOT_TEMPLATE, map_figure_json
from .session import SessionState, uploads_dir

INTRO = """# Image similarity search
**1 · Load** a folder with one sub-folder per class (the sample set is ready below) ·
**2 · Explore**: click a point on the map to see its nearest neighbours ·
**3 · Query**: drop an image on the query box ·
**4 · Fine-tune** the network with a triplet loss (below) · **5 · Models**: reuse or delete trained models."""
DISTANCES = ["euclidean", "squared_euclidean", "cosine", "linf"]
METHOD_LABELS = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}
PLOTLY_JS = Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js"


@dataclass
class AppConfig:
    folder: Path | None = None
    data_roots: DataRoots = field(default_factory=DataRoots)
    allowed_paths: list[str] = field(default_factory=list)


def _model_choices() -> list[str]:
    return [*list_models(), *[str(info.path) for info in list_checkpoints()]]


def _neighbour_items(state: SessionState, neighbours) -> list[tuple[str, str]]:
    items = []
    for rank, n in enumerate(neighbours, 1):
        mark = "✓ " if n.same_class else ("✗ " if n.same_class is False else "")
        items.append((str(state.thumb(n.index)), f"{rank}. {mark}{n.label} · d={n.distance:.3f} · {n.id}"))
    return items


def _map_value(state: SessionState) -> str:
    if state.gallery is None or state.projection is None:
        return ""
    g, p = state.gallery, state.projection
    query, neighbours = state.highlight
    title = f"{METHOD_LABELS[p.method]} of {len(g)} images · {state.model_spec}" + (f" · {p.note}" if p.note else "")
    return map_figure_json(p.coords, g.labels, g.classes, [r.id for r in g.records], state.thumbs, query=query, neighbours=neighbours, query_point=state.query_point, title=title)


def _scan_summary(state: SessionState) -> str:
    scan, g = state.scan, state.gallery
    counts = ", ".join(f"{name} {n}" for name, n in scan.class_counts().items())
    lines = [f"**{len(g)} images in {len(scan.classes)} classes** from `{scan.root}` ({g.n_cached} from cache, {g.n_computed} embedded now) · {counts}"]
    skipped = [(s.path, s.reason) for s in scan.skipped] + list(g.failures)
    if skipped:
        lines.append(f"**Skipped {len(skipped)} files:** " + "; ".join(f"`{p}`: {r}" for p, r in skipped[:20]) + (" …" if len(skipped) > 20 else ""))
    lines += [f"⚠ {w}" for w in scan.warnings]
    return "\n\n".join(lines)


def _error(exc: Exception) -> str:
    return f"❌ {exc}" if isinstance(exc, RetrievalAppError) else f"❌ {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ handlers
def load_folder(config: AppConfig, state: SessionState | None, folder: str, model: str, method: str, progress=gr.Progress()):
    state = state or SessionState()
    try:
        resolved = config.data_roots.check(folder)
        state.load(resolved, model, lambda f, text: progress(f, desc=text))
        state.quick_projection()
        yield state, _scan_summary(state) + ("\n\nComputing the " + METHOD_LABELS[method] + " map…" if method != "pca" else ""), _map_value(state)
        if method != "pca":
            state.project(method)
            yield state, _scan_summary(state), _map_value(state)
    except Exception as exc:  # shown in the page; the previous state stays usable
        yield state, _error(exc), _map_value(state)


def change_method(state: SessionState | None, method: str):
    if state is None or state.gallery is None:
        return state, ""
    state.project(method)
    return state, _map_value(state)


def click_point(state: SessionState | None, k: int, evt: gr.EventData):
    if state is None or state.gallery is None:
        return state, [], None, "Load a folder first."
    data = getattr(evt, "_data", None) or {}
    try:
        index = data.get("index") if isinstance(data, dict) else None
        neighbours = state.neighbours_of_point(index, int(k))
    except Exception as exc:
        return state, [], None, _error(exc)
    record = state.gallery.records[int(index)]
    same = sum(bool(n.same_class) for n in neighbours)
    text = f"Query: **{record.id}** (class {record.class_name}) · {same}/{len(neighbours)} neighbours of the same class"
    return state, _neighbour_items(state, neighbours), str(state.thumb(int(index))), text


def query_image(state: SessionState | None, image_path: str | None, k: int):
    if image_path is None:
        return state, [], "Drop an image to search."
    if state is None or state.gallery is None:
        return state, [], "Load a folder first."
    try:
        neighbours = state.neighbours_of_image(image_path, int(k))
    except Exception as exc:
        return state, [], _error(exc)
    return state, _neighbour_items(state, neighbours), f"Query image placed on the map (★) · nearest: {neighbours[0].label}" if neighbours else "No neighbours."


def redraw(state: SessionState | None):
    return _map_value(state) if state is not None else ""


def start_training(state: SessionState | None, backbone, mode, distance, margin, mining, epochs, budget, name):
    if state is None or state.gallery is None:
        return state, "❌ load a folder first", gr.Timer(active=False)
    try:
        state.start_training(
            backbone=backbone, mode=mode, distance=distance, margin=float(margin), mining=mining,
            epochs=int(epochs) if epochs else None, time_budget=float(budget) if budget else None, name=name,
        )
    except Exception as exc:
        return state, _error(exc), gr.Timer(active=False)
    return state, "⏳ training started…", gr.Timer(active=True)


def cancel_training(state: SessionState | None):
    if state is None or state.job is None or not state.job.running:
        return "Nothing is training."
    state.job.cancel()
    return "⏹ cancelling…"


def _status_text(snap) -> str:
    if snap.state == "failed":
        return f"❌ training failed: {snap.error}"
    epochs = f"/{snap.epochs}" if snap.epochs else ""
    parts = [f"**{snap.state}** · {snap.phase}", f"epoch {snap.epoch}{epochs}", f"{100 * snap.fraction:.0f} %"]
    if snap.loss_history:
        parts.append(f"loss {snap.loss_history[-1][1]:.4f}")
    if snap.active_history:
        parts.append(f"active triplets {snap.active_history[-1][1]:.2f}")
    if snap.images_per_s:
        parts.append(f"{snap.images_per_s:.0f} images/s")
    if snap.eta_s is not None and snap.state == "running":
        parts.append(f"ETA {snap.eta_s:.0f} s")
    text = " · ".join(parts)
    if snap.finished and snap.message:
        text += f"\n\n{snap.message}"
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
    rows = []
    for key, label in (("precision_at_1", "P@1 (mean)"), ("map_at_r", "MAP@R (mean)"), ("val_seen_map_at_r", "MAP@R held-out images"), ("val_unseen_map_at_r", "MAP@R held-out classes")):
        before, after = result.before.get(key), result.after.get(key)
        rows.append([label, _fmt(before), _fmt(after)])
    rows.append(["kept", "✓" if result.kept == "start" else "", "✓" if result.kept == "trained" else ""])
    return rows


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def poll_training(state: SessionState | None):
    """Timer tick: progress while running; on finish, switch to the kept model."""
    if state is None or state.job is None:
        return state, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
    snap = state.job.snapshot()
    status, curves, validation = _status_text(snap), _curves(snap), _validation(snap)
    if not snap.finished:
        return state, status, curves, validation, gr.skip(), gr.Timer(active=True), gr.skip()
    table, map_value = gr.skip(), gr.skip()
    if snap.result is not None and not state.job_consumed:
        state.job_consumed = True
        table = _before_after(snap.result)
        try:
            state.load(state.gallery.root, str(snap.result.out_dir), lambda f, t: None)
            state.project(state.method)
            status += f"\n\nThe map and search now use `{snap.result.out_dir.name}`."
            map_value = _map_value(state)
        except Exception as exc:
            status += f"\n\n{_error(exc)}"
    return state, status, curves, validation, table, gr.Timer(active=False), map_value


def models_table() -> list[list]:
    return [[info.name, _fmt(info.metrics.get("map_at_r")), _fmt(info.metrics.get("precision_at_1")), info.train.get("backbone", ""), info.train.get("mining", ""), str(info.path)] for info in list_checkpoints()]


def delete_model(path: str | None):
    if not path:
        return "Choose a model to delete.", models_table(), gr.update(choices=_model_choices())
    try:
        delete_checkpoint(path, root=models_dir())
    except Exception as exc:
        return _error(exc), models_table(), gr.update()
    return f"Deleted `{Path(path).name}`.", models_table(), gr.update(choices=_model_choices(), value=DEFAULT_BACKBONE)


def upload_folder(config: AppConfig, state: SessionState | None, files, model, method, progress=gr.Progress()):
    state = state or SessionState()
    if not files:
        yield state, "Choose a zip or some images first.", _map_value(state), gr.skip()
        return
    try:
        folder = extract_upload([getattr(f, "name", f) for f in files], uploads_dir(state.session_id))
    except Exception as exc:
        yield state, _error(exc), _map_value(state), gr.skip()
        return
    for state, text, value in load_folder(config, state, str(folder), model, method, progress):
        yield state, text, value, str(folder)


# ---------------------------------------------------------------------- page
def build_app(config: AppConfig) -> gr.Blocks:
    with gr.Blocks(title="retrieval-app") as demo:
        state = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            folder = gr.Textbox(label="Image folder (one sub-folder per class)", value=str(config.folder or ""), elem_id="folder-path", scale=4)
            picker = gr.Dropdown(label="…or pick one", choices=config.data_roots.choices(), value=None, scale=2)
            model = gr.Dropdown(label="Model", choices=_model_choices(), value=DEFAULT_BACKBONE, allow_custom_value=False, scale=2)
            method = gr.Radio(label="Map", choices=[(METHOD_LABELS[m], m) for m in METHODS], value="umap", scale=2)
            load = gr.Button("Load folder", variant="primary", elem_id="load-folder", scale=1)
        with gr.Accordion("…or upload a zip / images", open=False):
            upload = gr.File(label="Zip of class folders, or images", file_count="multiple", file_types=[".zip", "image"])
            upload_load = gr.Button("Load upload")
        load_status = gr.Markdown("Press **Load folder** to embed the folder.", elem_id="load-status")
        with gr.Row():
            with gr.Column(scale=3):
                plot = gr.HTML(value="", html_template=PLOT_TEMPLATE, css_template=PLOT_CSS, js_on_load=PLOT_JS, elem_id="embedding-plot", apply_default_css=False)
            with gr.Column(scale=2):
                query = gr.Image(label="Query: drop, paste or click to upload an image", type="filepath", sources=["upload", "clipboard"], height=220, elem_id="query-image")
                k = gr.Slider(1, 30, value=8, step=1, label="Neighbours (k)", elem_id="k-slider")
                result = gr.Markdown("Click a point on the map, or drop an image.", elem_id="query-result")
                gallery = gr.Gallery(label="Nearest neighbours (✓ same class)", columns=4, height=420, elem_id="neighbour-gallery", object_fit="contain")
        with gr.Accordion("4 · Fine-tune with a triplet loss", open=False):
            with gr.Row():
                backbone = gr.Dropdown(label="Backbone", choices=list_models(), value=DEFAULT_BACKBONE)
                mode = gr.Radio(label="Mode", choices=list(MODES), value="auto", info="quick: frozen backbone, head only")
                distance = gr.Dropdown(label="Distance", choices=DISTANCES, value="euclidean")
                margin = gr.Number(label="Margin", value=0.2, minimum=0)
                mining = gr.Dropdown(label="Mining", choices=list(MINING_STRATEGIES), value="batch_all")
            with gr.Row():
                epochs = gr.Number(label="Epochs (empty: default / budget)", value=None, precision=0)
                budget = gr.Number(label="Time budget, s (optional)", value=None)
                name = gr.Textbox(label="Model name (optional)", value="")
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            train_status = gr.Markdown("Not training.", elem_id="train-status")
            with gr.Row():
                loss_plot = gr.Plot(label="Loss")
                val_plot = gr.Plot(label="Validation")
            before_after = gr.Dataframe(headers=["metric", "start", "trained"], label="Before / after", elem_id="before-after", interactive=False)
        with gr.Accordion("5 · Models", open=False):
            models = gr.Dataframe(headers=["name", "MAP@R", "P@1", "backbone", "mining", "path"], value=models_table, interactive=False)
            with gr.Row():
                chosen = gr.Dropdown(label="Checkpoint", choices=[str(i.path) for i in list_checkpoints()], allow_custom_value=False)
                use = gr.Button("Use for search")
                remove = gr.Button("Delete", variant="stop")
                refresh = gr.Button("Refresh")
            models_status = gr.Markdown("")
        timer = gr.Timer(1.0, active=False)

        load_inputs = [state, folder, model, method]
        load.click(lambda *a: (yield from load_folder(config, *a)), load_inputs, [state, load_status, plot], concurrency_limit=2)
        folder.submit(lambda *a: (yield from load_folder(config, *a)), load_inputs, [state, load_status, plot], concurrency_limit=2)
        picker.change(lambda p: p or gr.skip(), picker, folder)
        upload_load.click(lambda *a: (yield from upload_folder(config, *a)), [state, upload, model, method], [state, load_status, plot, folder], concurrency_limit=2)
        method.change(change_method, [state, method], [state, plot])
        plot.click(click_point, [state, k], [state, gallery, query, result], trigger_mode="multiple", concurrency_limit=None).then(redraw, state, plot)
        query.upload(query_image, [state, query, k], [state, gallery, result], concurrency_limit=None).then(redraw, state, plot)
        start.click(start_training, [state, backbone, mode, distance, margin, mining, epochs, budget, name], [state, train_status, timer])
        cancel.click(cancel_training, state, train_status, concurrency_limit=None)
        timer.tick(poll_training, state, [state, train_status, loss_plot, val_plot, before_after, timer, plot], concurrency_limit=None)
        use.click(lambda m: gr.update(value=m) if m else gr.skip(), chosen, model).then(lambda *a: (yield from load_folder(config, *a)), load_inputs, [state, load_status, plot])
        remove.click(delete_model, chosen, [models_status, models, model])
        refresh.click(lambda: (models_table(), gr.update(choices=[str(i.path) for i in list_checkpoints()]), gr.update(choices=_model_choices())), None, [models, chosen, model])
        if config.folder is not None:
            demo.load(lambda *a: (yield from load_folder(config, *a)), load_inputs, [state, load_status, plot])
    return demo


def page_head() -> str:
    """plotly.js from the installed plotly wheel: works offline."""
    return f'<script src="/gradio_api/file={PLOTLY_JS.as_posix()}"></script>'


def allowed_paths() -> list[str]:
    """Only the app's own cache (thumbnails, uploads) and plotly.js are ever served."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return [str(cache), str(PLOTLY_JS)]


def default_folder() -> Path:
    return sample_data_dir()
