"""The one trainer used by the CLI, the UI and the tests.

Two modes:
- quick (the default for pretrained backbones): the backbone is frozen, its pooled
  features are computed once (and cached on disk), only the head trains, on one thread,
  thousands of steps in seconds. Class folds choose the training length and the blend
  toward the bare backbone, then the head is refitted on every image (`quick.py`).
- full: the whole network trains on decoded, augmented images, validated every epoch
  on held-out images and held-out classes.

Both are judged against the bare backbone's own features at full dimension (for
networks trained from scratch, against the untrained start): fine-tuning that makes
retrieval on new classes worse than what the user already had is never kept silently.

Under `torchrun` (a `Distributed` context with several ranks) every rank trains on its
turns of one global batch sequence, mines on the batch gathered from all ranks, and
DDP averages the gradients; only rank 0 validates, writes files and reports, and every
decision to stop is shared (see `distributed.py`).
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..data import split_records
from ..data.labels_csv import open_folder
from ..device import select_device
from ..distributed import Distributed
from ..errors import RetrievalAppError, TrainingCancelled
from ..losses import TripletLoss
from ..losses.distances import get_distance
from ..threads import network_workload, workload_threads
from ..metrics import retrieval_metrics
from ..networks import create_model, freeze_backbone
from ..networks.heads import get_head_spec, init_from_features
from . import checkpoint as ckpt
from ..verification import Calibration
from .calibration import calibrate_full, calibrate_quick
from .callbacks import Callback, RunView, StopRequest, as_callbacks
from .config import FROM_SCRATCH_BACKBONES, TrainConfig
from .dial import Dial, best_seen, gate_applies
from .events import EventCallback, TrainEvent, ignore_event
from .head_loop import CANCELLED, GO_ON, PROGRESS_INTERVAL_S, STOP, TrainingStopped
from .mining_monitor import MiningMonitor
from .progress import PassProgress, ProgressClock
from .schedule import along, follow as follow_schedule, remember_base_rates, resumed_start
from .quick import FeatureTable, QuickProtocol, head_net_factory
from .sources import FullSource, extract_features
from .unlabelled import MIN_IMAGES as MIN_VIEW_IMAGES, ViewProtocol, describe_sets, view_table
from .views import augmented_view_features
from .stall import StallWatch

# Metrics that can rank neighbours; other training distances are validated with Euclidean.
_METRIC_DISTANCES = ("euclidean", "cosine")
# How much MAP@R on held-out classes an epoch may lose against the baseline (the bare
# backbone; the start when trained from scratch) and still be kept: none.
UNSEEN_TOLERANCE = 0.0


@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path | None  # None when nothing better than the baseline was found
    before: dict[str, Any]  # the baseline: the bare backbone (the start, from scratch)
    after: dict[str, Any]  # the kept model (quick mode: fold estimates at the chosen point)
    backbone_before: dict[str, Any]  # the bare pretrained features, if measured
    kept: str  # "trained" or "start" (the baseline: nothing new to use)
    best_epoch: int
    epochs_run: int
    stopped_because: str
    summary: str
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    dial: Dial | None = None  # quick mode: the specialise ↔ generalise trade-off measured
    verification: Calibration | None = None  # the distance threshold for "same identity?" (calibration.py)


class Trainer:
    """`on_event` sees every event; `callbacks` (`callbacks.Callback` objects or functions
    of an event) also see the run's data and may act on it. A `StallWatch` is always
    among them."""

    def __init__(self, config: TrainConfig, on_event: EventCallback = ignore_event, cancel: threading.Event | None = None,
                 callbacks: Sequence[Callback | EventCallback] = (), distributed: Distributed | None = None) -> None:
        self.config = config.validate()
        self.dist = distributed or Distributed()
        self.on_event = on_event
        self.callbacks = as_callbacks([StallWatch(self.config), on_event, *callbacks])
        self.stop = StopRequest()  # a callback's request to end training early
        self.cancel = cancel or threading.Event()
        self.out_dir = Path(config.out_dir)
        self.device = select_device(config.device)
        self.history: list[dict[str, Any]] = []
        self.backbone_before: dict[str, Any] = {}
        self.verification: Calibration | None = None

    # ----------------------------------------------------------------- the run
    def run(self) -> TrainResult:
        cfg = self.config
        _seed_everything(cfg.seed)
        self._phase("scanning folder")
        scan = open_folder(cfg.folder, layout=cfg.layout, labels=cfg.labels)
        if scan.n_unlabelled:  # some or all images without a label: two views of an image are the positives
            if cfg.resolved_mode() != "quick":
                raise RetrievalAppError("training without labels runs in quick mode (a pretrained backbone's features of augmented views); use --mode quick")
            result = self._run_quick(scan)
        elif sum(1 for n in scan.class_counts().values() if n >= 2) < 2:
            raise RetrievalAppError("training needs at least two classes with two or more images each")
        elif cfg.resolved_mode() == "quick":
            result = self._run_quick(scan)
        else:
            result = self._run_full(scan)
        kind = "cancelled" if result.stopped_because == "cancelled" else "done"
        self._emit(TrainEvent(kind, phase=kind, fraction=1.0 if kind == "done" else 0.0, message=result.summary))
        return result

    # ---------------------------------------------------------- quick mode
    def _run_quick(self, scan) -> TrainResult:
        cfg = self.config
        if cfg.resume:
            self._phase("quick mode takes seconds: starting over instead of resuming")
        base = create_model(cfg.backbone, dim=cfg.dim, normalize=cfg.normalize, pretrained=True, weights=cfg.weights, head=None).to(self.device)
        freeze_backbone(base, True)
        records, features = extract_features(base, scan.records, device=self.device, cancel=self.cancel, num_workers=cfg.num_workers, on_phase=self._phase,
                                             progress=self._pass_progress("backbone features"), distributed=self.dist)
        head_kind = cfg.resolved_head()
        make_net = head_net_factory(base, cfg, features.to(self.device), self.device)
        common = dict(lr=cfg.resolved_lr(), metric_distance=self._metric_distance(), cancel=self.cancel, emit=self._emit, stop=self.stop)
        if scan.n_unlabelled:
            protocol = self._view_protocol(base, records, features, make_net, common)
        else:
            table = FeatureTable(records, features.to(self.device), torch.as_tensor([r.label for r in records], dtype=torch.long, device=self.device))
            protocol = QuickProtocol(cfg, make_net, table, distributed=self.dist, **common)
        self._start_callbacks(RunView("quick", records, scan.classes, self.out_dir, protocol.embed_rows, self._emit, self.stop))
        try:
            outcome, net = protocol.run()
        except TrainingStopped:
            return self._cancelled(scan, protocol.history)
        self.history = outcome.history
        dial = outcome.dial
        before = _baseline_metrics(dial)
        after = ckpt.estimate_metrics(dial.chosen, dial.gate) if dial.chosen is not None else dict(before)
        if self.dist.is_main and not scan.n_unlabelled:  # rank 0 alone measures; "same identity?" needs labels
            self._note("calibrating verification on held-out pairs")
            self.verification = calibrate_quick(protocol, dial.chosen if net is not None else None, net, cfg)
        model_path = None
        if net is not None and self.dist.is_main:
            model_path = ckpt.save_model(
                self.out_dir / ckpt.MODEL_FILE, net, classes=scan.classes, train_config=cfg.to_dict(), metrics=after,
                epoch=outcome.refit_steps, head_only=True, extra={"dial": dial.to_dict(), **self._verification_entry()},
            )
        kept = "trained" if net is not None else "start"
        if isinstance(protocol, ViewProtocol):
            summary = _summarise_views(dial, kept, head_kind, outcome.refit_steps, protocol.uses_labels)
        else:
            summary = _summarise_quick(dial, kept, head_kind, outcome.refit_steps)
        return self._result(scan, before=before, after=after, backbone_before=before, kept=kept, best_epoch=outcome.refit_steps,
                            epochs_run=outcome.refit_steps, stopped_because=outcome.stopped_because, summary=summary, model_path=model_path, dial=dial)

    def _view_protocol(self, base, records, features, make_net, common) -> ViewProtocol:
        """Without labels: backbone features of augmented views, then the view protocol."""
        cfg = self.config
        if len(records) < MIN_VIEW_IMAGES:
            raise RetrievalAppError(f"training without labels needs at least {MIN_VIEW_IMAGES} readable images (found {len(records)})")
        self._phase(f"no labels: backbone features of {cfg.views} augmented views of each of {len(records)} images (two views of one image are a positive pair)")
        views, ok = augmented_view_features(base, records, cfg.views, device=self.device, seed=cfg.seed, cancel=self.cancel, progress=self._pass_progress("augmented views"))
        keep = ok.nonzero().flatten().tolist()
        images = [records[i] for i in keep]
        table = view_table(images, features[keep].to(self.device), views[keep])
        return ViewProtocol(cfg, make_net, table, images=images, **common)

    def _cancelled(self, scan, history: list[dict]) -> TrainResult:
        self.history = list(history)
        summary = "Cancelled before a model was chosen: nothing was saved, and the model in use is unchanged."
        return self._result(scan, before={}, after={}, backbone_before={}, kept="start", best_epoch=0, epochs_run=0,
                            stopped_because="cancelled", summary=summary, model_path=None, dial=None)

    def _result(self, scan, *, before, after, backbone_before, kept, best_epoch, epochs_run, stopped_because, summary, model_path, dial) -> TrainResult:
        result = TrainResult(
            out_dir=self.out_dir, model_path=model_path, before=before, after=after, backbone_before=backbone_before,
            kept=kept, best_epoch=int(best_epoch), epochs_run=int(epochs_run), stopped_because=stopped_because, summary=summary,
            history=list(self.history), skipped_files=[(s.path, s.reason) for s in scan.skipped], dial=dial,
            verification=self.verification,
        )
        if not self.dist.is_main:  # rank 0 writes and reports
            return result
        atomic_write_json(self.out_dir / ckpt.HISTORY_FILE, self.history)
        atomic_write_json(self.out_dir / ckpt.SUMMARY_FILE, {
            "before": before, "after": after, "backbone_before": backbone_before, "kept": kept, "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run, "stopped_because": stopped_because, "summary": summary, "config": self.config.to_dict(),
            "dial": dial.to_dict() if dial is not None else None,
            "verification": self.verification.to_dict() if self.verification is not None else None,
        })
        for callback in self.callbacks:
            callback.on_run_end(self.out_dir)
        return result

    # ----------------------------------------------------------- full mode
    def _run_full(self, scan) -> TrainResult:
        cfg = self.config
        split = split_records(scan.records, val_fraction=cfg.resolved_val_fraction(), unseen_class_fraction=cfg.resolved_unseen_class_fraction(), seed=cfg.seed)
        if len({r.label for r in split.train}) < 2:
            raise RetrievalAppError("training needs at least two classes with two or more images each")
        self._phase(f"{len(split.train)} training images, {len(split.val_seen)} held-out images of trained classes, {len(split.val_unseen)} images of held-out classes")

        net = create_model(cfg.backbone, dim=cfg.dim, normalize=cfg.normalize, pretrained=True, weights=cfg.weights, head=cfg.resolved_head()).to(self.device)
        source = FullSource(config=cfg, net=net, split=split, device=self.device, cancel=self.cancel, on_phase=self._phase, on_pass=self._pass_progress,
                            distributed=self.dist)
        resumed = self._try_resume(net) if cfg.resume else None
        # Other ranks get rank 0's start when DDP wraps the network.
        if resumed is None and self.dist.is_main and get_head_spec(cfg.resolved_head()).feature_init and cfg.backbone not in FROM_SCRATCH_BACKBONES:
            # Start as the pretrained geometry (PCA of its features, or the identity with
            # its trainable subspace in their leading directions).
            init_from_features(net.head, source.train_features())

        optimizer = self._make_optimizer(net)
        if resumed is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            remember_base_rates(optimizer)  # a state saved before the schedule has none
        if not self.dist.is_main:
            self.backbone_before = {}
        elif resumed is None:
            self.backbone_before = source.backbone_metrics(self._metric_distance())
        else:
            self.backbone_before = dict(resumed.get("backbone_before", {}))
        model = self.dist.wrap(net)  # trains through DDP's forward; `net` is validated and saved
        loss_fn = TripletLoss(cfg.mining, margin=cfg.margin, distance=cfg.distance, reduction=cfg.reduction)
        monitor = MiningMonitor(loss_fn)  # every step: a full-mode step costs far more than the statistics
        every = [*split.train, *split.val_seen, *split.val_unseen]
        self._start_callbacks(RunView("full", every, scan.classes, self.out_dir, lambda rows: source.embed_now([every[i] for i in rows]), self._emit, self.stop))

        start_epoch = 0 if resumed is None else int(resumed["epoch"]) + 1
        best = {"score": -math.inf, "epoch": -1} if resumed is None else dict(resumed["best"])
        total_epochs = cfg.resolved_epochs()
        steps_per_epoch = source.steps_per_epoch()
        bounded_steps = None if total_epochs >= 10**6 else (total_epochs - max(start_epoch, 1) + 1) * steps_per_epoch
        clock = ProgressClock(bounded_steps, cfg.time_budget)
        # a resumed run goes on along the first run's learning-rate curve (schedule.py)
        curve_start = 0.0 if resumed is None else resumed_start(start_epoch - 1, None if bounded_steps is None else total_epochs)
        if resumed is None:
            if self.dist.is_main:
                start = self._validate(net, source, epoch=0, train_stats={})
                best = self._maybe_keep(net, start, best, scan.classes)
            start_epoch = 1
        before = self._baseline_row()

        stopped_because = "finished all epochs"
        epoch = start_epoch - 1
        # The small CNN on 28×28 inputs: one thread. Two ran 2,400 images/s against one's
        # 1,600 on a quiet 2-core machine, but 340 when another process was busy.
        with workload_threads(network_workload(net.spec.input_size)):
            for epoch in range(start_epoch, total_epochs + 1):
                self._note(f"training epoch {epoch}")  # a cancel here stops at the epoch's first batch
                train_stats = self._train_epoch(model, source, loss_fn, monitor, optimizer, epoch, clock, curve_start)
                if train_stats.get("cancelled"):
                    stopped_because = "cancelled"
                    break
                verdict = None
                if self.dist.is_main:
                    verdict, best = self._end_epoch(net, source, optimizer, epoch, train_stats, clock, best, scan.classes)
                verdict = self.dist.share(verdict)  # rank 0 validated: every rank stops with it
                if verdict is not None:
                    stopped_because = verdict
                    break
        if best["epoch"] > 0 and stopped_because != "cancelled" and self.dist.is_main:
            self._calibrate_full(net, source)
        return self._finish(scan, _flat_metrics(before), best, epoch, stopped_because)

    def _end_epoch(self, net, source, optimizer, epoch: int, train_stats: dict, clock: ProgressClock, best: dict, classes: list[str]) -> tuple[str | None, dict]:
        """Validate, keep the model if it is the best, save the training state: (why
        training stops now, or None to go on; the best epoch so far)."""
        cfg = self.config
        row = self._validate(net, source, epoch=epoch, train_stats=train_stats, clock=clock)
        if row.get("cancelled"):  # during validation: the epochs kept so far stand
            return "cancelled", best
        best = self._maybe_keep(net, row, best, classes)
        ckpt.save_training_state(self.out_dir / ckpt.LAST_FILE, net, optimizer, epoch=epoch, history=self.history, best=best, train_config=cfg.to_dict(), classes=classes, extra={"backbone_before": self.backbone_before})
        if clock.out_of_time():
            return "time budget reached", best
        if self.stop.is_set():
            return f"stopped early after epoch {epoch}: {self.stop.reason}", best
        patience = cfg.resolved_patience()
        if patience is not None and epoch - best["epoch"] >= patience:
            return f"no better validation score for {patience} epochs (early stop)", best
        return None, best

    def _calibrate_full(self, net, source) -> None:
        """The kept epoch's network (reloaded from model.pt) on the held-out sets; the
        calibration is added to model.pt."""
        self._note("calibrating verification on held-out pairs")
        path = self.out_dir / ckpt.MODEL_FILE
        net.load_state_dict(ckpt.load_checkpoint(path, map_location=self.device)["state_dict"])
        try:
            self.verification = calibrate_full(net, source, self.config)
        except TrainingCancelled:
            return
        if self.verification is not None:
            ckpt.add_to_checkpoint(path, **self._verification_entry())

    def _verification_entry(self) -> dict[str, Any]:
        return {"verification": self.verification.to_dict()} if self.verification is not None else {}

    # -------------------------------------------------------------- set-up
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
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        remember_base_rates(optimizer)
        return optimizer

    def _try_resume(self, net) -> dict[str, Any] | None:
        path = self.out_dir / ckpt.LAST_FILE
        if not path.is_file():
            self._phase("nothing to resume: starting fresh")
            return None
        state = ckpt.load_checkpoint(path)
        saved, wanted = state.get("config", {}), net.config()
        different = [f"{key} {saved.get(key)!r} (asked for {wanted[key]!r})" for key in ("name", "head", "dim") if saved.get(key) != wanted[key]]
        if different:
            raise RetrievalAppError(f"cannot resume {path}: it was trained with " + ", ".join(different) + "; use the same settings, or another --out")
        try:
            net.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            raise RetrievalAppError(f"cannot resume {path}: its weights do not fit this model ({str(exc).splitlines()[0]})") from None
        self.history = list(state.get("history", []))
        self._phase(f"resumed after epoch {state['epoch']}")
        return state

    # ------------------------------------------------------------ training
    def _train_epoch(self, model, source, loss_fn, monitor: MiningMonitor, optimizer, epoch: int, clock: ProgressClock, curve_start: float = 0.0) -> dict[str, Any]:
        """One epoch through `model` (the network, or DDP around it)."""
        cfg = self.config
        model.train()
        # Several ranks mine on the gathered batch, except random triplets, laid out per batch.
        gather = self.dist.enabled and cfg.mining != "random"
        scaler = source.grad_scaler()
        losses, actives = [], []
        last_report = -math.inf
        batches, out_of_time = iter(source.batches(epoch)), False
        while True:
            batch = None if out_of_time else next(batches, None)
            decision = self.dist.agree(CANCELLED if self.cancel.is_set() else STOP if batch is None else GO_ON)
            if decision == CANCELLED:
                return {"cancelled": True}
            if decision == STOP:
                break
            inputs, labels = batch
            with source.autocast():
                embeddings = model(inputs).float()
                if gather:  # see distributed.py: the global batch, and the loss scaled for DDP's mean
                    embeddings, labels = self.dist.gather_batch(embeddings, labels)
                out = loss_fn(embeddings, labels)
                loss, active = out.loss, out.active_fraction
            monitor.observe(out, active)
            if self.cancel.is_set() and not self.dist.enabled:  # the backward pass is the longer half of a step: skip it
                return {"cancelled": True}
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * self.dist.loss_scale if gather else loss).backward()
            scaler.step(optimizer)
            scaler.update()
            clock.tick(len(labels))
            if cfg.lr_decay:
                follow_schedule(optimizer, along(curve_start, clock.fraction()))
            losses.append(float(loss.detach()))
            actives.append(float(active))
            data: dict[str, Any] = {"inactive_steps": monitor.inactive_steps, "stage": f"epoch {epoch}"}
            if time.monotonic() - last_report >= PROGRESS_INTERVAL_S:  # statistics a few times a second, like quick mode
                data["mining"], last_report = monitor.interval(), time.monotonic()
            self._emit(TrainEvent(
                "step", phase="training", epoch=epoch, epochs=_visible_epochs(cfg), step=clock.steps,
                total_steps=clock.total_steps, fraction=clock.fraction(), loss=losses[-1],
                active_fraction=actives[-1], images_per_s=clock.images_per_s(), eta_s=clock.eta_s(), data=data,
            ))
            out_of_time = clock.out_of_time()  # stops before the next batch, on every rank
        if not losses:
            raise RetrievalAppError("no training batch could be formed (are the training images readable?)")
        stats = {"loss": float(np.mean(losses)), "active_fraction": float(np.mean(actives)), "images_per_s": clock.images_per_s()}
        mining = monitor.window()
        return {**stats, "mining": mining} if mining is not None else stats

    # ---------------------------------------------------------- validation
    def _metric_distance(self) -> str:
        name = get_distance(self.config.distance).name
        return name if name in _METRIC_DISTANCES else "euclidean"

    def _validate(self, net, source, *, epoch: int, train_stats: dict, clock: ProgressClock | None = None) -> dict[str, Any]:
        self._phase("validating" if epoch else "measuring the starting model")
        net.eval()
        try:
            per_set = source.validation_embeddings()
        except TrainingCancelled:
            if not epoch:  # the start: nothing was kept yet
                raise
            return {"epoch": epoch, "cancelled": True}
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
        baseline = self._baseline_row()
        baseline_unseen = baseline.get("val_unseen", {}).get("map_at_r") if baseline else None
        unseen = row.get("val_unseen", {}).get("map_at_r")
        row["eligible"] = epoch > 0 and not (baseline_unseen is not None and unseen is not None and unseen < baseline_unseen - UNSEEN_TOLERANCE)
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

    def _baseline_row(self) -> dict:
        """What fine-tuning must beat: the bare backbone (pretrained), else the start."""
        if self.backbone_before.get("map_at_r") is not None:
            return self.backbone_before
        return self.history[0] if self.history else {}

    def _maybe_keep(self, net, row: dict, best: dict, classes: list[str]) -> dict:
        """Save `row`'s model if it is eligible and beats both the baseline and the best
        so far. The start itself is never saved: it is what the user already has."""
        if not row.get("eligible", False):
            return best
        baseline_score = _score(self._baseline_row())
        score = row.get("score")
        threshold = max(best["score"], baseline_score if baseline_score is not None else -math.inf)
        # Without validation data the latest epoch is the best we can say.
        if (score is not None and score > threshold) or (score is None and baseline_score is None):
            ckpt.save_model(self.out_dir / ckpt.MODEL_FILE, net, classes=classes, train_config=self.config.to_dict(), metrics=_flat_metrics(row), epoch=row["epoch"])
            return {"score": score if score is not None else best["score"], "epoch": row["epoch"]}
        return best

    # -------------------------------------------------------------- the end
    def _finish(self, scan, before: dict, best: dict, last_epoch: int, stopped_because: str) -> TrainResult:
        after_row = next((row for row in self.history if row["epoch"] == best["epoch"] and best["epoch"] > 0), None)
        kept = "trained" if after_row is not None else "start"
        after = _flat_metrics(after_row) if after_row is not None else dict(before)
        backbone_before = _flat_metrics(self.backbone_before) if self.backbone_before else {}
        summary = _summarise(before, after, kept, stopped_because)
        model_path = self.out_dir / ckpt.MODEL_FILE if kept == "trained" else None
        return self._result(scan, before=before, after=after, backbone_before=backbone_before, kept=kept, best_epoch=max(best["epoch"], 0),
                            epochs_run=max(last_epoch, 0), stopped_because=stopped_because, summary=summary, model_path=model_path, dial=None)

    # ---------------------------------------------------------------- events
    def _note(self, text: str) -> None:
        """A phase that does not stop for a cancel (the next loop checks it)."""
        self._emit(TrainEvent("phase", phase=text, message=text))

    def _pass_progress(self, label: str) -> PassProgress:
        """A pass over images (features, validation) reported batch by batch as the phase,
        "label: done/total images, about N s left"."""
        return PassProgress(label, lambda text: self._emit(TrainEvent("progress", phase=text)))

    def _phase(self, text: str) -> None:
        if self.cancel.is_set():
            raise TrainingCancelled("training was cancelled")
        self._emit(TrainEvent("phase", phase=text, message=text))

    def _start_callbacks(self, run: RunView) -> None:
        for callback in self.callbacks:
            callback.on_training_start(run)

    def _emit(self, event: TrainEvent) -> None:
        for callback in self.callbacks:
            callback.on_event(event)


def _visible_epochs(cfg: TrainConfig) -> int | None:
    epochs = cfg.resolved_epochs()
    return None if epochs >= 10**6 else epochs


def _flat_metrics(row: dict) -> dict[str, Any]:
    flat = {"epoch": row.get("epoch"), "score": _score(row), "precision_at_1": row.get("precision_at_1"), "map_at_r": row.get("map_at_r")}
    for set_name in ("val_seen", "val_unseen"):
        for key, value in (row.get(set_name) or {}).items():
            flat[f"{set_name}_{key}"] = value
    return flat


def _score(row: dict) -> float | None:
    """Selection score: mean MAP@R over held-out images of trained classes and over
    whole held-out classes (whichever exist)."""
    if row.get("score") is not None:
        return row["score"]
    values = [row[s]["map_at_r"] for s in ("val_seen", "val_unseen") if isinstance(row.get(s), dict) and row[s].get("map_at_r") is not None]
    return float(np.mean(values)) if values else None


def _baseline_metrics(dial: Dial) -> dict[str, Any]:
    """The bare backbone's fold estimates, in the flat form of `estimate_metrics`."""
    maps = [v for v in (dial.baseline_seen, dial.baseline_unseen) if v is not None]
    p1 = [v for v in (dial.baseline_seen_p1, dial.baseline_unseen_p1) if v is not None]
    return {
        "map_at_r": float(np.mean(maps)) if maps else None, "precision_at_1": float(np.mean(p1)) if p1 else None,
        "val_seen_map_at_r": dial.baseline_seen, "val_unseen_map_at_r": dial.baseline_unseen,
        "val_seen_precision_at_1": dial.baseline_seen_p1, "val_unseen_precision_at_1": dial.baseline_unseen_p1,
        "step": 0, "blend": 0.0,
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _change(before, after) -> str:
    return f"{_fmt(before)} → {_fmt(after)}"


def _summarise(before: dict, after: dict, kept: str, stopped_because: str) -> str:
    lines = [f"Stopped: {stopped_because}."]
    lines.append(
        f"Validation MAP@R: baseline {_fmt(before.get('map_at_r'))} → best trained {_fmt(after.get('map_at_r'))} "
        f"(held-out images {_change(before.get('val_seen_map_at_r'), after.get('val_seen_map_at_r'))}, "
        f"held-out classes {_change(before.get('val_unseen_map_at_r'), after.get('val_unseen_map_at_r'))})."
    )
    if kept == "start":
        lines.append("No epoch beat the baseline without losing on held-out classes, so nothing was saved: keep using what you had.")
    else:
        lines.append(f"Kept the trained model from epoch {after.get('epoch')}.")
    return " ".join(lines)


def _summarise_quick(dial: Dial, kept: str, head: str, steps: int) -> str:
    """One paragraph: what was kept, and the two estimates a user needs."""
    folds = f"{dial.n_folds} class folds" if dial.n_folds else "held-out images"
    if not dial.points:
        return f"Trained the {head} head for {steps} steps without validation ({dial.note})."
    best = dial.chosen if kept == "trained" else None
    if best is None:
        top = best_seen(dial.points)
        lost = "" if top is None else (
            f" The best point for your classes (MAP@R {_change(dial.baseline_seen, top.seen)}) would have taken classes it "
            f"never saw {_change(dial.baseline_unseen, top.unseen)} on average"
            + (f", {top.unseen_worst_gain:+.3f} in the worst fold" if top.unseen_worst_gain is not None else "")
            + "; move the dial to specialise anyway."
        )
        return f"Kept the backbone: no fine-tuned point improved your classes without making new classes worse (estimated over {folds}).{lost}"
    text = (
        f"Kept the fine-tuned {head} head ({steps} steps on all images, blend {best.blend:.2f}). "
        f"Estimated over {folds}: on your classes MAP@R {_change(dial.baseline_seen, best.seen)}"
    )
    if best.unseen is not None:
        text += f", on classes it never saw {_change(dial.baseline_unseen, best.unseen)}"
    text += "."
    gate = dial.gate
    if gate_applies(gate, best.blend):
        text += (f" With the class gate (weight {gate['weight']:g}; it adds a class part to images that look like your "
                 f"classes): on your classes {_change(dial.baseline_seen, gate['seen'])}, on classes it never saw "
                 f"{_change(dial.baseline_unseen, gate['unseen'])}.")
    if dial.note:
        text += f" Note: {dial.note}."
    return text


def _summarise_views(dial: Dial, kept: str, head: str, steps: int, uses_labels: bool) -> str:
    """`_summarise_quick` in the words of training without labels."""
    seen, unseen = describe_sets(uses_labels)
    folds = f"{dial.n_folds} folds of images" if dial.n_folds else "held-out images"
    if not dial.points:
        return f"Trained the {head} head for {steps} steps without labels and without validation."
    if kept != "trained" or dial.chosen is None:
        return (f"Kept the backbone: no fine-tuned point improved {seen} without making {unseen} worse "
                f"(MAP@R estimated over {folds}; no labels were used for training).")
    best = dial.chosen
    text = (f"Kept the fine-tuned {head} head ({steps} steps on every image's views, no labels, blend {best.blend:.2f}). "
            f"Estimated over {folds}: {seen}, MAP@R {_change(dial.baseline_seen, best.seen)}")
    if best.unseen is not None:
        text += f"; {unseen}, {_change(dial.baseline_unseen, best.unseen)}"
    return text + "."


def _seed_everything(seed: int) -> None:
    # The same on every rank: same network start, same global batch sequence; the ranks'
    # augmentations differ through their sources' own generators (`sources.py`).
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
