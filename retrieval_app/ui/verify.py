"""The verification panel: "are these two images the same identity?".

Two drop boxes, the answer (distance against the threshold), and the ROC curve of the
calibration with its operating point, which the user moves with a threshold slider (the
curve says what each threshold costs: its false-accept and true-accept rates).

The model is the session's (`SessionState.gallery.net`, `model_spec`); the calibration is
the one stored in its checkpoint by training, or one made on the loaded folder ("Calibrate
on the loaded folder": every pair of its images; meant for images the model did not train
on, and the only way for a bare backbone). The panel keeps its own per-session state
(`VerifyState`), so the rest of the page is untouched."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from ..errors import RetrievalAppError
from ..training.checkpoint import checkpoint_distance, checkpoint_verification
from ..verification import Calibration, pair_distance, verification_distance
from .query_input import read_query_image, uploaded_path
from .text import error_text, md_escape

NO_FOLDER = "Load a folder (and a model) first: the images are compared by the model in use."


@dataclass
class VerifyState:
    """One session's panel: the calibration in use, for which model, and the last pair's distance."""

    model_spec: str | None = None
    calibration: Calibration | None = None
    origin: str = ""  # "the checkpoint" / "the loaded folder"
    distance: float | None = None  # the last pair's, in the calibration's distance


def _ready(state, panel: VerifyState | None) -> VerifyState:
    """The panel for the session's current model: the checkpoint's calibration when the
    model changed since the last call."""
    if state is None or state.gallery is None:
        raise RetrievalAppError(NO_FOLDER)
    panel = panel or VerifyState()
    if panel.model_spec != state.model_spec:
        stored = checkpoint_verification(state.model_spec)
        panel = VerifyState(state.model_spec, stored, "the checkpoint" if stored is not None else "")
    return panel


def _embed(state, upload) -> np.ndarray:
    from ..retrieval.embed import _decode_max_side

    path, name = uploaded_path(upload)
    return state.gallery.embed_images([read_query_image(path, name, _decode_max_side(state.gallery.net))])[0]


# ------------------------------------------------------------------ handlers
def verify_pair(state, panel: VerifyState | None, image_a, image_b, threshold: float | None):
    """Both images present: their distance against the slider's threshold (the
    calibration's when the slider was never set). Returns (panel, words, figure, slider)."""
    try:
        panel = _ready(state, panel)
    except Exception as exc:
        return panel, error_text(exc), gr.skip(), gr.skip()
    slider = _slider(panel)
    if image_a is None or image_b is None:
        return panel, _words(panel, threshold) or "Drop two images: the answer appears here.", roc_figure(panel.calibration, threshold), slider
    try:
        a, b = _embed(state, image_a), _embed(state, image_b)
    except Exception as exc:
        panel.distance = None
        return panel, error_text(exc), gr.skip(), slider
    name = panel.calibration.distance if panel.calibration is not None else verification_distance(checkpoint_distance(state.model_spec))
    panel.distance = pair_distance(a, b, name)
    t = _threshold(panel, threshold)
    return panel, _words(panel, t), roc_figure(panel.calibration, t), slider


def calibrate_on_folder(state, panel: VerifyState | None, progress=gr.Progress()):
    """Every pair of the loaded folder's images (its classes as identities)."""
    from ..training.calibration import calibrate_labelled

    try:
        panel = _ready(state, panel)
        progress(0.1, desc="comparing every pair of images")
        g = state.gallery
        distance = verification_distance(checkpoint_distance(state.model_spec))
        panel.calibration = calibrate_labelled(g.embeddings, g.labels, distance, source=f"every pair of {g.root.name}/ ({len(g)} images)")
        panel.origin = "the loaded folder"
    except Exception as exc:
        return panel, error_text(exc), gr.skip(), gr.skip()
    t = panel.calibration.threshold
    return panel, _words(panel, t), roc_figure(panel.calibration, t), _slider(panel, value=t)


def move_threshold(panel: VerifyState | None, threshold: float):
    """The slider moved: the operating point on the ROC and, for the last pair, the answer."""
    if panel is None or panel.calibration is None:
        return gr.skip(), "No calibration yet: drop two images (a trained model brings its own) or calibrate on the loaded folder."
    return roc_figure(panel.calibration, threshold), _words(panel, threshold)


# ------------------------------------------------------------------ pieces
def _threshold(panel: VerifyState, threshold: float | None) -> float | None:
    if panel.calibration is None:
        return threshold
    if threshold is None or not _in_range(panel.calibration, threshold):
        return panel.calibration.threshold
    return float(threshold)


def _in_range(calibration: Calibration, threshold: float) -> bool:
    low, high = calibration.roc["threshold"][0], calibration.roc["threshold"][-1]
    return low <= float(threshold) <= high


def _slider(panel: VerifyState, value: float | None = None):
    cal = panel.calibration
    if cal is None:
        return gr.update(interactive=False)
    low, high = float(cal.roc["threshold"][0]), float(cal.roc["threshold"][-1])
    return gr.update(minimum=round(low, 4), maximum=round(high, 4), value=round(cal.threshold if value is None else value, 4), step=max((high - low) / 500, 1e-4), interactive=True)


def _words(panel: VerifyState, threshold: float | None) -> str:
    cal = panel.calibration
    lines = []
    if panel.distance is not None and threshold is not None:
        same = panel.distance <= threshold
        lines.append(f"### {'✓ Same identity' if same else '✗ Different identities'}")
        lines.append(f"distance **{panel.distance:.4f}** {'≤' if same else '>'} threshold **{threshold:.4f}**" + (f" ({cal.distance})" if cal else ""))
    elif panel.distance is not None:
        lines.append(f"distance **{panel.distance:.4f}**: no threshold yet (calibrate on the loaded folder).")
    if cal is not None and threshold is not None:
        far, tar = cal.rates_at(threshold)
        lines.append(f"At this threshold the calibration accepts {far:.2%} of impostor pairs (FAR) and {tar:.2%} of genuine pairs (TAR). "
                     f"Calibrated (EER point) {cal.threshold:.4f}, EER {cal.eer:.3f}, from {md_escape(panel.origin)}: {md_escape(cal.source)}.")
    elif cal is None:
        lines.append("This model has no calibration: **Calibrate on the loaded folder** (its classes as identities).")
    return "\n\n".join(lines)


def roc_figure(calibration: Calibration | None, threshold: float | None = None) -> go.Figure:
    """TAR against FAR (log axis) with the EER point and the chosen operating point."""
    figure = go.Figure()
    if calibration is not None:
        floor = 0.5 / max(calibration.n_impostor, 1)  # FAR 0 drawn here (a log axis has no 0)
        far = np.maximum(np.asarray(calibration.roc["far"]), floor)
        figure.add_trace(go.Scatter(x=far, y=calibration.roc["tar"], mode="lines", name="ROC", line={"color": "#1f77b4"},
                                    customdata=calibration.roc["threshold"], hovertemplate="FAR %{x:.4f}<br>TAR %{y:.3f}<br>threshold %{customdata:.4f}<extra></extra>"))
        e_far, e_tar = calibration.rates_at(calibration.threshold)
        figure.add_trace(go.Scatter(x=[max(e_far, floor)], y=[e_tar], mode="markers", name=f"EER point ({calibration.threshold:.3f})", marker={"size": 10, "color": "#2ca02c"}))
        if threshold is not None:
            c_far, c_tar = calibration.rates_at(threshold)
            figure.add_trace(go.Scatter(x=[max(c_far, floor)], y=[c_tar], mode="markers", name=f"operating point ({threshold:.3f})", marker={"size": 14, "color": "#d62728", "symbol": "x"}))
    figure.update_layout(height=300, margin={"l": 40, "r": 10, "t": 30, "b": 40}, title="ROC: true accepts against false accepts",
                         xaxis={"type": "log", "title": "false-accept rate"}, yaxis={"range": [0, 1.02], "title": "true-accept rate"},
                         legend={"orientation": "h", "font": {"size": 10}})
    return figure


# ------------------------------------------------------------------ the panel
def build_verify_panel(state: gr.State) -> None:
    """The panel's components and events (called once from `app.build_app`)."""
    with gr.Accordion("Verify: are two images the same identity?", open=False, elem_id="verify"):
        panel = gr.State(None)
        with gr.Row():
            image_a = gr.Image(label="Image A", type="filepath", sources=["upload", "clipboard"], height=200, elem_id="verify-a")
            image_b = gr.Image(label="Image B", type="filepath", sources=["upload", "clipboard"], height=200, elem_id="verify-b")
            with gr.Column():
                answer = gr.Markdown("Drop two images: the answer appears here.", elem_id="verify-answer", latex_delimiters=[])
                threshold = gr.Slider(0, 4, value=1, step=0.001, label="Threshold (distance): move it along the ROC", elem_id="verify-threshold", interactive=False)
                calibrate = gr.Button("Calibrate on the loaded folder", elem_id="verify-calibrate", size="sm")
        roc = gr.Plot(label="ROC", elem_id="verify-roc")
    outputs = [panel, answer, roc, threshold]
    inputs = [state, panel, image_a, image_b, threshold]
    # Raw uploads, decoded by the app (query_input.py), like the query box; either drop answers.
    image_a.upload(verify_pair, inputs, outputs, preprocess=False, concurrency_limit=2, concurrency_id="query_image", api_name="verify_pair")
    image_b.upload(verify_pair, inputs, outputs, preprocess=False, concurrency_id="query_image", api_visibility="private")
    calibrate.click(calibrate_on_folder, [state, panel], outputs, concurrency_limit=2, api_name="calibrate_verification")
    threshold.release(move_threshold, [panel, threshold], [roc, answer], show_progress="hidden", api_name="set_verification_threshold")
