"""The one trainer used by the CLI, the UI and the tests.

A run: scan the folder → split (held-out images of trained classes, and whole held-out
classes) → build the network → measure the starting model → train with a triplet loss,
validating every epoch → keep the best model (which may be the starting one: fine-tuning
that makes retrieval worse is reported, never silently kept).

Two modes share everything but the data source:
- quick: the backbone is frozen, its pooled features are computed once (and cached on
  disk), only the head trains: seconds on a CPU;
- full: the whole network trains on decoded, augmented images.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..data import scan_folder, split_records
from ..device import select_device
from ..errors import RetrievalAppError, TrainingCancelled
from ..losses import OnlineTripletLoss
from ..losses.distances import get_distance
from ..metrics import retrieval_metrics
from ..networks import create_model, freeze_backbone, init_linear_head_from_features
from . import checkpoint as ckpt
from .config import FROM_SCRATCH_BACKBONES, TrainConfig
from .events import EventCallback, TrainEvent, ignore_event
from .progress import ProgressClock
from .sources import FullSource, QuickSource

# Metrics that can rank neighbours; other training distances are validated with Euclidean.
_METRIC_DISTANCES = ("euclidean", "cosine")
# How much MAP@R on held-out classes an epoch may lose against the start and still be kept.
UNSEEN_TOLERANCE = 0.01


@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    before: dict[str, Any]  # the starting model (epoch 0)
    after: dict[str, Any]  # the best trained epoch
    backbone_before: dict[str, Any]  # the bare pretrained features (quick mode), if measured
    kept: str  # "trained" or "start"
    best_epoch: int
    epochs_run: int
    stopped_because: str
    summary: str
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig, on_event: EventCallback = ignore_event, cancel: threading.Event | None = None) -> None:
        self.config = config.validate()
        self.on_event = on_event
        self.cancel = cancel or threading.Event()
        self.out_dir = Path(config.out_dir)
        self.device = select_device(config.device)
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- the run
    def run(self) -> TrainResult:
        cfg = self.config
        _seed_everything(cfg.seed)
        self._phase("scanning folder")
        scan = scan_folder(cfg.folder)
        split = split_records(scan.records, val_fraction=cfg.val_fraction, unseen_class_fraction=cfg.unseen_class_fraction, seed=cfg.seed)
        if len({r.label for r in split.train}) < 2:
            raise RetrievalAppError("training needs at least two classes with two or more images each")
        self._phase(f"{len(split.train)} training images, {len(split.val_seen)} held-out images of trained classes, {len(split.val_unseen)} images of held-out classes")

        net = create_model(cfg.backbone, dim=cfg.dim, normalize=cfg.normalize, pretrained=True, weights=cfg.weights, head=cfg.head).to(self.device)
        source = self._make_source(net, split)
        resumed = self._try_resume(net) if cfg.resume else None
        if resumed is None and cfg.head == "linear" and cfg.backbone not in FROM_SCRATCH_BACKBONES:
            # Start as the pretrained geometry (PCA of its features), so training can only
            # be compared with - and fall back to - what the user already had.
            init_linear_head_from_features(net, source.train_features())

        optimizer = self._make_optimizer(net)
        if resumed is not None:
            optimizer.load_state_dict(resumed["optimizer"])
        backbone_before = source.backbone_metrics(self._metric_distance()) if resumed is None else {}
        loss_fn = None if cfg.mining == "random" else OnlineTripletLoss(cfg.mining, margin=cfg.margin, distance=cfg.distance, reduction=cfg.reduction)

        start_epoch = 0 if resumed is None else int(resumed["epoch"]) + 1
        best = {"score": -math.inf, "epoch": -1} if resumed is None else dict(resumed["best"])
        if resumed is None:
            start = self._validate(net, source, epoch=0, train_stats={})
            best = self._maybe_keep(net, start, best, scan.classes)
            start_epoch = 1
        before = self.history[0]

        total_epochs = cfg.resolved_epochs()
        steps_per_epoch = source.steps_per_epoch()
        bounded_steps = None if total_epochs >= 10**6 else (total_epochs - start_epoch + 1) * steps_per_epoch
        clock = ProgressClock(bounded_steps, cfg.time_budget)
        stopped_because = "finished all epochs"
        epoch = start_epoch - 1
        for epoch in range(start_epoch, total_epochs + 1):
            self._phase(f"training epoch {epoch}")
            train_stats = self._train_epoch(net, source, loss_fn, optimizer, epoch, clock)
            if train_stats.get("cancelled"):
                stopped_because = "cancelled"
                break
            row = self._validate(net, source, epoch=epoch, train_stats=train_stats, clock=clock)
            best = self._maybe_keep(net, row, best, scan.classes)
            ckpt.save_training_state(self.out_dir / ckpt.LAST_FILE, net, optimizer, epoch=epoch, history=self.history, best=best, train_config=cfg.to_dict(), classes=scan.classes)
            if clock.out_of_time():
                stopped_because = "time budget reached"
                break
            patience = cfg.resolved_patience()
            if patience is not None and epoch - best["epoch"] >= patience:
                stopped_because = f"no better validation score for {patience} epochs (early stop)"
                break
        result = self._finish(scan, before, backbone_before, best, epoch, stopped_because)
        if stopped_because == "cancelled":
            self._emit(TrainEvent("cancelled", phase="cancelled", message=result.summary))
        else:
            self._emit(TrainEvent("done", phase="done", fraction=1.0, message=result.summary))
        return result

    # -------------------------------------------------------------- set-up
    def _make_source(self, net, split):
        cfg = self.config
        mode = cfg.resolved_mode()
        common = dict(config=cfg, net=net, split=split, device=self.device, cancel=self.cancel, on_phase=self._phase)
        if mode == "quick":
            freeze_backbone(net, True)
            return QuickSource(**common)
        return FullSource(**common)

    def _make_optimizer(self, net) -> torch.optim.Optimizer:
        cfg = self.config
        lr = cfg.resolved_lr()
        head_params = [p for p in (net.head.parameters() if net.head is not None else []) if p.requires_grad]
        backbone_params = [p for p in net.backbone.parameters() if p.requires_grad]
        groups = []
        if backbone_params:
            # A pretrained backbone moves ten times slower than the head it feeds.
            scale = 1.0 if cfg.backbone in FROM_SCRATCH_BACKBONES else 0.1
            groups.append({"params": backbone_params, "lr": lr * scale})
        if head_params:
            groups.append({"params": head_params, "lr": lr})
        if not groups:
            raise RetrievalAppError("nothing to train: the model has no trainable parameters")
        return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)

    def _try_resume(self, net) -> dict[str, Any] | None:
        path = self.out_dir / ckpt.LAST_FILE
        if not path.is_file():
            self._phase("nothing to resume: starting fresh")
            return None
        state = ckpt.load_checkpoint(path)
        net.load_state_dict(state["state_dict"])
        self.history = list(state.get("history", []))
        self._phase(f"resumed after epoch {state['epoch']}")
        return state

    # ------------------------------------------------------------ training
    def _train_epoch(self, net, source, loss_fn, optimizer, epoch: int, clock: ProgressClock) -> dict[str, Any]:
        cfg = self.config
        net.train()
        if cfg.resolved_mode() == "quick":
            net.backbone.eval()  # frozen: keep BatchNorm statistics as pretrained
        scaler = source.grad_scaler()
        losses, actives = [], []
        for inputs, labels in source.batches(epoch):
            if self.cancel.is_set():
                return {"cancelled": True}
            with source.autocast():
                embeddings = source.embed(inputs)
                if loss_fn is None:
                    loss, active = self._random_triplet_loss(embeddings, labels)
                else:
                    out = loss_fn(embeddings.float(), labels)
                    loss, active = out.loss, out.active_fraction
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            clock.tick(len(labels))
            losses.append(float(loss.detach()))
            actives.append(float(active))
            self._emit(TrainEvent(
                "step", phase="training", epoch=epoch, epochs=_visible_epochs(cfg), step=clock.steps,
                total_steps=clock.total_steps, fraction=clock.fraction(), loss=losses[-1],
                active_fraction=actives[-1], images_per_s=clock.images_per_s(), eta_s=clock.eta_s(),
            ))
            if clock.out_of_time():
                break
        if not losses:
            raise RetrievalAppError("no training batch could be formed (are the training images readable?)")
        return {"loss": float(np.mean(losses)), "active_fraction": float(np.mean(actives)), "images_per_s": clock.images_per_s()}

    def _random_triplet_loss(self, embeddings: torch.Tensor, labels: torch.Tensor):
        # Batches of random offline triplets arrive as [anchors | positives | negatives].
        a, p, n = embeddings.float().chunk(3)
        distance = get_distance(self.config.distance)
        per_triplet = torch.relu(distance.paired(a, p) - distance.paired(a, n) + self.config.margin)
        loss = per_triplet.mean() if self.config.reduction == "mean" else per_triplet.sum()
        return loss, float((per_triplet > 0).float().mean())

    # ---------------------------------------------------------- validation
    def _metric_distance(self) -> str:
        name = get_distance(self.config.distance).name
        return name if name in _METRIC_DISTANCES else "euclidean"

    def _validate(self, net, source, *, epoch: int, train_stats: dict, clock: ProgressClock | None = None) -> dict[str, Any]:
        self._phase("validating" if epoch else "measuring the starting model")
        net.eval()
        per_set = source.validation_embeddings()
        row: dict[str, Any] = {"epoch": epoch, **train_stats}
        scores = []
        for set_name, (embeddings, labels) in per_set.items():
            if len(labels) < 2:
                continue
            metrics = retrieval_metrics(embeddings, labels, distance=self._metric_distance())
            if metrics.get("n_queries", 0) == 0:
                continue
            row[set_name] = metrics
            scores.append(metrics["map_at_r"])
        for key in ("precision_at_1", "map_at_r"):
            values = [row[s][key] for s in ("val_seen", "val_unseen") if s in row]
            row[key] = float(np.mean(values)) if values else None
        # Selection score: mean MAP@R over held-out images of trained classes and over
        # whole held-out classes. An epoch that loses more than UNSEEN_TOLERANCE of the
        # starting model's MAP@R on unseen classes is not eligible at all: users query
        # with classes the model never saw, and heads that forget them are common.
        row["score"] = float(np.mean(scores)) if scores else None
        start_unseen = self.history[0].get("val_unseen", {}).get("map_at_r") if self.history else None
        unseen = row.get("val_unseen", {}).get("map_at_r")
        row["eligible"] = not (start_unseen is not None and unseen is not None and unseen < start_unseen - UNSEEN_TOLERANCE)
        if clock is not None:
            row["elapsed_s"] = clock.elapsed
        self.history.append(row)
        atomic_write_json(self.out_dir / ckpt.HISTORY_FILE, self.history)
        self._emit(TrainEvent(
            "epoch", phase="validated", epoch=epoch, epochs=_visible_epochs(self.config),
            step=clock.steps if clock else 0, total_steps=clock.total_steps if clock else None,
            fraction=clock.fraction() if clock else 0.0, loss=train_stats.get("loss"),
            active_fraction=train_stats.get("active_fraction"), images_per_s=train_stats.get("images_per_s"),
            eta_s=clock.eta_s() if clock else None, metrics=row,
        ))
        return row

    def _maybe_keep(self, net, row: dict, best: dict, classes: list[str]) -> dict:
        score = row.get("score")
        if not row.get("eligible", True):
            return best
        # Without validation data the latest epoch is the best we can say.
        comparable = score if score is not None else -math.inf
        if comparable > best["score"] or (score is None and best["score"] == -math.inf):
            ckpt.save_model(self.out_dir / ckpt.MODEL_FILE, net, classes=classes, train_config=self.config.to_dict(), metrics=_flat_metrics(row), epoch=row["epoch"])
            return {"score": comparable, "epoch": row["epoch"]}
        return best

    # -------------------------------------------------------------- the end
    def _finish(self, scan, before: dict, backbone_before: dict, best: dict, last_epoch: int, stopped_because: str) -> TrainResult:
        after_row = next((row for row in self.history if row["epoch"] == best["epoch"]), before)
        kept = "trained" if best["epoch"] > 0 else "start"
        summary = _summarise(before, after_row, backbone_before, kept, stopped_because)
        result = TrainResult(
            out_dir=self.out_dir, model_path=self.out_dir / ckpt.MODEL_FILE,
            before=_flat_metrics(before), after=_flat_metrics(after_row), backbone_before=backbone_before,
            kept=kept, best_epoch=int(best["epoch"]), epochs_run=max(last_epoch, 0),
            stopped_because=stopped_because, summary=summary, history=list(self.history),
            skipped_files=[(s.path, s.reason) for s in scan.skipped],
        )
        atomic_write_json(self.out_dir / ckpt.SUMMARY_FILE, {
            "before": result.before, "after": result.after, "backbone_before": backbone_before,
            "kept": kept, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "stopped_because": stopped_because, "summary": summary, "config": self.config.to_dict(),
        })
        return result

    # ---------------------------------------------------------------- events
    def _phase(self, text: str) -> None:
        if self.cancel.is_set():
            raise TrainingCancelled("training was cancelled")
        self._emit(TrainEvent("phase", phase=text, message=text))

    def _emit(self, event: TrainEvent) -> None:
        self.on_event(event)


def _visible_epochs(cfg: TrainConfig) -> int | None:
    epochs = cfg.resolved_epochs()
    return None if epochs >= 10**6 else epochs


def _flat_metrics(row: dict) -> dict[str, Any]:
    flat = {"epoch": row.get("epoch"), "score": row.get("score"), "precision_at_1": row.get("precision_at_1"), "map_at_r": row.get("map_at_r")}
    for set_name in ("val_seen", "val_unseen"):
        for key, value in row.get(set_name, {}).items():
            flat[f"{set_name}_{key}"] = value
    return flat


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _summarise(before: dict, after: dict, backbone_before: dict, kept: str, stopped_because: str) -> str:
    lines = [f"Stopped: {stopped_because}."]
    lines.append(
        f"Validation MAP@R: start {_fmt(before.get('map_at_r'))} → best trained {_fmt(after.get('map_at_r'))} "
        f"(P@1 {_fmt(before.get('precision_at_1'))} → {_fmt(after.get('precision_at_1'))})."
    )
    if kept == "start":
        lines.append("Fine-tuning did not improve validation retrieval, so the starting model was kept.")
    else:
        lines.append(f"Kept the trained model from epoch {after.get('epoch')}.")
    bare = backbone_before.get("map_at_r")
    best_score = after.get("map_at_r") if kept == "trained" else before.get("map_at_r")
    if bare is not None and best_score is not None and bare > best_score:
        lines.append(f"Note: the bare pretrained features score higher (MAP@R {_fmt(bare)}); use the backbone itself as the model for search.")
    return " ".join(lines)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
