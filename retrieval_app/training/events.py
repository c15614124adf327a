"""What a training run tells its caller while it works.

A `TrainEvent` has a few fixed fields every consumer knows (phase, progress, loss) and a
`data` dict for everything else: mining statistics on steps, a map frame of the space
learning, ... Consumers keep or show the keys they know and pass over the rest, so new
information needs a new key, not a new field in the event, the job snapshot, the
command line's printer and the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# phase: a new stage (message); progress: a pass over images; step: training progress;
# epoch: a validation (metrics); warning: something the user should know (message);
# data: only a payload; done / cancelled / failed: the end.
EVENT_KINDS = ("phase", "progress", "step", "epoch", "warning", "data", "done", "cancelled", "failed")


@dataclass
class TrainEvent:
    kind: str  # one of EVENT_KINDS
    phase: str = ""  # e.g. "scanning", "extracting features", "training", "validating"
    epoch: int = 0
    epochs: int | None = None  # None when a time budget decides
    step: int = 0  # global step
    total_steps: int | None = None
    fraction: float = 0.0  # overall progress 0..1
    loss: float | None = None
    active_fraction: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # epoch-end validation
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # anything else, by key (see the module docstring)


EventCallback = Callable[[TrainEvent], None]


def ignore_event(event: TrainEvent) -> None:
    """The default callback."""
