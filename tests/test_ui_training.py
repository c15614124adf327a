"""Fine-tuning in the app without a browser: one outcome per run (kept the backbone,
cancelled, kept a model), the hand-over from cached features, the dial and its
"Keep this point", on real quick-mode runs over a few sample photos."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from synthetic import copy_sample_photos, isolated_app_dirs

from retrieval_app.data import scan_folder
from retrieval_app.networks.backbones import Lite0Features
from retrieval_app.retrieval import Gallery
from retrieval_app.training import load_checkpoint, load_embedder
from retrieval_app.training.dial import Dial, DialPoint
from retrieval_app.ui import app as ui_app
from retrieval_app.ui import dial as dial_view
from retrieval_app.ui.session import SessionState

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Leopards", "pizza", "sunflower", "watch", "cup")
SKIP = {"__type__": "update"}  # gr.skip(): the output is left as it is


def no_progress(*_args, **_kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Five classes of eight photos: the bare backbone already retrieves them perfectly,
    so by default a run keeps the backbone; `blend=1` keeps the fine-tuned head anyway."""
    base = tmp_path_factory.mktemp("ui-training")
    folder = copy_sample_photos(base / "photos", CLASSES, 8)
    with isolated_app_dirs(base):
        yield {"base": base, "folder": folder}


def loaded(env) -> SessionState:
    state = SessionState()
    state.load(env["folder"], "efficientnet_lite0", no_progress)
    state.quick_projection()
    state.method = "pca"
    return state


def train(state: SessionState, name: str, blend="recommended", epochs=2):
    _, status, timer = ui_app.start_training(state, "efficientnet_lite0", "quick", "euclidean", 0.2, "batch_all", epochs, None, name, blend)
    assert status == "Training started…", status
    snap = state.job.wait(timeout=300)
    assert snap.finished and snap.state == "done", snap.message
    return snap


def poll(state):
    out = ui_app.poll_training(state)
    _, status, _, _, table, _, adopt, box, figure, slider, words, mining, gap, *_live = out
    return {"status": status, "table": table, "adopt": adopt, "box": box, "figure": figure, "slider": slider, "words": words, "mining": mining, "gap": gap}


@pytest.fixture(scope="module")
def kept_backbone(env):
    state = loaded(env)
    snap = train(state, "kept-backbone")
    return state, snap


@pytest.fixture(scope="module")
def kept_head(env):
    state = loaded(env)
    snap = train(state, "kept-head", blend="1")
    return state, snap


# ------------------------------------------------------------------ outcomes
def test_a_run_that_keeps_the_backbone_says_so_once_and_switches_nothing(kept_backbone, env):
    state, snap = kept_backbone
    assert snap.result.kept == "start" and snap.result.model_path is None
    before_model, before_vectors = state.model_spec, state.gallery.embeddings.copy()
    out = poll(state)
    assert out["status"].count("Kept the backbone") == 1
    assert "Switching" not in out["status"] and out["adopt"] == SKIP
    rows = {row[0]: row[1:] for row in out["table"]}
    assert rows["kept"] == ["✓", ""] and rows["MAP@R (mean)"][0] != "–"
    # nothing to switch to: the session is settled and keeps its model and vectors
    assert state.job_consumed and state.model_spec == before_model
    np.testing.assert_array_equal(state.gallery.embeddings, before_vectors)
    assert not (env["base"] / "models" / "kept-backbone" / "model.pt").exists()
    # the dial is shown, at the backbone, with "Keep this point" offering a new run
    assert out["box"]["visible"] is True and out["slider"]["value"] == 0.0
    assert "Nothing was saved" in out["words"]
    again = poll(state)  # a second poll (the API's /training_status) repeats the outcome, no switch
    assert again["adopt"] == SKIP and again["status"].count("Kept the backbone") == 1


def test_a_kept_head_is_handed_over_from_cached_features_without_the_backbone(kept_head, monkeypatch):
    state, snap = kept_head
    assert snap.result.kept == "trained" and snap.result.model_path.is_file()
    out = poll(state)
    assert out["status"].count("Switching the map and search") == 1 and isinstance(out["adopt"], str)
    calls = []
    forward = Lite0Features.forward
    monkeypatch.setattr(Lite0Features, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    steps = []
    result = ui_app.adopt_trained_model(state, progress=lambda f, desc="": steps.append(desc))
    assert calls == [], "the hand-over sent images through the backbone"
    status = result[1]
    assert "now use" in status and "kept\\-head" in status and state.model_spec == str(snap.result.out_dir)
    assert sum("embedding" in s for s in steps) == 1  # one progress bar's worth: read from the cache at once
    monkeypatch.undo()
    # the same vectors as embedding every image through the kept model
    reference = Gallery.build(scan_folder(state.gallery.root), load_embedder(snap.result.out_dir), num_workers=0)
    assert [r.id for r in reference.records] == [r.id for r in state.gallery.records]
    np.testing.assert_allclose(state.gallery.embeddings, reference.embeddings, atol=1e-5)
    assert ui_app.adopt_trained_model(state, progress=no_progress)[1] == SKIP  # once per run


def test_keep_this_point_moves_a_saved_model_along_its_dial(kept_head):
    state, snap = kept_head
    if not state.job_consumed:
        poll(state)
        ui_app.adopt_trained_model(state, progress=no_progress)
    out = ui_app.keep_dial_point(state, 0.0, progress=no_progress)
    words, map_json = out[1], out[5]
    assert "at blend 0" in words and map_json
    payload = load_checkpoint(snap.result.out_dir)
    assert float(payload["state_dict"]["head.blend"]) == 0.0 and payload["dial"]["chosen"]["blend"] == 0.0
    # blend 0 of the identity head is the bare backbone: the map and search use exactly its vectors
    backbone = Gallery.build(scan_folder(state.gallery.root), load_embedder("efficientnet_lite0"), num_workers=0)
    np.testing.assert_allclose(state.gallery.embeddings, backbone.embeddings, atol=1e-5)
    assert state.dial.chosen.blend == 0.0
    ui_app.keep_dial_point(state, 1.0, progress=no_progress)
    assert float(load_checkpoint(snap.result.out_dir)["state_dict"]["head.blend"]) == 1.0
    assert np.abs(state.gallery.embeddings - backbone.embeddings).max() > 1e-3


def test_keep_this_point_after_keeping_the_backbone_trains_again_with_that_blend(kept_backbone):
    state, first = kept_backbone
    if not state.job_consumed:
        poll(state)
    out = ui_app.keep_dial_point(state, 1.0, progress=no_progress)
    assert "Training again with blend 1" in out[3] and out[4].active
    config, previous = state.job.config, state.dial_config
    assert config.blend == 1.0 and previous.blend is None and first.result.kept == "start"
    assert (config.folder, config.out_dir, config.mode, config.mining, config.epochs) == (previous.folder, previous.out_dir, previous.mode, previous.mining, previous.epochs)
    snap = state.job.wait(timeout=300)
    assert snap.state == "done" and snap.result.kept == "trained"
    settled = poll(state)
    assert isinstance(settled["adopt"], str) and state.dial_model == snap.result.out_dir


def test_cancel_answers_with_the_outcome_within_a_second(env):
    state = loaded(env)
    ui_app.start_training(state, "efficientnet_lite0", "quick", "euclidean", 0.2, "batch_all", 100000, None, "cancelled", "recommended")
    deadline = time.monotonic() + 120
    while "training" not in state.job.snapshot().phase:
        assert time.monotonic() < deadline, state.job.snapshot()
        time.sleep(0.05)
    clicked = time.monotonic()
    text = ui_app.cancel_training(state)
    assert time.monotonic() - clicked < 1.5
    assert "cancelled" in text and "nothing was saved" in text
    out = poll(state)
    assert out["status"].count("nothing was saved") == 1
    assert out["adopt"] == SKIP and "Switching" not in out["status"] and out["table"] == []
    assert state.model_spec == "efficientnet_lite0" and state.dial is None
    assert ui_app.cancel_training(state) == "Nothing is training."


def test_a_tick_leaves_the_status_to_the_cancels_answer():
    """A tick's figures take longer to send than the cancel's few words: a "running"
    line from a tick that ran after the cancel must not overwrite its answer."""
    from retrieval_app.training import JobSnapshot

    class Job:
        cancel_requested = False

        def snapshot(self):
            return JobSnapshot(state="running", phase="training", epoch=2, step=20, fraction=0.2)

    state = SessionState()
    state.job = Job()
    assert "**running**" in poll(state)["status"]
    state.job.cancel_requested = True
    assert poll(state)["status"] == SKIP


# ------------------------------------------------------------------ the dial view
def synthetic_dial() -> Dial:
    points = [DialPoint(100, b, 0.66 + 0.09 * b, 0.72 - (0.04 * b if b > 0.5 else 0.0), unseen_worst_gain=0.0 if b <= 0.5 else -0.01) for b in (0.0, 0.25, 0.5, 0.75, 1.0)]
    points += [DialPoint(s, 1.0, 0.66 + s / 2000, 0.72 - s / 5000) for s in (0, 50)]
    dial = Dial(0.66, 0.72, points, n_folds=3)
    dial.recommended = dial.chosen = points[2]
    return dial


def test_the_dial_figure_draws_both_curves_the_backbone_and_the_marked_points():
    dial = synthetic_dial()
    figure = dial_view.dial_figure(dial, 0.75)
    traces = {t.name: t for t in figure.data}
    over_blend = traces["blend 0 → 1 (100 steps)"]
    assert list(over_blend.x) == pytest.approx([0.66, 0.6825, 0.705, 0.7275, 0.75])
    assert list(traces["training time (blend 1)"].x) == pytest.approx([0.66, 0.685, 0.75])  # steps 0, 50, 100
    assert (traces["backbone"].x[0], traces["backbone"].y[0]) == (0.66, 0.72)
    assert traces["recommended"].x[0] == pytest.approx(0.705) and traces["in use"].x[0] == pytest.approx(0.705)
    assert traces["selected (blend 0.75)"].x[0] == pytest.approx(0.7275)
    assert figure.layout.xaxis.title.text == "on your classes"


def test_the_dial_in_words_gives_both_estimates_against_the_backbone():
    dial = synthetic_dial()
    words = dial_view.dial_text(dial, 0.5, saved=True)
    assert "**Blend 0.5** (100 steps)" in words and "on new classes 0.72 → 0.72" in words and "recommended, in use" in words
    words = dial_view.dial_text(dial, 0.25, saved=True)
    assert "on your classes 0.66 → 0.68, on new classes 0.72 → 0.72" in words and "recommended" not in words
    words = dial_view.dial_text(dial, 1.0, saved=True)
    assert "on your classes 0.66 → 0.75, on new classes 0.72 → 0.68" in words and "switches the saved model" in words
    dial.recommended = dial.chosen = None
    assert "trains again with this blend" in dial_view.dial_text(dial, 1.0, saved=False)
    assert dial_view.initial_blend(dial) == 0.0 and dial_view.is_blendable(dial)


def test_the_dial_shows_the_class_gate_at_its_own_blend_only():
    dial = synthetic_dial()
    dial.gate = {"weight": 0.5, "threshold": 0.6, "softness": 0.02, "seen": 0.80, "unseen": 0.725, "blend": 0.5}
    traces = {t.name: t for t in dial_view.dial_figure(dial, 0.5).data}
    assert (traces["with the class gate (blend 0.5)"].x[0], traces["with the class gate (blend 0.5)"].y[0]) == (0.80, 0.725)
    assert "With the class gate, which this point keeps: on your classes 0.66 → 0.80, on new classes 0.72 → 0.72" in dial_view.dial_text(dial, 0.5, saved=True)
    assert "class gate (chosen at blend 0.5) is off" in dial_view.dial_text(dial, 1.0, saved=True)
    dial.gate = None
    assert "class gate" not in dial_view.dial_text(dial, 0.5, saved=True)


def test_a_checkpoint_put_to_use_from_the_models_section_shows_its_dial(kept_head, env):
    _, snap = kept_head
    spec = str(snap.result.out_dir)
    state = SessionState()
    state.load(env["folder"], spec, no_progress)
    _, box, figure, slider, words = ui_app.show_model_dial(state, spec)
    assert box["visible"] is True and "Blend" in words and "in use" in words
    assert slider["value"] == load_checkpoint(spec)["dial"]["chosen"]["blend"]
    assert {t.name for t in figure.data} >= {"backbone", "in use"}
    assert state.dial_model == Path(spec)
    # a bare backbone has no dial: nothing changes
    other = SessionState()
    other.load(env["folder"], "efficientnet_lite0", no_progress)
    assert ui_app.show_model_dial(other, "efficientnet_lite0")[1:] == (SKIP,) * 4 and other.dial is None


def test_the_status_before_the_first_step_is_the_pass_and_its_progress():
    from retrieval_app.training import JobSnapshot

    from retrieval_app.ui.text import md_escape

    phase = "validation images: 16/32 images, about 3 s left"
    text = ui_app._status_text(JobSnapshot(state="running", phase=phase))
    assert text == "**running** · " + md_escape(phase)
    assert "epoch 0" not in text and "0 %" not in text
    later = ui_app._status_text(JobSnapshot(state="running", phase="training", epoch=1, step=3, fraction=0.1))
    assert "epoch 1" in later and "10 %" in later


def test_the_panel_plots_the_mining_statistics_and_the_distance_histograms(kept_head):
    state, snap = kept_head
    out = poll(state)
    traces = {trace.name: trace for trace in out["mining"].data}
    kinds = [name for name in traces if name.startswith(("hard", "semi-hard", "easy"))]
    assert len(kinds) == 3 and {"mean d(a,p)", "mean d(a,n)"} <= set(traces)
    shares = np.array([traces[name].y for name in kinds], dtype=float)
    assert shares.shape[1] >= 2 and np.allclose(shares.sum(0), 1.0, atol=1e-3)  # stacked, they fill the plot
    assert list(traces["mean d(a,p)"].x) == [step for step, _ in snap.series["mining"]]
    bars = [trace for trace in out["gap"].data if trace.type == "bar"]
    latest = [bar for bar in bars if "first" not in bar.name]
    assert {bar.name for bar in latest} == {"d(a,p)", "d(a,n)"} and all(abs(sum(bar.y) - 1.0) < 1e-6 for bar in latest)
    assert "step" in out["gap"].layout.title.text


def test_warnings_are_said_in_the_status():
    from retrieval_app.training import JobSnapshot

    text = ui_app._status_text(JobSnapshot(state="running", phase="training", step=9, warnings=["training has stalled: no triplet <b>"]))
    assert "**Warning:** training has stalled" in text and "<b>" not in text
