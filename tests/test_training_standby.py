"""The standby training process (`StandbyWorker`): a worker started ahead of time, its
imports done, takes the next run (the run's process is that worker), a new one is
started when the run ends, the app's settings (RETRIEVAL_APP_*) are the ones of the
moment the run starts, a dead standby is passed over, and closing ends it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from retrieval_app.training import TrainConfig
from retrieval_app.training.runners import training_job
from retrieval_app.training.standby import StandbyWorker
from synthetic import write_class_folder
from test_training_process import process_gone, wait_for


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("shapes") / "shapes", n_classes=4, per_class=8, size=40)


@pytest.fixture
def standby():
    worker = StandbyWorker()
    yield worker
    worker.close()


def small(folder: Path, out: Path) -> TrainConfig:
    return TrainConfig(folder=str(folder), out_dir=str(out), backbone="small_cnn", mode="full", epochs=1, dim=8, batch_size=16, num_workers=0)


def test_a_run_takes_the_standby_worker_and_a_new_one_waits_after_it(shapes, tmp_path, monkeypatch, standby):
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "cache-when-started"))
    standby.warm()
    waiting = standby.pid
    assert waiting is not None
    standby.warm()  # already one: no second worker
    assert standby.pid == waiting
    # The app's settings change after the standby started: the run uses the new ones.
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "cache-now"))
    monkeypatch.setenv("RETRIEVAL_APP_MODELS_DIR", str(tmp_path / "models-now"))
    job = training_job(small(shapes, tmp_path / "run"), "process", standby=standby).start()
    assert job.pid == waiting and job.took_standby
    snap = job.wait(timeout=300)
    assert snap.state == "done", snap.error
    assert (tmp_path / "run" / "model.pt").is_file()
    assert not (tmp_path / "cache-when-started").exists()
    wait_for(lambda: standby.pid is not None and standby.pid != waiting, 30, "the next standby worker")
    assert process_gone(waiting) or job.wait_process(10) is not None


def test_a_dead_standby_is_passed_over(shapes, tmp_path, standby):
    standby.warm()
    dead = standby.pid
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: process_gone(dead), 10, "the standby to die")
    job = training_job(small(shapes, tmp_path / "run"), "process", standby=standby).start()
    assert job.pid != dead and not job.took_standby
    assert job.wait(timeout=300).state == "done"


def test_closing_ends_the_waiting_worker_and_starts_no_more(standby):
    standby.warm()
    waiting = standby.pid
    standby.close()
    wait_for(lambda: process_gone(waiting), 10, "the standby to exit")
    standby.warm()
    assert standby.pid is None


def test_a_cancel_reaches_a_run_on_a_standby_worker(shapes, tmp_path, standby):
    standby.warm()
    config = TrainConfig(folder=str(shapes), out_dir=str(tmp_path / "run"), backbone="small_cnn", mode="full", epochs=100_000,
                         patience=None, margin=1e6, dim=8, batch_size=16, num_workers=0)
    job = training_job(config, "process", standby=standby).start()
    assert job.took_standby
    wait_for(lambda: job.snapshot().step > 0, 240, "the run to train")
    job.cancel()
    snap = job.wait(timeout=30)
    assert snap.state == "cancelled"
    wait_for(lambda: process_gone(job.pid), 15, "the worker to exit")
