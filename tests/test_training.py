"""The trainer, background jobs and checkpoints, on small real runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval_app.data import scan_folder
from retrieval_app.errors import CheckpointError, RetrievalAppError
from retrieval_app.metrics import retrieval_metrics
from retrieval_app.networks import create_model
from retrieval_app.retrieval.cache import cached_embeddings
from retrieval_app.training.checkpoint import load_checkpoint, set_checkpoint_blend
from retrieval_app.training.dial import BLENDS, DialPoint, recommend
from retrieval_app.training.folds import class_folds
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


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory) -> Path:
    if not FASHION.is_file():
        pytest.skip("needs ../shared/datasets/fashion_mnist.npz")
    return write_fashion_mnist_folder(tmp_path_factory.mktemp("fashion") / "data", FASHION, per_class=24)


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def shared_cache(isolated_dirs, module_cache_dir, monkeypatch):
    """One embedding cache for the module: each folder's backbone features are computed
    once, not once per test (checkpoints still go to each test's own folder)."""
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(module_cache_dir))


def quick_config(folder: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(folder=str(folder), out_dir=str(out), mode="quick", epochs=3, batch_size=16, num_workers=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def backbone_map_at_r(features: torch.Tensor, labels: torch.Tensor) -> float:
    return retrieval_metrics(torch.nn.functional.normalize(features, dim=1), labels)["map_at_r"]


def test_quick_training_keeps_a_head_only_checkpoint_that_beats_the_backbone(fashion_folder, tmp_path, shared_cache):
    events = []
    result = Trainer(quick_config(fashion_folder, tmp_path / "m", epochs=30, batch_size=32), on_event=events.append).run()

    assert result.kept == "trained", result.summary
    for name in ("model.pt", "history.json", "summary.json"):
        assert (tmp_path / "m" / name).is_file(), name
    payload = load_checkpoint(tmp_path / "m")  # weights_only=True inside
    assert payload["classes"] == sorted(p.name for p in fashion_folder.iterdir())
    # head only: the frozen backbone is rebuilt from its pretrained weights and checked
    assert "backbone" in payload and len(payload["backbone"]["fingerprint"]) == 24
    assert all(key.split(".")[0] in ("head", "class_gate") for key in payload["state_dict"])
    # no 18 MB backbone: the head, and the gate with its reference features (familiarity.py)
    references = payload["state_dict"]["class_gate.references"]
    assert (tmp_path / "m" / "model.pt").stat().st_size < 2_000_000 + references.numel() * references.element_size()
    net = load_embedder(tmp_path / "m")
    out = net(torch.rand(3, 3, 224, 224))
    # the identity head keeps the backbone's dimension; the class gate appends one per class
    assert result.dial.gate is not None and net.class_gate is not None
    assert out.shape == (3, 1280 + 10)
    gate = result.dial.gate
    assert gate["seen"] > gate["seen_without"] and gate["unseen_worst_gain"] >= 0  # kept only when safe in every fold
    assert net.class_gate.settings() == pytest.approx({key: gate[key] for key in ("weight", "threshold", "softness")})
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-4)
    assert net.blend == pytest.approx(result.dial.chosen.blend)

    # the estimates: better on the user's classes, not worse on new ones, than the backbone
    dial = result.dial
    assert dial.n_folds == 3 and dial.recommended is not None and dial.chosen == dial.recommended
    assert result.after["val_seen_map_at_r"] > result.before["val_seen_map_at_r"]
    assert dial.chosen.unseen_worst_gain >= 0
    assert result.before["val_seen_map_at_r"] == dial.baseline_seen
    # finer blends are measured between the recommendation and the next coarse blend
    fine = [p for p in dial.points if p.blend not in BLENDS]
    assert {p.step for p in fine} <= {dial.recommended.step}
    assert bool(fine) == (dial.recommended.blend < 1.0)
    assert recommend(dial.points, dial.baseline_seen, dial.baseline_unseen) == dial.recommended
    kinds = {e.kind for e in events}
    assert {"phase", "step", "epoch", "done"} <= kinds
    steps = [e for e in events if e.kind == "step"]
    assert all(e.loss is not None and 0 <= e.active_fraction <= 1 for e in steps)
    assert steps[-1].images_per_s > 0
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["dial"]["recommended"]["step"] == dial.recommended.step


def test_the_guard_measures_the_bare_backbone_not_the_heads_start(fashion_folder, tmp_path, shared_cache):
    """A linear head to 2 dimensions starts as a PCA projection far from the backbone.
    The baseline the guard holds new classes to must be the bare backbone's own
    features, fold by fold, not that start."""
    config = quick_config(fashion_folder, tmp_path / "pca", head="linear", dim=2, epochs=5)
    result = Trainer(config).run()
    dial = result.dial

    records = scan_folder(fashion_folder).records
    net = create_model("efficientnet_lite0", head=None)
    features = torch.from_numpy(cached_embeddings(net, records, output="features").embeddings)
    row_of = {r.id: i for i, r in enumerate(records)}
    folds = class_folds(records, config.folds, val_fraction=config.resolved_val_fraction(), seed=config.seed)
    per_fold = []
    for fold in folds:
        rows = torch.as_tensor([row_of[r.id] for r in fold.val_unseen])
        per_fold.append(backbone_map_at_r(features[rows], torch.as_tensor([r.label for r in fold.val_unseen])))
    assert dial.baseline_unseen == pytest.approx(float(np.mean(per_fold)), abs=1e-6)
    start = next(p for p in dial.points if p.step == 0 and p.blend == 1.0)
    assert abs(start.unseen - dial.baseline_unseen) > 0.02  # the PCA-2 start really is another model
    if dial.recommended is not None:
        assert dial.recommended.unseen_worst_gain >= 0
        assert dial.recommended.unseen >= dial.baseline_unseen


@pytest.mark.parametrize("n_classes", [3, 4, 5, 6, 9])
def test_class_folds_hold_out_groups_that_can_measure_new_classes(n_classes):
    """A fold holding out one class would score 1.0 on it whatever the model did (every
    neighbour is of the right class): each fold holds out two classes or more and trains
    on two or more, and a folder too small for that gets no class folds at all."""
    from retrieval_app.data.scan import ImageRecord

    records = [ImageRecord(f"c{c}/{i}.png", Path(f"/x/c{c}/{i}.png"), c, f"c{c}", 1, 0) for c in range(n_classes) for i in range(6)]
    folds = class_folds(records, 3, val_fraction=0.2, seed=0)
    if n_classes < 4:
        assert folds == []
        return
    assert len(folds) == min(3, n_classes // 2)
    for fold in folds:
        assert len({r.label for r in fold.val_unseen}) >= 2
        assert len({r.label for r in fold.train}) >= 2
    held_out = [r.label for fold in folds for r in fold.val_unseen]
    assert sorted(set(held_out)) == list(range(n_classes)) and len(held_out) == len(set(r.id for fold in folds for r in fold.val_unseen))


def test_recommend_takes_the_shortest_point_within_the_folds_resolution_of_the_best():
    from retrieval_app.training.dial import SEEN_RESOLUTION

    points = [
        DialPoint(step=12800, blend=0.3, seen=0.870, unseen=0.848, unseen_worst_gain=0.001),
        DialPoint(step=800, blend=0.5, seen=0.866, unseen=0.848, unseen_worst_gain=0.001),
        DialPoint(step=800, blend=0.3, seen=0.864, unseen=0.849, unseen_worst_gain=0.002),
        DialPoint(step=400, blend=0.3, seen=0.870 - 2 * SEEN_RESOLUTION, unseen=0.849, unseen_worst_gain=0.002),  # measurably worse
        DialPoint(step=200, blend=1.0, seen=0.875, unseen=0.83, unseen_worst_gain=-0.01),  # best, but not safe
    ]
    assert recommend(points, baseline_seen=0.79, baseline_unseen=0.846) == points[2]
    # nothing near the best but the best itself: the best
    assert recommend([points[0], points[3]], baseline_seen=0.79, baseline_unseen=0.846) == points[0]


def test_recommend_never_picks_a_point_that_loses_to_the_backbone_on_new_classes():
    points = [
        DialPoint(step=100, blend=1.0, seen=0.90, unseen=0.68, unseen_worst_gain=-0.02),  # beats a weak start, not the backbone
        DialPoint(step=100, blend=0.5, seen=0.80, unseen=0.71, unseen_worst_gain=0.01),
        DialPoint(step=200, blend=0.5, seen=0.85, unseen=0.72, unseen_worst_gain=-0.001),  # mean fine, one fold worse
    ]
    assert recommend(points, baseline_seen=0.7, baseline_unseen=0.70) == points[1]
    assert recommend(points[:1], baseline_seen=0.7, baseline_unseen=0.70) is None
    # no gain on the user's classes: keep the backbone
    assert recommend([DialPoint(50, 1.0, 0.69, 0.75, unseen_worst_gain=0.05)], 0.7, 0.7) is None


def test_refit_trains_on_every_image_for_the_chosen_length(fashion_folder, tmp_path, shared_cache, monkeypatch):
    import retrieval_app.training.quick as quick

    runs = []

    class RecordingLoop(quick.HeadLoop):
        def __init__(self, net, features, labels, *args, **kwargs):
            super().__init__(net, features, labels, *args, **kwargs)
            runs.append({"images": len(labels), "classes": len(set(labels.tolist())), "loop": self})

    monkeypatch.setattr(quick, "HeadLoop", RecordingLoop)
    result = Trainer(quick_config(fashion_folder, tmp_path / "refit", epochs=20, batch_size=32, blend=0.5)).run()
    n_images = len(scan_folder(fashion_folder).records)
    *folds, refit = runs
    assert len(folds) == 3
    assert all(run["images"] < n_images and run["classes"] < 10 for run in folds)  # each fold holds classes out
    assert refit["images"] == n_images and refit["classes"] == 10  # the refit holds nothing back
    assert refit["loop"].steps == result.dial.refit_step() == load_checkpoint(tmp_path / "refit")["epoch"]
    assert load_embedder(tmp_path / "refit").blend == pytest.approx(0.5)  # the user's fixed point on the dial


def test_when_fine_tuning_only_hurts_nothing_is_saved(shapes_folder, tmp_path, shared_cache):
    # An absurd learning rate wrecks the head in every fold: the backbone stays the answer.
    result = Trainer(quick_config(shapes_folder, tmp_path / "wrecked", lr=50.0, mining="batch_hard")).run()
    assert result.kept == "start" and result.model_path is None
    assert not (tmp_path / "wrecked" / "model.pt").exists()
    assert "Kept the backbone" in result.summary
    assert list_checkpoints(tmp_path) == []
    # nothing coarse was safe: blends between the backbone and ¼ were tried from the folds' heads
    fine = sorted(p.blend for p in result.dial.points if p.blend not in BLENDS)
    assert fine == [0.05, 0.1, 0.15, 0.2]


def test_moving_the_dial_rewrites_the_saved_blend(fashion_folder, tmp_path, shared_cache):
    Trainer(quick_config(fashion_folder, tmp_path / "d", epochs=10, batch_size=32, blend=1.0)).run()
    images = torch.rand(2, 3, 224, 224)
    trained = load_embedder(tmp_path / "d")(images)
    gate = load_checkpoint(tmp_path / "d" / "model.pt")["dial"]["gate"]
    payload = set_checkpoint_blend(tmp_path / "d", 0.0)
    assert payload["metrics"]["blend"] == 0.0 and payload["metrics"]["class_gate"] is False
    backbone = load_embedder("efficientnet_lite0")(images)
    at_zero = load_embedder(tmp_path / "d")(images)
    # blend 0 = the bare backbone: a class gate chosen at another blend is switched off (its part all zeros)
    assert torch.allclose(at_zero[:, : backbone.shape[1]], backbone, atol=1e-5)
    assert torch.count_nonzero(at_zero[:, backbone.shape[1]:]) == 0
    assert not torch.allclose(trained[:, : backbone.shape[1]], backbone, atol=1e-3)
    if gate is not None:  # back at the gate's own blend, it is on again with its own estimates
        payload = set_checkpoint_blend(tmp_path / "d", gate["blend"])
        assert payload["metrics"]["class_gate"] is True and payload["metrics"]["val_seen_map_at_r"] == pytest.approx(gate["seen"])
        assert float(payload["state_dict"]["class_gate.weight"]) == pytest.approx(gate["weight"])


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "random"])
def test_every_mining_strategy_trains(shapes_folder, tmp_path, shared_cache, mining):
    result = Trainer(quick_config(shapes_folder, tmp_path / mining, mining=mining, epochs=1, distance="cosine", blend=1.0)).run()
    assert result.kept == "trained"
    losses = [row for row in result.history if row.get("phase") == "select"]
    assert losses and result.dial.points


def test_resume_continues_from_last_epoch(shapes_folder, tmp_path):
    settings = dict(backbone="small_cnn", mode="full", dim=8, batch_size=12, patience=None)
    Trainer(quick_config(shapes_folder, tmp_path / "r", epochs=2, **settings)).run()
    result = Trainer(quick_config(shapes_folder, tmp_path / "r", epochs=4, resume=True, **settings)).run()
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3, 4]


def test_a_resumed_run_goes_on_along_the_learning_rate_curve(shapes_folder, tmp_path, monkeypatch):
    import retrieval_app.training.trainer as trainer_module
    from retrieval_app.training.schedule import along, resumed_start

    assert resumed_start(2, 4) == 0.5 and resumed_start(2, None) == 0.0 and resumed_start(0, 4) == 0.0
    assert along(0.5, 0.0) == 0.5 and along(0.5, 1.0) == 1.0 and along(0.0, 0.3) == 0.3
    settings = dict(backbone="small_cnn", mode="full", dim=8, batch_size=12, patience=None)
    Trainer(quick_config(shapes_folder, tmp_path / "r", epochs=2, **settings)).run()
    fractions = []
    follow = trainer_module.follow_schedule
    monkeypatch.setattr(trainer_module, "follow_schedule", lambda optimizer, fraction: (fractions.append(fraction), follow(optimizer, fraction)))
    Trainer(quick_config(shapes_folder, tmp_path / "r", epochs=4, resume=True, **settings)).run()
    # epochs 3 and 4 of 4: the second half of the curve, not the whole curve again
    assert 0.5 < fractions[0] < 0.6 and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions)


def test_full_mode_decays_the_learning_rate_over_a_run_with_a_known_end(shapes_folder, tmp_path):
    from retrieval_app.training.schedule import FLOOR, cosine_factor

    assert cosine_factor(0.0) == 1.0 and cosine_factor(1.0) == pytest.approx(FLOOR) and cosine_factor(2.0) == pytest.approx(FLOOR)
    assert cosine_factor(0.25) > cosine_factor(0.5) > cosine_factor(0.75)
    settings = dict(backbone="small_cnn", mode="full", dim=8, batch_size=12, patience=None, epochs=2, lr=2e-3)
    rates = {}
    for decay in (True, False):
        Trainer(quick_config(shapes_folder, tmp_path / str(decay), lr_decay=decay, **settings)).run()
        groups = torch.load(tmp_path / str(decay) / "last.pt", weights_only=False)["optimizer"]["param_groups"]
        rates[decay] = [(group["lr"], group["initial_lr"]) for group in groups]
    # after the last step of the last epoch: the floor of each group's own rate
    assert all(lr == pytest.approx(FLOOR * base) and base == pytest.approx(2e-3) for lr, base in rates[True])
    assert all(lr == base == pytest.approx(2e-3) for lr, base in rates[False])
    from retrieval_app.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "x"]).lr_decay is True and parser.parse_args(["train", "x", "--no-lr-decay"]).lr_decay is False


def test_time_budget_covers_the_folds_and_the_refit(shapes_folder, tmp_path, shared_cache):
    Trainer(quick_config(shapes_folder, tmp_path / "warm", epochs=1)).run()  # features cached
    events = []
    started = time.monotonic()
    # margin 3 > 2, the largest distance between unit vectors: every triplet stays active,
    # so the stall watch (which ends a budget-only run early) cannot end this one
    config = quick_config(shapes_folder, tmp_path / "b", epochs=None, time_budget=4.0, margin=3.0)
    result = Trainer(config, on_event=events.append).run()
    assert result.stopped_because == "time budget reached"
    assert time.monotonic() - started < 4.0 + 15  # set-up and feature loading on top
    training = [e for e in events if e.kind == "step"]
    assert training[-1].fraction <= 1.0 and training[-1].step >= 50


def test_job_cancel_takes_effect_quickly_and_saves_nothing(shapes_folder, tmp_path, shared_cache):
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
    assert time.monotonic() - cancelled_at < 3.0
    assert snap.loss_history  # progress was observable
    assert "nothing was saved" in snap.message
    assert not (tmp_path / "c" / "model.pt").exists()


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


def test_checkpoint_listing_and_guarded_delete(shapes_folder, tmp_path, shared_cache):
    models = tmp_path / "models"
    Trainer(quick_config(shapes_folder, models / "one", epochs=1, blend=1.0)).run()
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


def test_resume_with_other_settings_is_one_clear_error(shapes_folder, tmp_path, capsys):
    from retrieval_app.cli import main

    settings = dict(backbone="small_cnn", mode="full", dim=8, batch_size=12, patience=None, epochs=1)
    Trainer(quick_config(shapes_folder, tmp_path / "r", **settings)).run()
    with pytest.raises(RetrievalAppError, match=r"trained with dim 8 \(asked for 16\)"):
        Trainer(quick_config(shapes_folder, tmp_path / "r", **{**settings, "dim": 16}, resume=True)).run()
    code = main(["train", str(shapes_folder), "--out", str(tmp_path / "r"), "--backbone", "small_cnn", "--mode", "full", "--dim", "16", "--resume", "--epochs", "2", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") >= 1 and err.strip().splitlines()[-1].startswith("error: cannot resume")
    assert "Traceback" not in err


def test_the_cli_shows_the_class_gate_and_can_leave_it_out(fashion_folder, tmp_path, shared_cache, capsys):
    from retrieval_app.cli import main

    common = ["--epochs", "30", "--batch-size", "32", "--workers", "0"]
    assert main(["train", str(fashion_folder), "--out", str(tmp_path / "gated"), *common]) == 0
    printed = capsys.readouterr().out
    assert "+ gate" in printed and "class gate" in printed
    gated = load_checkpoint(tmp_path / "gated")
    assert any(key.startswith("class_gate.") for key in gated["state_dict"])
    # the gate is fitted with the kind of familiarity the folds chose, as printed
    from retrieval_app.networks.familiarity import FAMILIARITY_KINDS

    kind = gated["dial"]["gate"]["familiarity"]
    assert f"familiarity from {kind}" in printed
    references, rank = gated["state_dict"]["class_gate.references"], int(gated["state_dict"]["class_gate.reference_rank"])
    assert rank == FAMILIARITY_KINDS[kind].rank
    n_classes = gated["config"]["class_gate"]["n_classes"]
    from retrieval_app.data import scan_folder

    assert len(references) == (n_classes if kind == "class means" else len(scan_folder(fashion_folder).records))

    assert main(["train", str(fashion_folder), "--out", str(tmp_path / "plain"), "--no-class-gate", *common]) == 0
    printed = capsys.readouterr().out
    assert "+ gate" not in printed
    payload = load_checkpoint(tmp_path / "plain")
    assert payload["dial"]["gate"] is None and not any(key.startswith("class_gate.") for key in payload["state_dict"])
    assert load_embedder(tmp_path / "plain")(torch.rand(2, 3, 224, 224)).shape == (2, 1280)
