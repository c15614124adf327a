"""A training run in a background thread, observable by polling: what the UI's timer
and the CLI's progress bar read. Each job owns its state; nothing is global."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..errors import RetrievalAppError, TrainingCancelled
from .config import TrainConfig
from .events import EventCallback, TrainEvent, ignore_event
from .trainer import Trainer, TrainResult

STATES = ("idle", "running", "done", "cancelled", "failed")
# A cancel before the trainer had a result (scanning, the first features): the same words
# as the trainer's own "nothing was saved" outcome.
CANCELLED_EARLY = "Cancelled before training started: nothing was saved, and the model in use is unchanged."


@dataclass
class JobSnapshot:
    state: str = "idle"
    phase: str = ""
    epoch: int = 0
    epochs: int | None = None
    step: int = 0
    total_steps: int | None = None
    fraction: float = 0.0
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    active_history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    # Every key of every event's `data`, as (step, value) in arrival order: mining
    # statistics, map frames, ... whatever the trainer and its callbacks send.
    series: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    images_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""
    error: str | None = None
    result: TrainResult | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")


@dataclass
class Outcome:
    """How a run ended, as a job reports it."""

    state: str  # "done", "cancelled" or "failed"
    message: str
    result: TrainResult | None = None
    error: str | None = None


def run_trainer(config: TrainConfig, on_event: EventCallback, cancel: threading.Event, callbacks: Sequence = ()) -> Outcome:
    """Run the trainer to its end and say how it ended; never raises (the thread job and
    the training process report the same outcomes in the same words)."""
    try:
        result = Trainer(config, on_event=on_event, cancel=cancel, callbacks=callbacks).run()
        state = "cancelled" if result.stopped_because == "cancelled" else "done"
        return Outcome(state, result.summary, result=result)
    except TrainingCancelled:
        return Outcome("cancelled", CANCELLED_EARLY)
    except RetrievalAppError as exc:
        return Outcome("failed", str(exc), error=str(exc))
    except Exception as exc:  # a bug or an environment fault: keep the detail for the user
        detail = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return Outcome("failed", detail, error=detail)


class TrainingJob:
    """`callbacks` go to the `Trainer` (e.g. live map frames); `on_event` sees every event."""

    def __init__(self, config: TrainConfig, on_event: EventCallback = ignore_event, callbacks: Sequence = ()) -> None:
        self.config = config
        self._on_event = on_event
        self._callbacks = list(callbacks)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._snapshot = JobSnapshot()
        self._thread: threading.Thread | None = None

    def start(self) -> "TrainingJob":
        if self._thread is not None:
            raise RetrievalAppError("this training job was already started")
        self.config.validate()  # bad settings fail here, in the caller, not in the thread
        with self._lock:
            self._snapshot = JobSnapshot(state="running", phase="starting", started_at=time.time())
        self._thread = threading.Thread(target=self._run, name=f"train-{self.config.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> JobSnapshot:
        """A copy that the caller may read while the run goes on."""
        with self._lock:
            snap = self._snapshot
            return replace(
                snap,
                loss_history=list(snap.loss_history),
                active_history=list(snap.active_history),
                val_history=list(snap.val_history),
                series={key: list(values) for key, values in snap.series.items()},
                warnings=list(snap.warnings),
            )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ worker side
    def _run(self) -> None:
        outcome = run_trainer(self.config, self._record, self._cancel, self._callbacks)
        self._finish(outcome.state, message=outcome.message, result=outcome.result, error=outcome.error)

    def _record(self, event: TrainEvent) -> None:
        with self._lock:
            snap = self._snapshot
            snap.phase = event.phase or snap.phase
            if event.message:
                snap.message = event.message
            if event.kind in ("step", "epoch"):
                snap.epoch, snap.epochs = event.epoch, event.epochs
                snap.step, snap.total_steps = event.step, event.total_steps
                snap.fraction = event.fraction
                snap.images_per_s = event.images_per_s if event.images_per_s is not None else snap.images_per_s
                snap.eta_s = event.eta_s
            if event.kind == "step":
                snap.loss_history.append((event.step, event.loss))
                snap.active_history.append((event.step, event.active_fraction))
            if event.kind == "epoch":
                snap.val_history.append(event.metrics)
            if event.kind == "warning" and event.message:
                snap.warnings.append(event.message)
            for key, value in event.data.items():
                if value is not None:
                    snap.series.setdefault(key, []).append((event.step, value))
        self._on_event(event)

    def _finish(self, state: str, *, message: str, result: TrainResult | None = None, error: str | None = None) -> None:
        with self._lock:
            snap = self._snapshot
            snap.state, snap.message, snap.result, snap.error = state, message, result, error
            snap.finished_at = time.time()
            if state == "done":
                snap.fraction, snap.eta_s = 1.0, 0.0
