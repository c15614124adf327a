"""The trainer, background jobs and checkpoints, on small real runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from retrieval_app.errors import CheckpointError, RetrievalAppError
from retrieval_app.training import (
    TrainConfig,
    Trainer,
    TrainingJob,
    delete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_embedder,
)
from synthetic import write_class_folder, write_fashion_mnist_folder

FASHION = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion_mnist.npz"


pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("shapes") / "data", n_classes=6, per_class=10, size=64)


def quick_config(folder: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(folder=str(folder), out_dir=str(out), mode="quick", dim=32, epochs=3, batch_size=16, num_workers=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_quick_training_writes_a_loadable_best_checkpoint(shapes_folder, tmp_path):
    events = []
    result = Trainer(quick_config(shapes_folder, tmp_path / "m"), on_event=events.append).run()

    for name in ("model.pt", "last.pt", "history.json", "summary.json"):
        assert (tmp_path / "m" / name).is_file(), name
    payload = load_checkpoint(tmp_path / "m")  # weights_only=True inside
    assert payload["classes"] == [f"class_{c:02d}" for c in range(6)]
    assert payload["train"]["mining"] == "batch_all"
    net = load_embedder(tmp_path / "m")
    out = net(torch.rand(3, 3, 224, 224))
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-4)

    kinds = {e.kind for e in events}
    assert {"phase", "step", "epoch", "done"} <= kinds
    steps = [e for e in events if e.kind == "step"]
    assert all(e.loss is not None and 0 <= e.active_fraction <= 1 for e in steps)
    assert steps[-1].images_per_s > 0
    # epoch 0 is the starting model; one validation row per epoch after it
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "m" / "history.json").read_text())[-1]["epoch"] == 3
    # the kept model is never worse on validation than the start
    assert result.after["score"] >= result.before["score"]
    assert payload["epoch"] == result.best_epoch
    assert set(result.before) >= {"precision_at_1", "map_at_r", "val_seen_map_at_r"}


def test_worse_fine_tuning_keeps_the_starting_model(shapes_folder, tmp_path):
    # An absurd learning rate wrecks the head; the product must say so and keep the start.
    config = quick_config(shapes_folder, tmp_path / "wrecked", lr=50.0, epochs=2, patience=None)
    result = Trainer(config).run()
    assert result.kept == "start"
    assert result.best_epoch == 0
    assert "starting model was kept" in result.summary
    assert load_checkpoint(tmp_path / "wrecked")["epoch"] == 0


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "random"])
def test_every_mining_strategy_trains(shapes_folder, tmp_path, mining):
    result = Trainer(quick_config(shapes_folder, tmp_path / mining, mining=mining, epochs=1, distance="cosine")).run()
    assert result.history[-1]["epoch"] == 1
    assert result.history[-1]["loss"] >= 0


def test_resume_continues_from_last_epoch(shapes_folder, tmp_path):
    Trainer(quick_config(shapes_folder, tmp_path / "r", epochs=2, patience=None)).run()
    result = Trainer(quick_config(shapes_folder, tmp_path / "r", epochs=4, patience=None, resume=True)).run()
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3, 4]


def test_time_budget_alone_decides_when_to_stop(shapes_folder, tmp_path):
    started = time.monotonic()
    result = Trainer(quick_config(shapes_folder, tmp_path / "b", epochs=None, time_budget=3.0)).run()
    assert result.stopped_because == "time budget reached"
    assert result.epochs_run >= 1
    assert time.monotonic() - started < 60


def test_job_cancel_takes_effect_quickly(shapes_folder, tmp_path):
    job = TrainingJob(quick_config(shapes_folder, tmp_path / "c", epochs=None, time_budget=120.0)).start()
    deadline = time.monotonic() + 60
    while job.snapshot().step < 3 and time.monotonic() < deadline:
        assert job.snapshot().state == "running", job.snapshot().message
        time.sleep(0.05)
    assert job.snapshot().step >= 3
    cancelled_at = time.monotonic()
    job.cancel()
    snap = job.wait(timeout=10)
    assert snap.state == "cancelled"
    assert snap.finished_at - job.snapshot().started_at > 0
    assert time.monotonic() - cancelled_at < 3.0
    assert snap.loss_history and snap.val_history  # progress was observable
    assert (tmp_path / "c" / "model.pt").is_file()  # the best so far is kept


def test_job_reports_worker_errors(tmp_path):
    folder = write_class_folder(tmp_path / "one", n_classes=2, per_class=1)
    job = TrainingJob(quick_config(folder, tmp_path / "e")).start()
    snap = job.wait(timeout=60)
    assert snap.state == "failed"
    assert "two" in snap.error.lower() or "at least" in snap.error.lower()


def test_bad_settings_are_refused_before_starting(shapes_folder, tmp_path):
    with pytest.raises(RetrievalAppError, match="mining"):
        TrainingJob(quick_config(shapes_folder, tmp_path / "x", mining="hardest")).start()
    with pytest.raises(RetrievalAppError, match="quick mode needs a pretrained"):
        TrainConfig(folder=".", out_dir="x", backbone="small_cnn", mode="quick").validate()


@pytest.mark.skipif(not FASHION.is_file(), reason="needs ../shared/datasets/fashion_mnist.npz")
def test_small_cnn_from_scratch_learns_fashion_mnist(tmp_path):
    folder = write_fashion_mnist_folder(tmp_path / "fashion", FASHION, per_class=40)
    config = TrainConfig(folder=str(folder), out_dir=str(tmp_path / "cnn"), backbone="small_cnn", mode="full", dim=16, epochs=4, batch_size=40, lr=3e-3, num_workers=0, unseen_class_fraction=0.0, patience=None)
    result = Trainer(config).run()
    start, best = result.before["val_seen_map_at_r"], result.after["val_seen_map_at_r"]
    assert result.kept == "trained"
    assert best > start + 0.05, (start, best)
    first_loss = result.history[1]["loss"]
    assert min(row["loss"] for row in result.history[1:]) <= first_loss


def test_checkpoint_listing_and_guarded_delete(shapes_folder, tmp_path):
    models = tmp_path / "models"
    Trainer(quick_config(shapes_folder, models / "one", epochs=1)).run()
    infos = list_checkpoints(models)
    assert [info.name for info in infos] == ["one"]
    assert infos[0].metrics["map_at_r"] is not None
    with pytest.raises(CheckpointError):
        delete_checkpoint(shapes_folder, root=models)  # not a checkpoint folder in models/
    delete_checkpoint(models / "one", root=models)
    assert list_checkpoints(models) == []


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a retrieval-app checkpoint"):
        load_embedder(tmp_path / "bad")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": 1, "state_dict": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
