"""Callbacks: code that watches a training run and may act on it, without the trainer
knowing what it is (live map frames, the stall watch, a progress printer, the job's
snapshot).

A callback is a `Callback` (override what you need) or a plain function ``f(event)``.
When the training data is ready the trainer calls ``on_training_start(run)`` with a
`RunView`: the run's images, a way to embed any of them with the model as it is now,
`emit` to send events of its own (they reach every callback, the job and the printer)
and `request_stop` to end the training early, as a finished run (honoured where a time
budget alone decides the length). ``on_event`` sees every event; ``on_run_end`` runs
once the result files are written."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .events import TrainEvent


@dataclass
class RunView:
    """What a callback may see of a run in progress, and the two things it may do."""

    mode: str  # "quick" or "full"
    records: Sequence[Any]  # the run's readable images (ImageRecord), in the order `embed` takes
    classes: Sequence[str]
    out_dir: Path
    embed: Callable[[np.ndarray], np.ndarray]  # rows of `records` -> (len, D) float32, the model as it is now
    emit: Callable[[TrainEvent], None]
    stop: "StopRequest" = field(default_factory=lambda: StopRequest())

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([r.label for r in self.records], dtype=np.int64)

    def request_stop(self, reason: str) -> None:
        self.stop.request(reason)


class StopRequest:
    """A callback's request to end training early (not a cancel: the run finishes and
    keeps what it has). The trainer checks it where the length is not fixed."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = ""


class Callback:
    def on_training_start(self, run: RunView) -> None:
        """The training data is ready (quick: the cached features; full: the split)."""

    def on_event(self, event: TrainEvent) -> None:
        """Every event of the run, in order."""

    def on_run_end(self, out_dir: Path) -> None:
        """The run has ended and its files (history, summary, model) are written."""


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[TrainEvent], None]) -> None:
        self.fn = fn

    def on_event(self, event: TrainEvent) -> None:
        self.fn(event)


def as_callbacks(items: Iterable[Callback | Callable[[TrainEvent], None]]) -> list[Callback]:
    """Callbacks from a mix of `Callback` objects and plain functions of an event."""
    return [item if isinstance(item, Callback) else _FunctionCallback(item) for item in items]
