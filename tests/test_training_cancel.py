"""Full mode reports progress from the first batch of every pass over images and stops
soon after a cancel, wherever it lands, with the outcome of what was kept so far."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from retrieval_app.training import TrainConfig, TrainingJob
from retrieval_app.training.progress import PassProgress
from synthetic import write_class_folder

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten classes of eight sample photos: 32 validation images, two batches per set."""
    folder = tmp_path_factory.mktemp("photos") / "photos"
    for source in sorted(p for p in (ROOT / "sample_data").iterdir() if p.is_dir()):
        (folder / source.name).mkdir(parents=True)
        for path in sorted(source.glob("*.jpg"))[:8]:
            shutil.copy(path, folder / source.name / path.name)
    return folder


class Canceller:
    """A job's event callback that cancels it when `when(event)` first holds, and notes
    every event with its time."""

    def __init__(self, when) -> None:
        self.when, self.job, self.events, self.cancelled_at = when, None, [], None
        self.fired = threading.Event()

    def __call__(self, event) -> None:
        self.events.append((time.monotonic(), event))
        if self.cancelled_at is None and self.when(event):
            self.cancelled_at = time.monotonic()
            self.job.cancel()
            self.fired.set()


def run_job(config: TrainConfig, canceller: Canceller, timeout: float = 300):
    job = TrainingJob(config, on_event=canceller)
    canceller.job = job
    job.start()
    assert canceller.fired.wait(timeout), [e.phase for _, e in canceller.events][-5:]
    snap = job.wait(timeout)
    assert snap.finished
    return snap, time.monotonic() - canceller.cancelled_at


def test_full_mode_reports_every_pass_and_stops_within_two_seconds_of_a_cancel_in_its_first_validation(photos, tmp_path):
    # Cancelled after the first batch of the first validation (the starting model), which
    # has more batches to go.
    canceller = Canceller(lambda e: e.kind == "progress" and e.phase.startswith("validation images: ") and not e.phase.startswith("validation images: 0/"))
    config = TrainConfig(folder=str(photos), out_dir=str(tmp_path / "full"), mode="full", epochs=2, num_workers=0)
    snap, took = run_job(config, canceller)
    assert took < 2.0, f"the run stopped {took:.1f} s after the cancel"
    assert snap.state == "cancelled" and "nothing was saved" in snap.message
    assert not (tmp_path / "full" / "model.pt").exists()
    # progress from the first batch: the backbone-feature pass and the validation pass
    # each report images done of their total, with the time left once it can be estimated
    phases = [e.phase for _, e in canceller.events if e.kind == "progress"]
    features = [p for p in phases if p.startswith("backbone features: ")]
    assert features and features[-1] == "backbone features: 80/80 images"
    assert any("s left" in p for p in features), features
    validation = [p for p in phases if p.startswith("validation images: ")]
    assert validation[0] == "validation images: 0/32 images"
    assert re.fullmatch(r"validation images: 16/32 images, about \d+ s left", validation[1]), validation


def test_a_cancel_in_a_later_validation_keeps_the_outcome_of_the_epochs_before(tmp_path):
    folder = write_class_folder(tmp_path / "shapes", n_classes=6, per_class=10, size=40)
    canceller = Canceller(lambda e: e.kind == "phase" and e.phase == "validating" and any(x.kind == "epoch" and x.epoch == 1 for _, x in canceller.events))
    config = TrainConfig(folder=str(folder), out_dir=str(tmp_path / "scratch"), backbone="small_cnn", mode="full", epochs=5, dim=16, batch_size=24, num_workers=0)
    snap, took = run_job(config, canceller)
    assert took < 2.0
    result = snap.result
    assert snap.state == "cancelled" and result is not None, snap.message
    assert result.stopped_because == "cancelled" and result.epochs_run == 2 and result.summary.startswith("Stopped: cancelled.")
    assert [row["epoch"] for row in result.history] == [0, 1]  # the cancelled validation adds no row
    assert result.before and (result.model_path is not None) == (result.kept == "trained")
    if result.kept == "trained":
        assert result.model_path.is_file() and result.best_epoch == 1


def test_pass_progress_estimates_the_time_left_from_computed_images_only():
    now = [100.0]
    texts = []
    progress = PassProgress("backbone features", texts.append, clock=lambda: now[0])
    progress(40, 100)  # 40 from the cache, at once
    now[0] += 2.0
    progress(60, 100)  # 20 computed in 2 s: 40 to go, about 4 s
    progress(100, 100)
    assert texts == ["backbone features: 40/100 images", "backbone features: 60/100 images, about 4 s left", "backbone features: 100/100 images"]
