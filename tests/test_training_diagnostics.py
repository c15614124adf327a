"""Mining diagnostics, callbacks, event data and the stall watch, on small real runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval_app.cli.progress import TrainingProgressPrinter
from retrieval_app.data import scan_folder
from retrieval_app.retrieval.cache import cached_embeddings
from retrieval_app.networks import create_model
from retrieval_app.training import TrainConfig, Trainer, TrainingJob
from retrieval_app.training.callbacks import Callback, RunView
from retrieval_app.training.events import TrainEvent
from retrieval_app.training.stall import STALL_STEPS, StallWatch
from synthetic import write_class_folder

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("shapes") / "data", n_classes=6, per_class=10, size=64)


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def shared_cache(isolated_dirs, module_cache_dir, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(module_cache_dir))


def config(folder: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(folder=str(folder), out_dir=str(out), mode="quick", epochs=3, batch_size=16, num_workers=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def check_mining(stats: dict) -> None:
    assert stats["n_triplets"] > 0
    assert stats["hard"] + stats["semi_hard"] + stats["easy"] == pytest.approx(1.0, abs=1e-4)
    assert stats["d_ap"] > 0 and stats["d_an"] > 0


class Recorder(Callback):
    def __init__(self) -> None:
        self.view: RunView | None = None
        self.first_embedding = None
        self.events: list[TrainEvent] = []
        self.ended: Path | None = None

    def on_training_start(self, run: RunView) -> None:
        self.view = run
        self.first_embedding = run.embed(np.arange(5))

    def on_event(self, event: TrainEvent) -> None:
        self.events.append(event)

    def on_run_end(self, out_dir: Path) -> None:
        self.ended = out_dir


def test_quick_run_reports_mining_per_step_and_per_validation(shapes_folder, tmp_path, shared_cache):
    recorder = Recorder()
    result = Trainer(config(shapes_folder, tmp_path / "q", blend=1.0), callbacks=[recorder]).run()
    steps = [e for e in recorder.events if e.kind == "step"]
    with_mining = [e.data["mining"] for e in steps if e.data.get("mining")]
    assert with_mining and all(e.data["stage"].startswith(("fold", "refit")) for e in steps)
    for stats in with_mining:
        check_mining(stats)
    # every measurement after a fold's start holds the statistics and a histogram of its steps
    history = json.loads((tmp_path / "q" / "history.json").read_text())
    measured = [row for row in history if row.get("phase") == "select" and row["step"] > 0]
    assert measured and all("mining" in row for row in measured)
    for row in measured:
        check_mining(row["mining"])
        hist = row["mining"]["histogram"]
        assert len(hist["edges"]) == len(hist["d_ap"]) + 1 == len(hist["d_an"]) + 1
        assert sum(hist["d_ap"]) == sum(hist["d_an"]) > 0
        assert hist["edges"][0] == 0.0 and hist["edges"][-1] > 0
    refit = [row for row in history if row.get("phase") == "refit"]
    assert len(refit) == 1 and refit[0]["step"] == result.dial.refit_step()
    # the validation events carry the same statistics (the CLI prints them, the app plots them)
    assert any("mining" in e.metrics for e in recorder.events if e.kind == "epoch")


def test_callbacks_see_the_run_embed_with_the_current_model_and_hear_the_end(shapes_folder, tmp_path, shared_cache):
    recorder = Recorder()
    Trainer(config(shapes_folder, tmp_path / "c", epochs=1), callbacks=[recorder, lambda e: None]).run()
    view = recorder.view
    assert view.mode == "quick" and len(view.records) == 60 and list(view.classes) == scan_folder(shapes_folder).classes
    # before training the identity head is the bare backbone: L2-normalised features
    features = cached_embeddings(create_model("efficientnet_lite0", head=None), [view.records[i] for i in range(5)], output="features").embeddings
    expected = torch.nn.functional.normalize(torch.from_numpy(features), dim=1).numpy()
    assert np.allclose(recorder.first_embedding, expected, atol=1e-5)
    after = view.embed(np.arange(5))  # the refitted head now
    assert after.shape == expected.shape and not np.allclose(after, expected, atol=1e-4)
    assert recorder.ended == tmp_path / "c" and (tmp_path / "c" / "history.json").is_file()


def test_a_budget_only_run_that_stalls_stops_early_and_says_so(tmp_path, shared_cache):
    """sample_data/ with batch-all mining: every triplet satisfies the margin within a few
    hundred steps, after which the loss and its gradient are exactly zero."""
    log = io.StringIO()
    events: list[TrainEvent] = []
    with TrainingProgressPrinter(log, live=False) as printer:
        result = Trainer(config(SAMPLE_DATA, tmp_path / "s", epochs=None, time_budget=60.0, batch_size=64),
                         on_event=lambda e: (events.append(e), printer(e))).run()
    warnings = [e for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "stalled" in warnings[0].message and warnings[0].data["stalled"]["stopping"]
    assert result.stopped_because.startswith("stopped early") and "stalled" in result.stopped_because
    inactive = [e.data["inactive_steps"] for e in events if e.kind == "step" and e.step <= warnings[0].step]
    assert max(inactive) >= STALL_STEPS
    assert any(line.startswith("warning: training has stalled") for line in log.getvalue().splitlines())
    # one compact mining line follows each validation line
    lines = log.getvalue().splitlines()
    validation = [i for i, line in enumerate(lines) if line.startswith("fold ") and " step " in line and int(line.split("|")[0].split()[-1]) > 0]
    assert validation and all("triplets hard" in lines[i + 1] and "d(a,p)" in lines[i + 1] for i in validation)


def test_a_run_with_an_epoch_count_is_warned_but_not_stopped():
    emitted, stops = [], []
    watch = StallWatch(TrainConfig(folder="", out_dir="", epochs=50, time_budget=30.0))
    watch.on_training_start(RunView("quick", [], [], Path("."), lambda rows: None, emitted.append))
    watch.run.request_stop = stops.append
    for step, inactive in ((100, 0), (300, STALL_STEPS - 1), (400, STALL_STEPS), (500, STALL_STEPS + 50)):
        watch.on_event(TrainEvent("step", step=step, data={"inactive_steps": inactive}))
    assert len(emitted) == 1 and emitted[0].kind == "warning" and "larger margin" in emitted[0].message
    assert not stops
    budget_only = StallWatch(TrainConfig(folder="", out_dir="", time_budget=30.0))
    budget_only.on_training_start(RunView("quick", [], [], Path("."), lambda rows: None, emitted.append))
    budget_only.on_event(TrainEvent("step", step=9, data={"inactive_steps": STALL_STEPS}))
    assert budget_only.run.stop.is_set() and "stalled" in budget_only.run.stop.reason


def test_full_mode_epochs_carry_mining_statistics(shapes_folder, tmp_path):
    for mining in ("batch_hard", "random"):
        result = Trainer(config(shapes_folder, tmp_path / mining, backbone="small_cnn", mode="full", dim=8, batch_size=12, epochs=2, patience=None, mining=mining)).run()
        rows = [row for row in result.history if row["epoch"] > 0]
        assert len(rows) == 2
        for row in rows:
            check_mining(row["mining"])
            assert sum(row["mining"]["histogram"]["d_ap"]) > 0


def test_the_job_keeps_every_data_key_and_the_warnings():
    job = TrainingJob(TrainConfig(folder="", out_dir=""))
    job._record(TrainEvent("step", step=3, loss=0.5, active_fraction=0.2, data={"mining": {"hard": 0.1}, "anything": [1, 2]}))
    job._record(TrainEvent("data", step=4, data={"anything": [3]}))
    job._record(TrainEvent("warning", step=5, message="look out"))
    snap = job.snapshot()
    assert snap.series == {"mining": [(3, {"hard": 0.1})], "anything": [(3, [1, 2]), (4, [3])]}
    assert snap.warnings == ["look out"] and snap.loss_history == [(3, 0.5)]
    snap.series["anything"].append("not the job's")  # a copy
    assert len(job.snapshot().series["anything"]) == 2
