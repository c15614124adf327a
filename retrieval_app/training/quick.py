"""Quick mode: a head on frozen, cached backbone features, chosen by class folds and
refitted on everything.

1. **Select.** For each class fold (`folds.py`) the head trains from its start on the
   other classes; at a series of steps it is measured, at every blend between its start
   and its trained weights, on held-out images of its classes (`seen`) and on the fold's
   classes (`unseen`). Under a time budget the first fold sets the length (it trains
   until its share of the budget is used) and the others repeat it.
2. **Recommend.** Averaged over the folds these measurements are the dial (`dial.py`):
   the recommended point is the best for the user's classes among those that do not
   make unseen classes worse than the bare backbone; none such means "keep the backbone".
3. **Refit.** The head trains from its start on *all* images and classes for the
   recommended length, and is blended as recommended (or as the user chose). At query
   time every class of the folder has been seen, so nothing is held back from the model
   the user gets; the fold averages are reported as its expected quality.

Under `torchrun` every rank trains every fold and the refit (`HeadLoop` under DDP, on the
global batch); only rank 0 measures, builds the dial and chooses, and the choice (length,
blend) is shared, so all ranks refit alike."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.scan import ImageRecord
from ..data.split import Split, split_records
from ..distributed import Distributed
from ..metrics import retrieval_metrics
from ..networks.class_gate import fit_class_gate
from ..networks.familiarity import FAMILIARITY_KINDS, familiarity, fit_references
from ..networks.heads import get_head_spec, is_blendable
from ..threads import workload_threads
from .callbacks import StopRequest
from .config import TrainConfig
from .dial import BLENDS, FINE_BLEND_STEP, Dial, DialPoint, best_seen, mean_or_none, recommend
from .events import TrainEvent
from .folds import class_folds
from .gate_selection import FoldGateParts, GateChoice, choose_gate
from .head_loop import HeadLoop, StepStats
from .progress import ProgressClock

# A run is measured at 25, 50, 100, 200, … steps and at its end: a fixed, doubling
# schedule, so a long budget still measures the short lengths that often are the only
# ones safe for new classes (measuring at fractions of a 300 s run first looked at step
# ~1,000 and found nothing safe), at a cost that grows with the log of the length.
FIRST_EVAL_STEP = 25
MIN_QUICK_STEPS = 200  # even a tiny folder gets this many steps per run
VALIDATION_SETS = ("val_seen", "val_unseen")

Emit = Callable[[TrainEvent], None]


@dataclass
class FeatureTable:
    """Cached backbone features of the folder's readable images, addressable by record."""

    records: list[ImageRecord]
    features: torch.Tensor  # (N, feature_dim), float32
    labels: torch.Tensor  # (N,), int64
    row_of: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.row_of = {record.id: row for row, record in enumerate(self.records)}

    def rows(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        return torch.as_tensor([self.row_of[r.id] for r in records if r.id in self.row_of], dtype=torch.long)


@dataclass
class QuickOutcome:
    dial: Dial
    history: list[dict[str, Any]]
    refit_steps: int
    blend: float | None  # None: nothing was refitted (the backbone is kept)
    stopped_because: str


def _point(step: int, blend: float, rows: list[dict], baselines: list[dict], elapsed_s: float | None) -> DialPoint:
    """One dial point from the folds' measurements (`rows`, one per fold, in fold order)."""
    def mean_of(name, key):
        return mean_or_none((row["blends"].get(blend, {}).get(name) or {}).get(key) for row in rows)

    gains = [((row["blends"].get(blend, {}).get("val_unseen") or {}).get("map_at_r"), base) for row, base in zip(rows, baselines)]
    gains = [value - (base["val_unseen"] or {}).get("map_at_r", value) for value, base in gains if value is not None]
    return DialPoint(
        step=step, blend=float(blend), seen=mean_of("val_seen", "map_at_r"), unseen=mean_of("val_unseen", "map_at_r"),
        seen_p1=mean_of("val_seen", "precision_at_1"), unseen_p1=mean_of("val_unseen", "precision_at_1"),
        elapsed_s=elapsed_s, unseen_worst_gain=min(gains) if gains else None,
    )


def is_eval_step(step: int) -> bool:
    """25 · 2^k."""
    ratio = step // FIRST_EVAL_STEP
    return step % FIRST_EVAL_STEP == 0 and ratio > 0 and ratio & (ratio - 1) == 0


def head_net_factory(base, config: TrainConfig, init_features: torch.Tensor, device) -> Callable[[], torch.nn.Module]:
    """A function that returns `base`'s frozen backbone under a fresh head at its start
    (the same start every call): what each fold and the refit train. `init_features`
    (the folder's backbone features; no labels) fit the head's start: the PCA of a
    `linear` head, the subspace an `identity` head trains in."""
    from ..networks import EmbeddingNet
    from ..networks.heads import get_head_spec, init_from_features, make_head

    kind = config.resolved_head()
    spec = get_head_spec(kind)
    feature_dim = base.spec.feature_dim
    start = make_head(kind, feature_dim, config.dim)
    if spec.feature_init:
        init_from_features(start, init_features)
    start_state = {key: value.clone() for key, value in start.state_dict().items()}

    def make_net() -> EmbeddingNet:
        torch.manual_seed(config.seed)
        head = make_head(kind, feature_dim, config.dim)
        head.load_state_dict(start_state)
        net = EmbeddingNet(base.spec, base.backbone, head.to(device), head_kind=kind, dim=spec.output_dim(feature_dim, config.dim), normalize=config.normalize)
        net.backbone_frozen = True
        return net

    return make_net


class QuickProtocol:
    def __init__(self, config: TrainConfig, make_net: Callable[[], torch.nn.Module], table: FeatureTable, *,
                 lr: float, metric_distance: str, cancel: threading.Event, emit: Emit, stop: StopRequest | None = None,
                 distributed: Distributed | None = None) -> None:
        self.config = config
        self.dist = distributed or Distributed()
        self.make_net = make_net  # a fresh network whose head is at its start
        self.table = table
        self.lr = lr
        self.metric_distance = metric_distance
        self.cancel = cancel
        self.emit = emit
        self.history: list[dict[str, Any]] = []
        self.clock: ProgressClock | None = None
        # A callback's request to end a budgeted run early: honoured by the first fold,
        # whose length the budget sets (the others repeat it, the refit uses the dial's).
        self.stop = stop or StopRequest()
        self.stopped_early = ""
        self.current_net: torch.nn.Module | None = None  # the head training now (see `embed_rows`)
        # (fold, step) -> head weights at that measurement (heads are small): the blend
        # can then be refined around the recommendation without training again.
        self.snapshots: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.selection: tuple[list[Split], list[dict]] | None = None  # the folds and their backbone scores

    @torch.no_grad()
    def embed_rows(self, rows) -> np.ndarray:
        """Embeddings of feature-table rows by the head training now (the starting head
        before the first fold): what live map frames show."""
        net = self.current_net or self.make_net()
        was_training = net.training
        net.eval()
        # A head's work on one thread, also when called before the run (the start frame):
        # on two threads of a busy machine these small products ran several times slower.
        try:
            with workload_threads("head"):
                return net.embed_features(self.table.features[torch.as_tensor(rows, dtype=torch.long)]).float().cpu().numpy()
        finally:
            net.train(was_training)

    # ------------------------------------------------------------------ the run
    def run(self) -> tuple[QuickOutcome, torch.nn.Module | None]:
        with workload_threads("head"):
            folds = self._folds()
            dial = self._select(folds) if folds else Dial(None, None, note="too few images to validate: nothing was held out")
            steps, blend = self.dist.share(self._choice(dial) if self.dist.is_main else None)
            gate = self.dist.share(self._choose_gate(dial, steps, blend) if self.dist.is_main else None)
            if gate is not None:
                if blend is None:  # the backbone itself, with the gate's part appended
                    steps, blend = dial.refit_step(), 0.0
                dial.gate = {**gate.to_dict(), "blend": blend}
            net = None
            if blend is not None:
                net = self._refit(steps)
                net.set_blend(blend)
                if gate is not None:
                    self._attach_gate(net, gate)
                dial.chosen = dial.nearest(blend=blend, step=steps) or DialPoint(steps, blend, None, None)
            stopped = self.stopped_early or ("time budget reached" if self.config.time_budget else "finished")
            return QuickOutcome(dial, self.history, steps, blend, stopped), net

    def _folds(self) -> list[Split]:
        records = self.table.records
        folds = class_folds(records, self.config.folds, val_fraction=self.config.resolved_val_fraction(), seed=self.config.seed)
        if not folds:  # fewer than four classes: the user's classes can still be checked
            split = split_records(records, val_fraction=self.config.resolved_val_fraction(), unseen_class_fraction=0.0, seed=self.config.seed)
            folds = [split] if split.val_seen else []
        return [fold for fold in folds if len({r.label for r in fold.train}) >= 2]

    # ----------------------------------------------------------- 1. selection
    def _select(self, folds: list[Split]) -> Dial:
        per_fold = []
        baselines = [self._baseline(fold) for fold in folds] if self.dist.is_main else []
        eval_steps: list[int] | None = None
        fold_budget = self.config.time_budget / (len(folds) + 1) if self.config.time_budget else None
        planned = None if fold_budget else self._planned_steps(len(folds[0].train))
        self.clock = ProgressClock(None if fold_budget else planned * (len(folds) + 1), self.config.time_budget)
        for number, fold in enumerate(folds, start=1):
            self._phase(f"fold {number}/{len(folds)}: training on {len(fold.train)} images, validating on {len(fold.val_seen)} held-out images and {len(fold.val_unseen)} images of {len(fold.unseen_classes)} held-out classes")
            rows, steps_done = self._train_fold(number, fold, eval_steps, fold_budget if eval_steps is None else None, planned)
            per_fold.append(rows)
            if eval_steps is None:
                eval_steps = [row["step"] for row in rows]
                if fold_budget and self.clock is not None:
                    self.clock.total_steps = steps_done * (len(folds) + 1)
        if not self.dist.is_main:  # rank 0 measured, and chooses
            return Dial(None, None, note="measured by rank 0")
        self.selection = (folds, baselines)
        dial = self._dial(per_fold, baselines, len(folds) if folds[0].val_unseen else 0)
        self._refine_blend(dial, folds, baselines)
        return dial

    def _planned_steps(self, n_train: int) -> int:
        epochs = self.config.resolved_epochs()
        return max(MIN_QUICK_STEPS, int(np.ceil(epochs * n_train / self.config.batch_size)))

    def _train_fold(self, number: int, fold: Split, eval_steps: list[int] | None, budget: float | None, planned: int | None):
        net = self.current_net = self.make_net()
        train_rows = self.table.rows(fold.train)
        loop = HeadLoop(net, self.table.features[train_rows], self.table.labels[train_rows], self.config, lr=self.lr, seed=self.config.seed + number, cancel=self.cancel,
                        distributed=self.dist)
        rows = [self._measure(net, fold, number, 0, 0.0)]
        measure = lambda s, e: rows.append(self._measure(net, fold, number, s, e, loop.monitor.window()))  # noqa: E731
        if eval_steps is not None:
            wanted = set(eval_steps)
            marks = lambda step, _elapsed: step in wanted  # noqa: E731
            loop.run(steps=max(eval_steps), eval_at=marks, on_eval=measure, on_progress=self._progress(f"fold {number}"))
            return rows, loop.steps
        if budget is not None:
            loop.run(deadline=time.monotonic() + budget, eval_at=lambda s, _e: is_eval_step(s), on_eval=measure, on_progress=self._progress(f"fold {number}"), stop=self.stop)
            if self.stop.is_set():  # the first fold ends here; the other folds repeat its length
                self.stopped_early = f"stopped early at step {loop.steps} of the first fold: {self.stop.reason}"
                self.stop.clear()
        else:
            loop.run(steps=planned, eval_at=lambda s, _e: is_eval_step(s), on_eval=measure, on_progress=self._progress(f"fold {number}"))
        if rows[-1]["step"] != loop.steps:
            rows.append(self._measure(net, fold, number, loop.steps, None, loop.monitor.window()))
        # The fold's head as it ends, before the next fold replaces it (the live map draws it).
        self.emit(TrainEvent("data", phase=f"fold {number}", step=self.clock.steps if self.clock else 0,
                             data={"fold_end": {"fold": number, "step": loop.steps}}))
        return rows, loop.steps

    @torch.no_grad()
    def _measure(self, net, fold: Split, fold_number: int, step: int, elapsed: float | None, mining: dict | None = None) -> dict[str, Any]:
        """MAP@R and P@1 of the head at every blend, on both validation sets; `mining`:
        the mining statistics of the steps since the previous measurement. Other ranks
        than 0 measure nothing: they note the step, where rank 0 measured."""
        if not self.dist.is_main:
            return {"fold": fold_number, "step": step}
        net.eval()
        blends = BLENDS if is_blendable(net.head) else (1.0,)
        if is_blendable(net.head):
            self.snapshots[(fold_number, step)] = {key: value.detach().clone() for key, value in net.head.state_dict().items()}
        row: dict[str, Any] = {"fold": fold_number, "step": step, "elapsed_s": elapsed, "blends": {}}
        if mining is not None:
            row["mining"] = mining
        for blend in blends:
            net.set_blend(blend)
            row["blends"][blend] = {name: self._metrics(net.embed_features(self.table.features[self.table.rows(getattr(fold, name))]), getattr(fold, name)) for name in VALIDATION_SETS}
        net.set_blend(1.0)
        self.history.append({"phase": "select", **row})
        trained = row["blends"][1.0]
        self.emit(TrainEvent(
            "epoch", phase=f"validated fold {fold_number} at step {step}", epoch=len(self.history), step=self.clock.steps if self.clock else 0,
            total_steps=self.clock.total_steps if self.clock else None, fraction=self.clock.fraction() if self.clock else 0.0,
            eta_s=self.clock.eta_s() if self.clock else None,
            metrics={"fold": fold_number, "step": step, "epoch": len(self.history), **{name: trained[name] for name in VALIDATION_SETS if trained[name]},
                     "map_at_r": mean_or_none(trained[n]["map_at_r"] for n in VALIDATION_SETS if trained[n]),
                     "precision_at_1": mean_or_none(trained[n]["precision_at_1"] for n in VALIDATION_SETS if trained[n]),
                     **({"mining": mining} if mining is not None else {})},
        ))
        return row

    def _metrics(self, embeddings: torch.Tensor, records: Sequence[ImageRecord]) -> dict[str, float] | None:
        labels = self.table.labels[self.table.rows(records)]
        if len(labels) < 2 or len(labels.unique()) < 2:  # one class: every neighbour is right, nothing is measured
            return None
        metrics = retrieval_metrics(embeddings, labels, distance=self.metric_distance)
        if not metrics.get("n_queries"):
            return None
        return {"map_at_r": float(metrics["map_at_r"]), "precision_at_1": float(metrics["precision_at_1"])}

    @torch.no_grad()
    def _baseline(self, fold: Split) -> dict[str, dict | None]:
        """The bare backbone's features, L2-normalised: what the user has without us."""
        out = {}
        for name in VALIDATION_SETS:
            records = getattr(fold, name)
            out[name] = self._metrics(F.normalize(self.table.features[self.table.rows(records)], dim=1), records)
        return out

    # ------------------------------------------------------ 2. recommendation
    def _dial(self, per_fold: list[list[dict]], baselines: list[dict], n_class_folds: int) -> Dial:
        base = {(name, key): mean_or_none((b[name] or {}).get(key) for b in baselines) for name in VALIDATION_SETS for key in ("map_at_r", "precision_at_1")}
        points = []
        for position in range(min(len(fold) for fold in per_fold)):  # steps every fold measured
            first = per_fold[0][position]
            rows = [fold[position] for fold in per_fold]
            points += [_point(first["step"], blend, rows, baselines, first["elapsed_s"]) for blend in first["blends"]]
        dial = Dial(
            base[("val_seen", "map_at_r")], base[("val_unseen", "map_at_r")], points, n_folds=n_class_folds,
            baseline_seen_p1=base[("val_seen", "precision_at_1")], baseline_unseen_p1=base[("val_unseen", "precision_at_1")],
        )
        dial.recommended = recommend(points, dial.baseline_seen, dial.baseline_unseen)
        if not n_class_folds:
            dial.note = "fewer than four classes: the effect on classes it never saw cannot be estimated (it needs two held out and two to train on)"
        return dial

    @torch.no_grad()
    def _refine_blend(self, dial: Dial, folds: list[Split], baselines: list[dict]) -> None:
        """Measure finer blends between the recommended blend and the next coarse one
        (or between the backbone and ¼ when nothing coarse was safe), from the folds'
        saved heads, and recommend again: the safe limit usually lies in between."""
        if not self.snapshots or self.config.blend is not None:
            return
        start = dial.recommended
        anchor = start or max((p for p in dial.points if p.blend == BLENDS[1] and p.seen is not None), key=lambda p: p.seen, default=None)
        if anchor is None:
            return
        low = start.blend if start is not None else 0.0
        fine = [round(low + step * FINE_BLEND_STEP, 4) for step in range(1, round((BLENDS[1] - BLENDS[0]) / FINE_BLEND_STEP))]
        fine = [blend for blend in fine if blend < 1.0 and blend not in BLENDS]
        if not fine or any((number, anchor.step) not in self.snapshots for number in range(1, len(folds) + 1)):
            return
        self._phase(f"refining the blend between {low:.2f} and {low + BLENDS[1]:.2f} at {anchor.step} steps")
        rows = []
        for number, fold in enumerate(folds, start=1):
            net = self.make_net()
            net.head.load_state_dict(self.snapshots[(number, anchor.step)])
            net.eval()
            row = {"fold": number, "step": anchor.step, "elapsed_s": anchor.elapsed_s, "blends": {}}
            for blend in fine:
                net.set_blend(blend)
                row["blends"][blend] = {name: self._metrics(net.embed_features(self.table.features[self.table.rows(getattr(fold, name))]), getattr(fold, name)) for name in VALIDATION_SETS}
            self.history.append({"phase": "refine", **row})
            rows.append(row)
        dial.points += [_point(anchor.step, blend, rows, baselines, anchor.elapsed_s) for blend in fine]
        dial.recommended = recommend(dial.points, dial.baseline_seen, dial.baseline_unseen)

    def _choice(self, dial: Dial) -> tuple[int, float | None]:
        """(refit length, blend); blend None = keep the backbone, refit nothing."""
        if not dial.points:  # nothing could be validated: train the default length, unchecked
            return self._planned_steps(len(self.table.records)), 1.0
        fixed = self.config.blend
        if fixed is not None:
            best = dial.recommended or best_seen(dial.points)
            return (best.step if best else self._planned_steps(len(self.table.records))), float(fixed)
        if dial.recommended is None:
            return 0, None
        return dial.recommended.step, dial.recommended.blend

    # ------------------------------------------------------- 2b. class gate
    def _gate_possible(self) -> bool:
        return bool(self.config.class_gate and get_head_spec(self.config.resolved_head()).starts_as_backbone and self.selection)

    @torch.no_grad()
    def _choose_gate(self, dial: Dial, steps: int, blend: float | None) -> GateChoice | None:
        """Class-gate settings measured on the folds' heads at the chosen length (the
        best-for-your-classes length when the backbone is kept), or None."""
        if not self._gate_possible():
            return None
        folds, baselines = self.selection
        step = steps if blend is not None else dial.refit_step()
        if step <= 0 or any((number, step) not in self.snapshots for number in range(1, len(folds) + 1)):
            return None
        backbone_unseen = [(base["val_unseen"] or {}).get("map_at_r") for base in baselines]
        if any(value is None for value in backbone_unseen):
            return None
        self._phase(f"measuring the class gate on {len(folds)} folds at {step} steps")
        parts = [self._gate_parts(number, fold, step, 0.0 if blend is None else blend) for number, fold in enumerate(folds, start=1)]
        score = lambda embeddings, labels: (retrieval_metrics(embeddings, labels, distance=self.metric_distance).get("map_at_r") if len(labels) > 1 else None)  # noqa: E731
        return choose_gate(parts, backbone_unseen, score, normalize=self.config.normalize)

    def _gate_parts(self, number: int, fold: Split, step: int, blend: float) -> dict[str, FoldGateParts]:
        net = self.make_net()
        net.head.load_state_dict(self.snapshots[(number, step)])
        net.eval()
        train = self.table.rows(fold.train)
        features, labels = self.table.features[train], self.table.labels[train]
        gate = fit_class_gate(features, labels, seed=self.config.seed + number)
        references = {kind: fit_references(kind, features, labels, seed=self.config.seed + number) for kind in FAMILIARITY_KINDS}
        net.set_blend(blend)
        out = {}
        for name in VALIDATION_SETS:
            rows = self.table.rows(getattr(fold, name))
            held_out = self.table.features[rows]
            out[name] = FoldGateParts(net.head(held_out), {kind: familiarity(held_out, points, FAMILIARITY_KINDS[kind].rank) for kind, points in references.items()},
                                      gate.class_probabilities(held_out), self.table.labels[rows])
        return out

    @torch.no_grad()
    def _attach_gate(self, net, choice: GateChoice) -> None:
        gate = fit_class_gate(self.table.features, self.table.labels, seed=self.config.seed, familiarity_kind=choice.familiarity)
        gate.set_settings(weight=choice.weight, threshold=choice.threshold, softness=choice.softness)
        net.attach_class_gate(gate.to(self.table.features.device))
        self._phase(f"class gate kept: weight {choice.weight:g}, familiarity from {choice.familiarity}, estimated MAP@R on your classes {choice.seen_without:.3f} → {choice.seen:.3f}, on new classes {choice.unseen_without:.3f} → {choice.unseen:.3f}")

    # ------------------------------------------------------------- 3. refit
    def _refit(self, steps: int) -> torch.nn.Module:
        self._phase(f"refitting on all {len(self.table.records)} images of {len(set(self.table.labels.tolist()))} classes for {steps} steps")
        net = self.current_net = self.make_net()
        loop = HeadLoop(net, self.table.features, self.table.labels, self.config, lr=self.lr, seed=self.config.seed, cancel=self.cancel, distributed=self.dist)
        if self.clock is not None and self.clock.total_steps is not None:
            self.clock.total_steps = self.clock.steps + steps
        loop.run(steps=steps, on_progress=self._progress("refit"))
        mining = loop.monitor.window()
        self.history.append({"phase": "refit", "step": loop.steps, **({"mining": mining} if mining is not None else {})})
        net.eval()
        return net

    # ----------------------------------------------------------------- events
    def _progress(self, label: str) -> Callable[[StepStats], None]:
        last = {"step": 0, "images": 0}

        def report(stats: StepStats) -> None:
            clock = self.clock
            if clock is not None:
                clock.tick_many(stats.step - last["step"], stats.images - last["images"])
            last["step"], last["images"] = stats.step, stats.images
            self.emit(TrainEvent(
                "step", phase=f"training ({label})", epoch=len(self.history), step=clock.steps if clock else stats.step,
                total_steps=clock.total_steps if clock else None, fraction=clock.fraction() if clock else 0.0,
                loss=stats.loss, active_fraction=stats.active_fraction,
                images_per_s=stats.images / max(stats.elapsed_s, 1e-9), eta_s=clock.eta_s() if clock else None,
                data={**stats.data, "stage": label},
            ))

        return report

    def _phase(self, text: str) -> None:
        self.emit(TrainEvent("phase", phase=text, message=text))
